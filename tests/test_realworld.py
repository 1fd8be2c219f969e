"""A real-world night (issue 12): a small robotic telescope's 12-bit camera without bias,
dark or flat frames, ~1,000 hot pixels (0.3 % of the chip), FWHM 1.8 px, a drift growing to
60 px, a 180° meridian flip, thin clouds, an airmass trend, no WCS, DATE-OBS in local
time with its offset and the UTC start in UT-OBS, and a 2 % transit; reduced from a profile
written from the README and a target read off the first frame in x, y.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from ccdflow.hotpixels import hot_pixel_map
from ccdflow.simulate import NightSpec, load_truth, simulate_night, transit_factor

from .conftest import run_snakemake

pytestmark = pytest.mark.workflow

PROFILE = """\
name: robotic
description: 12-bit camera of a small robotic telescope, no calibration frames.
keywords:
  date_obs: [UT-OBS, DATE-OBS]
classification:
  - {type: science, when: {exptime: {min: 0.001}}}
detector:
  gain_e_per_adu: 1.0
  read_noise_e: 10.0
  saturation_adu: 4095
  overscan: {from: biassec, function: median}
  trim: {from: trimsec}
calibration:
  skip: [bias, dark, flat]
"""
DETECTOR = {"gain_e_per_adu": 1.0, "read_noise_e": 10.0, "saturation_adu": 4095,
            "overscan": {"from": "biassec", "function": "median"}, "trim": {"from": "trimsec"}}


def _spec(**kw):
    # 120-s cadence and a target of 15.2 mag (peak ~3,400 ADU of the 4,095 the ADC allows)
    return replace(NightSpec.realworld(n_science=kw.pop("n_science", 64), nx=320, ny=256,
                                       n_stars=150, flip=kw.pop("flip", True)),
                   overhead_s=60.0, target_mag=15.2, **kw)


@pytest.fixture(scope="module", params=["flip", "no flip"])
def night(request, tmp_path_factory):
    """The night with a meridian flip 30 % into it (the telescope turned 180° before the
    transit's ingress), and without."""
    flip = request.param == "flip"
    return simulate_night(out_dir=tmp_path_factory.mktemp("realworld") / "night",
                          spec=_spec(flip=flip, **({"flip_at": 0.3} if flip else {})))


def _true_hot(truth, sigmas):
    """Hot pixels whose dark charge in one exposure exceeds ``sigmas`` × the pixel noise."""
    frames = truth.frames
    charge = truth.dark_rate_e_per_s * float(frames["exptime_s"].median())
    noise = np.sqrt(float(frames["sky_level_e"].median()) + truth.meta["read_noise_e"] ** 2)
    return charge > sigmas * noise


def test_hot_pixel_map_from_the_series_on_truth(night):
    """Recall ≥ 95 % of the hot pixels above 10σ; ≤ 1 % of the flags on pixels that a
    star covered in some frame without being hot (3σ); no flag on a quiet pixel."""
    truth = load_truth(night)
    paths = [night / "raw" / f for f in truth.frames["file"]]
    hot, info = hot_pixel_map(paths=paths, detector=DETECTOR)
    assert info["n_frames"] == min(50, len(paths)) and info["skipped"] == []
    strong, any_hot = _true_hot(truth, 10.0), _true_hot(truth, 3.0)
    assert (hot & strong).sum() >= 0.95 * strong.sum(), ((hot & strong).sum(), strong.sum())
    star_pixels = np.zeros(hot.shape, bool)
    sf = truth.star_frames
    xs, ys = np.round(sf["x"]).astype(int), np.round(sf["y"]).astype(int)
    inside = (xs >= 1) & (xs < hot.shape[1] - 1) & (ys >= 1) & (ys < hot.shape[0] - 1)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            star_pixels[ys[inside] + dy, xs[inside] + dx] = True
    assert (hot & star_pixels & ~any_hot).sum() <= 0.01 * hot.sum()
    assert (hot & ~any_hot).sum() <= 0.01 * hot.sum()


def _fit_transit(lc, transit):
    """Depth, mid-time and their 1σ errors of a trapezoid of the true shape (duration,
    ingress) times a line, weighted by rel_flux_err (errors scaled by √χ²_red ≥ 1)."""
    ok = lc["usable"].astype(bool) & np.isfinite(lc["rel_flux"])
    t, f, e = (lc.loc[ok, c].to_numpy(float) for c in ("mjd_utc", "rel_flux", "rel_flux_err"))
    grid = np.arange(transit["t0_mjd"] - 0.03, transit["t0_mjd"] + 0.03, 0.0001)
    fits_ = []
    for t0 in grid:
        frac = 1 - transit_factor(t, t0=t0, duration_d=transit["duration_d"],
                                  ingress_d=transit["ingress_d"], depth=1.0)
        design = np.column_stack([np.ones_like(t), t - t.mean(), -frac]) / e[:, None]
        coef, *_ = np.linalg.lstsq(design, f / e, rcond=None)
        fits_.append((float(np.sum((design @ coef - f / e) ** 2)), coef, design))
    chi2 = np.array([c for c, _, _ in fits_])
    best = int(np.argmin(chi2))
    red = max(1.0, chi2[best] / (len(t) - 4))
    _, coef, design = fits_[best]
    cov = np.linalg.inv(design.T @ design) * red
    within = grid[chi2 <= chi2[best] + red]  # Δχ² = 1 (scaled): the 1σ range of t0
    resid = f - design @ coef * e
    return {"depth": coef[2] / coef[0], "depth_err": np.sqrt(cov[2, 2]) / coef[0],
            "t0": grid[best], "t0_err": max((within.max() - within.min()) / 2, 1e-4),
            "p2p": float(np.std(np.diff(resid)) / np.sqrt(2)), "expected": float(np.median(e)),
            "n": len(t)}


def test_real_world_night_gives_a_transit_light_curve(night, tmp_path):
    truth = load_truth(night)
    frames = truth.frames
    first = truth.star_frames[(truth.star_frames["frame"] == frames["frame"].iloc[0])
                              & (truth.star_frames["star_id"] == 0)].iloc[0]
    # the target as a user reads it off the first frame: 1.5 px from its centroid
    target = {"name": "TARGET", "x": float(first["x"] + 1.2), "y": float(first["y"] - 0.9)}
    (tmp_path / "robotic.yaml").write_text(PROFILE)
    out = run_snakemake(tmp_path, "--cores", "2", config={
        "raw_dir": str(night / "raw"), "instrument": str(tmp_path / "robotic.yaml"),
        "photometry": {"targets": [target]}})
    results = tmp_path / "results"
    text = out.stdout + out.stderr
    # header times: UT-OBS wins; DATE-OBS's -0700 gives the night
    inventory = pd.read_csv(results / "inventory.csv", keep_default_na=False)
    assert set(inventory["night"]) == {"2018-03-01"} and (inventory["type"] == "science").all()
    assert inventory["date_obs"].iloc[0] == frames["date_obs"].iloc[0][:23]
    # hot pixels: from the series, in every calibrated frame's MASK, counted in the header
    hot_map = next(results.glob("masters/*/*/hotpix.fits"))
    assert fits.getheader(hot_map, 0)["NHOTPIX"] > 100
    calibrated = sorted(results.glob("calibrated/*/*/*.fits"))
    assert fits.getheader(calibrated[0], 0)["NHOTPIX"] >= fits.getheader(hot_map, 0)["NHOTPIX"]
    # detections are stars, and every frame is aligned (drift, flip, clouds)
    sources = pd.concat(pd.read_csv(p, sep="\t") for p in results.glob("sources/*/*/*.tsv"))
    assert (sources["n_sources"] < 150).all()  # not a thousand hot pixels
    notes = [line for p in results.glob("photometry/*/*/*.csv")
             for line in p.read_text().splitlines() if "aligned" in line and line[:1] == "#"]
    assert len(notes) == len(frames) and not [n for n in notes if "not aligned" in n], notes[:3]
    assert "target TARGET snapped to the star" in (
        results / "logs" / "photometry" / "reference" / "WASP-SIM_R.log").read_text(), text
    # the target is followed onto its star in every frame (centroid noise ~0.03 px)
    rows = pd.read_csv(results / "lightcurves" / "WASP-SIM_R" / "source_1.csv", comment="#")
    at = rows.merge(truth.star_frames[truth.star_frames["star_id"] == 0], on="frame")
    offset = np.hypot(at["x_x"] - at["x_y"], at["y_x"] - at["y_y"])
    assert len(at) == len(frames) and np.median(offset) < 0.1 and offset.max() < 0.5
    # the differential light curve: the transit at its true depth and time
    lc = pd.read_csv(results / "lightcurves" / "WASP-SIM_R" / "differential_TARGET.csv",
                     comment="#")
    assert lc["usable"].mean() >= 0.9
    transit = json.loads((night / "truth" / "truth.json").read_text())["transit"]
    fit = _fit_transit(lc, transit)
    assert abs(fit["depth"] - transit["depth"]) <= 2 * fit["depth_err"], fit
    assert abs(fit["t0"] - transit["t0_mjd"]) <= 3 * fit["t0_err"], fit
    # point-to-point scatter over the quoted errors: 1 for honest errors, with a standard
    # error of 1/√(2(n−1)) for n points; allowed 3 of them above 1
    assert fit["p2p"] / fit["expected"] <= 1 + 3 / np.sqrt(2 * (fit["n"] - 1)), fit
