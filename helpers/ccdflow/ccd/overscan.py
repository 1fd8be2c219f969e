"""The overscan: a zero level per row (median, clipped mean, constant or a fit along
the rows, IRAF ccdproc style) and the noise that level adds to every pixel of a row."""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)


def clipped_stats(values: np.ndarray, *, axis: int | None = None, sigma: float = 3.0,
                  maxiters: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, median, std) after iterative σ-clipping about the median, as
    ``astropy.stats.sigma_clipped_stats`` with its defaults (std with ddof 0, values
    outside ``median ± sigma·std`` dropped until none is or ``maxiters``; NaN ignored);
    numpy only, so a job reading raw frames does not import astropy.stats.

    With ``axis=None`` the values are sorted once and each iteration keeps a
    contiguous range of them, found by binary search: the same kept values as
    astropy's filtering, about 6x faster than ``sigma_clipped_stats`` on 512²
    values (its medians partition the data again every iteration)."""
    if axis is None:
        return _clipped_stats_sorted(values, sigma=sigma, maxiters=maxiters)
    data = np.array(values, dtype=np.float64)
    for _ in range(maxiters):
        with np.errstate(invalid="ignore"):
            med = np.nanmedian(data, axis=axis, keepdims=True)
            std = np.nanstd(data, axis=axis, keepdims=True)
            out = (data < med - sigma * std) | (data > med + sigma * std)
        if not out.any():
            break
        data[out] = np.nan
    with np.errstate(invalid="ignore"):
        return (np.nanmean(data, axis=axis), np.nanmedian(data, axis=axis),
                np.nanstd(data, axis=axis))


def _clipped_stats_sorted(values: np.ndarray, *, sigma: float, maxiters: int,
                          ) -> tuple[float, float, float]:
    """:func:`clipped_stats` of every value (no axis) on the sorted finite values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = np.sort(v[np.isfinite(v)])
    lo, hi = 0, v.size
    for _ in range(maxiters):
        if hi <= lo:
            break
        kept = v[lo:hi]
        med, std = _sorted_median(kept), float(kept.std())
        # kept: median - sigma*std <= x <= median + sigma*std, as astropy's filter
        new_lo = max(lo, int(np.searchsorted(v, med - sigma * std, side="left")))
        new_hi = min(hi, int(np.searchsorted(v, med + sigma * std, side="right")))
        if (new_lo, new_hi) == (lo, hi):
            break
        lo, hi = new_lo, new_hi
    if hi <= lo:
        return float("nan"), float("nan"), float("nan")
    kept = v[lo:hi]
    return float(kept.mean()), _sorted_median(kept), float(kept.std())


