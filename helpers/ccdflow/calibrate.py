"""Master bias, dark, flat, bad-pixel mask and calibrated science frames.

Units: every master is in electrons (bias, e-), electrons per second (dark
rate, e-/s) or dimensionless (flat, median 1 in the central region).  Each
master carries an ``EXPTIME`` keyword: 0 for a true bias, or the exposure of
the short darks used as bias (``bias_from_shortest_dark``), so that dark
current is scaled by ``t_science − t_bias``.

Calibrated science, per pixel::

    S = (R − B − D·(t − t_B)) / F
    Var(S) = [RN² + max(R − B, 0)] / F²                                 (this frame)
           + [σ_B² + ((t − t_B)·σ_D)²] / F² + S²·(σ_F / F)²            (ERR_CAL²)

with ``R`` the overscan-corrected, trimmed raw frame in electrons.  The
Poisson term uses the collected charge ``R − B`` (signal plus dark current).
ERR is the square root of the whole; ERR_CAL of the masters' part, which is
the same in every frame calibrated with the same masters (a time series of a
star on fixed pixels does not scatter by it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .ccd import CalibrationError, RawFrame, parse_section, read_raw_frame
from .combine import combine_frames
from .masks import MaskBit
from .products import Product, provenance_header

log = logging.getLogger(__name__)

__all__ = [
    "HOT_DARK_IMAGES",
    "calibrate_science",
    "central_level",
    "central_region",
    "make_bad_pixel_mask",
    "make_illumination_model",
    "make_master_bias",
    "make_master_dark",
    "make_master_flat",
    "trimmed_shape",
]

COMBINE_DEFAULTS = {"method": "mean", "cenfunc": "median", "stdfunc": "model",
                    "sigma_lower": 3.0,
                    "sigma_upper": 3.0, "maxiters": 5, "nlow": 0, "nhigh": 0}


def central_region(shape: tuple[int, int], *, fraction: float) -> tuple[slice, slice]:
    """Slices of the central ``fraction`` (per axis) of an image of ``shape``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ny, nx = shape
    dy, dx = int(ny * (1 - fraction) / 2), int(nx * (1 - fraction) / 2)
    return slice(dy, ny - dy), slice(dx, nx - dx)


def central_level(image: np.ndarray, *, fraction: float = 0.5,
                  mask: np.ndarray | None = None) -> float:
    """Sigma-clipped (3σ) median of the central ``fraction`` (per axis) of ``image``."""
    centre = central_region(image.shape, fraction=fraction)
    region = np.asarray(image[centre], dtype=np.float64)
    bad = ~np.isfinite(region)
    if mask is not None:
        bad |= np.asarray(mask[centre], dtype=bool)
    if bad.all():
        return float("nan")
    from astropy.stats import sigma_clipped_stats

    return float(sigma_clipped_stats(region, mask=bad, sigma=3.0)[1])


def _check_count(paths: Sequence, minimum: int, what: str) -> None:
    if len(paths) < minimum:
        names = ", ".join(Path(p).name for p in paths) or "none"
        raise CalibrationError(f"master {what}: {len(paths)} frame(s) ({names}), fewer than the "
                               f"minimum of {minimum} (calibration.min_frames.{what})")


def _missing(frame: RawFrame) -> np.ndarray:
    return frame.saturated | frame.nonfinite | frame.no_data


def _master_product(result, *, fill: float, header, unit_note: str) -> Product:
    """Turn a CombineResult into a Product: empty pixels get ``fill`` and BADCAL."""
    data = result.data.astype(np.float32)
    error = result.error.astype(np.float32)
    mask = np.zeros(data.shape, np.uint16)
    empty = result.n_used == 0
    data[empty] = fill
    lonely = ~np.isfinite(error)
    if (~lonely).any():
        error[lonely] = np.nanmedian(error[~lonely])  # fewer than 2 values: typical error
    else:
        error[:] = 0.0
    error[empty] = 0.0
    mask[lonely | empty] |= np.uint16(MaskBit.BADCAL)
    header["NCOMBINE"] = (result.n_frames, "frames combined")
    header["NBADCAL"] = (int((lonely | empty).sum()), "pixels with < 2 values kept")
    header["BUNITDOC"] = unit_note
    return Product(data=data, error=error, mask=mask, header=header,
                   extras={"NUSED": result.n_used.astype(np.uint16)})


