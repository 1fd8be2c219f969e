"""Aperture photometry that loses no measurement: repaired pixels, neighbour light, two
errors.

Per source and aperture radius (sums are SEP's exact pixel overlaps, equal to
photutils' ``aperture_photometry(method='exact')``)::

    flux          = Σ_ap (R − b̂)                        R: the frame, repaired
    flux_err²     = Σ_ap (ERR² − ERR_CAL²) + Σ_fill V_model + (Σ_fill P)²·Var(F̂)
                    + N_ap²·Var(b̂)
    flux_err_cal² = Σ_ap ERR_CAL²

*Repair, don't discard.*  Pixels the calibration corrected (HOT where a dark was
subtracted or the series' own hot-pixel dark rates, LOW_FLAT above the floor)
are measured with their larger ERR.
Pixels with no usable value (COSMIC, STREAK, BAD, NONFINITE, NO_DATA, BADCAL, HOT
when no dark was subtracted, and pixels standing more than 8σ above the PSF model of
every source: cosmic rays the mask missed on the stars, see
:mod:`ccdflow.photometry.outliers`; such a star is measured at its PSF-fitted centre)
are filled with the sky map plus the PSF model of
every source near them, each source's flux F̂ fitted to its unmasked pixels;
the filled pixels' own noise (``V_model`` = sky variance + source photons) and
the model's error enter ``flux_err``.  The row carries REPAIRED and
``repaired_fraction`` (the share of the star's light in the aperture that is
model); above ``max_repaired_fraction`` it is MASKED (unusable).  Without a PSF
model a filled pixel is the mean of its unmasked 5×5 neighbours.  SATURATED
pixels are not filled: they count zero, leave the area, and the row is unusable
(unless the pixel is also BAD, HOT or COSMIC: a defect or a cosmic ray filled it,
not the star, and it is filled like them).

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

The flags of a row are :class:`ccdflow.photometry.flags.PhotFlag` (table there);
the repair is :mod:`ccdflow.photometry.repair`, the source model (PSF fit) is
:mod:`ccdflow.photometry.model` (hidden neighbours :mod:`ccdflow.photometry.neighbours`),
optimal photometry :mod:`ccdflow.photometry.optimal`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .flags import (
    BAD_FLAGS,
    COMPARISON_BAD_FLAGS,
    CORRECTED_BITS,
    FILL_BITS,
    PhotFlag,
    PhotometryError,
)
from .model import (
    SourceModel,
    cut_stamps,
    fit_source_fluxes,
    neighbour_variance,
    overlap_fraction,
)
from .neighbours import find_hidden_neighbours
from .noise import RandomVariance
from .optimal import optimal_photometry
from .outliers import model_without_outliers
from .repair import RepairedFrame, pixel_classes, repaired_frame
from .sky import SKY_VARIANCE_FACTOR, _local_sky, _Sky, annulus_statistics

__all__ = ["BAD_FLAGS", "COMPARISON_BAD_FLAGS", "CORRECTED_BITS", "FILL_BITS",
           "SKY_VARIANCE_FACTOR", "PhotFlag", "PhotometryError", "SourceModel",
           "annulus_statistics", "find_hidden_neighbours", "fit_source_fluxes",
           "measure_apertures"]


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
                      optimal: bool = False, row_noise_e: float = 0.0) -> pd.DataFrame:
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
        with ``radius`` NaN after the apertures (see
        :func:`ccdflow.photometry.optimal.optimal_photometry`).
    row_noise_e : float
        1σ (e-) of a level common to each row (a per-row overscan level, header
        OVSCNOIS): ERR holds it per pixel, the aperture sum also gets its
        correlation along the rows, ``σ_row²·Σ_rows (a_r² − a_r)`` with a_r
        the aperture's area in row r.

    Returns
    -------
    DataFrame
        One row per source and radius (then per source for ``optimal``):
        ``source_id, x, y, radius, flux, flux_err, flux_err_cal, bkg, bkg_err,
        bkg_rms, n_ap, n_sky, masked_fraction, repaired_fraction, contamination,
        flags``.
    """
    data = np.asarray(data, np.float64)
    error = np.asarray(error)  # float32 as stored: squared in float64 where used
    bits = np.asarray(mask)
    radii = [float(r) for r in radii]
    sky_mask = None if sky_mask is None else np.asarray(sky_mask, bool)
    _check_inputs(data=data, error=error, bits=bits, background=background,
                  background_map=background_map, annulus=annulus, radii=radii,
                  optimal=optimal, psf=psf, sky_mask=sky_mask)
    # ERR_CAL as given (float32 as stored: half a float64 plane), squared in float64;
    # NaN counts 0 (copied only when there is one)
    err_cal = (np.zeros(data.shape, np.float32) if error_cal is None
               else np.asarray(error_cal))
    if np.isnan(err_cal).any():
        err_cal = np.nan_to_num(err_cal, posinf=np.inf, neginf=-np.inf)
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ids = np.arange(len(x)) if source_ids is None else np.asarray(source_ids)
    ny, nx = data.shape
    inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    fill, saturated = pixel_classes(bits, data, dark_subtracted=dark_subtracted)
    bad_any = fill | saturated  # not usable as measured values
    sky = _local_sky(data=data, bad=bad_any, sky_mask=sky_mask, x=np.where(inside, x, 0.0),
                     y=np.where(inside, y, 0.0), annulus=annulus, background=background,
                     background_map=background_map, background_map_error=background_map_error,
                     sigma=sigma, min_sky_pixels=min_sky_pixels)
    # ERR² − ERR_CAL², evaluated where needed (a float64 plane is 134 MB at 4k²)
    rand_var = RandomVariance(error=error, error_cal=err_cal)
    # the frame's typical per-pixel sky noise (a sparse sample is plenty)
    sample = rand_var.at(np.s_[::7, ::7])[~bad_any[::7, ::7]]
    typical_noise = (float(np.nanmedian(sky.rms)) if np.isfinite(sky.rms).any()
                     else float(np.sqrt(np.median(sample))) if sample.size else 1.0)
    model, image, n_hidden, n_outliers = None, None, 0, 0
    if psf is not None:  # cosmic rays the mask missed on stars are filled like it
        model, image, n_hidden, outliers, refitted = model_without_outliers(
            data=data, usable=~bad_any, saturated=saturated, psf=psf,
            x=np.where(inside, x, np.nan), y=np.where(inside, y, np.nan),
            sky=np.nan_to_num(sky.at_sources(x, y, inside)),
            sky_rms=np.nan_to_num(np.where(np.isfinite(sky.rms), sky.rms, typical_noise),
                                  nan=1.0),
            sky_map=background_map,
            typical_noise=typical_noise, radius=max(radii), recentre=subtract_neighbours)
        fill[outliers] = bad_any[outliers] = True
        n_outliers = len(outliers[0])
        # apertures on the recentred stars of blends, and on the PSF-fitted centres of
        # stars a pixel stood out of (a cosmic ray pulled their centroids)
        moved = (inside & np.isfinite(model.x) & np.isfinite(model.y)
                 & (subtract_neighbours | refitted))
        x = np.where(moved, model.x, x)
        y = np.where(moved, model.y, y)
    geometry = _Geometry.build(x=x, y=y, inside=inside, ids=ids, reach=max(radii),
                               fill=fill, model=model, image=image)
    # the scene image is needed no further than its stamps and its filled pixels
    model_at = image[np.nonzero(fill)] if image is not None else None
    del image
    frame = repaired_frame(data=data, rand_var=rand_var, err_cal=err_cal, fill=fill,
                           saturated=saturated, repair=repair, model_at=model_at,
                           typical_noise=typical_noise, sky_pixels=sky.pixels(background_map),
                           model_rel_error=model.rel_error if model is not None else 0.0)
    rows = [_radius_rows(radius=radius, frame=frame, geometry=geometry, sky=sky,
                         model=model, repair=repair, shape=data.shape, r_out=annulus[1],
                         max_repaired_fraction=max_repaired_fraction,
                         max_contamination=max_contamination,
                         subtract_neighbours=subtract_neighbours,
                         min_sky_pixels=min_sky_pixels, row_noise_e=row_noise_e)
            for radius in radii]
    if optimal:
        mapped = sky.level is None
        rows.append(optimal_photometry(
            data=data, rand_var=rand_var, err_cal=err_cal, usable=~bad_any,
            saturated=saturated, x=x, y=y, inside=inside, ids=ids, psf=psf, model=model,
            radius=max(radii), sky=None if mapped else sky.level,
            bmap=sky.map if mapped else None, sky_var=None if mapped else sky.var,
            bkg_rms=sky.rms, n_sky=sky.n, reference=rows[int(np.argmax(radii))],
            max_repaired_fraction=max_repaired_fraction, max_contamination=max_contamination,
            subtract_neighbours=subtract_neighbours, row_noise_e=row_noise_e))
    table = pd.concat(rows, ignore_index=True)
    table.attrs["hidden_neighbours"] = n_hidden
    table.attrs["model_outliers"] = n_outliers
    if model is not None:
        table.attrs["psf_model_error"] = model.rel_error
        table.attrs["psf_model_error_random"] = model.rel_error_random
    if optimal:
        table.attrs["optimal_correction"] = rows[-1].attrs.get("optimal_correction")
    return table


