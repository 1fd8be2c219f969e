"""The bad-pixel mask: the masters' masks, the series' hot pixels and the profile's bad
columns, rows and pixels in one bit mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..ccd import CalibrationError, parse_section
from ..masks import MaskBit
from ..products import Product

HOT_DARK_IMAGES = ("HOTDARK", "HOTDARK_ERR")


def make_bad_pixel_mask(*, shape: tuple[int, int], detector: Mapping,
                        masters: Sequence[Product | None] = (),
                        hot_pixels: np.ndarray | None = None,
                        superpixel: int = 1) -> np.ndarray:
    """Union (OR) of the masters' masks and the profile's bad columns, pixels and regions.

    ``detector`` keys: ``bad_columns`` (1-based x), ``bad_rows`` (1-based y),
    ``bad_pixels`` (list of 1-based ``[x, y]``) and ``bad_regions`` (IRAF
    sections) — all in trimmed-frame coordinates.  ``hot_pixels`` (a boolean
    map, or the uint16 mask of :func:`ccdflow.hotpixels.write_hot_pixel_map` for
    cameras without darks) is OR-ed in: True as HOT, a mask's own bits as they are.
    ``superpixel`` (2 for a colour mosaic summed into 2×2 superpixels): the profile's
    positions are the camera's full-frame ones, each bad pixel spoiling its superpixel.
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
    f = int(superpixel)
    ny, nx = shape[0] * f, shape[1] * f  # the full frame the profile's positions are in

    def cell(i: int) -> int:  # 1-based full-frame index -> 0-based index of the mask
        return (i - 1) // f

    for col in detector.get("bad_columns", []):
        if not 1 <= col <= nx + f - 1:
            raise CalibrationError(f"detector.bad_columns: column {col} outside 1..{nx}")
        mask[:, min(cell(col), shape[1] - 1)] |= np.uint16(MaskBit.BAD)
    for row in detector.get("bad_rows", []):
        if not 1 <= row <= ny + f - 1:
            raise CalibrationError(f"detector.bad_rows: row {row} outside 1..{ny}")
        mask[min(cell(row), shape[0] - 1), :] |= np.uint16(MaskBit.BAD)
    for x, y in detector.get("bad_pixels", []):
        if not (1 <= x <= nx + f - 1 and 1 <= y <= ny + f - 1):
            raise CalibrationError(f"detector.bad_pixels: ({x}, {y}) outside the frame")
        mask[min(cell(y), shape[0] - 1), min(cell(x), shape[1] - 1)] |= np.uint16(MaskBit.BAD)
    for text in detector.get("bad_regions", []):
        rows, cols, _, _ = parse_section(text)
        mask[rows.start // f:-(-rows.stop // f), cols.start // f:-(-cols.stop // f)] |= \
            np.uint16(MaskBit.BAD)
    return mask
