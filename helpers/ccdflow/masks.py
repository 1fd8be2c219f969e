"""Bit flags of the MASK planes (uint16).  A set bit means the pixel is bad for that reason.

Masks combine with OR; no pixel value is ever used as a sentinel.
"""

from __future__ import annotations

from enum import IntFlag

import numpy as np

__all__ = ["MaskBit", "describe_bits", "header_cards", "saturated_only"]


class MaskBit(IntFlag):
    """Meaning of each bit of a MASK plane."""

    BAD = 1  #: bad pixel or column (profile list, flat outlier)
    SATURATED = 2  #: raw value at or above the saturation level
    HOT = 4  #: dark current above the hot-pixel threshold
    LOW_FLAT = 8  #: flat response below the low threshold (flat not applied)
    NONFINITE = 16  #: NaN or infinite value in the raw data or a master
    COSMIC = 32  #: cosmic ray (set by the cosmic-ray stage)
    SOURCE = 64  #: inside a source footprint (set by the background stage)
    NO_DATA = 128  #: no detector data (outside every amplifier section)
    BADCAL = 256  #: too few frames survived rejection in a master at this pixel
    STREAK = 512  #: satellite, aircraft or meteor trail (set with the cosmic rays)


def describe_bits() -> dict[str, int]:
    """``{name: value}`` for documentation and headers."""
    return {bit.name: int(bit.value) for bit in MaskBit}


def describe_mask(mask: np.ndarray) -> str:
    """The bits set in ``mask`` with the percentage of pixels each covers, most first
    (``'SATURATED 100.0 %, HOT 0.2 %'``); ``'no bit set'`` when none is."""
    values = np.asarray(mask)
    shares = [(float(np.mean((values & int(bit)) != 0)), bit.name) for bit in MaskBit]
    parts = [f"{name} {100 * share:.1f} %" for share, name in sorted(shares, reverse=True)
             if share > 0]
    return ", ".join(parts) or "no bit set"


def header_cards() -> list[tuple[str, int, str]]:
    """FITS cards documenting the bits (``MASKBnn = value / NAME``)."""
    return [(f"MASKB{i:02d}", int(bit.value), bit.name) for i, bit in enumerate(MaskBit)]


def any_of(mask: np.ndarray, bits: int) -> np.ndarray:
    """Boolean array: pixels with any of ``bits`` set."""
    return (np.asarray(mask) & int(bits)) != 0


def saturated_only(mask: np.ndarray) -> np.ndarray:
    """Boolean array: pixels whose only bit is SATURATED.  Their (clipped) values are a
    star's light, or a cosmic ray's: unlike a hot pixel or a bad column that also
    saturates (HOT or BAD set too), they belong to their source's segment and are
    examined for cosmic rays."""
    return np.asarray(mask) == int(MaskBit.SATURATED)