def _sorted_median(v: np.ndarray) -> float:
    n = v.size
    return float(v[n // 2]) if n % 2 else float(0.5 * (v[n // 2 - 1] + v[n // 2]))


def fit_overscan(strip: np.ndarray, *, function: str = "median", order: int = 1,
                 niterate: int = 3, reject_sigma: float = 3.0) -> np.ndarray:
    """Overscan level per row of ``strip`` (rows × overscan columns), in its units.

    Parameters
    ----------
    strip : ndarray
        Overscan pixels; not modified.
    function : {'median', 'mean', 'constant', 'legendre', 'chebyshev'}
        ``median``: per-row median; ``mean``: per-row 3-sigma-clipped mean;
        ``constant``: one clipped mean for the whole strip; ``legendre`` /
        ``chebyshev``: a polynomial of ``order`` fitted along the rows to the
        per-row medians, ``niterate`` times rejecting points beyond
        ``reject_sigma`` (IRAF ccdproc style).

    Notes
    -----
    Noise of the level per row with ``n`` columns of read noise ``σ``: ``σ/√n``
    (mean) or ``≈1.25 σ/√n`` (median); a fit averages further along the rows.
    """
    strip = np.asarray(strip, dtype=np.float64)
    if strip.ndim != 2 or strip.shape[1] < 1:
        raise ValueError(f"overscan strip must be 2-D with columns, got shape {strip.shape}")
    if function == "median":
        return np.nanmedian(strip, axis=1)
    if function == "mean":
        _, median, std = clipped_stats(strip, axis=1, sigma=3.0)
        lo, hi = median - 3 * std, median + 3 * std
        keep = (strip >= lo[:, None]) & (strip <= hi[:, None])
        return np.nansum(np.where(keep, strip, 0.0), axis=1) / np.maximum(keep.sum(axis=1), 1)
    if function == "constant":
        return np.full(strip.shape[0], clipped_stats(strip, sigma=3.0)[0])
    if function in ("legendre", "chebyshev"):
        kind = np.polynomial.Legendre if function == "legendre" else np.polynomial.Chebyshev
        rows = np.arange(strip.shape[0], dtype=float)
        level = np.nanmedian(strip, axis=1)
        good = np.isfinite(level)
        fit = kind.fit(rows[good], level[good], deg=order)
        for _ in range(niterate):
            resid = level - fit(rows)
            sigma = np.nanstd(resid[good])
            new = np.isfinite(level) & (np.abs(resid) <= reject_sigma * sigma)
            if new.sum() <= order + 1 or np.array_equal(new, good):
                break
            good = new
            fit = kind.fit(rows[good], level[good], deg=order)
        return fit(rows)
    raise ValueError(f"overscan function must be median, mean, constant, legendre or "
                     f"chebyshev, got {function!r}")


#: variance of the median of n unit normal deviates (n ≤ 10; π/2n beyond)
_MEDIAN_VARIANCE = {1: 1.0, 2: 0.5, 3: 0.4487, 4: 0.2982, 5: 0.2868, 6: 0.2147, 7: 0.2104,
                    8: 0.1682, 9: 0.1661, 10: 0.1378}


def overscan_level_noise(strip: np.ndarray, *, function: str = "median",
                         order: int = 1) -> float:
    """1σ noise (ADU) of the overscan level :func:`fit_overscan` subtracts from a row.

    The pixel noise σ comes from differences of neighbouring overscan columns in a
    row (robust, free of any row structure; of neighbouring rows for a single
    column); then the median's noise for a per-row median of n columns (tabulated
    for n ≤ 10, ``√(π/2n)·σ`` beyond), σ/√n for a per-row mean, σ/√(n·rows) for
    one constant, and the per-row median's noise × √((order+1)/rows) for a fit
    along the rows.  The
    level is common to a whole row: a per-row level from a few columns adds noise
    correlated along the rows that no per-pixel error fully describes.
    """
    strip = np.asarray(strip, dtype=np.float64)
    rows, n = strip.shape
    diff = np.diff(strip, axis=1) if n > 1 else np.diff(strip, axis=0)
    diff = diff[np.isfinite(diff)]
    if diff.size < 2:
        return 0.0
    sigma = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2)
    per_row_median = sigma * math.sqrt(_MEDIAN_VARIANCE.get(n, math.pi / (2 * n)))
    if function == "median":
        return per_row_median
    if function == "mean":
        return sigma / math.sqrt(n)
    if function == "constant":
        return sigma / math.sqrt(n * rows)
    return per_row_median * math.sqrt(min(1.0, (order + 1) / rows))


_OVERSCAN_WARNED: set[tuple] = set()


def _warn_overscan(where: str, function: str, n_cols: int, noise_e: float, rn_e: float) -> None:
    """Say once per process that a per-row overscan level adds row noise."""
    key = (function, n_cols)
    if key in _OVERSCAN_WARNED:
        return
    _OVERSCAN_WARNED.add(key)
    log.warning("%s: the overscan %s of %d column(s) adds %.1f e- of noise to every row "
                "(%.2f x the read noise; in ERR, but correlated along each row): "
                "detector.overscan.function legendre (a fit along the rows) or constant "
                "averages it away", where, function, n_cols, noise_e, noise_e / rn_e)