def _check_inputs(*, data, error, bits, background, background_map, annulus, radii, optimal,
                  psf, sky_mask) -> None:
    """Raise PhotometryError naming the parameter that is wrong."""
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
    if not radii or min(radii) <= 0:
        raise PhotometryError(f"radii must be positive, got {radii}")
    if optimal and psf is None:
        raise PhotometryError("optimal photometry needs the frame's PSF (psf=...)")
    if sky_mask is not None and sky_mask.shape != bits.shape:
        raise PhotometryError(f"sky_mask {sky_mask.shape} must have the data's shape "
                              f"{bits.shape}")


@dataclass
class _Geometry:
    """Sources' positions and the stamps around them (fractions and error terms)."""

    x: np.ndarray
    y: np.ndarray
    pos_x: np.ndarray  #: x, 0 off the frame (for SEP)
    pos_y: np.ndarray
    inside: np.ndarray
    ids: np.ndarray
    half: int
    spx: np.ndarray  #: stamp columns (n, k)
    spy: np.ndarray  #: stamp rows (n, k)
    fill_st: np.ndarray  #: filled pixels on the stamps
    own_p: np.ndarray | None  #: each source's unit PSF on its stamp
    model_st: np.ndarray | None  #: every source's modelled light on the stamps
    placed: np.ndarray  #: sources with a finite position
    tree: object | None  #: KD-tree of the placed sources

    @classmethod
    def build(cls, *, x, y, inside, ids, reach, fill, model, image) -> _Geometry:
        pos_x, pos_y = np.where(inside, x, 0.0), np.where(inside, y, 0.0)
        half = math.ceil(reach) + 1
        dgrid = np.arange(-half, half + 1)
        spx = np.floor(pos_x + 0.5).astype(np.int64)[:, None] + dgrid[None, :]
        spy = np.floor(pos_y + 0.5).astype(np.int64)[:, None] + dgrid[None, :]
        fill_st, _ = cut_stamps(fill, spx, spy, fill=False)
        own_p = model_st = None
        if model is not None:
            own_p, _, _ = model.box(half)
            model_st, _ = cut_stamps(image, spx, spy)
        placed = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        tree = None
        if len(placed) > 1:
            from ..spatial import PointTree

            tree = PointTree(np.column_stack([x[placed], y[placed]]))
        return cls(x=x, y=y, pos_x=pos_x, pos_y=pos_y, inside=inside, ids=ids, half=half,
                   spx=spx, spy=spy, fill_st=fill_st, own_p=own_p, model_st=model_st,
                   placed=placed, tree=tree)


