"""Photometry's files: a frame's calibrated products read for measuring
(:func:`load_frame`), the per-frame CSV read back (:func:`read_photometry`) and the unit
comments of the CSV files (:func:`unit_comments`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .flags import BAD_FLAGS, PhotFlag

__all__ = ["LONG_UNITS", "FrameData", "load_frame", "read_photometry", "unit_comments"]

#: units of the photometry and light-curve columns, written as comments
LONG_UNITS = {
    "x": "pix (0-based)", "y": "pix (0-based)", "radius": "pix", "ra_deg": "deg (ICRS)",
    "dec_deg": "deg (ICRS)", "flux": "electron", "flux_err": "electron",
    "flux_err_cal": "electron", "bkg": "electron / pix", "bkg_err": "electron / pix",
    "bkg_rms": "electron / pix", "n_ap": "pix (unmasked)", "repaired_fraction": "",
    "contamination": "", "psf_sigma_major": "pix", "psf_sigma_minor": "pix",
    "psf_theta": "deg (major axis, counter-clockwise from +x)",
    "n_sky": "pix", "fwhm": "pix", "mjd_utc": "d (mid-exposure, UTC)",
    "bjd_tdb": "d (BJD_TDB, mid-exposure)", "bmjd_tdb": "d (BJD_TDB - 2400000.5)",
    "exptime_s": "s", "dx": "pix", "dy": "pix",
    "rotation_deg": "deg (from the reference frame, counter-clockwise)",
}


def unit_comments(columns: Sequence[str]) -> list[str]:
    """Comment lines documenting the units of ``columns``."""
    lines = ["units: " + ", ".join(f"{c} [{LONG_UNITS[c]}]" for c in columns
                                   if c in LONG_UNITS)]
    lines.append("flags: " + ", ".join(f"{int(f)}={f.name}" for f in PhotFlag)
                 + "; rows with any of " + "|".join(f.name for f in PhotFlag
                                                    if f & BAD_FLAGS) + " are not usable")
    return lines


def read_photometry(path: str | Path) -> pd.DataFrame:
    """Read a per-frame photometry CSV (comment lines skipped, empty names kept as '')."""
    table = pd.read_csv(path, comment="#", dtype={"name": str})  # all-empty: not float
    table["name"] = table["name"].fillna("").astype(str)
    return table


@dataclass
class FrameData:
    """A calibrated frame with its background and the cosmic rays OR-ed into its mask.

    ``data`` is float64; ERR, ERR_CAL, BKG and BKG_RMS stay in the dtype they are
    stored in (float32): photometry promotes them to float64 value by value where it
    computes with them, which gives exactly what float64 planes would, at half the
    memory (a 4k² frame is 134 MB per float64 plane)."""

    data: np.ndarray
    error: np.ndarray
    mask: np.ndarray
    header: object
    background: np.ndarray
    rms: np.ndarray | None  #: BKG_RMS (None when not read: only the 'map' sky uses it)
    source_mask: np.ndarray  #: bool, SRCMASK of the background stage
    error_cal: np.ndarray | None = None  #: ERR_CAL (float32): the masters' part of ERR


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order and its stored float type (FITS is big-endian)."""
    return array.astype(array.dtype.newbyteorder("="))


def load_frame(*, calibrated: str | Path, background: str | Path,
               cosmics: str | Path | None = None, read_rms: bool = True) -> FrameData:
    """Read the products of one frame; cosmic-ray pixels get MaskBit.COSMIC, those of a
    satellite or aircraft trail MaskBit.STREAK.

    ``read_rms`` False leaves BKG_RMS unread (``rms`` None): photometry needs it only
    for the 'map' sky, and it is 67 MB at 4k²."""
    from astropy.io import fits

    from ..masks import MaskBit
    from ..products import read_product

    product = read_product(calibrated)
    with fits.open(background, memmap=False) as hdul:
        bkg = _native(hdul["BKG"].data)
        rms = _native(hdul["BKG_RMS"].data) if read_rms else None
        sources = hdul["SRCMASK"].data != 0
    mask = product.mask  # the product's own: not shared
    if cosmics is not None:
        values = fits.getdata(cosmics, "CRMASK")
        mask[(values & 1) != 0] |= np.uint16(MaskBit.COSMIC)
        mask[(values & 2) != 0] |= np.uint16(MaskBit.STREAK)
    return FrameData(data=product.data.astype(np.float64), error=product.error,
                     mask=mask, header=product.header, background=bkg, rms=rms,
                     source_mask=sources, error_cal=product.extras.get("ERR_CAL"))
