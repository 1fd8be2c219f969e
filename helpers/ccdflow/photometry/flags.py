"""Flags of a photometry row and the mask bits photometry acts on.


=====  ==================  ===================================================
1      MASKED              more of the aperture's light repaired than
                           ``max_repaired_fraction`` (unusable)
2      SATURATED           saturated pixel in the aperture (unusable)
4      NEAR_EDGE           aperture or annulus crosses the frame edge
8      BLENDED             another source's centre within the aperture
16     OFF_FRAME           centre outside the frame (row kept, flux NaN)
32     FEW_SKY_PIXELS      fewer than ``min_sky_pixels`` usable annulus pixels
64     NOT_ALIGNED         frame could not be matched to the reference (no or
                           too few stars): positions from the WCS or unshifted
128    NO_POSITION         a target given in RA/Dec on a series without a WCS:
                           row kept, flux NaN
256    NO_STAR             a pixel target with no detection within
                           ``snap_radius_px``: measured there (informational)
512    REPAIRED            masked pixels in the aperture were filled
                           (informational, see ``repaired_fraction``)
1024   CONTAMINATED        neighbours add more than ``max_contamination`` of the
                           star's light (usable; never a comparison star)
2048   NO_PSF              an ``optimal`` row of a frame without a PSF model (no
                           bright isolated star: clouds): flux NaN (unusable)
=====  ==================  ===================================================
"""

from __future__ import annotations

from enum import IntFlag

from ..masks import MaskBit

__all__ = ["BAD_FLAGS", "COMPARISON_BAD_FLAGS", "CORRECTED_BITS", "FILL_BITS", "PhotFlag",
           "PhotometryError"]


class PhotometryError(ValueError):
    """Photometry cannot run; the message says why."""


class PhotFlag(IntFlag):
    """Flags of a photometry row."""

    MASKED = 1
    SATURATED = 2
    NEAR_EDGE = 4
    BLENDED = 8
    OFF_FRAME = 16
    FEW_SKY_PIXELS = 32
    NOT_ALIGNED = 64
    NO_POSITION = 128
    NO_STAR = 256  # informational: a pixel target with no detection near it (forced photometry)
    REPAIRED = 512  # informational: masked pixels filled from the PSF model
    CONTAMINATED = 1024  # usable, but not as a comparison star
    NO_PSF = 2048  # optimal photometry without a PSF model on the frame: row kept, flux NaN


#: usable-row test: any of these flags makes a measurement unfit for light curves
BAD_FLAGS = (PhotFlag.MASKED | PhotFlag.SATURATED | PhotFlag.OFF_FRAME | PhotFlag.NOT_ALIGNED
             | PhotFlag.FEW_SKY_PIXELS | PhotFlag.NO_POSITION | PhotFlag.NO_PSF)

#: a comparison star's row must also be free of neighbour light
COMPARISON_BAD_FLAGS = BAD_FLAGS | PhotFlag.CONTAMINATED

#: mask bits with no usable pixel value: filled from the model
FILL_BITS = (MaskBit.BAD | MaskBit.NONFINITE | MaskBit.COSMIC | MaskBit.NO_DATA
             | MaskBit.BADCAL | MaskBit.STREAK)

#: mask bits the calibration corrected (value usable, larger ERR); HOT only where a
#: dark was subtracted (otherwise it is filled)
CORRECTED_BITS = MaskBit.LOW_FLAT | MaskBit.HOT
