"""Local sky from circular annuli: sigma-clipped statistics of many annuli at once, and
each source's sky for aperture photometry (an annulus level or the background map)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SKY_VARIANCE_FACTOR", "annulus_statistics"]

#: variance of the annulus level over σ²/N for each estimator (Gaussian sky)
SKY_VARIANCE_FACTOR = {"annulus-mean": 1.0, "annulus-median": math.pi / 2,
                       "annulus-mode": 6.25 * math.pi / 2 + 2.25 - 7.5}


def _annulus_values(data, mask, x, y, r_in, r_out):
    """Annulus pixel values (NaN-padded rows) with photutils' ``center`` membership."""
    ny, nx = data.shape
    half = math.ceil(r_out) + 1
    dy, dx = np.mgrid[-half:half + 1, -half:half + 1]
    ring = np.hypot(dx, dy)
    keep = (ring < r_out + 1) & (ring > r_in - 1)  # can hold a pixel for any sub-pixel centre
    dy, dx = dy[keep], dx[keep]
    cx, cy = x[:, None], y[:, None]
    ix = np.floor(cx + 0.5).astype(np.int64) + dx
    iy = np.floor(cy + 0.5).astype(np.int64) + dy
    d2 = (ix - cx) ** 2 + (iy - cy) ** 2
    on = (d2 < r_out**2) & ~(d2 < r_in**2) & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    ixc, iyc = np.clip(ix, 0, nx - 1), np.clip(iy, 0, ny - 1)
    on &= ~mask[iyc, ixc]
    values = np.where(on, data[iyc, ixc], np.nan)
    values[~np.isfinite(values)] = np.nan
    return values


def _range_stats(sorted_, lo, hi):
    """Median, mean, std (ddof 0) and count of each row's sorted values in [lo, hi)."""
    values, c1, c2, ref = sorted_
    rows = np.arange(len(values))
    m = values.shape[1]
    n = hi - lo
    safe = np.maximum(n, 1)
    a = lo + (safe - 1) // 2
    b = lo + safe // 2
    median = 0.5 * (values[rows, np.minimum(a, m - 1)] + values[rows, np.minimum(b, m - 1)])
    s1 = c1[rows, hi] - c1[rows, lo]
    s2 = c2[rows, hi] - c2[rows, lo]
    mean_shift = s1 / safe
    var = np.clip(s2 / safe - mean_shift**2, 0.0, None)
    return median, mean_shift + ref, np.sqrt(var), n


