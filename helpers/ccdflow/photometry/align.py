"""Frame-to-reference alignment: translation vote, affine refinement, centroid guard.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .detect import SourceError

log = logging.getLogger(__name__)


__all__ = ["frame_offset"]


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


def _affine_positions(ref_xy: np.ndarray, det_xy: np.ndarray, shift: tuple[float, float],
                      tolerance: float) -> tuple[np.ndarray, int]:
    """Reference positions mapped into the frame: translation, refined by an affine fit
    to the matched pairs when there are at least 6."""
    from scipy.spatial import cKDTree

    moved = ref_xy + np.asarray(shift)
    finite = np.isfinite(moved).all(axis=1)  # targets without a position stay NaN
    dist = np.full(len(moved), np.inf)
    k = np.zeros(len(moved), int)
    if finite.any() and len(det_xy):
        dist[finite], k[finite] = cKDTree(det_xy).query(moved[finite],
                                                        distance_upper_bound=tolerance)
    hit = np.isfinite(dist)
    if hit.sum() < 6:
        return moved, int(hit.sum())
    design = np.column_stack([ref_xy[hit], np.ones(hit.sum())])
    coef, *_ = np.linalg.lstsq(design, det_xy[k[hit]], rcond=None)
    return np.column_stack([ref_xy, np.ones(len(ref_xy))]) @ coef, int(hit.sum())


def _guard_centroids(x0: np.ndarray, y0: np.ndarray, cx: np.ndarray, cy: np.ndarray, *,
                     snr: np.ndarray, fwhm: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the aligned positions where re-centroiding cannot be trusted.

    The alignment already places each star to a fraction of a pixel; a centroid
    that moves further than ``max(1, 0.3·FWHM)`` px was pulled by something else,
    and two sources that end within ``0.5·FWHM`` of each other (a faint one
    dragged onto a bright neighbour) keep only the brighter's centroid.
    """
    from scipy.spatial import cKDTree

    cx, cy = cx.copy(), cy.copy()
    far = np.hypot(cx - x0, cy - y0) > max(1.0, 0.3 * fwhm)
    cx[far], cy[far] = x0[far], y0[far]
    if len(cx) > 1:
        for i, j in cKDTree(np.column_stack([cx, cy])).query_pairs(0.5 * fwhm):
            if np.hypot(x0[i] - x0[j], y0[i] - y0[j]) > 0.5 * fwhm:
                k = i if snr[i] < snr[j] else j
                cx[k], cy[k] = x0[k], y0[k]
    return cx, cy
