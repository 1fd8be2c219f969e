"""Per-frame detections and seeing: segments shaped like stars, their FWHM and centres
(measured by :mod:`ccdflow.photometry.centroids`).

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
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SourceError
from ..masks import saturated_only
from .centroids import estimate_fwhm, refine_centres
from .shapes import SHAPE_LIMITS, psf_roundness, shape_rejections, star_shapes

log = logging.getLogger(__name__)

__all__ = ["MERGE_RADIUS_FWHM", "SOURCE_COLUMNS", "SourceError", "detect_stars",
           "frame_sources", "merge_split_sources", "read_sources", "write_sources"]


SOURCE_COLUMNS = ["source_id", "x", "y", "flux", "peak", "fwhm", "area", "snr",
                  "saturated_or_masked", "sharpness", "roundness1", "roundness2"]


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

    from ..spatial import PointTree

    xy = sources[["x", "y"]].to_numpy(float)
    pairs = PointTree(xy).query_pairs(radius_px, output_type="ndarray")
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


def write_sources(path: str | Path, sources: pd.DataFrame, meta: Mapping, *,
                  frame: str) -> None:
    """Write a source table as ECSV with ``frame`` and ``meta`` in its header, atomically
    (:func:`ccdflow.ecsv.write_ecsv`: what astropy writes, without its import)."""
    from ..ecsv import write_ecsv
    from ..io import atomic_path

    with atomic_path(path, suffix=".ecsv") as tmp:
        write_ecsv(tmp, sources[SOURCE_COLUMNS].reset_index(drop=True),
                   meta={"frame": frame, **{k: meta[k] for k in sorted(meta)}},
                   units={"x": "pix", "y": "pix", "flux": "electron", "peak": "electron",
                          "fwhm": "pix", "area": "pix2"})


def read_sources(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a table written by :func:`write_sources`: (sources, meta)."""
    from ..ecsv import read_ecsv

    frame, meta = read_ecsv(path)
    if frame.empty:
        frame = pd.DataFrame(columns=SOURCE_COLUMNS)
    return frame, meta
