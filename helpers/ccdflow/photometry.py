"""Aperture photometry with honest errors (photutils apertures, local or map background).

Per source and aperture radius::

    flux     = Σ_ap (data − b)                       (photutils aperture sum)
    Var(flux) = Σ_ap ERR² + N_ap² · Var(b̂)

``ERR`` of a calibrated frame already holds the Poisson noise of sky and
source and the read noise of every aperture pixel; what photutils leaves out
is the error of the background *estimate* b̂ subtracted from all N_ap pixels:
``Var(b̂) = σ_bkg² / N_ann`` for a clipped-mean annulus (× π/2 for the
median, × 4.57 for the mode 2.5·median − 1.5·mean, whose variance for
Gaussian sky is σ²/N·(6.25·π/2 + 2.25 − 7.5) since Cov(median, mean) =
σ²/N), or the map's own error in map mode.  This is the CCD equation's
``N_ap·σ²·(1 + N_ap/N_ann)`` with its first term already inside ERR.

Flags (bit field, column ``flags``):

====  ==================  ==============================================
1     MASKED              masked pixels (bad, cosmic ray…) in the aperture
2     SATURATED           saturated pixel in the aperture
4     NEAR_EDGE           aperture or annulus crosses the frame edge
8     BLENDED             another source's centre within the aperture
16    OFF_FRAME           centre outside the frame (row kept, flux NaN)
32    FEW_SKY_PIXELS      fewer than ``min_sky_pixels`` usable annulus pixels
64    NOT_ALIGNED         frame could not be matched to the reference (no or
                          too few stars): positions from the WCS or unshifted
128   NO_POSITION         a target given in RA/Dec on a series without a WCS:
                          row kept, flux NaN
====  ==================  ==============================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import IntFlag

import numpy as np
import pandas as pd
from astropy.stats import SigmaClip

from .masks import MaskBit

__all__ = ["BAD_FLAGS", "SKY_VARIANCE_FACTOR", "PhotFlag", "PhotometryError", "measure_apertures"]


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


#: usable-row test: any of these flags makes a measurement unfit for light curves
BAD_FLAGS = (PhotFlag.MASKED | PhotFlag.SATURATED | PhotFlag.OFF_FRAME | PhotFlag.NOT_ALIGNED
             | PhotFlag.FEW_SKY_PIXELS | PhotFlag.NO_POSITION)

#: variance of the annulus level over σ²/N for each estimator (Gaussian sky)
SKY_VARIANCE_FACTOR = {"annulus-mean": 1.0, "annulus-median": math.pi / 2,
                       "annulus-mode": 6.25 * math.pi / 2 + 2.25 - 7.5}


def measure_apertures(*, data: np.ndarray, error: np.ndarray, mask: np.ndarray,
                      x: Sequence[float], y: Sequence[float], radii: Sequence[float],
                      annulus: tuple[float, float] = (12.0, 20.0),
                      background: str = "annulus-median", background_map: np.ndarray | None = None,
                      background_map_error: np.ndarray | None = None,
                      sigma: float = 3.0, min_sky_pixels: int = 20,
                      sky_mask: np.ndarray | None = None,
                      source_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Aperture photometry of sources at ``(x, y)`` (0-based pixels) in several radii.

    Parameters
    ----------
    data, error : ndarray
        Calibrated SCI and ERR (electrons); not modified.
    mask : ndarray of uint16 or bool
        MASK plane (non-zero = bad): excluded from sums and annuli; the lost
        fraction of each aperture is reported (``masked_fraction``).
    x, y : sequence of float
        Source centres.
    radii : sequence of float
        Aperture radii in pixels.
    annulus : (float, float)
        Inner and outer radius of the local-background annulus.
    background : {'annulus-median', 'annulus-mean', 'annulus-mode', 'map'}
        Local background per pixel: sigma-clipped median, mean or mode
        (2.5 median − 1.5 mean) of the annulus, or the mean of
        ``background_map`` inside the aperture.  The mode resists faint
        stars in a crowded annulus but reads a Poisson sky's most probable
        value, ~0.5 e- per pixel below its mean at 500 e-.
    background_map_error : ndarray, optional
        Per-pixel error of the map (map mode); default: BKG_RMS-free, 0.
    sigma : float
        Clipping of the annulus values.
    min_sky_pixels : int
        Fewer usable annulus pixels sets FEW_SKY_PIXELS.
    sky_mask : ndarray of bool, optional
        Pixels left out of the annulus only (True = leave out), e.g. the
        background stage's source mask, so that neighbours do not raise the
        sky level (AstroImageJ's "remove stars from background").  Where it
        leaves fewer than ``min_sky_pixels`` of an annulus, that annulus is
        used without it (the star's own mask may cover it).

    Returns
    -------
    DataFrame
        One row per source and radius: ``source_id, x, y, radius, flux,
        flux_err, bkg, bkg_err, n_ap, n_sky, masked_fraction, flags``
        (fluxes in the data's unit; ``bkg`` per pixel).
    """
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture

    data = np.asarray(data, np.float64)
    error = np.asarray(error, np.float64)
    bad = np.asarray(mask) != 0
    if data.shape != error.shape or data.shape != bad.shape:
        raise PhotometryError(f"data {data.shape}, error {error.shape} and mask "
                              f"{bad.shape} must have one shape")
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
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ids = np.arange(len(x)) if source_ids is None else np.asarray(source_ids)
    ny, nx = data.shape
    inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    clean = np.where(bad, 0.0, data)
    saturated = (np.asarray(mask).astype(np.uint32) & int(MaskBit.SATURATED)) != 0 \
        if np.asarray(mask).dtype != bool else np.zeros(data.shape, bool)
    pos = np.column_stack([np.where(inside, x, 0.0), np.where(inside, y, 0.0)])

    # local background per source (independent of the aperture radius)
    n_sky = np.zeros(len(x))
    if background == "map":
        bmap = np.asarray(background_map, np.float64)
        berr = (np.zeros_like(bmap) if background_map_error is None
                else np.asarray(background_map_error, np.float64))
    else:
        ann = CircularAnnulus(pos, r_in, r_out)
        clip = SigmaClip(sigma=sigma, maxiters=10)

        def annulus_stats(exclude):
            stats = ApertureStats(clean, ann, mask=exclude, sigma_clip=clip)
            return (np.atleast_1d(stats.median), np.atleast_1d(stats.mean),
                    np.atleast_1d(stats.std), np.atleast_1d(stats.center_aper_area.value))

        median, mean, spread, n_sky = annulus_stats(bad)
        if sky_mask is not None:
            sky_mask = np.asarray(sky_mask, bool)
            if sky_mask.shape != bad.shape:
                raise PhotometryError(f"sky_mask {sky_mask.shape} must have the data's shape "
                                      f"{bad.shape}")
            masked = annulus_stats(bad | sky_mask)
            use = masked[3] >= min_sky_pixels
            median, mean, spread, n_sky = (np.where(use, m, a) for m, a in
                                           zip(masked, (median, mean, spread, n_sky),
                                               strict=True))
        level = {"annulus-median": median, "annulus-mean": mean,
                 "annulus-mode": 2.5 * median - 1.5 * mean}[background]
        sky_var = SKY_VARIANCE_FACTOR[background] * spread**2 / np.maximum(n_sky, 1)

    rows = []
    for radius in radii:
        ap = CircularAperture(pos, radius)
        ap_stats = ApertureStats(clean, ap, mask=bad, error=np.where(bad, 0.0, error))
        raw_sum = np.atleast_1d(ap_stats.sum)
        var_sum = np.atleast_1d(ap_stats.sum_err) ** 2
        n_good = np.atleast_1d(ap.area_overlap(data, mask=bad))  # exact unmasked area
        n_all = np.atleast_1d(ap.area_overlap(data))
        if background == "map":
            bstats = ApertureStats(bmap, ap, mask=bad)
            bkg = np.atleast_1d(bstats.mean)
            bkg_err = np.atleast_1d(ApertureStats(berr, ap, mask=bad).mean)
            bkg_total = np.atleast_1d(bstats.sum)
            bkg_var_total = (n_good * bkg_err) ** 2  # map errors are smooth: fully correlated
        else:
            bkg = level
            bkg_err = np.sqrt(sky_var)
            bkg_total = level * n_good
            bkg_var_total = n_good**2 * sky_var
        flux = raw_sum - bkg_total
        flux_err = np.sqrt(var_sum + bkg_var_total)
        masked_fraction = np.clip(1.0 - n_good / np.maximum(n_all, 1e-9), 0.0, 1.0)
        flags = np.zeros(len(x), np.int64)
        flags[masked_fraction > 0.001] |= PhotFlag.MASKED
        sat_hit = np.atleast_1d(ApertureStats(saturated.astype(float), ap).max) > 0
        flags[sat_hit] |= PhotFlag.SATURATED
        reach = max(radius, r_out if background != "map" else radius)
        near = (x - reach < -0.5) | (x + reach > nx - 0.5) | (y - reach < -0.5) | (
            y + reach > ny - 0.5)
        flags[near] |= PhotFlag.NEAR_EDGE
        placed = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        if len(placed) > 1:
            from scipy.spatial import cKDTree

            pairs = cKDTree(np.column_stack([x[placed], y[placed]])).query_pairs(radius)
            for i, j in pairs:
                flags[placed[i]] |= PhotFlag.BLENDED
                flags[placed[j]] |= PhotFlag.BLENDED
        if background != "map":
            flags[n_sky < min_sky_pixels] |= PhotFlag.FEW_SKY_PIXELS
        flags[~inside] |= PhotFlag.OFF_FRAME
        flux = np.where(inside, flux, np.nan)
        flux_err = np.where(inside, flux_err, np.nan)
        rows.append(pd.DataFrame({
            "source_id": ids, "x": x, "y": y, "radius": radius, "flux": flux,
            "flux_err": flux_err, "bkg": np.where(inside, bkg, np.nan),
            "bkg_err": np.where(inside, bkg_err, np.nan), "n_ap": n_good, "n_sky": n_sky,
            "masked_fraction": masked_fraction, "flags": flags}))
    return pd.concat(rows, ignore_index=True)
