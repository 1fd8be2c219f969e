"""The sky of a long-slit frame along the slit's warp (Kelson 2003), and the trace.

Every pixel off the object's trace is a sample of one sky spectrum at its effective
pixel ``x_eff`` (:mod:`ccdflow.longslit.warp`): the rows of the slit sample it at
different sub-pixel phases, a supersampled spectrum.  :func:`fit_sky` fits a cubic
B-spline in ``x_eff`` with knots every ``knot_spacing`` effective pixels to all of
them by weighted least squares (optionally times a low-order polynomial along the
slit), rejecting outliers (cosmic rays, bad pixels) iteratively, and evaluates it at
every pixel with its error.  :func:`find_trace` locates the object's trace (rows
as a function of column, and its width) to mask it.  Frames have the dispersion
along x (:func:`ccdflow.longslit.warp.to_dispersion_x`).
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["SkyError", "SkyModel", "Trace", "find_trace", "fit_sky", "trace_mask"]


class SkyError(ValueError):
    """The sky (or the trace) cannot be modelled; the message says why."""


@dataclass
class Trace:
    """The object's trace: row ``centre(x)`` (polynomial coefficients in x) and the
    Gaussian sigma of its profile across the slit."""

    coefficients: np.ndarray
    sigma: float
    fixed_rows: tuple[float, float] | None = None  #: a band of rows given by the user

    def centre(self, x: np.ndarray) -> np.ndarray:
        return np.polynomial.polynomial.polyval(np.asarray(x, float), self.coefficients)

    @property
    def fwhm(self) -> float:
        return 2.3548 * self.sigma


def find_trace(*, data: np.ndarray, mask: np.ndarray | None = None, rows: Sequence | str = "auto",
               n_bins: int = 32, order: int = 2) -> Trace:
    """The object's trace on a frame (dispersion along x).

    ``rows='auto'``: the sky is removed crudely (each column's median along the
    slit), the frame is collapsed in ``n_bins`` column bins, the brightest row of
    the whole collapsed profile picks the object, and in each bin its Gaussian
    centroid within ±3σ; a polynomial of ``order`` in x through the bins' centres
    (clipped) is the trace and the collapsed profile's second moment its sigma.
    ``rows=[lo, hi]``: the trace lies in that band of rows (its centre and width
    from the band, fitted the same way inside it).
    """
    with warnings.catch_warnings():  # rows or bins left empty by the mask are NaN, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        return _find_trace(np.asarray(data, float), mask, rows, n_bins, order)


def _find_trace(image, mask, rows, n_bins, order) -> Trace:
    ny, nx = image.shape
    bad = np.zeros(image.shape, bool) if mask is None else np.asarray(mask, bool)
    bad |= ~np.isfinite(image)
    work = np.where(bad, np.nan, image)
    work = work - np.nanmedian(work, axis=0)[None, :]
    band = None
    if rows != "auto":
        lo, hi = (float(r) for r in rows)
        if not (0 <= lo < hi <= ny - 1):
            raise SkyError(f"config spectroscopy.trace.rows: rows [{lo:g}, {hi:g}] are outside "
                           f"the slit's 0..{ny - 1} (rows across the dispersion)")
        band = (lo, hi)
        outside = np.ones(ny, bool)
        outside[math.floor(lo): math.ceil(hi) + 1] = False
        work[outside] = np.nan
    profile = np.nanmedian(work, axis=1)
    if not np.isfinite(profile).any() or np.nanmax(profile) <= 0:
        raise SkyError("no trace: the collapsed frame has no row above the sky")
    peak = int(np.nanargmax(profile))
    y = np.arange(ny, dtype=float)
    win = np.abs(y - peak) <= 8
    w = np.clip(np.nan_to_num(profile[win]), 0, None)
    centre0 = float((w * y[win]).sum() / w.sum())
    sigma0 = float(np.sqrt(max((w * (y[win] - centre0) ** 2).sum() / w.sum(), 0.36)))
    edges = np.linspace(0, nx, n_bins + 1).astype(int)
    xc, yc, wt = [], [], []
    for a, b in itertools.pairwise(edges):
        prof = np.nanmedian(work[:, a:b], axis=1)
        sel = np.abs(y - centre0) <= 3 * sigma0 + 2
        p = np.clip(np.nan_to_num(prof[sel]), 0, None)
        if p.sum() <= 0:
            continue
        c = centre0
        for _ in range(10):  # Gaussian-windowed centroid
            g = np.exp(-0.5 * ((y[sel] - c) / sigma0) ** 2) * p
            c_new = float((g * y[sel]).sum() / g.sum()) if g.sum() > 0 else c
            if abs(c_new - c) < 1e-4:
                break
            c = c_new
        xc.append(0.5 * (a + b - 1))
        yc.append(c)
        wt.append(p.sum())
    if len(xc) <= order:
        raise SkyError(f"no trace: the object is found in {len(xc)} column bin(s)")
    xc, yc = np.array(xc), np.array(yc)
    keep = np.ones(len(xc), bool)
    for _ in range(5):
        coef = np.polynomial.polynomial.polyfit(xc[keep], yc[keep], order)
        r = yc - np.polynomial.polynomial.polyval(xc, coef)
        s = 1.4826 * np.median(np.abs(r[keep])) + 1e-3
        new = np.abs(r) < 4 * s
        if np.array_equal(new, keep):
            break
        keep = new
    # width: the profile collapsed about the fitted trace
    offsets = y[:, None] - np.polynomial.polynomial.polyval(np.arange(nx), coef)[None, :]
    near = np.abs(offsets) <= 4 * sigma0 + 2
    vals = np.where(near & np.isfinite(work), work, np.nan)
    bins = np.round(offsets[near] * 4) / 4
    v = vals[near]
    ok = np.isfinite(v)
    ub = np.unique(bins[ok])
    prof = np.array([np.median(v[ok][bins[ok] == b]) for b in ub])
    pw = np.clip(prof, 0, None)
    sigma = float(np.sqrt(max((pw * ub**2).sum() / pw.sum() - 1.0 / 12.0, 0.25)))
    return Trace(coefficients=coef, sigma=sigma, fixed_rows=band)


def trace_mask(trace: Trace, shape: tuple[int, int], *, k: float = 3.0,
               margin_px: float = 3.0) -> np.ndarray:
    """Pixels within ``k`` × FWHM + ``margin_px`` of the trace (True = the object's)."""
    ny, nx = shape
    centre = trace.centre(np.arange(nx))
    half = k * trace.fwhm + margin_px
    y = np.arange(ny)[:, None]
    out = np.abs(y - centre[None, :]) <= half
    if trace.fixed_rows is not None:
        lo, hi = trace.fixed_rows
        out |= (y >= lo - margin_px) & (y <= hi + margin_px)
    return out


@dataclass
class SkyModel:
    """The fitted sky: its value and 1σ error at every pixel, and diagnostics."""

    sky: np.ndarray
    error: np.ndarray
    n_used: int
    n_rejected: int
    n_knots: int
    chi2_red: float
    rejected: np.ndarray  #: bool map of the samples rejected as outliers


class _BandedDesign:
    """Rows of the sky's design matrix as a band: each pixel touches ``4·p`` consecutive
    coefficients (4 cubic B-splines × ``p`` powers of the slit position), so the normal
    matrix is banded (bandwidth ``4p − 1``) and is accumulated, solved and inverted
    (its band only) in O(samples + coefficients) instead of as a sparse product."""

    def __init__(self, x_eff: np.ndarray, slit: np.ndarray, knots: np.ndarray, powers: int):
        from scipy.interpolate import BSpline

        basis = BSpline.design_matrix(np.clip(x_eff, knots[3], knots[-4]), knots, 3).tocsr()
        basis.sort_indices()
        counts = np.diff(basis.indptr)
        n = len(x_eff)
        if n and np.all(counts == 4):
            first = basis.indices[::4].astype(np.int64)
            values = basis.data.reshape(n, 4)
        else:  # rows with fewer stored values: place them in a window of 4
            rows = np.repeat(np.arange(n), counts)
            first = np.full(n, np.iinfo(np.int64).max)
            np.minimum.at(first, rows, basis.indices)
            first = np.minimum(first, len(knots) - 8)  # a full window of 4 always exists
            values = np.zeros((n, 4))
            values[rows, basis.indices - first[rows]] = basis.data
        self.p = powers
        self.width = 4 * powers
        self.n_coef = (len(knots) - 4) * powers
        self.first = first * powers  # coefficients ordered (spline k, power j) -> k·p + j
        if powers == 1:
            self.values = np.ascontiguousarray(values)
        else:
            scale = slit[:, None] ** np.arange(powers)[None, :]
            self.values = (values[:, :, None] * scale[:, None, :]).reshape(n, self.width)
        self._pairs = np.triu_indices(self.width)

    def subset(self, rows: np.ndarray) -> _BandedDesign:
        """The design of some of the rows (the samples that are fitted)."""
        import copy

        out = copy.copy(self)
        out.first, out.values = self.first[rows], self.values[rows]
        return out

    def evaluate(self, coef: np.ndarray) -> np.ndarray:
        idx = self.first[:, None] + np.arange(self.width)[None, :]
        return np.einsum("ij,ij->i", self.values, coef[idx])

    def normal_band(self, weights: np.ndarray, data: np.ndarray):
        """Upper band ``ab[u + i − j, j] = N_ij`` (scipy's layout) and the right side."""
        u = self.width - 1
        ab = np.zeros((u + 1, self.n_coef))
        weighted = self.values * weights[:, None]
        for ai, bi in zip(*self._pairs, strict=True):
            ab[u - (bi - ai)] += np.bincount(self.first + bi,
                                             weights=weighted[:, ai] * self.values[:, bi],
                                             minlength=self.n_coef)
        rhs = np.zeros(self.n_coef)
        for ai in range(self.width):
            rhs += np.bincount(self.first + ai, weights=weighted[:, ai] * data,
                               minlength=self.n_coef)
        return ab, rhs

    def variance(self, cov_band: np.ndarray) -> np.ndarray:
        """``b·C·bᵀ`` per row from the band of the covariance (``cov_band[i, d] = C_{i,i+d}``)."""
        out = np.zeros(len(self.first))
        for ai in range(self.width):
            for bi in range(ai, self.width):
                c = cov_band[self.first + ai, bi - ai]
                out += (1.0 if ai == bi else 2.0) * self.values[:, ai] * self.values[:, bi] * c
        return out


def _band_of_inverse(ab: np.ndarray) -> np.ndarray:
    """The band of the inverse of a banded SPD matrix (upper layout ``ab``).

    With ``N = UᵀU`` (banded Cholesky), ``U·C = U⁻ᵀ`` is lower triangular, so for
    ``j ≥ i``: ``C_ij = (δ_ij/U_ii − Σ_{k=i+1}^{i+u} U_ik C_kj)/U_ii``, computed from the
    last row up and needing only the band (Takahashi et al. 1973).  Returns
    ``band[i, d] = C_{i, i+d}``, d = 0..u.
    """
    from scipy.linalg import cholesky_banded

    u = ab.shape[0] - 1
    chol = cholesky_banded(ab, lower=False)
    n = ab.shape[1]
    band = np.zeros((n + u, u + 1))  # padded: rows past n stay 0
    d = np.arange(1, u + 1)
    # window W[d, e] = C_{i+d, i+e}, d, e = 1..u, read from the band (symmetric); rows
    # past the end are the zero padding, and U_{i,i+d} = 0 there
    lo = np.minimum.outer(d, d)
    step = np.abs(np.subtract.outer(d, d))
    padded = np.zeros((u + 1, n + u))
    padded[:, :n] = chol
    for i in range(n - 1, -1, -1):
        uii = chol[u, i]
        uik = padded[u - d, i + d]  # U_{i, i+d}
        off = -(uik @ band[i + lo, step]) / uii  # C_{i, i+e}
        band[i, 1:] = off
        band[i, 0] = (1.0 / uii - uik @ off) / uii
    return band[:n]


def fit_sky(*, data: np.ndarray, error: np.ndarray, mask: np.ndarray, effpix: np.ndarray,
            exclude: np.ndarray | None = None, read_noise_e: float = 5.0,
            knot_spacing: float = 0.75, slit_order: int = 0, nsigma: float = 4.0,
            iterations: int = 6) -> SkyModel:
    """The sky along the warp (module docstring).

    Parameters
    ----------
    data, error : ndarray
        Calibrated frame and its ERR (e-), dispersion along x.
    mask : ndarray of bool
        Bad pixels (never used).
    effpix : ndarray
        The effective pixel of every pixel (:meth:`WarpModel.effpix`).
    exclude : ndarray of bool, optional
        Pixels left out of the fit (the trace).
    read_noise_e : float
        For the samples' variance from the model (see Notes).
    knot_spacing : float
        Effective pixels between the B-spline's knots (Kelson 2003: 0.5–1 for a
        well-sampled supersampled spectrum).
    slit_order : int
        0: one spectrum for the whole slit; 1 or 2: times a polynomial in the row
        (a sky varying along the slit).
    nsigma, iterations : float, int
        Rejection of outliers about the model, per pass.

    Notes
    -----
    The samples' weights use the model's variance, not the data's: ERR² rescaled by
    ``(|model| + RN²)/(|data| + RN²)``, so a cosmic ray does not weigh itself down.
    The sky's error at a pixel is ``b(x_eff)ᵀ·C·b(x_eff)`` with ``C`` the inverse of
    the weighted normal matrix (×(y − y_c) terms for ``slit_order`` > 0).
    """
    from scipy.linalg import solveh_banded

    data = np.asarray(data, float)
    err = np.asarray(error, float)
    ny = data.shape[0]
    if slit_order not in (0, 1, 2):
        raise SkyError(f"config spectroscopy.sky.slit_order must be 0, 1 or 2, got {slit_order}")
    if not knot_spacing > 0:
        raise SkyError(f"config spectroscopy.sky.knot_spacing must be > 0, got {knot_spacing}")
    use = ~np.asarray(mask, bool) & np.isfinite(data) & np.isfinite(err) & (err > 0) & np.isfinite(
        effpix)
    if exclude is not None:
        use &= ~np.asarray(exclude, bool)
    xe = effpix[use]
    if xe.size < 10:
        raise SkyError(f"only {xe.size} sky pixels off the trace: too few for a sky model")
    lo, hi = float(xe.min()), float(xe.max())
    interior = np.arange(lo + knot_spacing, hi - 0.5 * knot_spacing, knot_spacing)
    if xe.size < 3 * (len(interior) + 4) * (slit_order + 1):
        raise SkyError(f"only {xe.size} sky pixels off the trace for {len(interior) + 4} "
                       "knots: too few for the sky model (a narrower trace mask, fewer masked "
                       "pixels, or a wider spectroscopy.sky.knot_spacing)")
    knots = np.concatenate([[lo] * 4, interior, [hi] * 4])
    yy = np.broadcast_to(np.arange(ny, dtype=float)[:, None], data.shape)
    yc = (ny - 1) / 2.0
    slit = (yy - yc) / max(ny / 2.0, 1.0)

    ok = np.isfinite(effpix)
    design_all = _BandedDesign(effpix[ok], slit[ok], knots, slit_order + 1)
    design = design_all.subset(np.flatnonzero(use[ok]))
    v = data[use]
    var_data = err[use] ** 2
    keep = np.ones(len(v), bool)
    rn2 = read_noise_e**2
    model_v = np.full(len(v), np.median(v))
    for _ in range(iterations):
        var = var_data * (np.abs(model_v) + rn2) / (np.abs(v) + rn2)
        var = np.clip(var, 1e-6, None)
        w = np.where(keep, 1.0 / var, 0.0)
        ab, rhs = design.normal_band(w, v)
        # a tiny ridge keeps knots without samples (masked columns) solvable
        ab[-1] += 1e-10 * ab[-1].max()
        coef = solveh_banded(ab, rhs)
        model_v = design.evaluate(coef)
        resid = (v - model_v) / np.sqrt(var)
        new = np.abs(resid) <= nsigma
        if np.array_equal(new, keep):
            break
        keep = new
    chi2 = float(np.sum(resid[keep] ** 2) / max(keep.sum() - len(coef), 1))
    # the model everywhere, and its error from the band of the coefficients' covariance
    sky = np.full(data.shape, np.nan)
    sky[ok] = design_all.evaluate(coef)
    sky_err = np.full(data.shape, np.nan)
    sky_err[ok] = np.sqrt(np.clip(design_all.variance(_band_of_inverse(ab)), 0, None))
    rejected = np.zeros(data.shape, bool)
    rejected[use] = ~keep
    log.info("sky: %d samples, %d knots (every %.2f eff. px), %d rejected, chi2_red %.3f",
             int(keep.sum()), len(interior), knot_spacing, int((~keep).sum()), chi2)
    return SkyModel(sky=sky, error=sky_err, n_used=int(keep.sum()), n_rejected=int((~keep).sum()),
                    n_knots=len(interior), chi2_red=chi2, rejected=rejected)
