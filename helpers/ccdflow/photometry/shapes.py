"""Which detections are stars: DAOFIND sharpness and roundness (Stetson 1987) at the
detections, and the reasons a detection is not a star (a spike: hot pixel or cosmic-ray
residue; flat; elongated: a track or bleed trail)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["SHAPE_KERNEL_FWHM", "SHAPE_LIMITS", "psf_roundness", "shape_rejections",
           "star_shapes"]


#: undersampled stars apart from single-pixel spikes: on simulated frames
#: (tests/test_sources_times.py) stars of FWHM 1.5-4 px have sharpness 0.4-0.87
#: and hot pixels 1.01 and above.
SHAPE_KERNEL_FWHM = 1.5

#: default acceptance of the shape test: DAOFIND sharpness and |roundness|
SHAPE_LIMITS = {"sharpness_min": 0.05, "sharpness_max": 0.95, "roundness_max": 1.0,
                "peak_fraction_max": 0.7}


def star_shapes(*, data: np.ndarray, x: Sequence[float], y: Sequence[float],
                mask: np.ndarray | None = None,
                kernel_fwhm: float = SHAPE_KERNEL_FWHM) -> pd.DataFrame:
    """DAOFIND sharpness and roundness (Stetson 1987) at given positions.

    The numbers of photutils' :class:`~photutils.detection.DAOStarFinder` run at
    the positions (``xycoords``) on background-subtracted ``data``
    (:func:`ccdflow.photometry.daofind.daofind_shapes`, equal to it to the last
    bit in tests/test_sources_times.py, without importing photutils or
    convolving the whole frame).  ``sharpness`` is (peak − mean of the kernel
    footprint) over the kernel-convolved peak: ~1 or more for a single hot
    pixel, lower for a star the wider it is; ``roundness1`` (symmetry) and
    ``roundness2`` (marginal Gaussian fits) are 0 for a round source and ±1 or
    beyond for a line (a cosmic-ray track, a bleed trail).  Masked pixels count
    as 0 (``mask``), as the caller's background-subtracted frame has them.

    Returns
    -------
    DataFrame
        ``sharpness, roundness1, roundness2`` per input position (NaN where a
        marginal fit has no positive amplitude).
    """
    from .daofind import daofind_shapes

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    out = pd.DataFrame(np.nan, index=np.arange(len(x)),
                       columns=["sharpness", "roundness1", "roundness2"])
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return out
    image = np.asarray(data, float)
    if mask is not None:
        image = np.where(np.asarray(mask) != 0, 0.0, image)
    sharp, round1, round2 = daofind_shapes(data=image, x=x[finite], y=y[finite],
                                           fwhm=kernel_fwhm)
    out.loc[finite, "sharpness"] = sharp
    out.loc[finite, "roundness1"] = round1
    out.loc[finite, "roundness2"] = round2
    return out


#: fewest star-like detections (neither spikes nor flat) whose shared elongation can
#: stand for the frame's PSF (:func:`psf_roundness`)
MIN_COHERENT_SOURCES = 5
#: ... and how far from round (in units of ``roundness_max``) their median must be: a
#: trail gives |roundness| 1.3-1.5 in one of the two, arcs of defocused rings cut by the
#: deblender, elongated in every direction, medians of 0.1-0.5
COHERENT_ROUNDNESS = 0.75


def psf_roundness(shapes: pd.DataFrame, *,
                  sharpness_min: float = SHAPE_LIMITS["sharpness_min"],
                  sharpness_max: float = SHAPE_LIMITS["sharpness_max"],
                  roundness_max: float = SHAPE_LIMITS["roundness_max"],
                  min_sources: int = MIN_COHERENT_SOURCES, **_) -> tuple[float, float]:
    """The roundness (``roundness1``, ``roundness2``) of the frame's PSF, against which
    a detection is judged elongated: (0, 0) for round stars, or the median of the
    detections that are neither spikes nor flat when at least ``min_sources`` of them
    exist, more than half lie beyond ``roundness_max`` and their median lies beyond
    ``COHERENT_ROUNDNESS`` × ``roundness_max`` (one shared shape): every star of a frame is
    elongated the same way when the wind shook the telescope or the tracking ran
    (trailed stars, an astigmatic or tilted camera), and a test against round would
    leave no star at all.  A cosmic-ray track or a bleed trail still stands out of
    such a population unless it runs along the stars' own elongation; hot pixels are
    spikes (sharpness) whatever the shift."""
    sharp = shapes["sharpness"].to_numpy(float)
    r1, r2 = (shapes[c].to_numpy(float) for c in ("roundness1", "roundness2"))
    with np.errstate(invalid="ignore"):
        star_like = ((sharp >= sharpness_min) & (sharp <= sharpness_max)
                     & np.isfinite(r1) & np.isfinite(r2))
        if star_like.sum() < min_sources:
            return 0.0, 0.0
        beyond = np.maximum(np.abs(r1[star_like]), np.abs(r2[star_like])) > roundness_max
    if beyond.mean() <= 0.5:
        return 0.0, 0.0
    centre = float(np.median(r1[star_like])), float(np.median(r2[star_like]))
    if max(abs(centre[0]), abs(centre[1])) < COHERENT_ROUNDNESS * roundness_max:
        return 0.0, 0.0  # elongated every which way (a donut's arcs): no shared shape
    return centre


def shape_rejections(shapes: pd.DataFrame, *, exempt: np.ndarray | None = None,
                     sharpness_min: float = SHAPE_LIMITS["sharpness_min"],
                     sharpness_max: float = SHAPE_LIMITS["sharpness_max"],
                     roundness_max: float = SHAPE_LIMITS["roundness_max"],
                     peak_fraction_max: float = SHAPE_LIMITS["peak_fraction_max"],
                     roundness_centre: tuple[float, float] = (0.0, 0.0),
                     ) -> np.ndarray:
    """Why each source is not a star: ``"sharp"`` (a spike: hot pixel, cosmic-ray
    residue: sharpness above ``sharpness_max``, or more than ``peak_fraction_max``
    of the segment's flux in its brightest pixel, which a star of FWHM ≥ 1.5 px
    never has: ≤ 0.39 of its total, ~0.5 of an isophotal segment), ``"flat"``
    (sharpness below ``sharpness_min``), ``"elongated"`` (|roundness1| or
    |roundness2| above ``roundness_max`` from ``roundness_centre``: the frame's
    PSF, :func:`psf_roundness`), or ``""``.

    ``shapes`` holds ``sharpness, roundness1, roundness2`` (:func:`star_shapes`)
    and, for the peak test, ``peak`` and ``flux``.  NaN shapes (a neighbour
    within the kernel, the edge) pass those tests; ``exempt`` sources (masked
    or saturated pixels, whose cores are zeroed) pass all.
    """
    sharp = shapes["sharpness"].to_numpy(float)
    round1 = np.abs(shapes["roundness1"].to_numpy(float) - roundness_centre[0])
    round2 = np.abs(shapes["roundness2"].to_numpy(float) - roundness_centre[1])
    reason = np.full(len(shapes), "", dtype=object)
    with np.errstate(invalid="ignore"):
        reason[np.maximum(round1, round2) > roundness_max] = "elongated"
        reason[sharp < sharpness_min] = "flat"
        reason[sharp > sharpness_max] = "sharp"
        if "peak" in shapes and "flux" in shapes:
            peak, flux = shapes["peak"].to_numpy(float), shapes["flux"].to_numpy(float)
            reason[peak > peak_fraction_max * flux] = "sharp"
    if exempt is not None:
        reason[np.asarray(exempt, bool)] = ""
    return reason
