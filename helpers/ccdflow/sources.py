"""Source lists, FWHM, re-centroiding and frame-to-reference offsets.

Detection uses photutils segmentation on the background-subtracted frame
(``detect_sources`` above ``nsigma`` × BKG_RMS, ``SourceCatalog`` centroids
and FWHM).  Sources are numbered by decreasing flux, ties broken by position,
so the numbering is deterministic.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["SourceError", "detect_stars", "estimate_fwhm", "frame_offset", "recentroid"]


class SourceError(ValueError):
    """Sources cannot be found or matched; the message says why."""


def detect_stars(*, data: np.ndarray, background: np.ndarray, rms: np.ndarray,
                 mask: np.ndarray | None = None, nsigma: float = 5.0, npixels: int = 5,
                 deblend: bool = True) -> pd.DataFrame:
    """Sources above ``nsigma`` × ``rms`` over ``background``.

    Returns
    -------
    DataFrame
        ``source_id`` (1 = brightest), ``x``, ``y`` (0-based centroids),
        ``flux`` (segment sum, e-), ``peak``, ``fwhm`` (px), ``area`` (px),
        ``snr`` (flux over √(Σ rms² + flux)), ``saturated_or_masked``.
    """
    from photutils.segmentation import SourceCatalog, deblend_sources, detect_sources

    bad = np.zeros(data.shape, bool) if mask is None else np.asarray(mask) != 0
    sub = np.where(bad, 0.0, data - background)
    segm = detect_sources(sub, nsigma * rms, n_pixels=npixels, mask=bad)
    if segm is None:
        return pd.DataFrame(columns=["source_id", "x", "y", "flux", "peak", "fwhm", "area",
                                     "snr", "saturated_or_masked"])
    if deblend and segm.n_labels > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            segm = deblend_sources(sub, segm, n_pixels=npixels, progress_bar=False)
    cat = SourceCatalog(sub, segm, mask=bad)
    table = pd.DataFrame({
        "x": np.asarray(cat.x_centroid, float), "y": np.asarray(cat.y_centroid, float),
        "flux": np.asarray(cat.segment_flux, float), "peak": np.asarray(cat.max_value, float),
        "fwhm": np.asarray(cat.fwhm.value, float), "area": np.asarray(cat.area.value, float),
    })
    noise = np.sqrt(np.asarray(
        [np.sum(rms[sl][segm.data[sl] == lab] ** 2) for sl, lab in zip(segm.slices, segm.labels,
                                                                        strict=True)]))
    table["snr"] = table["flux"] / np.sqrt(noise**2 + np.clip(table["flux"], 0, None))
    near_bad = [bool(bad[sl][segm.data[sl] == lab].any()) if bad.any() else False
                for sl, lab in zip(segm.slices, segm.labels, strict=True)]
    table["saturated_or_masked"] = near_bad
    table = table[np.isfinite(table["x"]) & np.isfinite(table["y"])]
    table = table.sort_values(["flux", "y", "x"], ascending=[False, True, True],
                              kind="stable").reset_index(drop=True)
    table.insert(0, "source_id", np.arange(1, len(table) + 1))
    return table


def estimate_fwhm(*, data: np.ndarray, background: np.ndarray, sources: pd.DataFrame,
                  min_snr: float = 30.0, n_max: int = 50) -> float:
    """Median FWHM (px) from 2-D Gaussian fits (photutils ``fit_fwhm``) to bright,
    unmasked, isolated sources.

    Segment moments (``SourceCatalog.fwhm``) are truncated at the detection
    isophote and read ~12 % low on the demo night; a fit does not.
    """
    from photutils.psf import fit_fwhm

    if sources.empty:
        raise SourceError("no sources to measure the FWHM")
    good = sources[(sources["snr"] > min_snr) & ~sources["saturated_or_masked"]]
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwhm = fit_fwhm(data - background, xypos=good[["x", "y"]].to_numpy(), fit_shape=size)
    fwhm = np.asarray(fwhm, float)
    fwhm = fwhm[np.isfinite(fwhm) & (fwhm > 0.5)]
    if fwhm.size == 0:
        raise SourceError("FWHM fits failed for every bright source")
    return float(np.median(fwhm))


def recentroid(*, data: np.ndarray, background: np.ndarray, x: Sequence[float],
               y: Sequence[float], box_size: int, mask: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Centroid each source within a ``box_size`` box (2-D Gaussian fit, photutils).

    Sources whose box leaves the frame, or whose fit fails, keep their input
    position (the caller flags off-frame rows).
    """
    from photutils.centroids import centroid_2dg, centroid_sources

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ny, nx = data.shape
    half = box_size // 2
    ok = (x - half >= 0) & (x + half < nx) & (y - half >= 0) & (y + half < ny)
    out_x, out_y = x.copy(), y.copy()
    if ok.any():
        bad = None if mask is None else np.asarray(mask) != 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cx, cy = centroid_sources(data - background, x[ok], y[ok], box_size=box_size | 1,
                                      mask=bad, centroid_func=centroid_2dg)
        good = np.isfinite(cx) & np.isfinite(cy) & (np.hypot(cx - x[ok], cy - y[ok]) < half)
        out_x[np.flatnonzero(ok)[good]] = cx[good]
        out_y[np.flatnonzero(ok)[good]] = cy[good]
    return out_x, out_y


def frame_offset(*, reference: pd.DataFrame, sources: pd.DataFrame, max_shift: float = 50.0,
                 n_bright: int = 50, tolerance: float = 1.5) -> tuple[float, float, int]:
    """Translation (dx, dy) that maps reference positions onto this frame's sources.

    Every pairing of the ``n_bright`` brightest sources votes for a shift
    (1-px bins); the winning bin is refined by the median of the matched
    pairs within ``tolerance`` px.  Returns ``(dx, dy, n_matched)``.
    """
    if len(reference) < 3 or len(sources) < 3:
        raise SourceError(f"too few sources to align: {len(sources)} in the frame, "
                          f"{len(reference)} in the reference (clouds?)")
    ref = reference.nlargest(n_bright, "flux")[["x", "y"]].to_numpy()
    cur = sources.nlargest(n_bright, "flux")[["x", "y"]].to_numpy()
    d = (cur[np.newaxis, :, :] - ref[:, np.newaxis, :]).reshape(-1, 2)
    d = d[(np.abs(d) <= max_shift).all(axis=1)]
    if len(d) == 0:
        raise SourceError(f"no source pair within max_shift={max_shift} px")
    bins = np.arange(-max_shift - 0.5, max_shift + 1.5, 1.0)
    hist, xe, ye = np.histogram2d(d[:, 0], d[:, 1], bins=[bins, bins])
    i, j = np.unravel_index(np.argmax(hist), hist.shape)
    guess = np.array([xe[i] + 0.5, ye[j] + 0.5])
    close = np.linalg.norm(d - guess, axis=1) <= tolerance
    if close.sum() < 3:
        raise SourceError(f"only {close.sum()} source pairs agree on a shift: cannot align")
    dx, dy = np.median(d[close], axis=0)
    return float(dx), float(dy), int(close.sum())
