"""Calibrated science frames: electrons, their error and a bit mask.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..ccd import CalibrationError, read_raw_frame
from ..masks import MaskBit
from ..products import Product, provenance_header
from .masters import _dark_term

log = logging.getLogger(__name__)

#: pixels per row strip of the calibration (2 MB per float64 plane).  Small enough that
#: glibc's heap serves the strip's temporaries again and again instead of fresh
#: mmapped pages (each a page fault): a 4k² frame calibrates in 0.49 s with strips of
#: 2**18 pixels, 0.83 s with 2**21 (stop 21); the results do not depend on it (tested)
STRIP_PIXELS = 1 << 18


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
    bias, dark, flat : Product or ProductFile or None
        Masters; None skips that step (recorded in the header).  A
        :class:`~ccdflow.products.ProductFile` is read in row strips.
    bad_pixel_mask : ndarray of uint16, optional
        From :func:`make_bad_pixel_mask`; ORed into MASK.
    illumination : Product or ProductFile, optional
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
    _check_not_constant(path, frame)
    shape = frame.data.shape
    for name, master in (("bias", bias), ("dark", dark), ("flat", flat),
                         ("illumination", illumination)):
        if master is not None and tuple(master.shape) != shape:
            raise CalibrationError(f"{path}: master {name} is {master.shape[1]}x"
                                   f"{master.shape[0]}, the frame {shape[1]}x{shape[0]}")
    if dark is None and hot_dark and "HOTDARK" in hot_dark:
        rate = np.asarray(hot_dark["HOTDARK"])
        if rate.shape != shape:
            raise CalibrationError(f"{path}: the hot-pixel rates are {rate.shape[1]}x"
                                   f"{rate.shape[0]}, the frame {shape[1]}x{shape[0]}")
    else:
        hot_dark = None
    sci = np.empty(shape, np.float32)
    error = np.empty(shape, np.float32)
    err_cal = np.empty(shape, np.float32)
    mask = np.zeros(shape, np.uint16)
    if bad_pixel_mask is not None:
        mask |= bad_pixel_mask
    # row strips of <= STRIP_PIXELS pixels: a 4k² frame's temporaries stay a few tens
    # of MB, and a master read from disk (ProductFile) is never whole
    step = max(1, STRIP_PIXELS // max(shape[1], 1))
    n_hot_corrected = 0
    for y0 in range(0, shape[0], step):
        rows = slice(y0, min(y0 + step, shape[0]))
        n_hot_corrected += _calibrate_rows(
            raw=frame.data[rows], frame=frame,
            masters={k: (m.rows(rows.start, rows.stop) if m is not None else None)
                     for k, m in (("bias", bias), ("dark", dark), ("flat", flat),
                                  ("illumination", illumination))},
            hot_dark={k: np.asarray(v)[rows] for k, v in hot_dark.items()} if hot_dark else None,
            flat_floor=flat_floor, out=(sci[rows], error[rows], err_cal[rows], mask[rows]))
    mask[frame.saturated] |= np.uint16(MaskBit.SATURATED)
    mask[frame.no_data] |= np.uint16(MaskBit.NO_DATA)
    mask[frame.nonfinite] |= np.uint16(MaskBit.NONFINITE)
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
    header["ZEROLVL"] = (_zero_level_source(path, frame, bias),
                         "zero level: overscan, constant, bias or none")
    header["BUNIT"] = "electron"
    for i, note in enumerate(frame.notes, start=1):
        header[f"CCDFNT{i:02d}"] = note[:68]
    return Product(data=sci, error=error, mask=mask, header=header,
                   extras={"ERR_CAL": err_cal})


_NO_ZERO_WARNED: list[bool] = []


def _zero_level_source(path, frame, bias) -> str:
    """How the camera's zero level was removed; with none (no overscan, no
    ``detector.zero_level_adu``, no master bias) say once per process what it costs."""
    if bias is not None:
        return "bias" if frame.zero_level == "none" else f"{frame.zero_level}+bias"
    if frame.zero_level != "none":
        return frame.zero_level
    if not _NO_ZERO_WARNED:
        _NO_ZERO_WARNED.append(True)
        log.warning("%s: no zero level subtracted (no overscan, no master bias, no "
                    "detector.zero_level_adu): the camera's pedestal (%.0f e- median here, "
                    "with the sky) stays in every pixel. Photometry removes it with the "
                    "sky, but ERR counts it as photons, so errors are too large where the "
                    "sky is faint; give the profile the camera's offset as "
                    "detector.zero_level_adu, or take bias frames", path,
                    float(np.nanmedian(frame.data)))
    return "none"


def _check_not_constant(path, frame) -> None:
    """A frame saturated everywhere (dome light, a shutter open in daylight) or whose
    image area holds one value (no signal and no read noise: a failed readout, a stuck
    ADC) has no sky.  It is named and left out instead of being calibrated into a
    masked or flat, noiseless "sky"."""
    if frame.saturated.all():
        raise CalibrationError(f"{path}: every pixel of the image area is saturated (raw "
                               "at or above the saturation level): no sky; frame left out")
    # fmin/fmax skip NaN (read_raw_frame has refused an all-NaN frame) without a copy
    low, high = np.fmin.reduce(frame.data, axis=None), np.fmax.reduce(frame.data, axis=None)
    if low == high:
        raise CalibrationError(
            f"{path}: every pixel of the image area is {float(low):g} e- after the "
            "overscan: no signal and no read noise (a failed readout?); frame left out")


def _calibrate_rows(*, raw, frame, masters, hot_dark, flat_floor, out) -> int:
    """The module docstring's formulas on one strip of rows, written into ``out``
    (SCI, ERR, ERR_CAL and MASK views of the strip); returns the HOT pixels corrected
    with the series' dark.  The operations and their order are those of a whole frame."""
    bias, dark, flat, illumination = (masters[k] for k in ("bias", "dark", "flat",
                                                           "illumination"))
    sci_out, err_out, err_cal_out, mask = out
    collected = raw.astype(np.float64)  # R, then R − B
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
    n_hot_corrected = 0
    if hot_dark is not None:
        signal, var_cal, n_hot_corrected = _series_dark(
            signal=signal, var_cal=var_cal, mask=mask, hot_dark=hot_dark,
            exptime_s=frame.exptime_s)
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
    mask[~np.isfinite(sci) | ~np.isfinite(var)] |= np.uint16(MaskBit.NONFINITE)
    sci_out[...] = sci
    err_out[...] = np.sqrt(var, out=var)
    err_cal_out[...] = (np.sqrt(var_cal, dtype=np.float64) if np.ndim(var_cal)
                        else np.sqrt(var_cal))
    return n_hot_corrected


