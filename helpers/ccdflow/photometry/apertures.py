"""Aperture photometry that loses no measurement: repaired pixels, neighbour light, two
errors.

Per source and aperture radius (sums are SEP's exact pixel overlaps, equal to
photutils' ``aperture_photometry(method='exact')``)::

    flux          = Σ_ap (R − b̂)                        R: the frame, repaired
    flux_err²     = Σ_ap (ERR² − ERR_CAL²) + Σ_fill V_model + (Σ_fill P)²·Var(F̂)
                    + N_ap²·Var(b̂)
    flux_err_cal² = Σ_ap ERR_CAL²

*Repair, don't discard.*  Pixels the calibration corrected (HOT where a dark was
subtracted, LOW_FLAT above the floor) are measured with their larger ERR.
Pixels with no usable value (COSMIC, BAD, NONFINITE, NO_DATA, BADCAL, and HOT
when no dark was subtracted) are filled with the sky map plus the PSF model of
every source near them, each source's flux F̂ fitted to its unmasked pixels;
the filled pixels' own noise (``V_model`` = sky variance + source photons) and
the model's error enter ``flux_err``.  The row carries REPAIRED and
``repaired_fraction`` (the share of the star's light in the aperture that is
model); above ``max_repaired_fraction`` it is MASKED (unusable).  Without a PSF
model a filled pixel is the mean of its unmasked 5×5 neighbours.  SATURATED
pixels are not filled: they count zero, leave the area, and the row is unusable.

*Neighbour light.*  ``contamination`` is the light of the other sources inside
the aperture (their fitted fluxes × the PSF) over the star's own: the sources of
the list, and the stars it lacks that the PSF-matched residual of the list's model
reveals (:func:`find_hidden_neighbours`: close pairs detection left as one);
above ``max_contamination`` the row is CONTAMINATED (usable, but never a
comparison star).  ``subtract_neighbours`` removes that modelled light from
the flux (its error added).

*Two errors.*  ``flux_err`` is the frame's random noise: photons of star and
sky, read noise, dark shot noise and the sky-level estimate — what scatters a
time series.  ``flux_err_cal`` is the noise of the masters (bias, dark, flat),
the same in every frame of a star that stays on its pixels.

*Sky.*  ``bkg`` is the clipped annulus level (median, mean or mode 2.5·median −
1.5·mean), ``bkg_rms`` the clipped standard deviation of the annulus pixels (the
per-pixel sky noise, opticam's ``bkg_err``), ``bkg_err`` the error of the level
``√(k·bkg_rms²/N)`` (k = 1, π/2, 4.57).

Flags (bit field, column ``flags``):

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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntFlag

import numpy as np
import pandas as pd

from ..masks import MaskBit
from .sky import SKY_VARIANCE_FACTOR, annulus_statistics

__all__ = ["BAD_FLAGS", "COMPARISON_BAD_FLAGS", "CORRECTED_BITS", "FILL_BITS",
           "SKY_VARIANCE_FACTOR", "PhotFlag", "PhotometryError", "SourceModel",
           "annulus_statistics", "find_hidden_neighbours", "fit_source_fluxes",
           "measure_apertures"]


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
             | MaskBit.BADCAL)

#: mask bits the calibration corrected (value usable, larger ERR); HOT only where a
#: dark was subtracted (otherwise it is filled)
CORRECTED_BITS = MaskBit.LOW_FLAT | MaskBit.HOT


@dataclass
class SourceModel:
    """Every source's PSF-fitted flux and the frame's PSF (for repair and neighbours)."""

    psf: object  #: :class:`ccdflow.photometry.psf.PSFModel`
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray  #: F̂ (e-), 0 where not fitted
    flux_var: np.ndarray  #: Var(F̂)
    half: int  #: half-width of the stamps the model is rendered on
    stamps: np.ndarray | None = None  #: unit PSF on each source's box (n, k, k)
    px: np.ndarray | None = None  #: the boxes' columns (n, k)
    py: np.ndarray | None = None  #: the boxes' rows (n, k)

    def box(self, half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The PSF stamps and pixel indices cut to a smaller half-width."""
        c = self.half
        sl = slice(c - half, c + half + 1)
        return self.stamps[:, sl, sl], self.px[:, sl], self.py[:, sl]


def _overlap(px, py, x, y, r):
    """Approximate fraction of each pixel inside a circle of radius ``r`` (a linear ramp
    across the boundary; used for fractions and error terms, not for the sums)."""
    d = np.hypot(px[:, None, :] - x[:, None, None], py[:, :, None] - y[:, None, None])
    r = np.asarray(r, float)
    r = r[:, None, None] if r.ndim else r
    return np.clip(r - d + 0.5, 0.0, 1.0)


def _stamps(image, px, py, fill=0.0):
    ny, nx = image.shape
    inside = ((py >= 0) & (py < ny))[:, :, None] & ((px >= 0) & (px < nx))[:, None, :]
    values = image[np.clip(py, 0, ny - 1)[:, :, None], np.clip(px, 0, nx - 1)[:, None, :]]
    return np.where(inside, values, fill), inside


def _render(psf, x, y, px, py, subsample):
    """Unit PSF at (x, y) integrated over the pixels of the given boxes (n, k, k)."""
    from .psf import _subsample

    sub = _subsample(subsample)
    total = np.zeros((len(x), py.shape[1], px.shape[1]))
    for sy in sub:
        dy = (py + sy - y[:, None])[:, :, None]
        for sx in sub:
            dx = (px + sx - x[:, None])[:, None, :]
            total += psf.value(dx, dy)
    return total / len(sub) ** 2