def _to_small_axis(pos: np.ndarray, n: int, half: int) -> tuple[np.ndarray, int]:
    """Coordinates along one axis of length ``n`` moved onto an axis of ``2 half + 1``
    pixels (or ``n`` if shorter) so that a circle of radius ≤ ``half - 2`` keeps its
    overlap with the axis' ends: near an end by a whole-pixel shift, elsewhere to the
    middle, where it overlaps neither end."""
    w = min(n, 2 * half + 1)
    if w == n:
        return pos, w
    shifted = np.where(pos < half, pos, pos - (n - w))  # near the start: unmoved
    middle = (pos >= half) & (pos <= n - 1 - half)
    return np.where(middle, pos - np.round(pos) + half, shifted), w


def frame_overlap_area(*, x: np.ndarray, y: np.ndarray, radius: float,
                       shape: tuple[int, int]) -> np.ndarray:
    """Area (px²) of each circle of ``radius`` at ``(x, y)`` that lies on a frame of
    ``shape``: SEP's exact sum of an all-ones frame, measured on an all-ones image of
    ``(2⌈r⌉ + 5)²`` pixels instead (a 4k² frame's all-ones plane, once per radius, was
    the photometry job's peak memory)."""
    import sep

    half = math.ceil(radius) + 2
    sx, wx = _to_small_axis(np.asarray(x, float), shape[1], half)
    sy, wy = _to_small_axis(np.asarray(y, float), shape[0], half)
    area, _, _ = sep.sum_circle(np.ones((wy, wx)), sx, sy, radius, subpix=0)
    return np.asarray(area, float)