def _combine(paths, load, *, combine: Mapping, memory_limit_mb: float, scratch_dir,
             noise_model=None, threads: int = 1):
    params = {**COMBINE_DEFAULTS, **combine}
    shapes: dict[tuple, str] = {}

    def make_loader(path):
        def loader():
            frame = load(path)
            shapes.setdefault(frame.shape, Path(path).name)
            if len(shapes) > 1:
                (s0, f0), (s1, f1) = list(shapes.items())[:2]
                raise CalibrationError(f"frames of different shapes in one master: {f0} is "
                                       f"{s0[1]}x{s0[0]}, {f1} is {s1[1]}x{s1[0]}")
            return frame
        return loader

    return combine_frames(frames=[make_loader(p) for p in paths],
                          memory_limit_mb=memory_limit_mb, scratch_dir=scratch_dir,
                          noise_model=noise_model, threads=threads, **params)


def make_master_bias(*, paths: Sequence[str | Path], detector: Mapping,
                     combine: Mapping | None = None, memory_limit_mb: float = 2000,
                     min_frames: int = 3, scratch_dir: str | Path | None = None,
                     threads: int = 1) -> Product:
    """Combine bias frames (or the shortest darks) into a master bias in electrons.

    Parameters
    ----------
    paths : sequence of path
        Raw frames of one calibration group and night.
    detector : mapping
        The profile's ``detector`` section (see :func:`ccdflow.ccd.read_raw_frame`).
    combine : mapping, optional
        :func:`ccdflow.combine.clip_combine` options (default: mean, 3σ clip
        around the median, 5 iterations).
    memory_limit_mb : float
        Bound of the combination's working set.
    min_frames : int
        Fewer frames is an error naming them.
    scratch_dir : path, optional
        Where the processed frames are spilled while combining.
    threads : int
        Row blocks combined in parallel.

    Returns
    -------
    Product
        SCI = bias structure (e-, after overscan), ERR = error of the mean,
        MASK = BADCAL where fewer than 2 values survived; ``EXPTIME`` = the
        frames' common exposure time (0 for true bias frames).

    Notes
    -----
    Noise of the master: ``RN/√N`` per pixel (plus the overscan level's noise).
    """
    _check_count(paths, min_frames, "bias")
    exptimes = set()
    read_noise = []

    def load(path):
        frame = read_raw_frame(path, detector=detector)
        exptimes.add(frame.exptime_s)
        read_noise.append(frame.read_noise_e)
        return np.where(_missing(frame), np.nan, frame.data)

    # clipping noise model: read noise only (a short dark used as bias adds Poisson)
    result = _combine(paths, load, combine=combine or {}, memory_limit_mb=memory_limit_mb,
                      scratch_dir=scratch_dir, threads=threads,
                      noise_model=lambda: (max(read_noise) ** 2, 1.0 if max(exptimes) else 0.0))
    if len(exptimes) > 1:
        raise CalibrationError(f"master bias: frames have different exposure times {exptimes}")
    header = provenance_header(step="master_bias", inputs=paths,
                               params={"combine": {**COMBINE_DEFAULTS, **(combine or {})}})
    header["EXPTIME"] = (exptimes.pop(), "[s] exposure of the frames used as bias")
    header["IMAGETYP"] = "MASTER BIAS"
    return _master_product(result, fill=0.0, header=header,
                           unit_note="electron: bias structure after overscan subtraction")


