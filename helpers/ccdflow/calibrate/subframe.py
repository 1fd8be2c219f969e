"""A full-frame master cut to a subframe: the pixels a region of interest read out
for speed has on the detector, from the masters of the full frame.

MaxIm DL and ASCOM drivers write the subframe's origin as XORGSUBF/YORGSUBF (binned
pixels, 0-based); the inventory groups a subframe apart (:mod:`ccdflow.plan` finds
the full-frame group that encloses it).  The cut is every image plane of the master
(SCI, ERR, MASK, ERR_CAL, NUSED …), rows and columns of the subframe, so a pixel
of the subframe is calibrated with the master values of the same detector pixel.
IRAF's LTV1/LTV2 record the shift (physical = logical − LTV).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import CalibrationError

log = logging.getLogger(__name__)

__all__ = ["cut_master"]

#: keywords astropy writes from the data itself (a copied BZERO would scale twice)
_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "PCOUNT",
               "GCOUNT", "BZERO", "BSCALE", "BLANK", "EXTNAME", "CHECKSUM", "DATASUM"}


def _cut_window(*, master_shape: Sequence[int], raw_shape: Sequence[int],
                origin_xy: Sequence[int], subframe_shape: Sequence[int],
                where: str) -> tuple[slice, slice]:
    """Rows and columns of the master that the subframe covers.  A master of 2×2
    superpixels (a colour mosaic) is half its raw frame: the origin and the shape must
    then be even, so that the subframe's mosaic has the full frame's phase."""
    (mny, mnx), (rny, rnx) = master_shape[:2], raw_shape[:2]
    if rny % mny or rnx % mnx or rny // mny != rnx // mnx:
        raise CalibrationError(f"{where}: master of {mny}x{mnx} pixels is not its raw "
                               f"frame's {rny}x{rnx} in whole (super)pixels")
    f = rny // mny
    (x0, y0), (ny, nx) = origin_xy, subframe_shape[:2]
    if min(x0, y0) < 0 or x0 + nx > rnx or y0 + ny > rny:
        raise CalibrationError(f"{where}: subframe of {ny}x{nx} at x {x0}, y {y0} is not "
                               f"inside the full frame of {rny}x{rnx}")
    if any(v % f for v in (x0, y0, nx, ny)):
        raise CalibrationError(f"{where}: subframe origin (x {x0}, y {y0}) and shape "
                               f"{ny}x{nx} must be multiples of {f} to cut a master of "
                               f"{f}x{f} superpixels (the colour mosaic's phase)")
    return slice(y0 // f, (y0 + ny) // f), slice(x0 // f, (x0 + nx) // f)


def cut_master(*, master_path: str | Path, output_path: str | Path,
               origin_xy: Sequence[int], raw_shape: Sequence[int],
               subframe_shape: Sequence[int]) -> tuple[int, int]:
    """Write the subframe's part of a full-frame master, atomically.

    Parameters
    ----------
    master_path, output_path
        The full-frame master (a ccdflow product) and the cut to write.
    origin_xy
        The subframe's origin in the full frame's raw pixels (x, y; 0-based).
    raw_shape, subframe_shape
        (ny, nx) of a raw full frame and of a raw subframe.

    Returns
    -------
    (ny, nx) of the cut master.
    """
    from astropy.io import fits

    from ..io import atomic_path
    from ..products import provenance_header

    where = f"master {Path(master_path).parent.name}/{Path(master_path).name}"
    params = {"origin_xy": [int(v) for v in origin_xy],
              "subframe_shape": [int(v) for v in subframe_shape[:2]],
              "raw_shape": [int(v) for v in raw_shape[:2]]}
    with fits.open(master_path, mode="readonly", memmap=False) as hdul:
        master_shape = hdul["SCI"].shape
        rows, cols = _cut_window(master_shape=master_shape, raw_shape=raw_shape,
                                 origin_xy=origin_xy, subframe_shape=subframe_shape,
                                 where=where)
        header = provenance_header(step="master_cut", inputs=[master_path], params=params,
                                   base=hdul[0].header)
        hdus = [fits.PrimaryHDU(header=_shifted(header, rows, cols))]
        for hdu in hdul[1:]:
            data = hdu.data
            if data is not None and data.shape == master_shape:
                data = data[rows, cols].copy()
            kept = fits.Header([c for c in hdu.header.cards if c.keyword not in _STRUCTURAL])
            hdus.append(fits.ImageHDU(data, header=_shifted(kept, rows, cols), name=hdu.name))
    with atomic_path(output_path) as tmp:
        fits.HDUList(hdus).writeto(tmp)
    cut = (rows.stop - rows.start, cols.stop - cols.start)
    log.info("%s: rows %d-%d, columns %d-%d (a subframe of %dx%d at x %d, y %d) -> %s",
             where, rows.start + 1, rows.stop, cols.start + 1, cols.stop, *subframe_shape[:2],
             *origin_xy, Path(output_path).name)
    return cut


def _shifted(header, rows: slice, cols: slice):
    """``header`` with IRAF's LTV1/LTV2 moved by the cut (physical = logical − LTV) and a
    WCS reference pixel moved with it."""
    for axis, start in (("1", cols.start), ("2", rows.start)):
        if f"LTV{axis}" in header or start:
            header[f"LTV{axis}"] = (float(header.get(f"LTV{axis}", 0.0)) - start,
                                    "logical to physical pixel offset (IRAF)")
        if f"CRPIX{axis}" in header:
            header[f"CRPIX{axis}"] = float(header[f"CRPIX{axis}"]) - start
    return header