def _radius_rows(*, radius, frame: RepairedFrame, geometry: _Geometry, sky: _Sky, model, repair,
                 shape, r_out, max_repaired_fraction, max_contamination, subtract_neighbours,
                 min_sky_pixels, row_noise_e=0.0) -> pd.DataFrame:
    """One row per source for one aperture radius."""
    import sep

    g = geometry

    def sums(image):
        s, _, _ = sep.sum_circle(np.ascontiguousarray(image), g.pos_x, g.pos_y, radius,
                                 subpix=0)
        return np.asarray(s, float)

    n = len(g.x)
    n_good = sums(frame.ones)
    n_all = frame_overlap_area(x=g.pos_x, y=g.pos_y, radius=radius, shape=shape)
    ov = overlap_fraction(g.spx, g.spy, g.pos_x, g.pos_y, radius)
    if sky.level is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            bkg = sums(np.where(frame.excluded, 0.0, sky.map)) / n_good
            bkg_err = sums(np.where(frame.excluded, 0.0, sky.map_err)) / n_good
        bkg_var_total = (bkg_err * n_good) ** 2  # map errors: fully correlated
    else:
        bkg, bkg_err = sky.level, np.sqrt(sky.var)
        bkg_var_total = n_good**2 * sky.var
    flux = sums(frame.work) - bkg * n_good
    flux_var = sums(frame.work_var) + bkg_var_total
    if row_noise_e > 0:
        flux_var = flux_var + row_noise_e**2 * row_correlation(g.pos_y, radius)
    repaired = np.zeros(n)
    contamination = np.full(n, np.nan)
    if repair and model is not None:
        own = (ov * g.own_p).sum(axis=(1, 2))
        filled_share = (ov * g.own_p * g.fill_st).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            repaired = np.where(own > 0, filled_share / own, 0.0)
        flux_var = flux_var + filled_share**2 * model.flux_var
    elif repair:
        with np.errstate(invalid="ignore", divide="ignore"):
            repaired = (ov * g.fill_st).sum(axis=(1, 2)) / np.maximum(ov.sum(axis=(1, 2)), 1e-9)
    if model is not None:
        own_light = model.flux * (ov * g.own_p).sum(axis=(1, 2))
        others = (ov * g.model_st).sum(axis=(1, 2)) - own_light
        with np.errstate(invalid="ignore", divide="ignore"):
            contamination = np.where(own_light > 0, np.clip(others, 0, None) / own_light,
                                     np.where(others > 0, np.inf, 0.0))
        if subtract_neighbours:
            flux = flux - others
            flux_var = flux_var + neighbour_variance(model, g.x, g.y, radius, g.placed)
    masked_fraction = np.clip(1.0 - n_good / np.maximum(n_all, 1e-9), 0.0, 1.0)
    if repair:
        # any filled pixel the exact aperture touches (its corner within r)
        centre_d = np.hypot(g.spx[:, None, :] - g.pos_x[:, None, None],
                            g.spy[:, :, None] - g.pos_y[:, None, None])
        touched = (g.fill_st & (centre_d < radius + math.sqrt(0.5))).any(axis=(1, 2))
        repaired = np.where(touched, np.maximum(repaired, 1e-6), 0.0)
    else:
        touched = None
    sat_area = (sums(frame.saturated) if frame.saturated.any()
                else np.zeros(n))  # SEP sums a bool plane as 0 and 1 (no float copy)
    flags = _radius_flags(radius=radius, geometry=g, shape=shape, touched=touched,
                          repaired=repaired, masked_fraction=masked_fraction,
                          sat_area=sat_area, contamination=contamination,
                          r_out=None if sky.level is None else r_out, n_sky=sky.n,
                          max_repaired_fraction=max_repaired_fraction,
                          max_contamination=max_contamination, min_sky_pixels=min_sky_pixels)
    nan = np.where(g.inside, 1.0, np.nan)
    return pd.DataFrame({
        "source_id": g.ids, "x": g.x, "y": g.y, "radius": radius, "flux": flux * nan,
        "flux_err": np.sqrt(flux_var) * nan, "flux_err_cal": np.sqrt(sums(frame.cal_var)) * nan,
        "bkg": np.asarray(bkg) * nan, "bkg_err": np.asarray(bkg_err) * nan,
        "bkg_rms": sky.rms * nan, "n_ap": n_good, "n_sky": sky.n,
        "masked_fraction": masked_fraction, "repaired_fraction": repaired,
        "contamination": contamination * nan, "flags": flags})


