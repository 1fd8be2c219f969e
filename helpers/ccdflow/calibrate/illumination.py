"""Illumination correction: a smooth 2-D Legendre model of the calibrated science frames'
sky, for flats whose illumination differs from the night sky's."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..ccd import CalibrationError
from ..products import Product, provenance_header
from .masters import _check_count
from .science import calibrate_science

log = logging.getLogger(__name__)

def _box_levels(image: np.ndarray, mask: np.ndarray, box: int):
    """Sigma-clipped (2.5σ) median per box (stars rejected), with box-centre coordinates."""
    ny, nx = image.shape
    levels, xs, ys = [], [], []
    for y0 in range(0, ny - box + 1, box):
        for x0 in range(0, nx - box + 1, box):
            values = image[y0: y0 + box, x0: x0 + box][~mask[y0: y0 + box, x0: x0 + box]]
            if values.size < box * box // 2:
                levels.append(np.nan)
            else:
                from astropy.stats import sigma_clipped_stats

                levels.append(sigma_clipped_stats(values, sigma=2.5, maxiters=10)[1])
            xs.append(x0 + (box - 1) / 2)
            ys.append(y0 + (box - 1) / 2)
    return np.array(levels), np.array(xs), np.array(ys)


def make_illumination_model(*, paths: Sequence[str | Path], detector: Mapping,
                            bias: Product | None, dark: Product | None, flat: Product | None,
                            order: int = 2, box_px: int = 32, min_frames: int = 3) -> Product:
    """Smooth illumination correction from night-sky science frames (IRAF ``mkillumcor``).

    Each frame is calibrated with the masters, reduced to star-rejected box
    medians, normalised by its own median; the box grid is the median over
    frames (sources of one field drop out), fitted by a 2-D Legendre
    polynomial of ``order`` in x and y, evaluated on the full frame and
    normalised to median 1.  Dividing calibrated frames by it removes the
    large-scale difference between flat-field and night-sky illumination.

    Only valid when the sky of the frames has no common gradient of its own
    (frames of several fields or hours); it is therefore opt-in per profile.
    """
    _check_count(paths, min_frames, "illumination")
    if order < 0 or box_px < 4:
        raise ValueError(f"order must be >= 0 and box_px >= 4, got {order}, {box_px}")
    grids = []
    for path in paths:
        cal = calibrate_science(path=path, detector=detector, bias=bias, dark=dark, flat=flat,
                                bad_pixel_mask=None)
        levels, xs, ys = _box_levels(cal.data, cal.mask != 0, box_px)
        grids.append(levels / np.nanmedian(levels))
    with warnings.catch_warnings():  # a box masked in every frame stays NaN: not usable
        warnings.simplefilter("ignore", RuntimeWarning)
        grid = np.nanmedian(np.array(grids), axis=0)
    ny, nx = cal.data.shape
    good = np.isfinite(grid)
    if good.sum() <= (order + 1) ** 2:
        raise CalibrationError(f"illumination model: only {good.sum()} usable boxes for "
                               f"order {order}")
    u, v = 2 * xs / (nx - 1) - 1, 2 * ys / (ny - 1) - 1
    design = np.polynomial.legendre.legvander2d(v[good], u[good], [order, order])
    coef = np.zeros(design.shape[1])
    keep = np.ones(good.sum(), bool)
    for _ in range(5):  # reject boxes spoiled by extended sources
        coef, *_ = np.linalg.lstsq(design[keep], grid[good][keep], rcond=None)
        resid = grid[good] - design @ coef
        new = np.abs(resid) < 3 * np.std(resid[keep]) + 1e-12
        if np.array_equal(new, keep):
            break
        keep = new
    model = np.polynomial.legendre.legval2d(
        np.linspace(-1, 1, ny)[:, None] * np.ones((1, nx)),
        np.ones((ny, 1)) * np.linspace(-1, 1, nx)[None, :],
        coef.reshape(order + 1, order + 1))
    model /= np.median(model)
    rms = float(np.std(resid[keep]))
    header = provenance_header(step="illumination_model", inputs=paths,
                               params={"order": order, "box_px": box_px})
    header["IMAGETYP"] = "ILLUMINATION"
    header["ILLUMRMS"] = (round(rms, 5), "rms of box medians about the fit")
    header["ILLUMPTP"] = (round(float(model.max() - model.min()), 5), "peak-to-peak of model")
    log.info("illumination model from %d frames: peak-to-peak %.4f, fit rms %.4f",
             len(paths), model.max() - model.min(), rms)
    return Product(data=model.astype(np.float32), error=np.zeros_like(model, np.float32),
                   mask=np.zeros(model.shape, np.uint16), header=header)
