"""Gain and read noise measured from pairs of flats and biases (photon-transfer method).

With two bias frames ``B1, B2`` and two flats ``F1, F2`` (ADU, overscan
subtracted), mean bias-subtracted flat levels ``m1, m2`` and ``r = m1/m2``::

    σ_B² = Var(B1 − B2)                      (two reads' noise)
    G    = (m1 + r²·m2) / (Var(F1 − r·F2) − (1 + r²)·σ_B²/2)      [e-/ADU]
    RN   = G · σ_B / √2                                          [e-]

For equal levels (r = 1) this is the textbook ``G = 2S/σΔ²`` with the
bias-corrected variance of the difference; scaling F2 by r cancels the flat
field's pixel structure, which the difference is meant to remove.

A night without biases and flats (a small robotic telescope's series) is checked on
its own science frames (:func:`measure_gain_from_series`): consecutive frames of one
exposure time see nearly the same sky, so the same difference of two of them, with
the stars of either frame masked and each row's median taken out (the per-row overscan
level has noise of its own), has the variance ``S/G + (1 + r²)·(RN/G)²`` with
``S = m1 + r²·m2`` the two sky levels (ADU above the overscan) and RN the profile's
read noise in electrons; solved for G per pair, the median over pairs is the gain.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.stats import mad_std

from .calibrate import central_level, central_region
from .ccd import CalibrationError, clipped_stats, detector_constant, read_raw_frame
from .config import has_overscan, has_zero_level

log = logging.getLogger(__name__)

__all__ = ["check_gain_report", "choose_flat_pair", "flat_levels", "has_overscan",
           "measure_gain_from_series", "measure_gain_read_noise"]


def _central(image: np.ndarray, fraction: float) -> np.ndarray:
    return np.asarray(image[central_region(image.shape, fraction=fraction)], dtype=np.float64)


def _adu(path: str | Path, detector: Mapping):
    frame = read_raw_frame(path, detector={**detector, "gain_e_per_adu": 1.0})
    return np.where(frame.saturated | frame.nonfinite, np.nan, frame.data.astype(np.float64))


#: relative systematic error of the gain from science pairs (see measure_gain_from_series)
_GAIN_FLOOR = 0.005


def _local_level(image: np.ndarray, *, box: int = 32) -> np.ndarray:
    """Median of each ``box``² block (NaN ignored), bilinearly interpolated: the sky's
    large-scale structure (gradients, vignetting) that a threshold must not see."""
    from scipy import ndimage

    from .blocks import nan_block_reduce

    ny, nx = image.shape
    grid = nan_block_reduce(image, box=box, func=np.nanmedian)
    grid = np.where(np.isfinite(grid), grid, np.nanmedian(grid))
    zoomed = ndimage.zoom(grid, box, order=1, mode="nearest", grid_mode=True)
    return zoomed[:ny, :nx]


def _sky_pixels(image: np.ndarray, *, sigma: float = 2.0, grow_px: int = 4) -> np.ndarray:
    """Pixels of ``image`` (the sum of a pair) away from every star and hot pixel: those
    of the Gaussian-smoothed (σ = 1 px) image, less its local level, more than
    ``sigma`` of its robust σ above 0, or 4σ below, grown by ``grow_px`` (star wings).
    Found on the sum of the two frames, whose noise is independent of their
    difference's, the mask can go deep (faint stars that move between the frames are
    what would bias the gain) without clipping the noise being measured."""
    from scipy import ndimage

    finite = np.isfinite(image)
    filled = np.where(finite, image, np.median(image[finite]))
    excess = ndimage.gaussian_filter(filled, 1.0) - _local_level(np.where(finite, image, np.nan))
    spread = mad_std(excess[finite])
    bright = ~finite | (excess > sigma * spread) | (excess < -4 * spread)
    return ~ndimage.binary_dilation(bright, iterations=grow_px)


def _pair_gain(a: np.ndarray, b: np.ndarray, *, read_noise_e: float,
               min_photon_share: float = 0.5) -> tuple[float, float]:
    """(gain e-/ADU, sky level ADU) of one pair of sky frames; NaN gain when the sky's
    photon noise is less than ``min_photon_share`` of the difference's variance."""
    use = _sky_pixels(a + b)  # the sum: √2 deeper for the faint stars both frames hold
    if use.sum() < 1000:
        return float("nan"), float("nan")
    # the photons of the pixels the difference uses: their mean (faint stars' light
    # included, which adds its own photon noise), not the sky's median
    level_a, level_b = float(np.mean(a[use])), float(np.mean(b[use]))
    if not (level_a > 0 and level_b > 0):
        return float("nan"), 0.5 * (level_a + level_b)
    r = level_a / level_b
    diff = np.where(use, a - r * b, np.nan)
    # each row's own offset out: the overscan level subtracted per row (a median of a
    # few columns has noise of its own) and any other row pattern are not photons
    rows_ok = np.isfinite(diff).sum(axis=1) >= 20
    diff = diff[rows_ok] - np.nanmedian(diff[rows_ok], axis=1)[:, None]
    var = clipped_stats(diff, sigma=4.0, maxiters=5)[2] ** 2  # astropy's, faster (tested)
    photons = level_a + r**2 * level_b  # S; var = S·x + (1 + r²)·RN²·x², x = 1/G
    quad = (1 + r**2) * read_noise_e**2
    x = (var / photons if quad == 0
         else (-photons + math.sqrt(photons**2 + 4 * quad * var)) / (2 * quad))
    if not (x > 0 and photons * x >= min_photon_share * var):
        return float("nan"), 0.5 * (level_a + level_b)
    return 1.0 / x, 0.5 * (level_a + level_b)


