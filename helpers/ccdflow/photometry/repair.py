"""Repair, don't discard: which pixels of a frame photometry fills (no usable value)
and which it leaves out (saturated), and the frame it sums, with the filled pixels
replaced by the sky plus the PSF model of the sources near them and their variances
(:func:`repaired_frame`).  See :mod:`ccdflow.photometry.apertures` for the sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..masks import MaskBit
from .flags import FILL_BITS
from .noise import RandomVariance

__all__ = ["RepairedFrame", "pixel_classes", "repaired_frame"]


def _local_mean_fill(values: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Each fill pixel replaced by the mean of its unmasked 5×5 neighbours (0 if none)."""
    from scipy import ndimage

    good = (~fill).astype(float)
    kernel = np.ones((5, 5))
    total = ndimage.convolve(np.where(fill, 0.0, values), kernel, mode="constant")
    count = ndimage.convolve(good, kernel, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, 0.0)
    return np.where(fill, mean, values)


def pixel_classes(bits: np.ndarray, data: np.ndarray, *,
                  dark_subtracted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pixels to fill (no usable value) and saturated pixels (never filled).

    A saturated pixel that the bad-pixel mask calls BAD or HOT is a detector defect (a
    hot pixel that fills its well in every exposure, a bad column), not a star's core
    run over: it is filled like any bad pixel.  A star saturating on it saturates its
    neighbours too, which keep the row SATURATED; a star's single brightest pixel on a
    defect is filled from the PSF and counted in ``repaired_fraction``.  So is a
    saturated pixel the cosmic-ray stage flagged COSMIC: the cosmic ray filled its well
    (the cores of saturated stars are never flagged, see
    :func:`ccdflow.cosmics.saturated_star_cores`).
    """
    if bits.dtype == bool:  # a plain bad-pixel mask: every bad pixel is filled
        fill = bits.copy()
        saturated = np.zeros(bits.shape, bool)
    else:
        b = bits if bits.dtype in (np.uint16, np.uint32) else bits.astype(np.uint32)
        fill_bits = int(FILL_BITS) | (0 if dark_subtracted else int(MaskBit.HOT))
        defect = (b & int(MaskBit.BAD | MaskBit.HOT | MaskBit.COSMIC)) != 0
        saturated = ((b & int(MaskBit.SATURATED)) != 0) & ~defect
        fill = (((b & fill_bits) != 0) | ((b & int(MaskBit.SATURATED)) != 0)) & ~saturated
    fill |= ~np.isfinite(data) & ~saturated
    return fill, saturated


@dataclass
class RepairedFrame:
    """The frame photometry sums: repaired values, their variances, what is left out."""

    work: np.ndarray  #: the frame, filled pixels repaired, excluded ones 0
    work_var: np.ndarray  #: random variance per pixel
    cal_var: np.ndarray  #: ERR_CAL² (0 where filled or excluded)
    ones: np.ndarray  #: 1 where a pixel counts, 0 where excluded
    excluded: np.ndarray  #: pixels that count zero (saturated; every bad one without repair)
    saturated: np.ndarray


def repaired_frame(*, data, rand_var: RandomVariance, err_cal, fill, saturated, repair,
                   model_at, typical_noise, sky_pixels,
                   model_rel_error: float = 0.0) -> RepairedFrame:
    """Fill pixels without a usable value from the sky (``sky_pixels``: the map, the
    annuli's median level, or else the mean of the neighbours) plus the sources' model
    (``model_at``: the scene image at ``np.nonzero(fill)``, None without a model), or
    with the mean of their neighbours without a model; saturated pixels count zero.

    The filled values are computed in float64 at the filled pixels only, and each plane
    is written straight into float32 (:func:`_summed`): a 4k² frame is 134 MB per
    float64 plane."""
    bad_any = fill | saturated
    repairing = repair and fill.any()
    excluded = saturated if repairing else bad_any
    # the values at the filled pixels first (float64)
    if repairing and model_at is not None:
        at = np.nonzero(fill)
        if sky_pixels is None:
            sky_pixels = _local_mean_fill(np.where(bad_any, 0.0, data), bad_any)
        sky_at = sky_pixels[at] if np.ndim(sky_pixels) else sky_pixels
        filled = sky_at + model_at
        # sky and photon noise of the model, and the PSF model's own error
        filled_var = (typical_noise**2 + np.clip(model_at, 0, None)
                      + (model_rel_error * model_at) ** 2)
    elif repairing:
        at = fill
        filled = _local_mean_fill(np.where(bad_any, 0.0, data), bad_any)[fill]
        filled_var = _local_mean_fill(np.where(bad_any, 0.0, rand_var.plane()), bad_any)[fill]
    with np.errstate(over="ignore"):  # beyond float32's range: ±inf, as SEP reads it
        work = data.astype(np.float32)
        if repairing:
            work[at] = filled
        work_var = rand_var.into(np.empty(data.shape, np.float32))
        if repairing:
            work_var[at] = filled_var
        # ERR_CAL² in float32 is the float32 of the exact float64 square (tested)
        cal_var = (np.square(err_cal) if err_cal.dtype == np.float32
                   else np.square(err_cal, dtype=np.float64).astype(np.float32))
    cal_var[excluded | fill] = 0.0
    return RepairedFrame(work=_summed(work, excluded), work_var=_summed(work_var, excluded),
                         cal_var=cal_var,
                         ones=np.where(excluded, np.float32(0.0), np.float32(1.0)),
                         excluded=excluded, saturated=saturated)


def _summed(plane: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """``plane`` (float32, changed and returned) as the aperture sums read it: NaN 0,
    excluded pixels 0.

    SEP's ``sum_circle`` reads every pixel as float32 whatever the array's type
    (tested), so a float32 plane gives the sums of the float64 one at half its memory.
    The plane is the float32 of the float64 values, which is what casting a float64
    plane gives: a value beyond float32's range (or ±inf) is ±inf, as before."""
    np.nan_to_num(plane, copy=False, nan=0.0, posinf=np.inf, neginf=-np.inf)
    plane[excluded] = 0.0
    return plane