def fit_source_fluxes(*, data: np.ndarray, usable: np.ndarray, sky: np.ndarray,
                      sky_rms: np.ndarray, x: np.ndarray, y: np.ndarray, psf,
                      radius: float, iterations: int = 6, recentre_above: float = 0.01,
                      max_shift: float = 1.0) -> SourceModel:
    """PSF amplitude of every source from its usable pixels within ``radius`` (weighted
    linear least squares, the variance from the model: sky + source photons).

    Blended sources are fitted together: each pass fits every source to the data
    minus the other sources' current model (Jacobi passes converge to the joint
    least-squares fit of a group).  A source whose neighbours put more than
    ``recentre_above`` of its light into its fitting region also has its centre fitted
    (Gauss–Newton, at most ``max_shift`` px from where it was given), as DAOPHOT's
    ALLSTAR recentres stars in a group: a neighbour pulls a centroid off a star, and a
    star modelled off its centre leaves its neighbour's light misjudged.  ``sky`` and
    ``sky_rms`` are per source (its local level and per-pixel noise); ``x, y`` of the
    result are the fitted centres.
    """
    half = math.ceil(radius) + 3  # the model reaches 2 px beyond the apertures' boxes
    sub_n = 5 if psf.fwhm < 2.5 else 3
    ok = np.isfinite(x) & np.isfinite(y)
    x0 = np.where(ok, x, -1e6).astype(float)
    y0 = np.where(ok, y, -1e6).astype(float)
    xs, ys = x0.copy(), y0.copy()
    d_grid = np.arange(-half, half + 1)
    px = np.floor(xs + 0.5).astype(np.int64)[:, None] + d_grid[None, :]
    py = np.floor(ys + 0.5).astype(np.int64)[:, None] + d_grid[None, :]
    p = _render(psf, xs, ys, px, py, sub_n)
    d, inside = _stamps(data, px, py)
    good, _ = _stamps(usable, px, py, fill=False)
    near = _overlap(px, py, x0, y0, radius) > 0  # the region stays where it was given
    use = good & inside & near
    flux = np.zeros(len(x))
    others = np.zeros_like(p)
    movable = np.zeros(len(x), bool)
    model = SourceModel(psf=psf, x=x, y=y, flux=flux, flux_var=np.zeros(len(x)), half=half,
                        stamps=p, px=px, py=py)
    h = 0.05
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in range(max(1, iterations)):
            pu = np.where(use, p, 0.0)
            resid = np.where(use, d - sky[:, None, None] - others, 0.0)
            f0 = (pu * resid).sum(axis=(1, 2)) / (pu * pu).sum(axis=(1, 2))
            var = np.where(use, sky_rms[:, None, None] ** 2
                           + np.clip(np.nan_to_num(f0)[:, None, None], 0, None) * p, 1.0)
            w = np.where(use, 1.0 / var, 0.0)
            denom = (w * pu * pu).sum(axis=(1, 2))
            new = (w * pu * resid).sum(axis=(1, 2)) / denom
            bad = ~ok | ~np.isfinite(new) | (denom <= 0)
            new = np.where(bad, 0.0, new)
            moved = False
            if k >= 1 and movable.any():
                idx = np.flatnonzero(movable & ~bad & (new > 0))
                if len(idx):
                    # Gauss–Newton on (flux, x, y) of the recentred sources
                    gx = (_render(psf, xs[idx] + h, ys[idx], px[idx], py[idx], sub_n)
                          - _render(psf, xs[idx] - h, ys[idx], px[idx], py[idx], sub_n)) / (2 * h)
                    gy = (_render(psf, xs[idx], ys[idx] + h, px[idx], py[idx], sub_n)
                          - _render(psf, xs[idx], ys[idx] - h, px[idx], py[idx], sub_n)) / (2 * h)
                    fi = flux[idx] if (flux[idx] > 0).all() else np.maximum(new[idx], 1.0)
                    jac = np.stack([pu[idx], fi[:, None, None] * gx, fi[:, None, None] * gy],
                                   axis=-1)
                    jac = np.where(use[idx][..., None], jac, 0.0).reshape(len(idx), -1, 3)
                    r = (resid[idx] - fi[:, None, None] * pu[idx]).reshape(len(idx), -1)
                    ww = w[idx].reshape(len(idx), -1)
                    jtj = np.einsum("nki,nk,nkj->nij", jac, ww, jac)
                    jtr = np.einsum("nki,nk,nk->ni", jac, ww, r)
                    try:
                        step = np.linalg.solve(jtj + 1e-9 * np.eye(3)[None], jtr[..., None])[..., 0]
                    except np.linalg.LinAlgError:
                        step = np.zeros((len(idx), 3))
                    step = np.nan_to_num(step)
                    step[:, 1:] = np.clip(step[:, 1:], -0.5, 0.5)
                    nx_ = np.clip(xs[idx] + step[:, 1], x0[idx] - max_shift, x0[idx] + max_shift)
                    ny_ = np.clip(ys[idx] + step[:, 2], y0[idx] - max_shift, y0[idx] + max_shift)
                    xs[idx], ys[idx] = nx_, ny_
                    p[idx] = _render(psf, xs[idx], ys[idx], px[idx], py[idx], sub_n)
                    new[idx] = fi + step[:, 0]
                    moved = bool(np.abs(step[:, 1:]).max() > 1e-3)
            converged = not moved and np.allclose(new, flux, rtol=1e-4, atol=1e-3 * np.nanmedian(
                np.sqrt(np.where(bad, np.nan, 1.0 / denom))) if (~bad).any() else 1.0)
            flux = new
            model.flux = flux
            if (converged and k >= 1) or k == iterations - 1:
                break
            model.stamps = p
            image = _model_image(model, data.shape)
            others, _ = _stamps(image, px, py)
            others = others - flux[:, None, None] * p
            if k == 0 and recentre_above > 0:
                own = (np.where(use, p, 0.0) * np.clip(flux, 0, None)[:, None, None]).sum(
                    axis=(1, 2))
                foreign = np.where(use, np.clip(others, 0, None), 0.0).sum(axis=(1, 2))
                movable = ok & (flux > 0) & (foreign > recentre_above * own)
    model.flux_var = np.where(bad, 0.0, 1.0 / denom)
    # boxes centred on the pixel of each final centre (a recentred star may have moved)
    npx = np.floor(xs + 0.5).astype(np.int64)[:, None] + d_grid[None, :]
    npy = np.floor(ys + 0.5).astype(np.int64)[:, None] + d_grid[None, :]
    shifted = (npx[:, half] != px[:, half]) | (npy[:, half] != py[:, half])
    if shifted.any():
        px, py = npx, npy
        p[shifted] = _render(psf, xs[shifted], ys[shifted], px[shifted], py[shifted], sub_n)
    model.stamps, model.px, model.py = p, px, py
    model.x = np.where(ok, xs, x)
    model.y = np.where(ok, ys, y)
    return model


