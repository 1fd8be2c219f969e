"""Gain and read noise measured from pairs of flats and biases (photon-transfer method).

With two bias frames ``B1, B2`` and two flats ``F1, F2`` (ADU, overscan
subtracted), mean bias-subtracted flat levels ``m1, m2`` and ``r = m1/m2``::

    σ_B² = Var(B1 − B2)                      (two reads' noise)
    G    = (m1 + r²·m2) / (Var(F1 − r·F2) − (1 + r²)·σ_B²/2)      [e-/ADU]
    RN   = G · σ_B / √2                                          [e-]

For equal levels (r = 1) this is the textbook ``G = 2S/σΔ²`` with the
bias-corrected variance of the difference; scaling F2 by r cancels the flat
field's pixel structure, which the difference is meant to remove.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.stats import mad_std, sigma_clipped_stats

from .calibrate import central_level, central_region
from .ccd import CalibrationError, detector_constant, read_raw_frame

log = logging.getLogger(__name__)

__all__ = ["check_gain_report", "choose_flat_pair", "flat_levels", "measure_gain_read_noise"]


def _central(image: np.ndarray, fraction: float) -> np.ndarray:
    return np.asarray(image[central_region(image.shape, fraction=fraction)], dtype=np.float64)


def _adu(path: str | Path, detector: Mapping):
    frame = read_raw_frame(path, detector={**detector, "gain_e_per_adu": 1.0})
    return np.where(frame.saturated | frame.nonfinite, np.nan, frame.data.astype(np.float64))


def choose_flat_pair(levels: Mapping[str, tuple[str, float]]) -> tuple[str, str]:
    """Two flats of one filter with the closest levels; ``levels``: path -> (filter, level)."""
    best, best_diff = None, math.inf
    items = sorted(levels.items())
    for i, (p1, (f1, l1)) in enumerate(items):
        for p2, (f2, l2) in items[i + 1:]:
            if f1 == f2 and l1 > 0 and l2 > 0:
                diff = abs(l1 - l2) / max(l1, l2)
                if diff < best_diff:
                    best, best_diff = (p1, p2), diff
    if best is None:
        raise CalibrationError("no two flats of one filter to measure the gain")
    return best


def measure_gain_read_noise(*, bias_paths: Sequence[str | Path],
                            flat_paths: Sequence[str | Path], detector: Mapping,
                            fraction: float = 0.8, sigma: float = 5.0) -> dict:
    """Measure gain (e-/ADU) and read noise (e-) from two biases and two flats.

    Parameters
    ----------
    bias_paths, flat_paths : sequence of two paths
        Raw frames of one calibration group.
    detector : mapping
        The profile's ``detector`` section (its gain is not used here).
    fraction : float
        Central fraction (per axis) of the frame used.
    sigma : float
        Clipping threshold for the mean levels; the variances are MAD-based
        (1.4826 × median absolute deviation)², robust to stars and cosmic rays.

    Returns
    -------
    dict
        ``gain_measured``, ``read_noise_measured``, ``flat_level_adu``,
        ``flat_ratio`` and the header/profile values ``gain_header``,
        ``read_noise_header`` (NaN when the profile cannot give them).
    """
    if len(bias_paths) != 2 or len(flat_paths) != 2:
        raise ValueError("need exactly two bias and two flat frames")
    b1, b2 = (_central(_adu(p, detector), fraction) for p in bias_paths)
    f1, f2 = (_central(_adu(p, detector), fraction) for p in flat_paths)
    bias_mean = 0.5 * (b1 + b2)
    m1 = sigma_clipped_stats(f1 - bias_mean, sigma=sigma)[1]
    m2 = sigma_clipped_stats(f2 - bias_mean, sigma=sigma)[1]
    if not (m1 > 0 and m2 > 0):
        raise CalibrationError(f"flat levels {m1:.1f}, {m2:.1f} ADU are not above the bias")
    r = m1 / m2
    # MAD-based variances: stars in twilight flats and cosmic rays do not inflate them
    var_b = mad_std(b1 - b2, ignore_nan=True) ** 2
    var_f = mad_std((f1 - bias_mean) - r * (f2 - bias_mean), ignore_nan=True) ** 2
    denom = var_f - (1 + r**2) * var_b / 2
    if not denom > 0:
        raise CalibrationError("flat-pair variance does not exceed the read noise: cannot "
                               "measure the gain (flats too faint?)")
    gain = (m1 + r**2 * m2) / denom
    read_noise = gain * math.sqrt(var_b / 2)
    out = {"gain_measured": gain, "read_noise_measured": read_noise,
           "flat_level_adu": 0.5 * (m1 + m2), "flat_ratio": r,
           "bias_pair": " ".join(Path(p).name for p in bias_paths),
           "flat_pair": " ".join(Path(p).name for p in flat_paths)}
    from astropy.io import fits

    header = fits.getheader(flat_paths[0])
    for key, spec in (("gain_header", detector.get("gain_e_per_adu", {"keyword": "GAIN"})),
                      ("read_noise_header", detector.get("read_noise_e",
                                                         {"keyword": "RDNOISE"}))):
        try:
            out[key] = detector_constant(spec, [header], name=key, where=str(flat_paths[0]))
        except CalibrationError:
            out[key] = float("nan")
    return out


def flat_levels(paths_filters: Mapping[str, str], *, detector: Mapping) -> dict:
    """Central level (ADU, overscan-subtracted) of each flat: path -> (filter, level)."""
    return {p: (f, central_level(_adu(p, detector))) for p, f in paths_filters.items()}


def check_gain_report(*, bias_paths: Sequence[str | Path], flat_filters: Mapping[str, str],
                      detector: Mapping, warn_fraction: float = 0.1) -> dict:
    """Measure gain and read noise from the first two biases and the closest flat pair.

    Logs a warning when a measurement differs from the header/profile value
    by more than ``warn_fraction``; the returned dict has ``gain_agrees`` and
    ``read_noise_agrees`` flags.
    """
    pair = choose_flat_pair(flat_levels(flat_filters, detector=detector))
    result = measure_gain_read_noise(bias_paths=list(bias_paths)[:2], flat_paths=list(pair),
                                     detector=detector)
    for what in ("gain", "read_noise"):
        given, measured = result[f"{what}_header"], result[f"{what}_measured"]
        agrees = bool(np.isfinite(given) and abs(measured - given) <= warn_fraction * given)
        result[f"{what}_agrees"] = agrees
        if not agrees:
            log.warning("%s measured %.3f differs from the header/profile value %.3f by more "
                        "than %.0f%%", what, measured, given, 100 * warn_fraction)
        else:
            log.info("%s measured %.3f, header/profile %.3f", what, measured, given)
    return result
