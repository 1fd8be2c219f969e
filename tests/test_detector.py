"""Gain checks: photon transfer from bias and flat pairs (tests/test_workflow.py, the
Nickel night in tests/test_shared_data.py) and, for nights without them, from
consecutive science frames (here)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from ccdflow.ccd import CalibrationError
from ccdflow.detector import _pair_gain, check_gain_report, measure_gain_from_series
from ccdflow.simulate import NightSpec, load_truth, simulate_night

# the README-style profile of the real-world night: it says gain 1 whatever the camera's
PROFILE_DETECTOR = {"gain_e_per_adu": 1.0, "read_noise_e": 10.0, "saturation_adu": 4095,
                    "overscan": {"from": "biassec", "function": "median"},
                    "trim": {"from": "trimsec"}}


@pytest.fixture(scope="module", params=[1.0, 2.5])
def series(request, tmp_path_factory):
    """A real-world night (stars drifting 4 px a frame, hot pixels, a 4-column median
    overscan, flat structure, no calibration frames) from a camera of gain 1.0 or 2.5."""
    spec = replace(NightSpec.realworld(n_science=16, nx=320, ny=256, n_stars=150),
                   gain_e_per_adu=request.param)
    night = simulate_night(out_dir=tmp_path_factory.mktemp("gain") / "night", spec=spec)
    truth = load_truth(night)
    frames = truth.frames.sort_values("mjd_mid")
    return request.param, [truth.raw_dir / f for f in frames["file"]]


def test_gain_from_consecutive_science_frames_recovers_truth(series):
    gain, paths = series
    result = measure_gain_from_series(paths=paths, detector=PROFILE_DETECTOR)
    assert result["method"] == "science pairs" and result["n_pairs"] == 8
    # each pair's difference has ~60 000 sky pixels: its variance is known to
    # √(2/60 000) ≈ 0.6 %, so 8 pairs give the median to ~0.3 %; ≤ 1.5 % allows the sky's
    # and read noise's share and a bad draw, and the truth must be within 3 of the
    # measurement's own errors (stars moving 4 px between frames, hot pixels and the
    # overscan's row noise would each bias it by 2-6 % if they were not handled)
    assert result["gain_err"] <= 0.015 * gain
    assert abs(result["gain_measured"] - gain) <= 3 * result["gain_err"], result
    assert result["gain_header"] == 1.0 and np.isnan(result["read_noise_measured"])


def test_gain_check_warns_when_the_profile_gain_is_wrong(series, caplog):
    gain, paths = series
    with caplog.at_level(logging.INFO, logger="ccdflow.detector"):
        result = check_gain_report(bias_paths=[], flat_filters={}, detector=PROFILE_DETECTOR,
                                   series_paths=paths)
    assert result["gain_agrees"] is (gain == 1.0) and result["read_noise_agrees"] is None
    warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warned) is (gain != 1.0)
    if warned:
        assert "detector.gain_e_per_adu" in warned[0] and "science pairs" in warned[0]


def test_pair_gain_on_pure_noise_with_row_offsets(rng):
    # Poisson sky + read noise, plus a per-row offset in each frame (a median overscan of
    # a few columns): the estimator takes each row's median out of the difference, so the
    # offsets (here 8 e-, 0.4 of the noise) do not enter the gain
    sky, read_noise, gain = 400.0, 10.0, 2.0
    found = []
    for _ in range(6):
        frames = []
        for level in (sky, 1.02 * sky):
            e = rng.poisson(level, (256, 256)) + rng.normal(0, read_noise, (256, 256))
            e += rng.normal(0, 8.0, (256, 1))
            frames.append(np.round(e / gain))
        found.append(_pair_gain(*frames, read_noise_e=read_noise)[0])
    # per pair: √(2/65 000) ≈ 0.55 % in the variance → 0.6 % in the gain; the mean of 6
    # to 0.25 %: 1 % is 4σ
    assert np.mean(found) == pytest.approx(gain, rel=0.01)


def test_series_gain_bad_inputs(series, tmp_path):
    _, paths = series
    with pytest.raises(CalibrationError, match="no overscan"):
        measure_gain_from_series(paths=paths, detector={**PROFILE_DETECTOR,
                                                        "overscan": {"from": "none"}})
    with pytest.raises(CalibrationError, match="no two consecutive science frames"):
        measure_gain_from_series(paths=paths[:1], detector=PROFILE_DETECTOR)
    with pytest.raises(ValueError, match="max_pairs"):
        measure_gain_from_series(paths=paths, detector=PROFILE_DETECTOR, max_pairs=0)
    # a check never stops the night: nothing to measure is a NaN row with the reason
    result = check_gain_report(bias_paths=[], flat_filters={}, detector=PROFILE_DETECTOR)
    assert np.isnan(result["gain_measured"]) and result["gain_agrees"] is None
    assert "nothing to measure the gain from" in result["note"]
    result = check_gain_report(bias_paths=[], flat_filters={}, series_paths=paths,
                               detector={**PROFILE_DETECTOR, "overscan": {"from": "none"}})
    assert "no overscan" in result["note"]


def test_series_gain_skips_an_unreadable_frame(series, tmp_path):
    # a truncated frame in the series loses its own pairs, not the measurement
    gain, paths = series
    broken = tmp_path / "truncated.fits"
    broken.write_bytes(paths[2].read_bytes()[:5000])
    mixed = [*paths[:2], broken, *paths[3:]]
    result = measure_gain_from_series(paths=mixed, detector=PROFILE_DETECTOR)
    assert broken.name not in result["frames"] and result["n_pairs"] >= 6
    assert abs(result["gain_measured"] - gain) <= 3 * result["gain_err"]
