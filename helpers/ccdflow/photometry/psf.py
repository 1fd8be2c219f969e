"""The frame's point-spread function: an elliptical Gaussian or Moffat fitted to bright
isolated stars, rendered on pixels.

The PSF shape (covariance of the Gaussian, or the Moffat's α matrix and β) is fitted
to each of the brightest isolated unsaturated stars by Levenberg–Marquardt, all
stars at once, on their pixels integrated over 3×3 sub-pixels; the frame's PSF is
the median shape.  As opticam's ``psf_params`` it is reported as the semi-major and
semi-minor sigma (px) and the orientation of the major axis (degrees
counter-clockwise from +x; for a Moffat, the sigma of the Gaussian of equal FWHM).

:func:`psf_stamps` renders the unit-flux PSF (integrated over 5×5 sub-pixels) on
the pixels around many positions at once; photometry uses it to fill masked
pixels, to estimate the light of neighbours in an aperture and to weight pixels
in optimal photometry (:mod:`ccdflow.photometry.measure`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SourceError

__all__ = ["PSF_KINDS", "PSFModel", "fit_psf", "psf_stamps"]

PSF_KINDS = ("gaussian", "moffat")

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class PSFModel:
    """A unit-flux elliptical PSF.

    ``cxx, cyy, cxy`` are the covariance (px²) of the Gaussian, or the α² matrix
    of the Moffat ``(β−1)/(π|A|^½)·(1 + rᵀA⁻¹r)^(−β)``; ``beta`` the Moffat index.
    """

    kind: str
    cxx: float
    cyy: float
    cxy: float
    beta: float = float("nan")
    n_stars: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PSF_KINDS:
            raise SourceError(f"PSF kind must be one of {PSF_KINDS}, got {self.kind!r}")
        det = self.cxx * self.cyy - self.cxy**2
        if not (self.cxx > 0 and self.cyy > 0 and det > 0):
            raise SourceError(f"PSF shape is not positive definite: cxx={self.cxx:.4g}, "
                              f"cyy={self.cyy:.4g}, cxy={self.cxy:.4g}")
        if self.kind == "moffat" and not self.beta > 1:
            raise SourceError(f"Moffat beta must be > 1, got {self.beta}")

    @classmethod
    def circular(cls, fwhm: float, kind: str = "gaussian", beta: float = 3.0) -> PSFModel:
        """A round PSF of the given FWHM (px)."""
        if kind == "gaussian":
            s2 = (fwhm / _FWHM_PER_SIGMA) ** 2
        else:  # FWHM = 2α√(2^{1/β} − 1)
            s2 = (fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))) ** 2
        return cls(kind=kind, cxx=s2, cyy=s2, cxy=0.0, beta=beta if kind == "moffat" else
                   float("nan"))

    def _axes(self) -> tuple[float, float, float]:
        tr, det = self.cxx + self.cyy, self.cxx * self.cyy - self.cxy**2
        disc = math.sqrt(max(tr * tr / 4.0 - det, 0.0))
        major, minor = tr / 2.0 + disc, max(tr / 2.0 - disc, 1e-12)
        theta = 0.5 * math.degrees(math.atan2(2.0 * self.cxy, self.cxx - self.cyy))
        return math.sqrt(major), math.sqrt(minor), theta

    @property
    def _fwhm_scale(self) -> float:
        if self.kind == "gaussian":
            return _FWHM_PER_SIGMA
        return 2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0)

    @property
    def sigma_major(self) -> float:
        """Semi-major sigma (px) of the Gaussian of equal FWHM."""
        return self._axes()[0] * self._fwhm_scale / _FWHM_PER_SIGMA

    @property
    def sigma_minor(self) -> float:
        return self._axes()[1] * self._fwhm_scale / _FWHM_PER_SIGMA

    @property
    def theta_deg(self) -> float:
        """Orientation of the major axis, degrees counter-clockwise from +x, in (−90, 90]."""
        return self._axes()[2]

    @property
    def fwhm(self) -> float:
        """FWHM (px) of the circle of equal area: the geometric mean of the axes'."""
        a, b, _ = self._axes()
        return math.sqrt(a * b) * self._fwhm_scale

    def value(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Unit-flux surface density at offsets (dx, dy) from the centre (per px²)."""
        det = self.cxx * self.cyy - self.cxy**2
        q = (self.cyy * dx * dx - 2.0 * self.cxy * dx * dy + self.cxx * dy * dy) / det
        if self.kind == "gaussian":
            return np.exp(-0.5 * q) / (2.0 * math.pi * math.sqrt(det))
        return (self.beta - 1.0) / (math.pi * math.sqrt(det)) * (1.0 + q) ** (-self.beta)


def _subsample(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / n - 0.5


def psf_stamps(model: PSFModel, x: np.ndarray, y: np.ndarray, half: int,
               subsample: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-flux PSF integrated over the pixels of a (2·half+1)² box around each position.

    Returns
    -------
    stamps : ndarray (n, k, k)
        Fraction of each star's light falling in each pixel.
    px, py : ndarray (n, k)
        Column and row indices of the boxes' pixels (the box is centred on the
        pixel holding the position; indices may lie outside the frame).
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    d = np.arange(-half, half + 1)
    px = np.floor(x + 0.5).astype(np.int64)[:, None] + d[None, :]
    py = np.floor(y + 0.5).astype(np.int64)[:, None] + d[None, :]
    sub = _subsample(subsample)
    total = np.zeros((len(x), 2 * half + 1, 2 * half + 1))
    for sy in sub:
        dy = (py + sy - y[:, None])[:, :, None]
        for sx in sub:
            dx = (px + sx - x[:, None])[:, None, :]
            total += model.value(dx, dy)
    return total / subsample**2, px, py


# ---------------------------------------------------------------- fitting

def _unpack(params: np.ndarray, kind: str):
    flux, x0, y0 = params[:, 0], params[:, 1], params[:, 2]
    # covariance from a Cholesky factor: positive definite by construction
    l11, l21, l22 = np.exp(params[:, 3]), params[:, 4], np.exp(params[:, 5])
    cxx, cxy, cyy = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
    beta = 1.0 + np.exp(params[:, 6]) if kind == "moffat" else None
    return flux, x0, y0, cxx, cxy, cyy, beta


def _model_stamps(params, px, py, kind, sub):
    flux, x0, y0, cxx, cxy, cyy, beta = _unpack(params, kind)
    det = cxx * cyy - cxy * cxy
    out = np.zeros((len(params), py.shape[1], px.shape[1]))
    for sy in sub:
        dy = (py + sy - y0[:, None])[:, :, None]
        for sx in sub:
            dx = (px + sx - x0[:, None])[:, None, :]
            q = (cyy[:, None, None] * dx * dx - 2 * cxy[:, None, None] * dx * dy
                 + cxx[:, None, None] * dy * dy) / det[:, None, None]
            if kind == "gaussian":
                out += np.exp(-0.5 * q) / (2 * math.pi * np.sqrt(det))[:, None, None]
            else:
                out += ((beta - 1) / (math.pi * np.sqrt(det)))[:, None, None] * (1 + q) ** (
                    -beta[:, None, None])
    return flux[:, None, None] * out / len(sub) ** 2


def _gaussian_and_jacobian(params, px, py, sub):
    """Pixel-integrated (sub-sampled) elliptical Gaussian and its analytic Jacobian in the
    parameters (flux, x0, y0, log l11, l21, log l22) of the Cholesky factor."""
    flux, x0, y0 = params[:, 0], params[:, 1], params[:, 2]
    l11, l21, l22 = np.exp(params[:, 3]), params[:, 4], np.exp(params[:, 5])
    n, ky, kx = len(params), py.shape[1], px.shape[1]
    g_sum = np.zeros((n, ky, kx))
    jac = np.zeros((n, ky, kx, 6))
    a11, a21, a22 = (v[:, None, None] for v in (l11, l21, l22))
    norm = 1.0 / (2.0 * math.pi * a11 * a22)
    for sy in sub:
        dy = (py + sy - y0[:, None])[:, :, None]
        for sx in sub:
            dx = (px + sx - x0[:, None])[:, None, :]
            u1 = dx / a11
            u2 = (dy - a21 * u1) / a22
            g = norm * np.exp(-0.5 * (u1 * u1 + u2 * u2))
            g_sum += g
            # ∂q/∂θ = 2(u1 ∂u1 + u2 ∂u2); ∂g = −g/2 ∂q (+ the normalisation's share)
            jac[..., 1] += g * (u1 / a11 - u2 * a21 / (a11 * a22))  # x0
            jac[..., 2] += g * (u2 / a22)  # y0
            jac[..., 3] += g * (u1 * u1 - u2 * a21 * u1 / a22 - 1.0)  # log l11
            jac[..., 4] += g * (u2 * u1 / a22)  # l21
            jac[..., 5] += g * (u2 * u2 - 1.0)  # log l22
    m = len(sub) ** 2
    g_sum /= m
    jac /= m
    jac[..., 0] = g_sum
    jac[..., 1:] *= flux[:, None, None, None]
    return flux[:, None, None] * g_sum, jac


def fit_psf(*, data: np.ndarray, x: Sequence[float], y: Sequence[float], kind: str = "gaussian",
            fwhm_guess: float = 2.5, fit_shape: int | None = None, mask: np.ndarray | None = None,
            max_iterations: int = 25) -> tuple[PSFModel, np.ndarray]:
    """The frame's PSF from the stars at (x, y) (bright, isolated, unsaturated).

    Each star's flux, centre and shape (and β for a Moffat) are fitted to its
    background-subtracted ``data`` stamp (``fit_shape`` px, default
    ``2·ceil(2·FWHM)+1``; ``mask`` pixels ignored) by Levenberg–Marquardt with a
    numerical Jacobian, all stars at once; the PSF is the median of the fitted
    shapes of the stars that converged.

    Returns
    -------
    model : PSFModel
    per_star : ndarray (n, 5)
        ``flux, x0, y0, fwhm, converged`` of each star (NaN where not fitted).
    """
    if kind not in PSF_KINDS:
        raise SourceError(f"PSF kind must be one of {PSF_KINDS}, got {kind!r}")
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    size = fit_shape or int(np.clip(2 * math.ceil(2 * fwhm_guess) + 1, 7, 25))
    half = size // 2
    ny, nx = data.shape
    xi, yi = np.floor(x + 0.5).astype(np.int64), np.floor(y + 0.5).astype(np.int64)
    ok = (np.isfinite(x) & np.isfinite(y) & (xi - half >= 0) & (xi + half < nx)
          & (yi - half >= 0) & (yi + half < ny))
    per_star = np.full((len(x), 5), np.nan)
    idx = np.flatnonzero(ok)
    if not len(idx):
        raise SourceError("no star to fit the PSF to (all too close to the edge)")
    d = np.arange(-half, half + 1)
    px, py = xi[idx, None] + d[None, :], yi[idx, None] + d[None, :]
    stamp = np.asarray(data, float)[py[:, :, None], px[:, None, :]]
    good = np.isfinite(stamp)
    if mask is not None:
        good &= ~np.asarray(mask, bool)[py[:, :, None], px[:, None, :]]
    stamp = np.where(good, stamp, 0.0)
    # weights: Poisson-like, from the stamp itself (floored at its outer ring's noise)
    ring = np.concatenate([stamp[:, 0, :], stamp[:, -1, :], stamp[:, :, 0], stamp[:, :, -1]],
                          axis=1)
    sky_var = np.maximum(np.var(ring, axis=1), 1.0)
    weight = np.where(good, 1.0 / (sky_var[:, None, None] + np.clip(stamp, 0, None)), 0.0)
    s0 = max(fwhm_guess, 0.8) / _FWHM_PER_SIGMA
    n_par = 7 if kind == "moffat" else 6
    p = np.zeros((len(idx), n_par))
    p[:, 0] = np.clip(stamp.sum(axis=(1, 2)), 1.0, None)
    p[:, 1], p[:, 2] = x[idx], y[idx]
    if kind == "gaussian":
        p[:, 3] = p[:, 5] = math.log(s0)
    else:
        beta0 = 3.0
        alpha0 = max(fwhm_guess, 0.8) / (2.0 * math.sqrt(2.0 ** (1.0 / beta0) - 1.0))
        p[:, 3] = p[:, 5] = math.log(alpha0)
        p[:, 6] = math.log(beta0 - 1.0)
    sub = _subsample(3)
    steps = np.array([1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-4])[:n_par]

    def chi2_of(params):
        r = stamp - _model_stamps(params, px, py, kind, sub)
        return (weight * r * r).sum(axis=(1, 2)), r

    chi2, _resid = chi2_of(p)
    lam = np.full(len(idx), 1e-2)
    converged = np.zeros(len(idx), bool)
    for _ in range(max_iterations):
        if kind == "gaussian":
            # a star whose fit ran away (a width near 0 or inf; left out of the PSF
            # below) overflows here: no warnings in the log for it
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                base, jac = _gaussian_and_jacobian(p, px, py, sub)
            jac = jac.reshape(len(idx), -1, n_par)
        else:
            base = _model_stamps(p, px, py, kind, sub)
            jac = np.empty((len(idx), size * size, n_par))
            for k in range(n_par):
                dp = steps[k] * np.maximum(np.abs(p[:, k]), 1.0)
                q = p.copy()
                q[:, k] += dp
                jac[:, :, k] = ((_model_stamps(q, px, py, kind, sub) - base)
                                / dp[:, None, None]).reshape(len(idx), -1)
        w = weight.reshape(len(idx), -1)
        r = (stamp - base).reshape(len(idx), -1)
        jtj = np.einsum("nki,nk,nkj->nij", jac, w, jac)
        jtr = np.einsum("nki,nk,nk->ni", jac, w, r)
        diag = np.diagonal(jtj, axis1=1, axis2=2)
        damped = jtj + lam[:, None, None] * np.eye(n_par)[None] * (diag[:, None, :] + 1e-12)
        try:
            step = np.linalg.solve(damped, jtr[..., None])[..., 0]
        except np.linalg.LinAlgError:
            break
        trial = p + step
        # a wild trial step (a width going to 0 or inf) gives inf/NaN chi2: rejected just
        # below, so numpy's overflow warnings would only alarm the log
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            new_chi2, _ = chi2_of(trial)
        better = np.isfinite(new_chi2) & (new_chi2 < chi2)
        small = better & (chi2 - new_chi2 < 1e-6 * chi2)
        p = np.where(better[:, None], trial, p)
        chi2 = np.where(better, new_chi2, chi2)
        lam = np.where(better, lam / 3.0, np.minimum(lam * 5.0, 1e8))
        converged |= small | (lam >= 1e8)
        if converged.all():
            break
    flux, x0, y0, cxx, cxy, cyy, beta = _unpack(p, kind)
    inside = (np.abs(x0 - x[idx]) < half) & (np.abs(y0 - y[idx]) < half) & (flux > 0)
    use = inside & np.isfinite(cxx) & np.isfinite(cyy)
    if not use.any():
        raise SourceError("PSF fits failed for every star")
    model = PSFModel(kind=kind, cxx=float(np.median(cxx[use])), cyy=float(np.median(cyy[use])),
                     cxy=float(np.median(cxy[use])),
                     beta=float(np.median(beta[use])) if beta is not None else float("nan"),
                     n_stars=int(use.sum()))
    scale = model._fwhm_scale
    with np.errstate(over="ignore", invalid="ignore"):  # run-away fits: NaN rows below
        fw = scale * np.sqrt(np.sqrt(np.clip(cxx * cyy - cxy * cxy, 0, None)))
    per_star[idx] = np.column_stack([flux, x0, y0, fw, (converged & use).astype(float)])
    per_star[idx[~use]] = np.nan
    return model, per_star