def make_master_dark(*, paths: Sequence[str | Path], detector: Mapping, bias: Product | None,
                     combine: Mapping | None = None, memory_limit_mb: float = 2000,
                     min_frames: int = 3, hot_threshold_e_per_s: float = 1.0,
                     hot_significance: float = 5.0,
                     scratch_dir: str | Path | None = None, threads: int = 1) -> Product:
    """Combine darks into a dark-current rate (e-/s) with hot pixels flagged.

    Each dark becomes ``(R − B) / (t − t_B)``; the rates are combined with
    rejection (cosmic rays).  A pixel is HOT when its rate exceeds
    ``hot_threshold_e_per_s`` *and* ``hot_significance`` times its error, so a
    noisy master (short darks) does not flag the whole chip.

    Notes
    -----
    Error of the rate per pixel ≈ ``√(RN² + σ_B² + D·t)/(t − t_B)/√N``.
    """
    _check_count(paths, min_frames, "dark")
    t_bias = float(bias.header.get("EXPTIME", 0.0)) if bias is not None else 0.0
    exptimes = []

    def load(path):
        frame = read_raw_frame(path, detector=detector)
        dt = frame.exptime_s - t_bias
        if not dt > 0:
            raise CalibrationError(f"{path}: dark exposure {frame.exptime_s} s is not longer "
                                   f"than the bias exposure {t_bias} s")
        exptimes.append(frame.exptime_s)
        read_noise.append(frame.read_noise_e)
        data = frame.data - (bias.data if bias is not None else 0.0)
        return np.where(_missing(frame), np.nan, data / dt)

    read_noise: list[float] = []

    def model():  # rate r from electrons r·dt: σ_r² = (RN² + r·dt)/dt² for the shortest dt
        dt = min(exptimes) - t_bias
        return max(read_noise) ** 2 / dt**2, 1.0 / dt

    result = _combine(paths, load, combine=combine or {}, memory_limit_mb=memory_limit_mb,
                      scratch_dir=scratch_dir, noise_model=model, threads=threads)
    params = {"combine": {**COMBINE_DEFAULTS, **(combine or {})},
              "hot_threshold_e_per_s": hot_threshold_e_per_s,
              "hot_significance": hot_significance}
    header = provenance_header(step="master_dark", inputs=paths, params=params)
    header["IMAGETYP"] = "MASTER DARK"
    header["EXPTIME"] = (1.0, "[s] master is a rate: electrons per second")
    header["DARKTMIN"] = (min(exptimes), "[s] shortest dark combined")
    header["DARKTMAX"] = (max(exptimes), "[s] longest dark combined")
    header["BIASEXPT"] = (t_bias, "[s] exposure of the bias subtracted")
    product = _master_product(result, fill=0.0, header=header,
                              unit_note="electron/s: dark current rate")
    if bias is not None:
        product.mask |= bias.mask
    hot = (product.data > hot_threshold_e_per_s) & (
        product.data > hot_significance * product.error)
    product.mask[hot] |= np.uint16(MaskBit.HOT)
    product.header["NHOT"] = (int(hot.sum()), "hot pixels flagged")
    log.info("master dark: median rate %.4f e-/s, %d hot pixels",
             np.median(product.data), int(hot.sum()))
    return product


def _dark_term(dark: Product | None, exptime: float, t_bias: float):
    if dark is None:
        return 0.0, 0.0
    dt = exptime - t_bias
    return dark.data * dt, dark.error * dt


