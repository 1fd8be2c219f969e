"""Spectroscopic flats: the lamp's spectrum removed, the pixel response and the slit
function kept."""

from __future__ import annotations

import numpy as np

from .warp import to_dispersion_x

__all__ = ["lamp_spectrum"]


def lamp_spectrum(image: np.ndarray, *, axis: str, knot_spacing_px: float = 40.0,
                  nsigma: float = 3.0) -> np.ndarray:
    """The flat lamp's smooth spectrum along the dispersion, shaped to divide ``image``.

    The median over the illuminated rows of the slit (rows whose median is above a
    fifth of the brightest's) of each column, fitted by a cubic B-spline with knots
    every ``knot_spacing_px`` columns and iterative σ-clipping (bad columns and dust
    do not bend it).  Dividing the combined flat by it leaves the pixel response and
    the slit function (the illumination along the slit) — what a flat should
    correct in a spectrum.
    """
    from scipy.interpolate import make_lsq_spline

    data = to_dispersion_x(np.asarray(image, float), axis)
    nx = data.shape[1]
    level = np.nanmedian(data, axis=1)
    lit = level > 0.2 * np.nanmax(level)
    profile = np.nanmedian(data[lit], axis=0) if lit.any() else np.nanmedian(data, axis=0)
    x = np.arange(nx, dtype=float)
    interior = np.arange(knot_spacing_px, nx - 1 - 0.5 * knot_spacing_px, knot_spacing_px)
    knots = np.concatenate([[0.0] * 4, interior, [nx - 1.0] * 4])
    keep = np.isfinite(profile)
    fit = np.full(nx, np.nanmedian(profile))
    for _ in range(6):
        spline = make_lsq_spline(x[keep], profile[keep], knots, k=3)
        fit = spline(x)
        resid = profile - fit
        sigma = 1.4826 * np.nanmedian(np.abs(resid[keep])) + 1e-12
        new = np.isfinite(profile) & (np.abs(resid) <= nsigma * sigma)
        if np.array_equal(new, keep):
            break
        keep = new
    shaped = np.broadcast_to(fit[None, :], data.shape)
    return to_dispersion_x(shaped, axis)
