"""Per-frame detections and seeing: segments shaped like stars, FWHM, re-centroiding.

The detection is a segmentation of the background-subtracted frame
(:mod:`ccdflow.segmentation`: SEP by default, photutils as the reference),
normally the background stage's last round, so a frame is segmented once.
Segments are measured (isophotal flux, barycentre, peak, moments), kept when
``npixels`` of their pixels stand ``nsigma`` × BKG_RMS above the sky, and
shape-tested (DAOFIND sharpness and roundness, photutils' own numbers).
Sources are numbered by decreasing flux, ties broken by position, so the
numbering is deterministic.  :func:`frame_sources` is the sources stage of
one frame; :func:`write_sources`/:func:`read_sources` its ECSV product.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..masks import saturated_only
from .shapes import SHAPE_LIMITS, psf_roundness, shape_rejections, star_shapes

log = logging.getLogger(__name__)

__all__ = ["MERGE_RADIUS_FWHM", "SOURCE_COLUMNS", "SourceError", "detect_stars",
           "estimate_fwhm", "fit_gaussian_prf", "frame_sources", "masked_near",
           "merge_split_sources", "read_sources", "recentroid", "refine_centres",
           "write_sources"]


SOURCE_COLUMNS = ["source_id", "x", "y", "flux", "peak", "fwhm", "area", "snr",
                  "saturated_or_masked", "sharpness", "roundness1", "roundness2"]


class SourceError(ValueError):
    """Sources cannot be found or matched; the message says why."""



#: FWHM (px) of the DAOFIND kernel of the shape test.  A small kernel keeps
def detect_stars(*, data: np.ndarray, background: np.ndarray, rms: np.ndarray,
                 mask: np.ndarray | None = None, nsigma: float = 5.0, npixels: int = 5,
                 deblend: bool = True, shape_limits: Mapping[str, float] | None = None,
                 labels: np.ndarray | None = None, backend: str = "sep") -> pd.DataFrame:
    """Sources above ``nsigma`` × ``rms`` over ``background`` that are shaped like stars.

    The segments of ``labels`` (the background stage's last detection, usually at
    a lower threshold) or, without it, of a new segmentation
    (:func:`ccdflow.segmentation.detect_segments` with ``backend``) are kept when
    at least ``npixels`` of their pixels stand ``nsigma`` × ``rms`` above the
    sky; :func:`star_shapes` and :func:`shape_rejections` (``shape_limits``;
    ``{}`` to keep all) then drop single-pixel spikes, flat and elongated
    detections before anything uses the list.  The rejected count by reason is
    in ``DataFrame.attrs["rejected"]``.

    Returns
    -------
    DataFrame
        ``source_id`` (1 = brightest), ``x``, ``y`` (0-based barycentres),
        ``flux`` (segment sum, e-), ``peak``, ``fwhm`` (px, segment moments),
        ``area`` (px), ``snr`` (flux over √(Σ rms² + flux)),
        ``saturated_or_masked``, ``sharpness``, ``roundness1``, ``roundness2``.
    """
    from ..segmentation import detect_segments, moment_fwhm, segment_table, star_npixels

    bad = np.zeros(data.shape, bool) if mask is None else np.asarray(mask) != 0
    # a pixel whose only bit is SATURATED is a star's core: its (clipped) light stays in
    # the segment, whose barycentre a hole would pull off the star; the source is
    # saturated_or_masked all the same
    core = (np.zeros(data.shape, bool) if mask is None or np.asarray(mask).dtype == bool
            else saturated_only(mask) & np.isfinite(data))
    sub = np.array(data, np.float64)  # data − background, 0 at bad pixels; in place
    sub -= background
    sub[bad & ~core] = 0.0
    if labels is None:
        labels = detect_segments(values=sub, rms=rms, nsigma=nsigma, npixels=npixels,
                                 mask=bad & ~core, backend=backend, deblend=deblend)
    above = (sub > nsigma * np.asarray(rms)) & ~bad
    table = segment_table(labels=labels, values=sub, rms=rms, mask=bad, count_above=above)
    npixels = star_npixels(npixels=npixels, fwhm_px=moment_fwhm(table))
    table = table[(table["n_above"] >= npixels) & np.isfinite(table["x"])
                  & np.isfinite(table["y"])]
    table = table[["x", "y", "flux", "peak", "fwhm", "area", "snr",
                   "saturated_or_masked"]].reset_index(drop=True)
    table["saturated_or_masked"] = table["saturated_or_masked"].astype(bool)
    if table.empty:
        empty = pd.DataFrame(columns=SOURCE_COLUMNS)
        empty.attrs["rejected"] = {"sharp": 0, "flat": 0, "elongated": 0}
        empty.attrs["npixels"] = npixels
        return empty
    shapes = star_shapes(data=sub, x=table["x"], y=table["y"], mask=bad)
    table = pd.concat([table, shapes], axis=1)
    limits = SHAPE_LIMITS if shape_limits is None else shape_limits
    centre = psf_roundness(table, **limits) if limits else (0.0, 0.0)
    reason = (shape_rejections(table, exempt=table["saturated_or_masked"].to_numpy(),
                               roundness_centre=centre, **limits)
              if limits else np.full(len(table), "", dtype=object))
    rejected = {r: int((reason == r).sum()) for r in ("sharp", "flat", "elongated")}
    table = table[reason == ""]
    table = table.sort_values(["flux", "y", "x"], ascending=[False, True, True],
                              kind="stable").reset_index(drop=True)
    table.insert(0, "source_id", np.arange(1, len(table) + 1))
    table.attrs["rejected"] = rejected
    table.attrs["npixels"] = npixels
    table.attrs["psf_roundness"] = centre
    return table


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
        from scipy.spatial import cKDTree

        xy = good[["x", "y"]].to_numpy()
        dist, _ = cKDTree(xy).query(xy, k=2)
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




def frame_sources(*, data: np.ndarray, mask: np.ndarray, background: np.ndarray,
                  rms: np.ndarray, nsigma: float = 5.0, npixels: int = 5,
                  shape_limits: Mapping[str, float] | None = None,
                  labels: np.ndarray | None = None, backend: str = "sep",
                  ) -> tuple[pd.DataFrame, dict]:
    """Detections and seeing of one calibrated frame.

    Parameters
    ----------
    data, mask : ndarray
        Calibrated SCI (e-) and its bit mask (cosmic rays OR-ed in by the caller).
    background, rms : ndarray
        BKG and BKG_RMS of the background stage (e-).
    labels : ndarray of int, optional
        The background stage's last segmentation (cosmic-ray pixels removed):
        measured instead of segmenting again; without it ``backend`` segments.

    Returns
    -------
    sources : DataFrame
        :func:`ccdflow.photometry.detect_stars` columns.
    meta : dict
        ``n_sources``, ``fwhm_px`` (NaN when no bright isolated star could be
        fitted, e.g. through clouds), ``note`` and ``rejected_sharp``,
        ``rejected_flat``, ``rejected_elongated`` (detections that are not
        stars, :func:`shape_rejections`).
    """
    sources = detect_stars(data=data, background=background, rms=rms, mask=mask,
                           nsigma=nsigma, npixels=npixels, shape_limits=shape_limits,
                           labels=labels, backend=backend)
    meta = {"n_sources": len(sources), "fwhm_px": float("nan"), "note": "",
            "npixels": int(sources.attrs.get("npixels", npixels)),
            **{f"rejected_{k}": v for k, v in sources.attrs.get("rejected", {}).items()}}
    if meta["npixels"] < npixels:
        log.info("undersampled stars: %d pixels above the threshold make a detection instead "
                 "of %d", meta["npixels"], npixels)
    centre = sources.attrs.get("psf_roundness", (0.0, 0.0))
    if centre != (0.0, 0.0):
        log.info("stars elongated alike (median roundness1 %+.2f, roundness2 %+.2f: trailed "
                 "or out-of-round stars): elongation judged against that", *centre)
    if any(sources.attrs.get("rejected", {}).values()):
        log.info("detections that are not stars, left out: %s",
                 ", ".join(f"{v} {k}" for k, v in sources.attrs["rejected"].items()))
    try:
        meta["fwhm_px"] = estimate_fwhm(data=data, background=background, sources=sources)
    except SourceError as exc:
        meta["note"] = str(exc)
        log.warning("FWHM not measured: %s", exc)
    if len(sources) and np.isfinite(meta["fwhm_px"]):
        # windowed centroids instead of isophotal barycentres (pulled by neighbours in
        # crowded fields), PSF-fitted centres where masked pixels (a cosmic ray over the
        # core, a bad column) are near; a star whose centre wanders more than a FWHM
        # keeps its own
        x0, y0 = sources["x"].to_numpy(float), sources["y"].to_numpy(float)
        cx, cy = refine_centres(data=data, background=background, x=x0, y=y0,
                                fwhm=meta["fwhm_px"], mask=mask)
        ok = np.hypot(cx - x0, cy - y0) < meta["fwhm_px"]
        sources = sources.assign(x=np.where(ok, cx, x0), y=np.where(ok, cy, y0))
        sources = merge_split_sources(sources, radius_px=MERGE_RADIUS_FWHM * meta["fwhm_px"])
        meta["n_sources"] = len(sources)
        meta["merged"] = int(sources.attrs.get("merged", 0))
        if meta["merged"]:
            log.info("%d detection(s) merged into the star whose centre they share (a "
                     "defocused ring or a star split by deblending)", meta["merged"])
    return sources, meta


#: Detections whose refined centres lie closer than this many FWHM are one star: the
#: segments of a defocused "donut" (the deblender cuts its ring into arcs, and each arc's
#: windowed centroid converges on the ring's centre) or of a star the deblender split.
#: Two stars this close are unresolved and measured as one anyway.
MERGE_RADIUS_FWHM = 0.5


def merge_split_sources(sources: pd.DataFrame, *, radius_px: float) -> pd.DataFrame:
    """One row per star: detections whose centres lie within ``radius_px`` of each other
    (friends of friends) become one, at the brightest one's centre and shape, with the
    group's summed flux and area, largest peak, combined S/N and any
    ``saturated_or_masked``; renumbered by decreasing flux.  ``attrs["merged"]``
    counts the detections absorbed.  The input is not modified."""
    if len(sources) < 2 or not np.isfinite(radius_px) or radius_px <= 0:
        out = sources.copy()
        out.attrs["merged"] = 0
        return out
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    xy = sources[["x", "y"]].to_numpy(float)
    pairs = cKDTree(xy).query_pairs(radius_px, output_type="ndarray")
    if not len(pairs):
        out = sources.copy()
        out.attrs["merged"] = 0
        return out
    from scipy.sparse import coo_matrix

    n = len(sources)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    table = sources.reset_index(drop=True)
    flux = table["flux"].to_numpy(float)
    noise2 = np.where(table["snr"].to_numpy(float) > 0,
                      (flux / table["snr"].to_numpy(float)) ** 2, np.nan)
    # the brightest of each group first: its row (centre, shape) stands for the group
    order = np.lexsort((-flux, group))
    first = order[np.r_[True, group[order][1:] != group[order][:-1]]]
    keep = table.iloc[np.sort(first)].copy()
    g = group[keep.index.to_numpy()]
    total = np.bincount(group, weights=flux, minlength=group.max() + 1)
    keep["flux"] = total[g]
    keep["area"] = np.bincount(group, weights=table["area"].to_numpy(float))[g]
    keep["peak"] = pd.Series(table["peak"].to_numpy(float)).groupby(group).max().to_numpy()[g]
    with np.errstate(invalid="ignore", divide="ignore"):  # no S/N in the group: NaN/inf
        keep["snr"] = total[g] / np.sqrt(np.bincount(group, weights=np.nan_to_num(noise2))[g])
    keep["saturated_or_masked"] = (pd.Series(table["saturated_or_masked"].astype(bool))
                                   .groupby(group).any().to_numpy()[g])
    keep = keep.sort_values(["flux", "y", "x"], ascending=[False, True, True],
                            kind="stable").reset_index(drop=True)
    keep["source_id"] = np.arange(1, len(keep) + 1)
    keep.attrs.update(sources.attrs)
    keep.attrs["merged"] = n - len(keep)
    return keep


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


def write_sources(path: str | Path, sources: pd.DataFrame, meta: Mapping, *,
                  frame: str) -> None:
    """Write a source table as ECSV with ``frame`` and ``meta`` in its header, atomically."""
    from astropy.table import Table

    from ..io import atomic_path

    table = Table.from_pandas(sources[SOURCE_COLUMNS].reset_index(drop=True))
    table.meta.update({"frame": frame, **{k: meta[k] for k in sorted(meta)}})
    for name, unit in (("x", "pix"), ("y", "pix"), ("flux", "electron"),
                       ("peak", "electron"), ("fwhm", "pix"), ("area", "pix2")):
        table[name].unit = unit
    with atomic_path(path, suffix=".ecsv") as tmp:
        table.write(tmp, format="ascii.ecsv")


def _column(column) -> np.ndarray:
    """A table column as an array: masked (missing) floats as NaN, strings as ''."""
    if not hasattr(column, "filled"):
        return np.asarray(column)
    if column.dtype.kind in "fc":
        return np.asarray(column.filled(np.nan))
    if column.dtype.kind in "US":
        return np.asarray(column.filled(""))
    return np.asarray(column.filled())


def read_sources(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a table written by :func:`write_sources`: (sources, meta)."""
    from astropy.table import Table

    table = Table.read(path, format="ascii.ecsv")
    meta = dict(table.meta)
    frame = pd.DataFrame({c: _column(table[c]) for c in table.colnames})
    if frame.empty:
        frame = pd.DataFrame(columns=SOURCE_COLUMNS)
    return frame, meta
