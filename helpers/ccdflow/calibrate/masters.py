"""Master bias, dark, flat and arc: combined from raw frames in electrons (the units
and the bias exposure convention are in :mod:`ccdflow.calibrate.science`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..ccd import CalibrationError, RawFrame, clipped_stats, read_raw_frame
from ..combine import combine_frames
from ..masks import MaskBit
from ..products import Product, provenance_header

log = logging.getLogger(__name__)

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
    # astropy's sigma_clipped_stats(region, mask=bad, sigma=3) median (tested), faster
    return clipped_stats(region[~bad], sigma=3.0)[1]


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
        from ..longslit.flat import lamp_spectrum

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
    from ..localmedian import local_median_outliers  # scipy's 5×5 median_filter's answer

    finite = np.isfinite(flat)
    outlier = finite & local_median_outliers(np.where(finite, flat, 1.0), size=5,
                                             fraction=outlier_fraction)
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