def find_hidden_neighbours(*, residual: np.ndarray, variance: np.ndarray, model: SourceModel,
                           radius: float, nsigma: float = 5.0, min_fraction: float = 0.005,
                           avoid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stars the source list lacks, found in the residual of its PSF model (DAOPHOT's
    second pass): around every source, the PSF-matched filter of ``residual`` (frame
    − sky − model) above ``nsigma`` × its noise, a local maximum at least one FWHM
    from every listed source and brighter than ``min_fraction`` of the source whose
    neighbourhood it is in.  Close pairs that detection left as one segment are the
    usual find: their light is not the star's, and the model then holds it.

    ``avoid`` marks pixels near which nothing is searched (saturated stars, whose
    model leaves structured residuals).

    Returns
    -------
    x, y : ndarray
        Positions (0-based) of the hidden stars: the matched filter's peak, refined
        to a fraction of a pixel by a parabola through it and its neighbours.
    """
    from scipy.spatial import cKDTree

    from .psf import psf_stamps

    psf = model.psf
    fwhm = psf.fwhm
    hk = max(1, math.ceil(1.0 * fwhm))
    kernel, _, _ = psf_stamps(psf, np.zeros(1), np.zeros(1), hk)
    kernel = kernel[0]
    k2 = float((kernel**2).sum())
    reach = math.ceil(radius + fwhm)
    ok = np.flatnonzero(np.isfinite(model.x) & np.isfinite(model.y) & (model.flux > 0))
    if not len(ok) or reach + hk > model.half + 20:
        return np.zeros(0), np.zeros(0)
    d = np.arange(-(reach + hk), reach + hk + 1)
    cx = np.floor(model.x[ok] + 0.5).astype(np.int64)
    cy = np.floor(model.y[ok] + 0.5).astype(np.int64)
    px, py = cx[:, None] + d[None, :], cy[:, None] + d[None, :]
    r_st, inside = _stamps(residual, px, py)
    v_st, _ = _stamps(variance, px, py, fill=np.inf)
    r_st = np.where(inside, r_st, 0.0)
    from numpy.lib.stride_tricks import sliding_window_view

    win = sliding_window_view(r_st, (2 * hk + 1, 2 * hk + 1), axis=(1, 2))
    amp = np.einsum("nijab,ab->nij", win, kernel) / k2  # PSF amplitude centred on a pixel
    vwin = sliding_window_view(np.where(inside, v_st, np.inf), (2 * hk + 1, 2 * hk + 1),
                               axis=(1, 2))
    with np.errstate(invalid="ignore", over="ignore"):
        sigma_amp = np.sqrt(np.einsum("nijab,ab->nij", vwin, kernel**2)) / k2
        snr = amp / sigma_amp
    snr = np.nan_to_num(snr, nan=0.0, posinf=0.0, neginf=0.0)
    # local maxima above threshold, away from the stamp's border
    pad = np.pad(snr, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    centre = pad[:, 1:-1, 1:-1]
    peak = np.ones(snr.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                peak &= centre >= pad[:, 1 + dy:pad.shape[1] - 1 + dy,
                                     1 + dx:pad.shape[2] - 1 + dx]
    inner = np.arange(-reach, reach + 1)
    gy, gx = np.meshgrid(inner, inner, indexing="ij")
    near = gx**2 + gy**2 <= (radius + fwhm) ** 2
    hit = peak & (snr > nsigma) & near[None] & (
        amp > min_fraction * model.flux[ok][:, None, None])
    src, iy, ix = np.nonzero(hit)
    if not len(src):
        return np.zeros(0), np.zeros(0)

    def vertex(lo, mid, hi):  # offset of a parabola's vertex through three samples
        with np.errstate(invalid="ignore", divide="ignore"):
            off = 0.5 * (lo - hi) / (lo - 2 * mid + hi)
        return np.clip(np.nan_to_num(off), -0.5, 0.5)

    ap = np.pad(amp, ((0, 0), (1, 1), (1, 1)), mode="edge")
    mid = ap[src, iy + 1, ix + 1]
    hx = cx[src] + inner[ix] + vertex(ap[src, iy + 1, ix], mid, ap[src, iy + 1, ix + 2])
    hy = cy[src] + inner[iy] + vertex(ap[src, iy, ix + 1], mid, ap[src, iy + 2, ix + 1])
    if avoid is not None and avoid.any():
        ny, nx = avoid.shape
        keep = ~avoid[np.clip(np.round(hy).astype(int), 0, ny - 1),
                      np.clip(np.round(hx).astype(int), 0, nx - 1)]
        hx, hy = hx[keep], hy[keep]
        if not len(hx):
            return hx, hy
    listed = np.column_stack([model.x[ok], model.y[ok]])
    far = cKDTree(listed).query(np.column_stack([hx, hy]))[0] >= fwhm
    hx, hy = hx[far].astype(float), hy[far].astype(float)
    if not len(hx):
        return hx, hy
    # one per star: peaks found from several listed neighbours' stamps are the same
    pixel = np.round(hx).astype(np.int64) * 1_000_003 + np.round(hy).astype(np.int64)
    _, first = np.unique(pixel, return_index=True)
    return hx[first], hy[first]


def _model_image(model: SourceModel, shape, *, exclude: int | None = None) -> np.ndarray:
    """All sources' PSF light (e-) on the frame."""
    from .psf import psf_stamps

    image = np.zeros(shape)
    ok = (model.flux != 0) & np.isfinite(model.x) & np.isfinite(model.y)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return image
    if model.stamps is not None:
        p, px, py = model.stamps[idx], model.px[idx], model.py[idx]
    else:
        p, px, py = psf_stamps(model.psf, model.x[idx], model.y[idx], model.half + 2)
    ny, nx = shape
    inside = ((py >= 0) & (py < ny))[:, :, None] & ((px >= 0) & (px < nx))[:, None, :]
    flat = (np.clip(py, 0, ny - 1)[:, :, None] * nx + np.clip(px, 0, nx - 1)[:, None, :])
    np.add.at(image.ravel(), flat[inside], (model.flux[idx, None, None] * p)[inside])
    return image


def _local_mean_fill(values: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Each fill pixel replaced by the mean of its unmasked 5×5 neighbours (0 if none)."""
    from scipy import ndimage

    good = (~fill).astype(float)
    kernel = np.ones((5, 5))
    total = ndimage.convolve(np.where(fill, 0.0, values), kernel, mode="constant")
    count = ndimage.convolve(good, kernel, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, 0.0)
    return np.where(fill, mean, values)


def measure_apertures(*, data: np.ndarray, error: np.ndarray, mask: np.ndarray,
                      x: Sequence[float], y: Sequence[float], radii: Sequence[float],
                      annulus: tuple[float, float] = (12.0, 20.0),
                      background: str = "annulus-median", background_map: np.ndarray | None = None,
                      background_map_error: np.ndarray | None = None,
                      sigma: float = 3.0, min_sky_pixels: int = 20,
                      sky_mask: np.ndarray | None = None,
                      source_ids: Sequence[int] | None = None,
                      error_cal: np.ndarray | None = None, psf=None, repair: bool = True,
                      dark_subtracted: bool = True, max_repaired_fraction: float = 0.3,
                      max_contamination: float = 0.01, subtract_neighbours: bool = False,
                      optimal: bool = False) -> pd.DataFrame:
    """Aperture (and optionally optimal) photometry of sources at ``(x, y)`` (0-based).

    Parameters
    ----------
    data, error : ndarray
        Calibrated SCI and ERR (electrons, ERR the total 1σ); not modified.
    mask : ndarray of uint16 or bool
        MASK plane (non-zero = bad; see the module docstring for what is filled,
        what is measured and what is left out).
    x, y : sequence of float
        Source centres.
    radii : sequence of float
        Aperture radii in pixels.
    annulus : (float, float)
        Inner and outer radius of the local-background annulus.
    background : {'annulus-median', 'annulus-mean', 'annulus-mode', 'map'}
        Local background per pixel: clipped median, mean or mode of the annulus,
        or the mean of ``background_map`` inside the aperture.
    background_map, background_map_error : ndarray, optional
        BKG of the background stage (also the sky under filled pixels), and its
        per-pixel error (map mode; fully correlated over an aperture).
    sigma, min_sky_pixels : float, int
        Clipping of the annulus; fewer usable annulus pixels set FEW_SKY_PIXELS.
    sky_mask : ndarray of bool, optional
        Pixels left out of the annuli only (the background stage's source mask);
        where it leaves fewer than ``min_sky_pixels``, the annulus is used whole.
    error_cal : ndarray, optional
        ERR_CAL of the calibrated frame: the masters' part of ERR (default 0).
    psf : PSFModel, optional
        The frame's PSF (:func:`ccdflow.photometry.psf.fit_psf`): fills masked
        pixels, estimates neighbour light and weights optimal photometry.
        Without it, masked pixels are filled from their neighbours and
        ``contamination`` is NaN.
    repair : bool
        Fill masked pixels (False: they count zero and leave the area, every
        row with one is MASKED; photutils' convention).
    dark_subtracted : bool
        Whether a dark was subtracted (HOT pixels then hold corrected values).
    max_repaired_fraction, max_contamination : float
        Thresholds of MASKED and CONTAMINATED.
    subtract_neighbours : bool
        Remove the modelled light of the other sources from each aperture.
    optimal : bool
        Also Naylor (1998) optimal photometry with the PSF (needs ``psf``): rows
        with ``radius`` NaN after the apertures (see :func:`_optimal`).

    Returns
    -------
    DataFrame
        One row per source and radius (then per source for ``optimal``):
        ``source_id, x, y, radius, flux, flux_err, flux_err_cal, bkg, bkg_err,
        bkg_rms, n_ap, n_sky, masked_fraction, repaired_fraction, contamination,
        flags``.
    """
    data = np.asarray(data, np.float64)
    error = np.asarray(error, np.float64)
    bits = np.asarray(mask)
    if data.shape != error.shape or data.shape != bits.shape:
        raise PhotometryError(f"data {data.shape}, error {error.shape} and mask "
                              f"{bits.shape} must have one shape")
    if background not in (*SKY_VARIANCE_FACTOR, "map"):
        raise PhotometryError(f"background must be one of {[*SKY_VARIANCE_FACTOR, 'map']}, "
                              f"got {background!r}")
    if background == "map" and background_map is None:
        raise PhotometryError("background='map' needs background_map")
    r_in, r_out = annulus
    if not 0 < r_in < r_out:
        raise PhotometryError(f"annulus must satisfy 0 < r_in < r_out, got {annulus}")
    radii = [float(r) for r in radii]
    if not radii or min(radii) <= 0:
        raise PhotometryError(f"radii must be positive, got {radii}")
    if optimal and psf is None:
        raise PhotometryError("optimal photometry needs the frame's PSF (psf=...)")
    if sky_mask is not None:
        sky_mask = np.asarray(sky_mask, bool)
        if sky_mask.shape != bits.shape:
            raise PhotometryError(f"sky_mask {sky_mask.shape} must have the data's shape "
                                  f"{bits.shape}")
    err_cal = (np.zeros_like(data) if error_cal is None
               else np.nan_to_num(np.asarray(error_cal, np.float64)))
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    ids = np.arange(n) if source_ids is None else np.asarray(source_ids)
    ny, nx = data.shape
    inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    pos_x, pos_y = np.where(inside, x, 0.0), np.where(inside, y, 0.0)

    if bits.dtype == bool:  # a plain bad-pixel mask: every bad pixel is filled
        fill = bits.copy()
        saturated = np.zeros(bits.shape, bool)
    else:
        b = bits.astype(np.uint32)
        fill_bits = int(FILL_BITS) | (0 if dark_subtracted else int(MaskBit.HOT))
        saturated = (b & int(MaskBit.SATURATED)) != 0
        fill = ((b & fill_bits) != 0) & ~saturated
    fill |= ~np.isfinite(data) & ~saturated
    bad_any = fill | saturated  # not usable as measured values

    # ---- local sky per source
    n_sky = np.zeros(n)
    bkg_rms = np.full(n, np.nan)
    if background == "map":
        bmap = np.asarray(background_map, np.float64)
        berr = (np.zeros_like(bmap) if background_map_error is None
                else np.asarray(background_map_error, np.float64))
    else:
        stats = annulus_statistics(data=data, mask=bad_any | (sky_mask if sky_mask is not None
                                                              else False),
                                   x=pos_x, y=pos_y, r_in=r_in, r_out=r_out, sigma=sigma)
        if sky_mask is not None and (stats[3] < min_sky_pixels).any():
            whole = annulus_statistics(data=data, mask=bad_any, x=pos_x, y=pos_y, r_in=r_in,
                                       r_out=r_out, sigma=sigma)
            use = stats[3] >= min_sky_pixels
            stats = tuple(np.where(use, a, w) for a, w in zip(stats, whole, strict=True))
        median, mean, spread, n_sky = stats
        level = {"annulus-median": median, "annulus-mean": mean,
                 "annulus-mode": 2.5 * median - 1.5 * mean}[background]
        sky_var = SKY_VARIANCE_FACTOR[background] * spread**2 / np.maximum(n_sky, 1)
        bkg_rms = spread

    # ---- the repaired frame: fill pixels from the sources' PSF model (or neighbours)
    if background_map is not None:
        sky_pix = np.asarray(background_map, np.float64)
    elif background != "map" and np.isfinite(level).any():
        sky_pix = np.full(data.shape, float(np.nanmedian(level)))
    else:
        sky_pix = None
    rand_var = np.clip(np.nan_to_num(error**2) - err_cal**2, 0.0, None)
    # the frame's typical per-pixel sky noise (a sparse sample is plenty)
    sample = rand_var[::7, ::7][~bad_any[::7, ::7]]
    typical_noise = (float(np.nanmedian(bkg_rms)) if np.isfinite(bkg_rms).any()
                     else float(np.sqrt(np.median(sample))) if sample.size else 1.0)
    model = None
    model_image = None
    n_hidden = 0
    if psf is not None:
        src_sky = level if background != "map" else (
            bmap[np.clip(np.round(pos_y).astype(int), 0, ny - 1),
                 np.clip(np.round(pos_x).astype(int), 0, nx - 1)])
        src_rms = np.where(np.isfinite(bkg_rms), bkg_rms, typical_noise)
        xs_in, ys_in = np.where(inside, x, np.nan), np.where(inside, y, np.nan)
        fit = dict(data=data, usable=~bad_any, psf=psf, radius=max(radii),
                   recentre_above=0.1 if subtract_neighbours else 0.0)
        model = fit_source_fluxes(sky=np.nan_to_num(src_sky),
                                  sky_rms=np.nan_to_num(src_rms, nan=1.0), x=xs_in, y=ys_in,
                                  **fit)
        model_image = _model_image(model, data.shape)
        # stars the list lacks (unresolved by detection) in the residual: added to the
        # model, so that their light counts as neighbour light and fills masked pixels
        sky_level = (np.asarray(background_map, np.float64) if background_map is not None
                     else float(np.nanmedian(src_sky)))
        residual = np.where(bad_any, 0.0, data - sky_level - model_image)
        avoid = None
        if saturated.any():  # a saturated star's model leaves structured residuals
            from scipy import ndimage

            reach_sat = max(2, math.ceil(2 * psf.fwhm))
            avoid = ndimage.binary_dilation(saturated, iterations=reach_sat)
        hidden_x, hidden_y = find_hidden_neighbours(
            residual=residual, variance=typical_noise**2 + np.clip(model_image, 0, None),
            model=model, radius=max(radii), avoid=avoid)
        if len(hidden_x):
            hidden_sky = (bmap[hidden_y.astype(int), hidden_x.astype(int)]
                          if background == "map" else np.full(len(hidden_x),
                                                              float(np.nanmedian(src_sky))))
            everything = fit_source_fluxes(
                sky=np.concatenate([np.nan_to_num(src_sky), hidden_sky]),
                sky_rms=np.concatenate([np.nan_to_num(src_rms, nan=1.0),
                                        np.full(len(hidden_x), typical_noise)]),
                x=np.concatenate([xs_in, hidden_x]), y=np.concatenate([ys_in, hidden_y]),
                **fit)
            model_image = _model_image(everything, data.shape)
            model = SourceModel(psf=psf, x=everything.x[:n], y=everything.y[:n],
                                flux=everything.flux[:n], flux_var=everything.flux_var[:n],
                                half=everything.half, stamps=everything.stamps[:n],
                                px=everything.px[:n], py=everything.py[:n])
        n_hidden = len(hidden_x)
        if subtract_neighbours:  # apertures on the recentred stars of blends
            moved = inside & np.isfinite(model.x) & np.isfinite(model.y)
            x = np.where(moved, model.x, x)
            y = np.where(moved, model.y, y)
            pos_x, pos_y = np.where(inside, x, 0.0), np.where(inside, y, 0.0)
    if repair and fill.any():
        if sky_pix is None:
            sky_pix = _local_mean_fill(np.where(bad_any, 0.0, data), bad_any)
        if model_image is not None:
            filled = sky_pix + model_image
            fill_var = typical_noise**2 + np.clip(model_image, 0, None)
        else:
            filled = _local_mean_fill(np.where(bad_any, 0.0, data), bad_any)
            fill_var = _local_mean_fill(np.where(bad_any, 0.0, rand_var), bad_any)
        work = np.where(fill, filled, data)
        work_var = np.where(fill, fill_var, rand_var)
        excluded = saturated
    else:
        work, work_var = data, rand_var
        excluded = bad_any
    work = np.where(excluded, 0.0, np.nan_to_num(work))
    work_var = np.where(excluded, 0.0, np.nan_to_num(work_var))
    cal_var = np.where(excluded | fill, 0.0, err_cal**2)
    ones = np.where(excluded, 0.0, 1.0)

    import sep

    def sums(image, radius):
        s, _, _ = sep.sum_circle(np.ascontiguousarray(image), pos_x, pos_y, radius, subpix=0)
        return np.asarray(s, float)

    # per-source stamps for fractions and error terms (approximate overlaps)
    reach = max(radii)
    half = math.ceil(reach) + 1
    dgrid = np.arange(-half, half + 1)
    spx = np.floor(pos_x + 0.5).astype(np.int64)[:, None] + dgrid[None, :]
    spy = np.floor(pos_y + 0.5).astype(np.int64)[:, None] + dgrid[None, :]
    fill_st, _ = _stamps(fill, spx, spy, fill=False)
    if model is not None:
        own_p, _, _ = model.box(half)
        model_st, _ = _stamps(model_image, spx, spy)
    placed = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if len(placed) > 1:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.column_stack([x[placed], y[placed]]))

    everywhere = np.ones_like(ones)
    saturated_f = saturated.astype(float)
    rows = []
    for radius in radii:
        raw = sums(work, radius)
        n_good = sums(ones, radius)
        n_all = sums(everywhere, radius)
        var_sum = sums(work_var, radius)
        cal_sum = sums(cal_var, radius)
        ov = _overlap(spx, spy, pos_x, pos_y, radius)
        if background == "map":
            with np.errstate(invalid="ignore", divide="ignore"):
                bkg = sums(np.where(excluded, 0.0, bmap), radius) / n_good
                bkg_err = sums(np.where(excluded, 0.0, berr), radius) / n_good
            bkg_total = bkg * n_good
            bkg_var_total = (bkg_err * n_good) ** 2  # map errors: fully correlated
        else:
            bkg = level
            bkg_err = np.sqrt(sky_var)
            bkg_total = level * n_good
            bkg_var_total = n_good**2 * sky_var
        flux = raw - bkg_total
        flux_var = var_sum + bkg_var_total
        repaired = np.zeros(n)
        contamination = np.full(n, np.nan)
        if repair and model is not None:
            own = (ov * own_p).sum(axis=(1, 2))
            filled_share = (ov * own_p * fill_st).sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                repaired = np.where(own > 0, filled_share / own, 0.0)
            flux_var = flux_var + filled_share**2 * model.flux_var
        elif repair:
            with np.errstate(invalid="ignore", divide="ignore"):
                repaired = (ov * fill_st).sum(axis=(1, 2)) / np.maximum(ov.sum(axis=(1, 2)),
                                                                        1e-9)
        if model is not None:
            own_light = model.flux * (ov * own_p).sum(axis=(1, 2))
            others = (ov * model_st).sum(axis=(1, 2)) - own_light
            with np.errstate(invalid="ignore", divide="ignore"):
                contamination = np.where(own_light > 0, np.clip(others, 0, None) / own_light,
                                         np.where(others > 0, np.inf, 0.0))
            if subtract_neighbours:
                flux = flux - others
                flux_var = flux_var + _neighbour_variance(model, x, y, radius, placed)
        masked_fraction = np.clip(1.0 - n_good / np.maximum(n_all, 1e-9), 0.0, 1.0)
        flags = np.zeros(n, np.int64)
        if repair:
            # any filled pixel the exact aperture touches (its corner within r)
            centre_d = np.hypot(spx[:, None, :] - pos_x[:, None, None],
                                spy[:, :, None] - pos_y[:, None, None])
            touched = (fill_st & (centre_d < radius + math.sqrt(0.5))).any(axis=(1, 2))
            repaired = np.where(touched, np.maximum(repaired, 1e-6), 0.0)
            flags[touched] |= PhotFlag.REPAIRED
            flags[repaired > max_repaired_fraction] |= PhotFlag.MASKED
        else:
            flags[masked_fraction > 0.001] |= PhotFlag.MASKED
        sat_area = sums(saturated_f, radius) if saturated.any() else np.zeros(n)
        flags[sat_area > 0] |= PhotFlag.SATURATED
        flags[np.nan_to_num(contamination) > max_contamination] |= PhotFlag.CONTAMINATED
        rim = max(radius, r_out if background != "map" else radius)
        near = (x - rim < -0.5) | (x + rim > nx - 0.5) | (y - rim < -0.5) | (y + rim > ny - 0.5)
        flags[near] |= PhotFlag.NEAR_EDGE
        if len(placed) > 1:
            for i, j in tree.query_pairs(radius):
                flags[placed[i]] |= PhotFlag.BLENDED
                flags[placed[j]] |= PhotFlag.BLENDED
        if background != "map":
            flags[n_sky < min_sky_pixels] |= PhotFlag.FEW_SKY_PIXELS
        flags[~inside] |= PhotFlag.OFF_FRAME
        nan = np.where(inside, 1.0, np.nan)
        rows.append(pd.DataFrame({
            "source_id": ids, "x": x, "y": y, "radius": radius, "flux": flux * nan,
            "flux_err": np.sqrt(flux_var) * nan, "flux_err_cal": np.sqrt(cal_sum) * nan,
            "bkg": np.asarray(bkg) * nan, "bkg_err": np.asarray(bkg_err) * nan,
            "bkg_rms": bkg_rms * nan, "n_ap": n_good, "n_sky": n_sky,
            "masked_fraction": masked_fraction, "repaired_fraction": repaired,
            "contamination": contamination * nan, "flags": flags}))
    if optimal:
        rows.append(_optimal(data=data, rand_var=rand_var, err_cal=err_cal, usable=~bad_any,
                             saturated=saturated, x=x, y=y, inside=inside, ids=ids, psf=psf,
                             model=model, radius=max(radii),
                             sky=(level if background != "map" else None), bmap=(
                                 bmap if background == "map" else None),
                             sky_var=(sky_var if background != "map" else None),
                             bkg_rms=bkg_rms, n_sky=n_sky,
                             reference=rows[int(np.argmax(radii))],
                             max_repaired_fraction=max_repaired_fraction,
                             max_contamination=max_contamination,
                             subtract_neighbours=subtract_neighbours))
    table = pd.concat(rows, ignore_index=True)
    table.attrs["hidden_neighbours"] = n_hidden
    if optimal:
        table.attrs["optimal_correction"] = rows[-1].attrs.get("optimal_correction")
    return table


def _neighbour_variance(model: SourceModel, x, y, radius, placed) -> np.ndarray:
    """Variance of the modelled neighbour light in each aperture: Σ_j (C_ij)² Var(F̂_j)
    with C_ij the share of source j's light in source i's aperture (Gaussian-radius
    approximation of the PSF's encircled energy at the pair's distance)."""
    from scipy.spatial import cKDTree

    out = np.zeros(len(x))
    if len(placed) < 2:
        return out
    sigma = model.psf.fwhm / 2.3548
    reach = radius + 5 * sigma
    tree = cKDTree(np.column_stack([x[placed], y[placed]]))
    for i, j in tree.query_pairs(reach):
        a, b = placed[i], placed[j]
        d = math.hypot(x[a] - x[b], y[a] - y[b])
        # fraction of a Gaussian at distance d inside a circle of radius r (≈, 1-D)
        share = 0.5 * (math.erf((radius - d) / (math.sqrt(2) * sigma))
                       + math.erf((radius + d) / (math.sqrt(2) * sigma)))
        share *= 1 - math.exp(-radius * radius / (2 * sigma * sigma))
        out[a] += share**2 * model.flux_var[b]
        out[b] += share**2 * model.flux_var[a]
    return out


def _optimal(*, data, rand_var, err_cal, usable, saturated, x, y, inside, ids, psf, model,
             radius, sky, bmap, sky_var, bkg_rms, n_sky, reference, max_repaired_fraction,
             max_contamination, subtract_neighbours) -> pd.DataFrame:
    """Naylor (1998) optimal photometry with the frame's PSF.

    Over the usable pixels within ``radius`` of each star (masked ones simply get no
    weight, which is the repair here)::

        W_i = (P_i/V_i) / Σ_j (P_j²/V_j),     V_i = sky variance + F̂·P_i (the model)
        F   = Σ W_i (D_i − b̂),               flux_err² = Σ W_i² (ERR_i² − ERR_CAL_i²)
                                                        + (Σ W_i)²·Var(b̂)

    F estimates the total flux if the PSF model is right; a per-frame profile
    correction (median of the largest aperture's flux over the optimal flux for
    isolated, unflagged bright stars) absorbs what the model misses in the wings.
    ``repaired_fraction`` is the share of the weight Σ P²/V lost to masked pixels.
    """
    n = len(x)
    pos_x, pos_y = np.where(inside, x, 0.0), np.where(inside, y, 0.0)
    half = math.ceil(radius) + 1
    p, px, py = model.box(half)
    d, within = _stamps(data, px, py)
    ok, _ = _stamps(usable, px, py, fill=False)
    sat, _ = _stamps(saturated, px, py, fill=False)
    rv, _ = _stamps(rand_var, px, py)
    cv, _ = _stamps(err_cal**2, px, py)
    ov = _overlap(px, py, pos_x, pos_y, radius) > 0.5
    region = within & ov
    use = region & ok
    if bmap is not None:
        bstamp, _ = _stamps(bmap, px, py)
        background = bstamp
        level = np.array([np.nan] * n)
    else:
        background = np.nan_to_num(sky)[:, None, None]
        level = sky
    f_est = np.clip(model.flux, 0, None)
    rms = np.where(np.isfinite(bkg_rms), bkg_rms, float(np.sqrt(np.median(rand_var[::7, ::7]))))
    v = np.nan_to_num(rms, nan=1.0)[:, None, None] ** 2 + f_est[:, None, None] * p
    with np.errstate(invalid="ignore", divide="ignore"):
        weight_all = np.where(region, p * p / v, 0.0).sum(axis=(1, 2))
        norm = np.where(use, p * p / v, 0.0).sum(axis=(1, 2))
        w = np.where(use, (p / v) / norm[:, None, None], 0.0)
        resid = d - background
        if subtract_neighbours and model is not None:
            others = _model_image_stamps(model, px, py) - model.flux[:, None, None] * p
            resid = resid - others
        flux = (w * resid).sum(axis=(1, 2))
        wsum = w.sum(axis=(1, 2))
        var = (w * w * rv).sum(axis=(1, 2))
        var = var + (wsum**2 * sky_var if sky_var is not None else 0.0)
        cal = (w * w * cv).sum(axis=(1, 2))
        repaired = np.where(weight_all > 0, 1.0 - norm / weight_all, 0.0)
    # profile correction from isolated, unflagged bright stars
    ref_flux = reference["flux"].to_numpy(float)
    ref_flags = reference["flags"].to_numpy(np.int64)
    clean = ((ref_flags & int(BAD_FLAGS | PhotFlag.CONTAMINATED | PhotFlag.BLENDED
                              | PhotFlag.REPAIRED)) == 0)
    snr = ref_flux / reference["flux_err"].to_numpy(float)
    pick = clean & np.isfinite(flux) & (flux > 0) & (snr > 50)
    correction = float(np.median(ref_flux[pick] / flux[pick])) if pick.sum() >= 3 else 1.0
    flux, var, cal = flux * correction, var * correction**2, cal * correction**2
    flags = np.zeros(n, np.int64)
    flags[repaired > 0] |= PhotFlag.REPAIRED
    flags[repaired > max_repaired_fraction] |= PhotFlag.MASKED
    flags[(sat & region).any(axis=(1, 2))] |= PhotFlag.SATURATED
    keep = int(PhotFlag.NEAR_EDGE | PhotFlag.OFF_FRAME | PhotFlag.FEW_SKY_PIXELS
               | PhotFlag.BLENDED | PhotFlag.CONTAMINATED)
    flags |= ref_flags & keep
    nan = np.where(inside, 1.0, np.nan)
    table = pd.DataFrame({
        "source_id": ids, "x": x, "y": y, "radius": np.nan, "flux": flux * nan,
        "flux_err": np.sqrt(var) * nan, "flux_err_cal": np.sqrt(cal) * nan,
        "bkg": (level if bmap is None else reference["bkg"].to_numpy(float)) * nan,
        "bkg_err": reference["bkg_err"].to_numpy(float),
        "bkg_rms": bkg_rms * nan, "n_ap": region.sum(axis=(1, 2)).astype(float),
        "n_sky": n_sky, "masked_fraction": 1.0 - use.sum(axis=(1, 2)) / np.maximum(
            region.sum(axis=(1, 2)), 1), "repaired_fraction": repaired,
        "contamination": reference["contamination"].to_numpy(float), "flags": flags})
    table.attrs["optimal_correction"] = correction
    return table


def _model_image_stamps(model: SourceModel, px, py) -> np.ndarray:
    """Every source's modelled light on the given stamps' pixels."""
    ny = int(max(py.max() + 1, 1))
    nx = int(max(px.max() + 1, 1))
    lo_y, lo_x = int(min(py.min(), 0)), int(min(px.min(), 0))
    shifted = SourceModel(psf=model.psf, x=model.x - lo_x, y=model.y - lo_y, flux=model.flux,
                          flux_var=model.flux_var, half=model.half)
    image = _model_image(shifted, (ny - lo_y, nx - lo_x))
    values, _ = _stamps(image, px - lo_x, py - lo_y)
    return values
