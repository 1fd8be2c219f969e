"""DAOFIND's sharpness and roundness (Stetson 1987) at given positions, in numpy.

The numbers of photutils' :class:`~photutils.detection.DAOStarFinder` run with
``xycoords`` (circular kernel, ``sigma_radius`` 1.5): the same kernel, cutouts
at the rounded positions (zero outside the frame), the kernel-convolved values
only where they are needed, and the marginal Gaussian fits of ``roundness2``; a
position for which DAOStarFinder returns no row (a marginal fit without positive
amplitude: broad stars under the small kernel) has NaN shapes, as before.
Importing photutils costs ~0.9 s per workflow job and DAOStarFinder convolves
the whole frame; this costs ~1 ms per hundred sources.  tests/test_sources_times.py
compares it with DAOStarFinder on the same positions (to 1e-10).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["daofind_kernel", "daofind_shapes"]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def daofind_kernel(fwhm: float, sigma_radius: float = 1.5) -> dict:
    """photutils' ``_StarFinderKernel`` for a circular Gaussian: ``data`` (zero-sum
    density-enhancement kernel), ``mask``, ``n_pixels``, ``gauss`` (unmasked,
    peak 1), ``sigma`` and ``radius``."""
    if fwhm <= 0:
        raise ValueError(f"fwhm must be positive, got {fwhm}")
    sigma = fwhm * _FWHM_TO_SIGMA
    a = c = 1.0 / (2.0 * sigma**2)
    f = sigma_radius**2 / 2.0
    denom = a * c
    n = 2 * int(max(2, math.sqrt(c * f / denom))) + 1
    r = n // 2
    yy, xx = np.mgrid[0:n, 0:n]
    circular = np.sqrt((xx - r) ** 2 + (yy - r) ** 2)
    elliptical = a * (xx - r) ** 2 + c * (yy - r) ** 2
    mask = np.where((elliptical <= f) | (circular <= 2.0), 1, 0).astype(int)
    n_pixels = int(mask.sum())
    gauss = np.exp(-elliptical)
    kernel = gauss * mask
    var = (kernel**2).sum() - kernel.sum() ** 2 / n_pixels
    data = ((kernel - kernel.sum() / n_pixels) / var) * mask
    return {"data": data, "mask": mask, "n_pixels": n_pixels, "gauss": gauss,
            "sigma": sigma, "radius": r}


def _marginal_height(cutouts: np.ndarray, kernel: dict, axis: int) -> np.ndarray:
    """Height of DAOFIND's marginal Gaussian fit along ``axis`` (0: y, 1: x); NaN where
    the fit's amplitude is not positive."""
    size = cutouts.shape[1]
    centre = size // 2
    ramp = centre - np.abs(np.arange(size) - centre) + 1
    xwt, ywt = np.meshgrid(ramp, ramp)
    if axis == 0:
        wt, wts = ywt[:, 0], xwt
    else:
        wt, wts = xwt[0], ywt
    kern_1d = np.sum(kernel["gauss"] * wts, axis=1 - axis)
    wt_sum = np.sum(wt)
    kern_sum = np.sum(kern_1d * wt)
    kern2_sum = np.sum(kern_1d**2 * wt)
    data_1d = np.sum(cutouts * wts, axis=2 - axis)
    data_sum = np.sum(data_1d * wt, axis=1)
    data_kern_sum = np.sum(data_1d * kern_1d * wt, axis=1)
    numer = data_kern_sum - (data_sum * kern_sum) / wt_sum
    denom = kern2_sum - kern_sum**2 / wt_sum
    with np.errstate(invalid="ignore", divide="ignore"):
        height = numer / denom
    return np.where((numer <= 0.0) | (denom <= 0.0), np.nan, height)


def daofind_shapes(*, data: np.ndarray, x: np.ndarray, y: np.ndarray,
                   fwhm: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sharpness, roundness1, roundness2`` of DAOStarFinder at (x, y) rounded to pixels.

    Parameters
    ----------
    data : ndarray
        Background-subtracted frame (masked pixels set to 0 by the caller, as
        DAOStarFinder sees them).
    x, y : ndarray
        Positions (0-based); rounded half to even as photutils rounds them.
    fwhm : float
        FWHM of the DAOFIND kernel (px).
    """
    kernel = daofind_kernel(fwhm)
    r = kernel["radius"]
    k = 2 * r + 1
    image = np.asarray(data, np.float64)
    ny, nx = image.shape
    xc = np.round(np.asarray(x, float)).astype(np.int64)
    yc = np.round(np.asarray(y, float)).astype(np.int64)
    # data within 2r: the convolved cutout (k×k) reads r beyond each of its pixels
    d = np.arange(-2 * r, 2 * r + 1)
    yy, xx = yc[:, None, None] + d[None, :, None], xc[:, None, None] + d[None, None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    window = np.where(inside, image[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)], 0.0)
    cut = window[:, r:r + k, r:r + k]  # the data cutout (k×k)
    # convolved cutout: Σ kernel[i, j]·window[a + i, b + j] (the kernel is symmetric)
    conv = np.zeros_like(cut)
    for i in range(k):
        for j in range(k):
            w = kernel["data"][i, j]
            if w != 0.0:
                conv += w * window[:, i:i + k, j:j + k]
    conv = np.where(inside[:, r:r + k, r:r + k], conv, 0.0)  # photutils' cutout fill
    peak = cut[:, r, r]
    conv_peak = conv[:, r, r]
    mean = (np.sum(cut * kernel["mask"], axis=(1, 2)) - peak) / (kernel["n_pixels"] - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sharpness = (peak - mean) / conv_peak
        conv0 = conv.copy()
        conv0[:, r, r] = 0.0
        quad1 = conv0[:, 0:r + 1, r + 1:].sum(axis=(1, 2))
        quad2 = conv0[:, 0:r, 0:r + 1].sum(axis=(1, 2))
        quad3 = conv0[:, r:, 0:r].sum(axis=(1, 2))
        quad4 = conv0[:, r + 1:, r:].sum(axis=(1, 2))
        roundness1 = 2.0 * (-quad1 + quad2 - quad3 + quad4) / np.abs(conv0).sum(axis=(1, 2))
        hx = _marginal_height(cut, kernel, axis=1)
        hy = _marginal_height(cut, kernel, axis=0)
        roundness2 = 2.0 * (hx - hy) / (hx + hy)
    # DAOStarFinder returns no row where any of these is not finite (its catalog's
    # finite filter): no shape either
    dropped = ~(np.isfinite(sharpness) & np.isfinite(roundness1) & np.isfinite(roundness2)
                & np.isfinite(hx) & np.isfinite(hy) & np.isfinite(peak))
    for values in (sharpness, roundness1, roundness2):
        values[dropped] = np.nan
    return sharpness, roundness1, roundness2