def measure_gain_from_series(*, paths: Sequence[str | Path], detector: Mapping,
                             max_pairs: int = 8, fraction: float = 0.8) -> dict:
    """Gain (e-/ADU) from consecutive science frames of one exposure time (module docstring).

    Parameters
    ----------
    paths : sequence of paths
        Raw science frames of one night and setup, in time order.
    detector : mapping
        The profile's ``detector`` section: its read noise (e-) enters the noise model,
        its gain is what the measurement checks.
    max_pairs : int
        Pairs used, spread over the series (each frame is read once).
    fraction : float
        Central fraction (per axis) of the frame used (vignetted corners left out).

    Returns
    -------
    dict
        ``gain_measured`` (median over pairs), ``gain_err`` (1.25 × their standard
        deviation / √n with a 0.5 % floor for the method's own bias; NaN below 3
        pairs), ``n_pairs``, ``sky_level_adu``,
        ``gain_header``, ``read_noise_header``, ``method`` and the frames used.

    Raises
    ------
    CalibrationError
        Fewer than two frames of one exposure time, or no pair with a sky bright enough
        against the read noise.
    """
    from astropy.io import fits

    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if not has_zero_level(detector):
        raise CalibrationError("no overscan in the profile (detector.overscan.from: none) "
                               "and no detector.zero_level_adu: without a zero level the "
                               "sky's photons are unknown")
    headers: dict[int, Any] = {}

    def header(i):  # read lazily: a night of 10 000 frames needs a few dozen headers
        if i not in headers:
            try:
                headers[i] = fits.getheader(paths[i])
            except Exception as exc:  # an unreadable frame breaks no pair but its own
                log.warning("gain from the series: %s skipped (%s)", paths[i], exc)
                headers[i] = None
        return headers[i]

    def exptime(i):
        return header(i).get("EXPTIME") if header(i) is not None else None

    n_starts = min(4 * max_pairs, len(paths) - 1)  # candidate pairs spread over the night
    starts = (np.unique(np.round(np.linspace(0, len(paths) - 2, n_starts)).astype(int))
              if n_starts > 0 else [])
    pairs = [int(i) for i in starts if exptime(i) is not None and exptime(i) == exptime(i + 1)]
    if not pairs:
        raise CalibrationError("no two consecutive science frames of one exposure time to "
                               "measure the gain from")
    picks = sorted({pairs[int(k)] for k in np.linspace(0, len(pairs) - 1,
                                                       min(max_pairs, len(pairs)))})
    first = header(pairs[0])
    spec = detector.get("read_noise_e", {"keyword": "RDNOISE"})
    read_noise = detector_constant(spec, [first], name="read_noise_e", where=str(paths[0]))
    cache: dict[int, np.ndarray | None] = {}

    def adu(i):
        if i not in cache:  # a frame shared by two pairs is read once
            for k in [k for k in cache if k < i]:
                del cache[k]
            try:
                cache[i] = _central(_adu(paths[i], detector), fraction)
            except Exception as exc:  # a truncated or corrupt frame: its pairs are skipped
                log.warning("gain from the series: %s skipped (%s)", paths[i], exc)
                cache[i] = None
        return cache[i]

    found = []
    for i in picks:
        a, b = adu(i), adu(i + 1)
        if a is not None and b is not None and a.shape == b.shape:
            found.append((i, *_pair_gain(a, b, read_noise_e=read_noise)))
    gains = np.array([g for _, g, _ in found if np.isfinite(g)])
    if not gains.size:
        raise CalibrationError("the sky of these frames is too faint against the read noise "
                               f"({read_noise:g} e-) to measure the gain")
    median = float(np.median(gains))
    # the pairs' scatter, and a floor for the method's own bias: ≤ 0.3 % on pure Poisson
    # + read noise with row offsets (the row medians and the 4σ clip shrink the variance
    # by ~0.3 %), ≤ 0.4 % on simulated nights of drifting stars and hot pixels
    err = (math.hypot(1.25 * float(np.std(gains, ddof=1)) / math.sqrt(gains.size),
                      _GAIN_FLOOR * median) if gains.size >= 3 else float("nan"))
    out = {"method": "science pairs", "gain_measured": median,
           "gain_err": err, "n_pairs": int(gains.size),
           "sky_level_adu": float(np.median([s for _, _, s in found])),
           "read_noise_measured": float("nan"),
           "frames": " ".join(Path(paths[i]).name for i, _, _ in found)}
    return {**out, **_profile_values(detector, first, where=str(paths[0]))}