def annulus_statistics(*, data: np.ndarray, mask: np.ndarray, x: np.ndarray, y: np.ndarray,
                       r_in: float, r_out: float, sigma: float = 3.0, maxiters: int = 10,
                       chunk_elements: int = 4_000_000,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped median, mean, std and count of the pixels in circular annuli.

    The same pixels and the same clipping as ``photutils.aperture.ApertureStats``
    with ``CircularAnnulus`` (``center`` method: a pixel belongs when its centre
    lies at ``r_in ≤ d < r_out``) and ``SigmaClip(sigma, maxiters,
    cenfunc='median', stdfunc='std')``, for all annuli at once: each annulus's
    values are sorted once, and every clipping pass only moves the ends of the
    kept range (a value outside ``median ± sigma·std`` of the kept values is
    dropped; dropped values never return), with prefix sums for the mean and
    standard deviation.  Tested equal to ApertureStats.

    Parameters
    ----------
    data : ndarray
        Image.
    mask : ndarray of bool
        True = leave the pixel out.
    x, y : ndarray
        Annulus centres (0-based pixels).
    r_in, r_out : float
        Radii of the annulus.
    sigma, maxiters : float, int
        Clipping: values beyond ``sigma`` standard deviations (ddof 0) of the
        median of the values kept so far are dropped, until none is or
        ``maxiters`` passes.

    Returns
    -------
    median, mean, std, n : ndarray
        Statistics of the kept values, and how many were kept (0 and NaN
        statistics for an annulus with no usable pixel).
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    mask = np.asarray(mask, bool)
    out = [np.full(len(x), np.nan) for _ in range(3)] + [np.zeros(len(x))]
    if not len(x):
        return tuple(out)
    width = _annulus_values(data, mask, x[:1], y[:1], r_in, r_out).shape[1]
    per_chunk = max(1, chunk_elements // max(width, 1))
    for start in range(0, len(x), per_chunk):
        sl = slice(start, start + per_chunk)
        values = np.sort(_annulus_values(data, mask, x[sl], y[sl], r_in, r_out), axis=1)
        n_rows = values.shape[0]
        count = np.isfinite(values).sum(axis=1)
        rows = np.arange(n_rows)
        # shift each row by a value of its own before the prefix sums (precision)
        ref = np.where(count > 0, values[rows, np.maximum(count - 1, 0) // 2], 0.0)
        shifted = np.where(np.isfinite(values), values - ref[:, None], 0.0)
        c1 = np.concatenate([np.zeros((n_rows, 1)), np.cumsum(shifted, axis=1)], axis=1)
        c2 = np.concatenate([np.zeros((n_rows, 1)), np.cumsum(shifted**2, axis=1)], axis=1)
        lo, hi = np.zeros(n_rows, np.int64), count.astype(np.int64)

        sorted_ = (values, c1, c2, ref)
        for _ in range(maxiters):
            median, _, std, n = _range_stats(sorted_, lo, hi)
            with np.errstate(invalid="ignore"):
                low_bound = median - sigma * std
                high_bound = median + sigma * std
                new_lo = np.maximum(lo, (values < low_bound[:, None]).sum(axis=1))
                new_hi = np.minimum(hi, (values <= high_bound[:, None]).sum(axis=1))
            new_hi = np.maximum(new_hi, new_lo)
            active = n > 0
            new_lo, new_hi = np.where(active, new_lo, lo), np.where(active, new_hi, hi)
            if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
                break
            lo, hi = new_lo, new_hi
        median, mean, std, n = _range_stats(sorted_, lo, hi)
        empty = n == 0
        out[0][sl] = np.where(empty, np.nan, median)
        out[1][sl] = np.where(empty, np.nan, mean)
        out[2][sl] = np.where(empty, np.nan, std)
        out[3][sl] = n
    return tuple(out)


@dataclass
class _Sky:
    """The local sky: an annulus level per source, or a map."""

    level: np.ndarray | None  #: per source (annulus modes), None for 'map'
    var: np.ndarray | None  #: Var(level) per source (annulus modes)
    rms: np.ndarray  #: per-pixel clipped rms of each annulus (NaN for 'map')
    n: np.ndarray  #: usable annulus pixels per source
    map: np.ndarray | None = None  #: BKG ('map')
    map_err: np.ndarray | None = None  #: its per-pixel error ('map')

    def pixels(self, background_map: np.ndarray | None) -> np.ndarray | float | None:
        """The sky under a filled pixel: the background map (as given: float32 maps are
        promoted where they are added to), else the annuli's median level, else None."""
        if background_map is not None:
            return np.asarray(background_map)
        if self.level is not None and np.isfinite(self.level).any():
            return float(np.nanmedian(self.level))
        return None

    def at_sources(self, x: np.ndarray, y: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """The sky level at each source (the map at its pixel in 'map' mode; float64)."""
        if self.level is not None:
            return self.level
        ny, nx = self.map.shape
        return self.map[np.clip(np.round(np.where(inside, y, 0.0)).astype(int), 0, ny - 1),
                        np.clip(np.round(np.where(inside, x, 0.0)).astype(int), 0, nx - 1)
                        ].astype(np.float64)


def _local_sky(*, data, bad, sky_mask, x, y, annulus, background, background_map,
               background_map_error, sigma, min_sky_pixels) -> _Sky:
    """Clipped annulus statistics per source (sources' pixels left out while enough
    remain), or the background map."""
    n = len(x)
    if background == "map":
        # as given (a float32 BKG is not copied to float64: the aperture sums read
        # float32, and stamps are promoted where they are subtracted)
        bmap = np.asarray(background_map)
        berr = (np.zeros(bmap.shape, np.float32) if background_map_error is None
                else np.asarray(background_map_error))
        return _Sky(level=None, var=None, rms=np.full(n, np.nan), n=np.zeros(n), map=bmap,
                    map_err=berr)
    r_in, r_out = annulus
    stats = annulus_statistics(data=data, mask=bad | (sky_mask if sky_mask is not None
                                                      else False),
                               x=x, y=y, r_in=r_in, r_out=r_out, sigma=sigma)
    if sky_mask is not None and (stats[3] < min_sky_pixels).any():
        whole = annulus_statistics(data=data, mask=bad, x=x, y=y, r_in=r_in, r_out=r_out,
                                   sigma=sigma)
        use = stats[3] >= min_sky_pixels
        stats = tuple(np.where(use, a, w) for a, w in zip(stats, whole, strict=True))
    median, mean, spread, n_sky = stats
    level = {"annulus-median": median, "annulus-mean": mean,
             "annulus-mode": 2.5 * median - 1.5 * mean}[background]
    var = SKY_VARIANCE_FACTOR[background] * spread**2 / np.maximum(n_sky, 1)
    return _Sky(level=level, var=var, rms=spread, n=n_sky)