def make_master_flat(*, paths: Sequence[str | Path], detector: Mapping, bias: Product | None,
                     dark: Product | None, combine: Mapping | None = None,
                     memory_limit_mb: float = 2000, min_frames: int = 3,
                     norm_fraction: float = 0.5, low: float = 0.5, high: float = 1.5,
                     outlier_fraction: float = 0.1, floor: float = 0.2,
                     dispersion_axis: str | None = None,
                     scratch_dir: str | Path | None = None, threads: int = 1) -> Product:
    """Combine flats into a normalised master flat with low/outlier pixels masked.

    Each flat is bias- (and dark-) corrected, divided by the sigma-clipped
    median of its central ``norm_fraction``, and the normalised frames are
    combined with rejection (stars in twilight flats fall out); the result is
    renormalised the same way.  ``LOW_FLAT``: response < ``low`` (science frames
    are still divided there down to ``floor``, recorded as ``FLATFLOR``); ``BAD``:
    response > ``high`` or deviating from a 5-pixel running median by more
    than ``outlier_fraction``; ``NONFINITE``/``BADCAL`` as for every master.

    With ``dispersion_axis`` ('x' or 'y': a spectroscopic flat), the combined flat is
    also divided by the lamp's smooth spectrum along the dispersion
    (:func:`ccdflow.longslit.flat.lamp_spectrum`) before it is renormalised and
    thresholded: it then carries the pixel response and the slit function only.

    Notes
    -----
    Relative error of the master ≈ ``1/√(N·S)`` for N flats of S electrons.
    """
    _check_count(paths, min_frames, "flat")
    t_bias = float(bias.header.get("EXPTIME", 0.0)) if bias is not None else 0.0
    scales: list[float] = []

    def load(path):
        frame = read_raw_frame(path, detector=detector)
        dark_e, _ = _dark_term(dark, frame.exptime_s, t_bias)
        data = frame.data - (bias.data if bias is not None else 0.0) - dark_e
        data = np.where(_missing(frame), np.nan, data)
        level = central_level(data, fraction=norm_fraction)
        if not level > 0:
            raise CalibrationError(f"{path}: flat level {level:.3g} e- in the central region is "
                                   "not positive (empty or zero flat?)")
        scales.append(level)
        read_noise.append(frame.read_noise_e)
        return data / level

    read_noise: list[float] = []

    def model():  # response f from electrons f·S: σ_f² = (RN² + f·S)/S², faintest flat
        level = min(scales)
        return max(read_noise) ** 2 / level**2, 1.0 / level

    result = _combine(paths, load, combine=combine or {}, memory_limit_mb=memory_limit_mb,
                      scratch_dir=scratch_dir, noise_model=model, threads=threads)
    if dispersion_axis is not None:
        from .longslit.flat import lamp_spectrum

        lamp = lamp_spectrum(result.data, axis=dispersion_axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            result.data = (result.data / lamp).astype(np.float32)
            result.error = (result.error / lamp).astype(np.float32)
    norm = central_level(result.data, fraction=norm_fraction)
    result.data /= norm
    result.error /= norm
    params = {"combine": {**COMBINE_DEFAULTS, **(combine or {})}, "norm_fraction": norm_fraction,
              "low": low, "high": high, "outlier_fraction": outlier_fraction, "floor": floor,
              "dispersion_axis": dispersion_axis}
    header = provenance_header(step="master_flat", inputs=paths, params=params)
    header["IMAGETYP"] = "MASTER FLAT"
    for i, level in enumerate(scales, start=1):
        header[f"FLATSC{i:02d}"] = (round(level, 3), "[e-] central level of input flat")
    product = _master_product(result, fill=1.0, header=header,
                              unit_note="dimensionless: response, median 1 in the centre")
    flat = product.data
    product.mask[~np.isfinite(flat)] |= np.uint16(MaskBit.NONFINITE)
    product.mask[flat < low] |= np.uint16(MaskBit.LOW_FLAT)
    product.mask[flat > high] |= np.uint16(MaskBit.BAD)
    from scipy.ndimage import median_filter

    smooth = median_filter(np.where(np.isfinite(flat), flat, 1.0), size=5, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        outlier = np.abs(flat / smooth - 1.0) > outlier_fraction
    product.mask[outlier] |= np.uint16(MaskBit.BAD)
    header["NLOWFLAT"] = (int((flat < low).sum()), "pixels below the low threshold")
    header["FLATFLOR"] = (floor, "science not divided below this response (BAD)")
    if dispersion_axis is not None:
        header["FLATSPEC"] = (dispersion_axis, "lamp spectrum removed along this axis")
    header["NOUTFLAT"] = (int(outlier.sum()), "local outliers flagged BAD")
    return product


def make_master_arc(*, paths: Sequence[str | Path], detector: Mapping, bias: Product | None,
                    dark: Product | None, combine: Mapping | None = None,
                    memory_limit_mb: float = 2000, min_frames: int = 1,
                    scratch_dir: str | Path | None = None, threads: int = 1) -> Product:
    """Combine arc-lamp frames of one night and setup into a master arc (e-).

    Each arc is bias- (and dark-) corrected and scaled to the first arc's
    exposure time; several are combined with rejection (cosmic rays).  A single
    arc is the master itself, its error ``√(RN² + max(S, 0))``.  The master
    gives the warp model (:func:`ccdflow.longslit.warp.warp_from_arc`); its
    absolute level does not matter.
    """
    _check_count(paths, min_frames, "arc")
    t_bias = float(bias.header.get("EXPTIME", 0.0)) if bias is not None else 0.0
    frames = [read_raw_frame(p, detector=detector) for p in paths[:1]]
    exptimes = [f.exptime_s for f in frames]
    read_noise = [f.read_noise_e for f in frames]
    t_ref = exptimes[0]

    def electrons(frame):
        dark_e, _ = _dark_term(dark, frame.exptime_s, t_bias)
        data = frame.data - (bias.data if bias is not None else 0.0) - dark_e
        return np.where(_missing(frame), np.nan, data)

    def load(path):
        frame = read_raw_frame(path, detector=detector)
        exptimes.append(frame.exptime_s)
        read_noise.append(frame.read_noise_e)
        scale = t_ref / frame.exptime_s if frame.exptime_s > 0 else 1.0
        return electrons(frame) * scale

    if len(paths) == 1:
        data = electrons(frames[0]).astype(np.float32)
        error = np.sqrt(read_noise[0] ** 2 + np.clip(np.nan_to_num(data), 0, None))
        mask = np.where(np.isfinite(data), 0, MaskBit.NONFINITE).astype(np.uint16)
        header = provenance_header(step="master_arc", inputs=paths,
                                   params={"combine": "single frame"})
        header["NCOMBINE"] = (1, "frames combined")
        product = Product(data=np.nan_to_num(data), error=error.astype(np.float32), mask=mask,
                          header=header)
    else:
        exptimes.clear()
        read_noise.clear()
        result = _combine(paths, load, combine=combine or {}, memory_limit_mb=memory_limit_mb,
                          scratch_dir=scratch_dir, threads=threads,
                          noise_model=lambda: (max(read_noise) ** 2, 1.0))
        header = provenance_header(step="master_arc", inputs=paths,
                                   params={"combine": {**COMBINE_DEFAULTS, **(combine or {})}})
        product = _master_product(result, fill=0.0, header=header,
                                  unit_note="electron: arc lamp, bias subtracted")
    product.header["IMAGETYP"] = "MASTER ARC"
    product.header["EXPTIME"] = (t_ref, "[s] arcs scaled to this exposure")
    if bias is not None:
        product.mask |= bias.mask
    return product


#: the hot-pixel map's dark-rate images, carried by the bad-pixel mask
HOT_DARK_IMAGES = ("HOTDARK", "HOTDARK_ERR")


def make_bad_pixel_mask(*, shape: tuple[int, int], detector: Mapping,
                        masters: Sequence[Product | None] = (),
                        hot_pixels: np.ndarray | None = None) -> np.ndarray:
    """Union (OR) of the masters' masks and the profile's bad columns, pixels and regions.

    ``detector`` keys: ``bad_columns`` (1-based x), ``bad_rows`` (1-based y),
    ``bad_pixels`` (list of 1-based ``[x, y]``) and ``bad_regions`` (IRAF
    sections) — all in trimmed-frame coordinates.  ``hot_pixels`` (a boolean
    map, or the uint16 mask of :func:`ccdflow.hotpixels.write_hot_pixel_map` for
    cameras without darks) is OR-ed in: True as HOT, a mask's own bits as they are.
    """
    mask = np.zeros(shape, np.uint16)
    if hot_pixels is not None:
        if np.shape(hot_pixels) != tuple(shape):
            raise CalibrationError(f"hot-pixel map has shape {np.shape(hot_pixels)}, "
                                   f"expected {shape}")
        hot_pixels = np.asarray(hot_pixels)
        mask |= (np.where(hot_pixels, np.uint16(MaskBit.HOT), np.uint16(0))
                 if hot_pixels.dtype == bool else hot_pixels.astype(np.uint16))
    for master in masters:
        if master is None:
            continue
        if master.mask.shape != tuple(shape):
            raise CalibrationError(f"master {master.header.get('IMAGETYP')} has shape "
                                   f"{master.mask.shape}, expected {shape}")
        mask |= master.mask
    ny, nx = shape
    for col in detector.get("bad_columns", []):
        if not 1 <= col <= nx:
            raise CalibrationError(f"detector.bad_columns: column {col} outside 1..{nx}")
        mask[:, col - 1] |= np.uint16(MaskBit.BAD)
    for row in detector.get("bad_rows", []):
        if not 1 <= row <= ny:
            raise CalibrationError(f"detector.bad_rows: row {row} outside 1..{ny}")
        mask[row - 1, :] |= np.uint16(MaskBit.BAD)
    for x, y in detector.get("bad_pixels", []):
        if not (1 <= x <= nx and 1 <= y <= ny):
            raise CalibrationError(f"detector.bad_pixels: ({x}, {y}) outside the frame")
        mask[y - 1, x - 1] |= np.uint16(MaskBit.BAD)
    for text in detector.get("bad_regions", []):
        rows, cols, _, _ = parse_section(text)
        mask[rows, cols] |= np.uint16(MaskBit.BAD)
    return mask


def calibrate_science(*, path: str | Path, detector: Mapping, bias: Product | None,
                      dark: Product | None, flat: Product | None,
                      bad_pixel_mask: np.ndarray | None, illumination: Product | None = None,
                      params: Mapping[str, Any] | None = None,
                      master_names: Mapping[str, str] | None = None,
                      flat_floor: float = 0.2,
                      hot_dark: Mapping[str, np.ndarray] | None = None) -> Product:
    """Calibrate one science frame to electrons with ERR, ERR_CAL and MASK (see the module
    docstring).

    Parameters
    ----------
    path : path
        Raw science frame (read-only).
    detector : mapping
        The profile's ``detector`` section.
    bias, dark, flat : Product or None
        Masters; None skips that step (recorded in the header).
    bad_pixel_mask : ndarray of uint16, optional
        From :func:`make_bad_pixel_mask`; ORed into MASK.
    illumination : Product, optional
        From :func:`make_illumination_model`: SCI and ERR are divided by it.
    params, master_names : mapping, optional
        Recorded as provenance (``BIASFILE``/``DARKFILE``/``FLATFILE``/``BPMFILE``).
    flat_floor : float
        The flat is divided wherever its response is at least this; below it the
        pixel is BAD (and LOW_FLAT) and left undivided.  LOW_FLAT pixels above
        the floor (response below the flat's ``low``) are divided: their values
        are corrected, with a larger ERR.
    hot_dark : mapping, optional
        ``HOTDARK`` and ``HOTDARK_ERR`` (e-/s) of the series' hot-pixel map
        (:func:`ccdflow.hotpixels.hot_pixel_rates`), used when no master dark is:
        ``rate × EXPTIME`` is subtracted at HOT pixels that have a rate (its error
        in ERR_CAL); a HOT pixel without one becomes BAD.  ``HOTCORR`` counts
        the corrected pixels.

    Returns
    -------
    Product
        SCI (e-), ERR (total 1σ: read noise, photons of everything collected incl.
        dark charge, and the masters' noise), ERR_CAL (the masters' part of ERR:
        bias, dark and flat errors, common to every frame of the night; the
        random part of a pixel is √(ERR² − ERR_CAL²)) and MASK.
    """
    frame = read_raw_frame(path, detector=detector)
    shape = frame.data.shape
    for name, master in (("bias", bias), ("dark", dark), ("flat", flat)):
        if master is not None and master.data.shape != shape:
            raise CalibrationError(f"{path}: master {name} is {master.data.shape[1]}x"
                                   f"{master.data.shape[0]}, the frame {shape[1]}x{shape[0]}")
    # in place where it can be (a 4k² frame is 134 MB per float64 plane): the same
    # operations in the same order as the formulas in the module docstring
    collected = frame.data.astype(np.float64)  # R, then R − B
    t_bias = float(bias.header.get("EXPTIME", 0.0)) if bias is not None else 0.0
    if bias is not None:
        collected -= bias.data
    # random (this frame's) and calibration (the masters', common to all frames) variance
    var = np.clip(collected, 0, None)
    var += frame.read_noise_e**2 + frame.overscan_noise_e**2
    var_cal = np.square(bias.error) if bias is not None else 0.0
    dark_e, dark_err = _dark_term(dark, frame.exptime_s, t_bias)
    if dark is not None:
        var_cal = var_cal + np.square(dark_err)
        collected -= dark_e
    del dark_e, dark_err
    signal = collected  # R − B − D·(t − t_B)
    mask = np.zeros(shape, np.uint16)
    if bad_pixel_mask is not None:
        mask |= bad_pixel_mask
    n_hot_corrected = 0
    if dark is None and hot_dark and "HOTDARK" in hot_dark:
        signal, var_cal, mask, n_hot_corrected = _series_dark(
            signal=signal, var_cal=var_cal, mask=mask, hot_dark=hot_dark,
            exptime_s=frame.exptime_s, where=path)
    if flat is not None:
        floor = float(flat_floor)
        low_bit = (flat.mask & np.uint16(MaskBit.LOW_FLAT)) != 0
        usable = np.isfinite(flat.data) & (flat.data >= floor) & (flat.data > 0)
        f = np.where(usable, flat.data, 1.0)  # never divide by 0; those pixels are BAD
        sf = np.where(usable, flat.error, 0.0)
        sci = signal
        sci /= f
        f2 = f**2
        var /= f2
        var_cal = (var_cal / f2).astype(np.float64)  # + a float64 term, as written
        rel = (sf / f) ** 2
        del f, sf, f2
        var_cal += sci**2 * rel
        del rel
        mask[~usable] |= np.uint16(MaskBit.LOW_FLAT | MaskBit.BAD)
        mask[low_bit & usable] |= np.uint16(MaskBit.LOW_FLAT)
    else:
        sci = signal
    if illumination is not None:
        sci /= illumination.data
        i2 = np.square(illumination.data)
        var /= i2
        var_cal = var_cal / i2
        del i2
    var += var_cal  # ERR is the total; ERR_CAL its masters' part
    mask[frame.saturated] |= np.uint16(MaskBit.SATURATED)
    mask[frame.no_data] |= np.uint16(MaskBit.NO_DATA)
    nonfinite = frame.nonfinite | ~np.isfinite(sci) | ~np.isfinite(var)
    mask[nonfinite] |= np.uint16(MaskBit.NONFINITE)
    names = master_names or {}
    header = provenance_header(step="calibrate_science", inputs=[path], params=params or {},
                               base=frame.header)
    for key, kind, used, comment in (("BIASFILE", "bias", bias, "master bias"),
                                     ("DARKFILE", "dark", dark, "master dark"),
                                     ("FLATFILE", "flat", flat, "master flat"),
                                     ("BPMFILE", "bpm", True, "bad-pixel mask")):
        header[key] = _file_card(names.get(kind, "none") if used is not None else "none",
                                 comment)
    header["NHOTPIX"] = (int((mask & np.uint16(MaskBit.HOT) != 0).sum()), "pixels flagged HOT")
    header["HOTCORR"] = (n_hot_corrected, "HOT pixels corrected with the series' dark")
    header["ILLUMFIL"] = _file_card(names.get("illumination", "none")
                                    if illumination is not None else "none",
                                    "illumination correction")
    header["GAINORIG"] = (frame.gains[0], "[e-/ADU] gain applied (first amplifier)")
    header["GAIN"] = (1.0, "[e-/e-] data are in electrons")
    header["RDNOISE"] = (frame.read_noise_e, "[e-] read noise")
    header["OVSCNOIS"] = (round(frame.overscan_noise_e, 3),
                          "[e-] 1 sigma of the overscan level of a row")
    header["SATURATE"] = (round(frame.saturation_e, 1), "[e-] saturation after overscan")
    header["BUNIT"] = "electron"
    for i, note in enumerate(frame.notes, start=1):
        header[f"CCDFNT{i:02d}"] = note[:68]
    error = np.sqrt(var, out=var).astype(np.float32)
    del var
    err_cal = (np.sqrt(var_cal, dtype=np.float64).astype(np.float32) if np.ndim(var_cal)
               else np.full(shape, np.sqrt(var_cal), np.float32))
    return Product(data=sci.astype(np.float32), error=error, mask=mask, header=header,
                   extras={"ERR_CAL": err_cal})


def _file_card(path: str, comment: str) -> str | tuple[str, str]:
    """A file keyword's value with its comment when both fit one card; a longer path
    (results/masters/<night>/<setup>/…) is kept whole on CONTINUE cards without the
    comment, instead of astropy truncating the comment with a warning on every frame."""
    return (path, comment) if len(path) + len(comment) <= 63 else path


def _series_dark(*, signal, var_cal, mask, hot_dark, exptime_s, where):
    """Subtract the series' dark charge at HOT pixels that have a rate; the others BAD."""
    rate = np.asarray(hot_dark["HOTDARK"], np.float64)
    if rate.shape != signal.shape:
        raise CalibrationError(f"{where}: the hot-pixel rates are {rate.shape[1]}x{rate.shape[0]}"
                               f", the frame {signal.shape[1]}x{signal.shape[0]}")
    rate_err = np.asarray(hot_dark.get("HOTDARK_ERR", np.zeros_like(rate)), np.float64)
    hot = (mask & np.uint16(MaskBit.HOT)) != 0
    rated = hot & np.isfinite(rate) & np.isfinite(rate_err)
    t = float(exptime_s) if np.isfinite(exptime_s) else 0.0
    signal = np.where(rated, signal - np.nan_to_num(rate) * t, signal)
    var_cal = var_cal + np.where(rated, np.square(np.nan_to_num(rate_err) * t), 0.0)
    mask = mask.copy()
    mask[hot & ~rated] |= np.uint16(MaskBit.BAD)
    return signal, var_cal, mask, int(rated.sum())


def _box_levels(image: np.ndarray, mask: np.ndarray, box: int):
    """Sigma-clipped (2.5σ) median per box (stars rejected), with box-centre coordinates."""
    ny, nx = image.shape
    levels, xs, ys = [], [], []
    for y0 in range(0, ny - box + 1, box):
        for x0 in range(0, nx - box + 1, box):
            values = image[y0: y0 + box, x0: x0 + box][~mask[y0: y0 + box, x0: x0 + box]]
            if values.size < box * box // 2:
                levels.append(np.nan)
            else:
                from astropy.stats import sigma_clipped_stats

                levels.append(sigma_clipped_stats(values, sigma=2.5, maxiters=10)[1])
            xs.append(x0 + (box - 1) / 2)
            ys.append(y0 + (box - 1) / 2)
    return np.array(levels), np.array(xs), np.array(ys)


def make_illumination_model(*, paths: Sequence[str | Path], detector: Mapping,
                            bias: Product | None, dark: Product | None, flat: Product | None,
                            order: int = 2, box_px: int = 32, min_frames: int = 3) -> Product:
    """Smooth illumination correction from night-sky science frames (IRAF ``mkillumcor``).

    Each frame is calibrated with the masters, reduced to star-rejected box
    medians, normalised by its own median; the box grid is the median over
    frames (sources of one field drop out), fitted by a 2-D Legendre
    polynomial of ``order`` in x and y, evaluated on the full frame and
    normalised to median 1.  Dividing calibrated frames by it removes the
    large-scale difference between flat-field and night-sky illumination.

    Only valid when the sky of the frames has no common gradient of its own
    (frames of several fields or hours); it is therefore opt-in per profile.
    """
    _check_count(paths, min_frames, "illumination")
    if order < 0 or box_px < 4:
        raise ValueError(f"order must be >= 0 and box_px >= 4, got {order}, {box_px}")
    grids = []
    for path in paths:
        cal = calibrate_science(path=path, detector=detector, bias=bias, dark=dark, flat=flat,
                                bad_pixel_mask=None)
        levels, xs, ys = _box_levels(cal.data, cal.mask != 0, box_px)
        grids.append(levels / np.nanmedian(levels))
    grid = np.nanmedian(np.array(grids), axis=0)
    ny, nx = cal.data.shape
    good = np.isfinite(grid)
    if good.sum() <= (order + 1) ** 2:
        raise CalibrationError(f"illumination model: only {good.sum()} usable boxes for "
                               f"order {order}")
    u, v = 2 * xs / (nx - 1) - 1, 2 * ys / (ny - 1) - 1
    design = np.polynomial.legendre.legvander2d(v[good], u[good], [order, order])
    coef = np.zeros(design.shape[1])
    keep = np.ones(good.sum(), bool)
    for _ in range(5):  # reject boxes spoiled by extended sources
        coef, *_ = np.linalg.lstsq(design[keep], grid[good][keep], rcond=None)
        resid = grid[good] - design @ coef
        new = np.abs(resid) < 3 * np.std(resid[keep]) + 1e-12
        if np.array_equal(new, keep):
            break
        keep = new
    model = np.polynomial.legendre.legval2d(
        np.linspace(-1, 1, ny)[:, None] * np.ones((1, nx)),
        np.ones((ny, 1)) * np.linspace(-1, 1, nx)[None, :],
        coef.reshape(order + 1, order + 1))
    model /= np.median(model)
    rms = float(np.std(resid[keep]))
    header = provenance_header(step="illumination_model", inputs=paths,
                               params={"order": order, "box_px": box_px})
    header["IMAGETYP"] = "ILLUMINATION"
    header["ILLUMRMS"] = (round(rms, 5), "rms of box medians about the fit")
    header["ILLUMPTP"] = (round(float(model.max() - model.min()), 5), "peak-to-peak of model")
    log.info("illumination model from %d frames: peak-to-peak %.4f, fit rms %.4f",
             len(paths), model.max() - model.min(), rms)
    return Product(data=model.astype(np.float32), error=np.zeros_like(model, np.float32),
                   mask=np.zeros(model.shape, np.uint16), header=header)


def trimmed_shape(path: str | Path, *, detector: Mapping) -> tuple[int, int]:
    """Shape ``(ny, nx)`` of a raw frame after overscan removal, trimming and mosaicking."""
    return read_raw_frame(path, detector=detector).data.shape