def _profile_values(detector: Mapping, header, *, where: str) -> dict:
    """The gain and read noise the profile gives for a frame (NaN when it cannot)."""
    out = {}
    for key, spec in (("gain_header", detector.get("gain_e_per_adu", {"keyword": "GAIN"})),
                      ("read_noise_header", detector.get("read_noise_e",
                                                         {"keyword": "RDNOISE"}))):
        try:
            out[key] = detector_constant(spec, [header], name=key, where=where)
        except CalibrationError:
            out[key] = float("nan")
    return out


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
    # astropy's sigma-clipped median of the finite pixels (clipped_stats ignores NaN)
    m1, m2 = (clipped_stats(d, sigma=sigma)[1]
              for d in (f1 - bias_mean, f2 - bias_mean))
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
    return {"method": "bias and flat pairs", **out,
            **_profile_values(detector, header, where=str(flat_paths[0]))}


def flat_levels(paths_filters: Mapping[str, str], *, detector: Mapping) -> dict:
    """Central level (ADU, overscan-subtracted) of each flat: path -> (filter, level)."""
    return {p: (f, central_level(_adu(p, detector))) for p, f in paths_filters.items()}


def check_gain_report(*, bias_paths: Sequence[str | Path], flat_filters: Mapping[str, str],
                      detector: Mapping, warn_fraction: float = 0.1,
                      series_paths: Sequence[str | Path] = ()) -> dict:
    """Measure the gain (and read noise) and compare them with the header/profile values.

    From the first two biases and the closest flat pair when the night has them; else
    from consecutive science frames (``series_paths``, time order) with
    :func:`measure_gain_from_series` (gain only: its read noise is the profile's).
    Logs a warning when a measurement differs from the header/profile value by more
    than ``warn_fraction`` (and, for the series, by more than 3 of its errors); the
    returned dict has ``gain_agrees`` and ``read_noise_agrees`` (None: not measured).
    A check never stops a night: when nothing can be measured the dict has NaN values
    and the reason in ``note`` (logged as a warning).
    """
    method = ("bias and flat pairs" if len(bias_paths) >= 2 and flat_filters
              else "science pairs")
    try:
        if method == "bias and flat pairs":
            pair = choose_flat_pair(flat_levels(flat_filters, detector=detector))
            result = measure_gain_read_noise(bias_paths=list(bias_paths)[:2],
                                             flat_paths=list(pair), detector=detector)
        elif len(series_paths) >= 2:
            result = measure_gain_from_series(paths=series_paths, detector=detector)
        else:
            raise CalibrationError("no bias and flat pairs, nor two science frames: "
                                   "nothing to measure the gain from")
    except CalibrationError as exc:  # a check: the night goes on without it
        log.warning("gain not measured (%s): %s", method, exc)
        nan = float("nan")
        return {"method": method, "gain_measured": nan, "gain_err": nan,
                "read_noise_measured": nan, "gain_header": nan, "read_noise_header": nan,
                "gain_agrees": None, "read_noise_agrees": None, "note": str(exc)}
    for what in ("gain", "read_noise"):
        given, measured = result[f"{what}_header"], result[f"{what}_measured"]
        if not np.isfinite(measured):
            result[f"{what}_agrees"] = None
            continue
        err = result.get(f"{what}_err", float("nan"))
        tolerance = max(warn_fraction * given, 3 * err if np.isfinite(err) else 0.0)
        agrees = bool(np.isfinite(given) and abs(measured - given) <= tolerance)
        result[f"{what}_agrees"] = agrees
        if not agrees:
            log.warning("%s measured %.3f (%s) differs from the header/profile value %.3f by "
                        "more than %.0f%%: check detector.%s in the instrument profile", what,
                        measured, result["method"], given, 100 * warn_fraction,
                        "gain_e_per_adu" if what == "gain" else "read_noise_e")
        else:
            log.info("%s measured %.3f (%s), header/profile %.3f", what, measured,
                     result["method"], given)
    return result
