"""The data units of a raw FITS file: which HDUs hold an image, how many planes, one
merged header, and their pixels (a file cut short names itself)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..errors import CalibrationError

#: FITS keywords describing a data unit, not the observation
STRUCTURAL_KEYWORDS = {
    "SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "XTENSION", "PCOUNT",
    "GCOUNT", "BZERO", "BSCALE", "EXTNAME", "EXTVER", "CHECKSUM", "DATASUM", "", "COMMENT",
    "HISTORY"}


def image_hdus(hdul: fits.HDUList) -> list:
    """HDUs holding an image of two or more non-empty axes (the amplifiers)."""
    out = []
    for hdu in hdul:
        naxis = int(hdu.header.get("NAXIS", 0))
        if hdu.is_image and naxis >= 2 and all(
                int(hdu.header.get(f"NAXIS{i}", 0)) > 0 for i in range(1, naxis + 1)):
            out.append(hdu)
    return out


def plane_count(header: Mapping) -> int:
    """Images an HDU holds: the product of its axes beyond the first two (1 for a 2-D
    image and for a cube of one plane, ``NAXIS3 = 1``, as some capture programs write)."""
    naxis = int(header.get("NAXIS", 0))
    return int(np.prod([int(header.get(f"NAXIS{i}", 1)) for i in range(3, naxis + 1)]))


def merged_header(primary: fits.Header, first: fits.Header) -> fits.Header:
    """Copy of the first image header overlaid with the primary's non-structural cards.

    Keywords of a multi-extension or tile-compressed file then all show in one
    header (the primary's global values win).
    """
    merged = first.copy()
    if first is not primary:
        for card in primary.cards:
            if card.keyword not in STRUCTURAL_KEYWORDS:
                merged[card.keyword] = (card.value, card.comment)
    return merged


def _pixels(path: Path, hdu) -> np.ndarray:
    """The pixels of one HDU as a 2-D array (a cube of one plane loses its extra axes);
    a file cut short names itself (astropy's error does not)."""
    try:
        data = hdu.data
        return data if data.ndim == 2 else data.reshape(data.shape[-2:])
    except (OSError, ValueError, TypeError) as exc:
        raise CalibrationError(f"{path}: pixel data cannot be read ({type(exc).__name__}: "
                               f"{exc}; the file is shorter than its header says?)") from exc
