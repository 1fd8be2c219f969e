"""Star centres and the frame's FWHM: pixel-integrated Gaussian PRF fits to many stars
at once (:func:`fit_gaussian_prf`, the model of photutils' ``fit_fwhm``), the median
FWHM of bright isolated stars (:func:`estimate_fwhm`), Gaussian-windowed centroids
(:func:`recentroid`, SExtractor's XWIN) and the choice between the two per star
(:func:`refine_centres`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import SourceError

__all__ = ["estimate_fwhm", "fit_gaussian_prf", "masked_near", "recentroid", "refine_centres"]


def fit_gaussian_prf(*, data: np.ndarray, x: Sequence[float], y: Sequence[float],
                     fit_shape: int = 7, fwhm_guess: float = 2.5, max_iterations: int = 30,
                     ) -> pd.DataFrame:
    """Circular Gaussian PRF (pixel-integrated) fits to many stars at once.

    The model of photutils' ``fit_fwhm`` (``CircularGaussianPRF``: flux, x0, y0,
    FWHM, no constant, on background-subtracted ``data``), fitted to the
    ``fit_shape`` × ``fit_shape`` stamp around each position by Levenberg–Marquardt
    with every star in one vectorised pass (~0.2 ms per star instead of ~30 ms for
    an astropy fitter per star).  Tests compare the FWHM with ``fit_fwhm``.

    Returns
    -------
    DataFrame
        ``flux, x0, y0, fwhm, converged`` per position (NaN where a stamp leaves
        the frame or the fit fails).
    """
    from scipy.special import ndtr

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    out = pd.DataFrame({"flux": np.full(n, np.nan), "x0": np.full(n, np.nan),
                        "y0": np.full(n, np.nan), "fwhm": np.full(n, np.nan),
                        "converged": np.zeros(n, bool)})
    if fit_shape < 3 or fit_shape % 2 == 0:
        raise SourceError(f"fit_shape must be odd and >= 3, got {fit_shape}")
    ny, nx = data.shape
    h = fit_shape // 2
    xi, yi = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
    ok = np.isfinite(x) & np.isfinite(y) & (xi - h >= 0) & (xi + h < nx) & (yi - h >= 0) & (
        yi + h < ny)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return out
    d = np.arange(-h, h + 1)
    px = (xi[idx, None] + d[None, :]).astype(float)  # (m, k) pixel centres
    py = (yi[idx, None] + d[None, :]).astype(float)
    stamp = np.asarray(data, float)[py.astype(np.int64)[:, :, None],
                                    px.astype(np.int64)[:, None, :]]  # (m, k, k)
    good = np.isfinite(stamp)
    stamp = np.where(good, stamp, 0.0)
    norm = 1.0 / math.sqrt(2.0 * math.pi)
    to_sigma = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    # start: flux = stamp sum, centre = given position, sigma from the guess
    p = np.column_stack([stamp.sum(axis=(1, 2)), x[idx], y[idx],
                         np.full(len(idx), max(fwhm_guess, 0.5) * to_sigma)])
    p[:, 0] = np.where(p[:, 0] > 0, p[:, 0], np.abs(stamp).sum(axis=(1, 2)) + 1.0)

    def model(params):
        f, x0, y0, s = (params[:, i][:, None] for i in range(4))
        ux0, ux1 = (px - 0.5 - x0) / s, (px + 0.5 - x0) / s
        uy0, uy1 = (py - 0.5 - y0) / s, (py + 0.5 - y0) / s
        ex, ey = ndtr(ux1) - ndtr(ux0), ndtr(uy1) - ndtr(uy0)
        gx0, gx1 = norm * np.exp(-0.5 * ux0**2), norm * np.exp(-0.5 * ux1**2)
        gy0, gy1 = norm * np.exp(-0.5 * uy0**2), norm * np.exp(-0.5 * uy1**2)
        dex_dx0, dey_dy0 = -(gx1 - gx0) / s, -(gy1 - gy0) / s
        dex_ds, dey_ds = -(gx1 * ux1 - gx0 * ux0) / s, -(gy1 * uy1 - gy0 * uy0) / s
        m = f[:, :, None] * ey[:, :, None] * ex[:, None, :]
        jac = np.stack([ey[:, :, None] * ex[:, None, :],
                        f[:, :, None] * ey[:, :, None] * dex_dx0[:, None, :],
                        f[:, :, None] * dey_dy0[:, :, None] * ex[:, None, :],
                        f[:, :, None] * (dey_ds[:, :, None] * ex[:, None, :]
                                         + ey[:, :, None] * dex_ds[:, None, :])], axis=-1)
        return m, jac

    lam = np.full(len(idx), 1e-3)
    resid = np.where(good, stamp - model(p)[0], 0.0)
    chi2 = (resid**2).sum(axis=(1, 2))
    converged = np.zeros(len(idx), bool)
    for _ in range(max_iterations):
        m, jac = model(p)
        jac = np.where(good[..., None], jac, 0.0).reshape(len(idx), -1, 4)
        r = np.where(good, stamp - m, 0.0).reshape(len(idx), -1)
        jtj = np.einsum("nki,nkj->nij", jac, jac)
        jtr = np.einsum("nki,nk->ni", jac, r)
        diag = np.diagonal(jtj, axis1=1, axis2=2)
        damped = jtj + lam[:, None, None] * np.eye(4)[None] * diag[:, None, :]
        try:
            step = np.linalg.solve(damped, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.zeros_like(p)
        trial = p + step
        trial[:, 3] = np.clip(trial[:, 3], 0.1, 3.0 * fit_shape)
        new_chi2 = (np.where(good, stamp - model(trial)[0], 0.0) ** 2).sum(axis=(1, 2))
        better = new_chi2 < chi2
        small = (np.abs(step) < 1e-5 * (np.abs(p) + 1e-3)).all(axis=1) | (
            better & (chi2 - new_chi2 < 1e-9 * chi2))
        p = np.where(better[:, None], trial, p)
        chi2 = np.where(better, new_chi2, chi2)
        lam = np.where(better, lam / 3.0, lam * 4.0)
        converged |= small
        if converged.all():
            break
    fwhm = p[:, 3] / to_sigma
    inside = (np.abs(p[:, 1] - x[idx]) < h) & (np.abs(p[:, 2] - y[idx]) < h) & (p[:, 0] > 0)
    out.loc[idx, "flux"] = np.where(inside, p[:, 0], np.nan)
    out.loc[idx, "x0"] = np.where(inside, p[:, 1], np.nan)
    out.loc[idx, "y0"] = np.where(inside, p[:, 2], np.nan)
    out.loc[idx, "fwhm"] = np.where(inside, fwhm, np.nan)
    out.loc[idx, "converged"] = converged & inside
    return out



def estimate_fwhm(*, data: np.ndarray, background: np.ndarray, sources: pd.DataFrame,
                  min_snr: float = 30.0, n_max: int = 25) -> float:
    """Median FWHM (px) from circular Gaussian PRF fits (:func:`fit_gaussian_prf`, the
    model of photutils' ``fit_fwhm``) to bright, unmasked, isolated sources.

    Segment moments (``SourceCatalog.fwhm``) are truncated at the detection
    isophote and read ~12 % low on the demo night; a fit does not.  The
    ``n_max`` brightest qualifying sources are fitted.
    """
    if sources.empty:
        raise SourceError("no sources to measure the FWHM")
    good = sources[(sources["snr"] > min_snr) & ~sources["saturated_or_masked"].astype(bool)]
    if len(good) > 3:
        from ..spatial import PointTree

        xy = good[["x", "y"]].to_numpy()
        dist, _ = PointTree(xy).query(xy, k=2)
        isolated = good[dist[:, 1] > 4 * good["fwhm"].median()]
        good = isolated if len(isolated) >= 3 else good
    ny, nx = data.shape
    good = good[(good["x"] > 8) & (good["x"] < nx - 9) & (good["y"] > 8) & (good["y"] < ny - 9)]
    if good.empty:
        raise SourceError(f"no unsaturated source above S/N {min_snr} to measure the FWHM")
    good = good.head(n_max)
    size = int(np.clip(2 * np.ceil(2 * good["fwhm"].median()) + 1, 7, 25))
    fits = fit_gaussian_prf(data=np.asarray(data, float) - background, x=good["x"].to_numpy(),
                            y=good["y"].to_numpy(), fit_shape=size,
                            fwhm_guess=float(good["fwhm"].median()))
    fwhm = fits["fwhm"].to_numpy(float)
    fwhm = fwhm[np.isfinite(fwhm) & (fwhm > 0.5)]
    if fwhm.size == 0:
        raise SourceError("FWHM fits failed for every bright source")
    return float(np.median(fwhm))



def recentroid(*, data: np.ndarray, background: np.ndarray, x: Sequence[float],
               y: Sequence[float], fwhm: float, mask: np.ndarray | None = None,
               max_iterations: int = 16, tolerance: float = 2e-4,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-windowed centroids (SExtractor's XWIN_IMAGE), all sources at once.

    Iterates ``x ← x + 2·Σ w·I·(x_i − x) / Σ w·I`` with ``w = exp(−r²/2σ_w²)``,
    ``σ_w = fwhm/2.3548``, over the unmasked background-subtracted pixels of a
    box of half-width ``ceil(2.5·fwhm)`` around the input position, until the
    step is below ``tolerance`` px.  A masked pixel (a cosmic ray, a bad column)
    leaves out its mirror pixel through the box centre too, so the centroid of a
    symmetric star stays on it.  For a symmetric PSF this converges to the
    centre with nearly the precision of a PSF fit (tests compare it with
    photutils' ``centroid_2dg``) at a small fraction of the cost: one vectorised
    pass per iteration instead of a 2-D Gaussian fit per source.

    Sources whose box leaves the frame, whose window holds no positive flux, or
    whose centroid wanders beyond the box keep their input position (the
    caller flags off-frame rows).
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if not np.isfinite(fwhm) or fwhm <= 0:
        raise SourceError(f"fwhm must be a positive number, got {fwhm}")
    ny, nx = data.shape
    half = max(3, math.ceil(2.5 * fwhm))
    finite = np.isfinite(x) & np.isfinite(y)
    ix0 = np.floor(np.where(finite, x, 0) + 0.5).astype(np.int64)
    iy0 = np.floor(np.where(finite, y, 0) + 0.5).astype(np.int64)
    ok = finite & (ix0 - half >= 0) & (ix0 + half < nx) & (iy0 - half >= 0) & (iy0 + half < ny)
    out_x, out_y = x.copy(), y.copy()
    idx = np.flatnonzero(ok)
    if not len(idx):
        return out_x, out_y
    dy, dx = np.mgrid[-half:half + 1, -half:half + 1]
    px = ix0[idx, None] + dx.ravel()  # pixel centres, (n, box²)
    py = iy0[idx, None] + dy.ravel()
    values = data[py, px] - background[py, px]
    usable = np.isfinite(values)
    if mask is not None:
        usable &= np.asarray(mask)[py, px] == 0
    # a masked pixel also drops its mirror image through the box centre, so that what
    # is left stays symmetric about the star and the centroid is not pulled off it
    usable &= usable[:, ::-1]
    values = np.where(usable, values, 0.0)
    inv2s2 = 1.0 / (2.0 * (fwhm / 2.3548) ** 2)
    cx, cy = x[idx].copy(), y[idx].copy()
    active = np.ones(len(idx), bool)
    for _ in range(max_iterations):
        ox, oy = px - cx[:, None], py - cy[:, None]
        weight = values * np.exp(-(ox**2 + oy**2) * inv2s2)
        total = weight.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            step_x = 2.0 * (weight * ox).sum(axis=1) / total
            step_y = 2.0 * (weight * oy).sum(axis=1) / total
        move = active & (total > 0) & np.isfinite(step_x) & np.isfinite(step_y)
        cx[move] += step_x[move]
        cy[move] += step_y[move]
        active &= move & (np.hypot(step_x, step_y) > tolerance)
        if not active.any():
            break
    good = (np.isfinite(cx) & np.isfinite(cy) & (np.abs(cx - ix0[idx]) < half)
            & (np.abs(cy - iy0[idx]) < half) & (weight.sum(axis=1) > 0))
    out_x[idx[good]] = cx[good]
    out_y[idx[good]] = cy[good]
    return out_x, out_y



def masked_near(mask: np.ndarray | None, x: np.ndarray, y: np.ndarray, *,
                half: int) -> np.ndarray:
    """Whether any masked pixel lies in the (2·half+1)² box around each position."""
    out = np.zeros(len(x), bool)
    if mask is None:
        return out
    bad = np.asarray(mask) != 0
    ny, nx = bad.shape
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any() or not bad.any():
        return out
    d = np.arange(-half, half + 1)
    cx = np.floor(x[ok] + 0.5).astype(np.int64)
    cy = np.floor(y[ok] + 0.5).astype(np.int64)
    rr = np.clip(cy[:, None, None] + d[None, :, None], 0, ny - 1)
    cc = np.clip(cx[:, None, None] + d[None, None, :], 0, nx - 1)
    out[ok] = bad[rr, cc].any(axis=(1, 2))
    return out



def refine_centres(*, data: np.ndarray, background: np.ndarray, x: np.ndarray, y: np.ndarray,
                   fwhm: float, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Star centres: Gaussian-windowed centroids (:func:`recentroid`), or the centre of a
    Gaussian PRF fitted to the unmasked pixels (:func:`fit_gaussian_prf`) for a star with
    masked pixels within 1.5 FWHM of it (a centroid of what a mask leaves is pulled off
    the star) and for every star of an undersampled frame (FWHM below
    ``UNDERSAMPLED_FWHM_PX``: a windowed centroid of a star sampled by a few pixels is
    pulled towards the centre of its brightest pixel).  Where a fit fails the centroid
    stands."""
    from ..segmentation import UNDERSAMPLED_FWHM_PX

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    cx, cy = recentroid(data=data, background=background, x=x, y=y, fwhm=fwhm, mask=mask)
    hit = (np.isfinite(x) & np.isfinite(y) if fwhm < UNDERSAMPLED_FWHM_PX
           else masked_near(mask, x, y, half=max(2, math.ceil(1.5 * fwhm))))
    if hit.any():
        image = np.asarray(data, float) - background
        if mask is not None:
            image[np.asarray(mask) != 0] = np.nan
        size = int(np.clip(2 * np.ceil(2 * fwhm) + 1, 7, 25))
        fits = fit_gaussian_prf(data=image, x=x[hit], y=y[hit], fit_shape=size, fwhm_guess=fwhm)
        fx, fy = fits["x0"].to_numpy(float), fits["y0"].to_numpy(float)
        good = np.isfinite(fx) & np.isfinite(fy) & (np.hypot(fx - x[hit], fy - y[hit]) < fwhm)
        idx = np.flatnonzero(hit)[good]
        cx, cy = cx.copy(), cy.copy()
        cx[idx], cy[idx] = fx[good], fy[good]
    return cx, cy