def _file_card(path: str, comment: str) -> str | tuple[str, str]:
    """A file keyword's value with its comment when both fit one card; a longer path
    (results/masters/<night>/<setup>/…) is kept whole on CONTINUE cards without the
    comment, instead of astropy truncating the comment with a warning on every frame."""
    return (path, comment) if len(path) + len(comment) <= 63 else path


def _series_dark(*, signal, var_cal, mask, hot_dark, exptime_s):
    """Subtract the series' dark charge at HOT pixels that have a rate; the others become
    BAD in ``mask`` (a strip's own, changed in place).  Shapes are checked by
    :func:`calibrate_science`."""
    rate = np.asarray(hot_dark["HOTDARK"], np.float64)
    rate_err = np.asarray(hot_dark.get("HOTDARK_ERR", np.zeros_like(rate)), np.float64)
    hot = (mask & np.uint16(MaskBit.HOT)) != 0
    rated = hot & np.isfinite(rate) & np.isfinite(rate_err)
    t = float(exptime_s) if np.isfinite(exptime_s) else 0.0
    signal = np.where(rated, signal - np.nan_to_num(rate) * t, signal)
    var_cal = var_cal + np.where(rated, np.square(np.nan_to_num(rate_err) * t), 0.0)
    mask[hot & ~rated] |= np.uint16(MaskBit.BAD)
    return signal, var_cal, int(rated.sum())


def trimmed_shape(path: str | Path, *, detector: Mapping) -> tuple[int, int]:
    """Shape ``(ny, nx)`` of a raw frame after overscan removal, trimming and mosaicking."""
    return read_raw_frame(path, detector=detector).data.shape


def trimmed_geometry(path: str | Path, *, detector: Mapping) -> tuple[tuple[int, int], int]:
    """:func:`trimmed_shape` and the superpixel factor (2 for a colour mosaic summed into
    2×2 superpixels, else 1)."""
    frame = read_raw_frame(path, detector=detector)
    return frame.data.shape, frame.superpixel