def row_correlation(y: np.ndarray, radius: float) -> np.ndarray:
    """``Σ_rows (a_r² − a_r)`` of circles of ``radius`` centred on rows ``y``: a_r is
    the circle's area in pixel row r (exact chord integral), so that a level common
    to each row, of variance σ², adds σ² times this to an aperture sum beyond the
    per-pixel variance already in ERR."""
    y = np.asarray(y, float)
    reach = math.ceil(radius) + 1
    rows = np.floor(y + 0.5)[:, None] + np.arange(-reach, reach + 1)[None, :]

    def integral(u):  # ∫ 2√(r² − u²) du from 0 to u, u clipped to [−r, r]
        u = np.clip(u, -radius, radius)
        return u * np.sqrt(radius**2 - u**2) + radius**2 * np.arcsin(u / radius)

    area = integral(rows + 0.5 - y[:, None]) - integral(rows - 0.5 - y[:, None])
    return (area**2 - area).sum(axis=1)


def _radius_flags(*, radius, geometry: _Geometry, shape, touched, repaired, masked_fraction,
                  sat_area, contamination, r_out, n_sky, max_repaired_fraction,
                  max_contamination, min_sky_pixels) -> np.ndarray:
    """The rows' flags for one radius (``touched`` None: no repair; ``r_out`` None: sky
    from the map)."""
    g = geometry
    ny, nx = shape
    flags = np.zeros(len(g.x), np.int64)
    if touched is not None:
        flags[touched] |= PhotFlag.REPAIRED
        flags[repaired > max_repaired_fraction] |= PhotFlag.MASKED
    else:
        flags[masked_fraction > 0.001] |= PhotFlag.MASKED
    flags[sat_area > 0] |= PhotFlag.SATURATED
    flags[np.nan_to_num(contamination) > max_contamination] |= PhotFlag.CONTAMINATED
    rim = max(radius, r_out if r_out is not None else radius)
    x, y = g.x, g.y
    near = (x - rim < -0.5) | (x + rim > nx - 0.5) | (y - rim < -0.5) | (y + rim > ny - 0.5)
    flags[near] |= PhotFlag.NEAR_EDGE
    if g.tree is not None:
        for i, j in g.tree.query_pairs(radius):
            flags[g.placed[i]] |= PhotFlag.BLENDED
            flags[g.placed[j]] |= PhotFlag.BLENDED
    if r_out is not None:
        flags[n_sky < min_sky_pixels] |= PhotFlag.FEW_SKY_PIXELS
    flags[~g.inside] |= PhotFlag.OFF_FRAME
    return flags
