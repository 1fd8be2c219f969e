"""The bad-pixel mask: the masters' masks, the series' hot pixels and the profile's bad
columns, rows and pixels in one bit mask."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..ccd import CalibrationError, parse_section
from ..masks import MaskBit
from ..products import Product

HOT_DARK_IMAGES = ("HOTDARK", "HOTDARK_ERR")


def make_bad_pixel_mask(*, shape: tuple[int, int], detector: Mapping,
                        masters: Sequence[Product | None] = (),
                        hot_pixels: np.ndarray | None = None,
                        superpixel: int = 1,
                        origin: Sequence[int] | None = None,
                        master_masks: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Union (OR) of the masters' masks and the profile's bad columns, pixels and regions.

    ``master_masks`` ({name: MASK plane}) are OR-ed in like ``masters``' masks (the
    planes alone, read without the masters' images).

    ``detector`` keys: ``bad_columns`` (1-based x), ``bad_rows`` (1-based y),
    ``bad_pixels`` (list of 1-based ``[x, y]``) and ``bad_regions`` (IRAF
    sections) — all in trimmed-frame coordinates.  ``hot_pixels`` (a boolean
    map, or the uint16 mask of :func:`ccdflow.hotpixels.write_hot_pixel_map` for
    cameras without darks) is OR-ed in: True as HOT, a mask's own bits as they are.
    ``superpixel`` (2 for a colour mosaic summed into 2×2 superpixels): the profile's
    positions are the camera's full-frame ones, each bad pixel spoiling its superpixel.
    ``origin`` (x, y; 0-based) of a subframe on the detector: the profile's positions
    are full-frame ones, moved by it, and those off the subframe are left out (a
    position off a full frame is an error).
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
    for name, plane in (master_masks or {}).items():
        if np.shape(plane) != tuple(shape):
            raise CalibrationError(f"master {name} has shape {np.shape(plane)}, "
                                   f"expected {shape}")
        mask |= np.asarray(plane, np.uint16)
    _mark_profile_defects(mask, detector=detector, superpixel=int(superpixel), origin=origin)
    return mask


def bad_pixel_mask_from_files(*, reference: str | Path, detector: Mapping,
                              masters: Sequence[str | Path] = (),
                              hot_pixels: str | Path | None = None,
                              origin: Sequence[int] | None = None
                              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The bad-pixel mask of the frames calibrated like ``reference`` (a raw frame: its
    trimmed shape and superpixel factor), from the MASK planes of the ``masters`` (bias,
    dark, flat files), the hot-pixel map file and the profile (:func:`make_bad_pixel_mask`),
    with the hot-pixel map's :data:`HOT_DARK_IMAGES` ({} without a map).

    Rule ``bad_pixel_mask`` writes this mask as ``bpm_<filter>.fits``; a frames job makes
    the same from the same files for its frames (no job of its own between the masters
    and the frames).
    """
    from ..products import read_mask, read_mask_images
    from .science import trimmed_geometry

    shape, superpixel = trimmed_geometry(reference, detector=detector)
    hot = read_mask(hot_pixels) if hot_pixels else None
    images = read_mask_images(hot_pixels, HOT_DARK_IMAGES) if hot_pixels else {}
    mask = make_bad_pixel_mask(shape=shape, detector=detector, hot_pixels=hot,
                               superpixel=superpixel, origin=origin,
                               master_masks={str(m): read_mask(m) for m in masters})
    return mask, images


def _mark_profile_defects(mask: np.ndarray, *, detector: Mapping, superpixel: int,
                          origin: Sequence[int] | None) -> None:
    """OR BAD into ``mask`` (changed) at the profile's bad columns, rows, pixels and regions."""
    f = superpixel
    ny, nx = mask.shape[0] * f, mask.shape[1] * f  # the frame the profile's positions are in
    x0, y0 = origin if origin is not None else (0, 0)
    bad = np.uint16(MaskBit.BAD)

    def cell(i: int, start: int, n: int, what: str) -> int | None:
        """1-based full-frame index -> 0-based index of the mask; None off a subframe."""
        if 1 <= i - start <= n + f - 1:
            return min((i - start - 1) // f, n // f - 1)
        if origin is None:
            raise CalibrationError(f"detector.{what} outside 1..{n}")
        return None

    for col in detector.get("bad_columns", []):
        c = cell(col, x0, nx, f"bad_columns: column {col}")
        if c is not None:
            mask[:, c] |= bad
    for row in detector.get("bad_rows", []):
        r = cell(row, y0, ny, f"bad_rows: row {row}")
        if r is not None:
            mask[r, :] |= bad
    for x, y in detector.get("bad_pixels", []):
        c = cell(x, x0, nx, f"bad_pixels: ({x}, {y}) x")
        r = cell(y, y0, ny, f"bad_pixels: ({x}, {y}) y")
        if c is not None and r is not None:
            mask[r, c] |= bad
    for text in detector.get("bad_regions", []):
        rows, cols, _, _ = parse_section(text)
        r0, r1 = max(rows.start - y0, 0), max(rows.stop - y0, 0)
        c0, c1 = max(cols.start - x0, 0), max(cols.stop - x0, 0)
        mask[r0 // f:-(-r1 // f), c0 // f:-(-c1 // f)] |= bad
