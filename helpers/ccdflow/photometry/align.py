"""Frame-to-reference alignment that does not trust the brightest detections.

:func:`align_frame` finds the transform that maps the reference frame's
positions onto a frame's detections, in three ways, each refined by the same
affine fit to every star it matches:

1. *tracked*: from a guess (the previous frame's transform, chained through a
   batch in time order), when it still matches enough stars;
2. *translation*: the shift vote of :func:`frame_offset` (milliseconds), for
   drifts within ``max_shift_px`` and no rotation;
3. *asterism*: triangle invariants with RANSAC (``astroalign``, Beroiz et al.
   2020) on the brightest control points of both lists: any translation,
   rotation (a meridian flip is 180°) and small scale change, robust to lost
   stars (clouds) and to spurious detections (~0.15-0.6 s for 50 control points).

A frame is aligned only when enough reference stars are matched, most of them
within half the tolerance (chance pairs of a crowded field are not), see
:func:`align_frame`; otherwise :class:`~ccdflow.photometry.SourceError` says why.
A method that matches fewer than half the stars it could does not stop the search:
the method matching the most stars wins (a shift vote's chance pairs across a
meridian flip lose to the asterism's rotation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import SourceError

log = logging.getLogger(__name__)


__all__ = ["Alignment", "align_frame", "frame_offset"]


@dataclass(frozen=True)
class Alignment:
    """A transform from reference-frame pixels to a frame's pixels.

    ``matrix`` is 3×3 affine acting on ``(x, y, 1)``; ``n_matched`` stars were
    used in its final fit with an RMS ``residual_px``; ``method`` is
    ``tracked``, ``asterism`` or ``translation``.
    """

    matrix: np.ndarray
    n_matched: int
    residual_px: float
    method: str

    def apply(self, xy: np.ndarray) -> np.ndarray:
        """Reference positions ``(n, 2)`` in this frame (NaN rows stay NaN)."""
        xy = np.asarray(xy, float).reshape(-1, 2)
        return xy @ self.matrix[:2, :2].T + self.matrix[:2, 2]

    @property
    def rotation_deg(self) -> float:
        """Rotation angle of the linear part (degrees, counter-clockwise)."""
        return float(np.degrees(np.arctan2(self.matrix[1, 0], self.matrix[0, 0])))

    @property
    def scale(self) -> float:
        """Mean scale of the linear part (1 for a pure rotation)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))

    def describe(self, centre: tuple[float, float]) -> str:
        dx, dy = (self.apply(np.asarray([centre])) - np.asarray(centre))[0]
        return (f"aligned ({self.method}): shift ({dx:+.2f}, {dy:+.2f}) px at the centre, "
                f"rotation {self.rotation_deg:+.3f} deg, scale {self.scale:.5f}, "
                f"{self.n_matched} matched sources, residual {self.residual_px:.3f} px")


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _moved(matrix: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Reference positions ``(n, 2)`` carried by the 3×3 ``matrix``."""
    return ref @ matrix[:2, :2].T + matrix[:2, 2]


def _refine(matrix: np.ndarray, ref: np.ndarray, cur: np.ndarray, *, tree, tolerance: float,
            iterations: int = 3) -> tuple[np.ndarray, int, float]:
    """Affine fit to the reference/frame pairs that ``matrix`` brings within
    ``tolerance`` px, repeated with the refined transform; pairs beyond 3× the
    robust residual are left out of each fit.  Fewer than 6 pairs refine the shift only
    (their median offset, from 3 pairs).  ``tree`` is the PointTree of ``cur``."""
    n, rms = 0, float("nan")
    for _ in range(iterations):
        moved = _moved(matrix, ref)
        dist, k = tree.query(moved, distance_upper_bound=tolerance)
        hit = np.isfinite(dist)
        if hit.sum() < 6:  # too few for 6 parameters: the shift alone, once
            n = int(hit.sum())
            if n >= 3:
                shift = np.median(cur[k[hit]] - moved[hit], axis=0)
                matrix = matrix.copy()
                matrix[:2, 2] += shift
                dist = np.hypot(*(moved[hit] + shift - cur[k[hit]]).T)
            else:
                dist = dist[hit]
            rms = float(np.sqrt(np.mean(dist**2))) if n else float("nan")
            return matrix, n, rms
        src, dst = ref[hit], cur[k[hit]]
        keep = np.ones(len(src), bool)
        for _ in range(2):
            design = np.column_stack([src[keep], np.ones(keep.sum())])
            coef, *_ = np.linalg.lstsq(design, dst[keep], rcond=None)
            resid = np.hypot(*(np.column_stack([src, np.ones(len(src))]) @ coef - dst).T)
            scale = 1.4826 * np.median(resid[keep])
            keep = resid <= max(3 * scale, 0.05)
            if keep.sum() < 6:
                keep = np.ones(len(src), bool)
                break
        matrix = np.vstack([coef.T, [0.0, 0.0, 1.0]])
        n, rms = int(keep.sum()), float(np.sqrt(np.mean(resid[keep] ** 2)))
    return matrix, n, rms


#: of the stars a transform matches within the tolerance, the fraction that must sit
#: within half of it: a true transform puts its stars within centroid errors of their
#: detections, chance pairs spread evenly over the tolerance's disc (a quarter of them
#: within half its radius)
TIGHT_FRACTION = 0.5


#: a transform that matches this fraction of the stars both lists can share is taken at
#: once; below it (chance pairs of a crowded field, a frame thinned by clouds) the next
#: method is tried too and the transform matching the most stars wins
STRONG_FRACTION = 0.5


def _shared(matrix: np.ndarray, ref: np.ndarray, cur: np.ndarray) -> int:
    """How many stars the two lists can share under ``matrix``: the reference stars it
    puts inside the frame's detections' bounding box, at most the frame's count."""
    moved = _moved(matrix, ref)
    lo, hi = cur.min(axis=0), cur.max(axis=0)
    inside = ((moved >= lo) & (moved <= hi)).all(axis=1)
    return int(min(inside.sum(), len(cur)))


#: in a sparse field (a few stars left by clouds or a short exposure) fewer matches than
#: ``min_matched`` align a frame when at least this many sit within half the tolerance and
#: chance cannot put them there (:func:`_beyond_chance`)
SPARSE_MIN_MATCHED = 4

#: how many transforms a method may try (the shift vote's cells, RANSAC's hypotheses),
#: and the chance of a false alignment allowed over all of them
_TRIALS, _FALSE_ALIGNMENT = 1e5, 1e-3


def _beyond_chance(matrix: np.ndarray, ref: np.ndarray, cur: np.ndarray, *, n: int,
                   tight: int, radius: float) -> bool:
    """Whether ``tight`` of the reference stars within ``radius`` px of a detection (all of
    the ``n`` matched, at least :data:`SPARSE_MIN_MATCHED`) are beyond what chance gives
    over :data:`_TRIALS` transforms: the Poisson tail of μ = shared stars × P(a detection
    within ``radius``) at the frame's detection density."""
    if tight < max(SPARSE_MIN_MATCHED, n):
        return False
    from scipy.stats import poisson

    span = np.ptp(cur, axis=0)
    density = len(cur) / max(float(span[0] * span[1]), 1.0)
    mu = _shared(matrix, ref, cur) * -np.expm1(-density * np.pi * radius**2)
    return bool(_TRIALS * poisson.sf(tight - 1, mu) < _FALSE_ALIGNMENT)


def _tight_matches(matrix: np.ndarray, ref: np.ndarray, *, tree, radius: float) -> int:
    """Reference stars that ``matrix`` puts within ``radius`` px of a detection (``tree``:
    the PointTree of the frame's detections)."""
    dist, _ = tree.query(_moved(matrix, ref), distance_upper_bound=radius)
    return int(np.isfinite(dist).sum())


def _asterism(ref: np.ndarray, cur: np.ndarray, max_control_points: int) -> np.ndarray:
    """Similarity transform from triangle asterisms (astroalign's RANSAC)."""
    import astroalign

    transform, _ = astroalign.find_transform(ref[:max_control_points],
                                             cur[:max_control_points],
                                             max_control_points=max_control_points)
    return np.asarray(transform.params, float)


def align_frame(*, reference: pd.DataFrame, sources: pd.DataFrame,
                guess: np.ndarray | None = None, tolerance_px: float = 1.5,
                max_control_points: int = 50, max_shift_px: float = 50.0,
                min_matched: int = 6, min_matched_fraction: float = 0.1) -> Alignment:
    """Transform from the reference frame's positions onto a frame's detections.

    Parameters
    ----------
    reference, sources : DataFrame
        ``x, y, flux`` of the reference's detections and of this frame's
        (hot pixels and other non-stars already left out, see
        :func:`~ccdflow.photometry.detect_stars`).  The brightest
        ``max_control_points`` of each are the asterism's control points.
    guess : ndarray, optional
        3×3 transform to try first (the previous frame's, for chained tracking).
    tolerance_px : float
        Match radius of a predicted star and a detection (≥ 1.5 px; the FWHM).
    max_shift_px : float
        Search range of the translation vote, the last resort.
    min_matched, min_matched_fraction : int, float
        A transform is accepted when it matches at least
        ``min(min_matched, len(reference))`` stars, but no fewer than 3, and at
        least ``min_matched_fraction`` of the reference's sources, so a frame of
        another field (a few chance pairs) is not taken for aligned; as many of
        them, and :data:`TIGHT_FRACTION` of all it matched, must lie within half
        the tolerance.  In a crowded field the shift vote, which searches every
        shift, can find as many chance pairs, and a 6-parameter fit bends onto
        them: they spread over the tolerance's disc, a true match's stars sit
        within centroid errors.  A transform matching fewer than
        :data:`STRONG_FRACTION` of the stars the two lists can share (the
        reference's stars it puts on the frame, at most the frame's count) does
        not stop the search: the next method is tried, and the transform matching
        the most stars is taken.

    Returns
    -------
    Alignment

    Raises
    ------
    SourceError
        Too few sources, or no method matched enough stars; the message says
        what each tried.
    """
    if tolerance_px <= 0:
        raise SourceError(f"tolerance_px must be > 0, got {tolerance_px}")
    ref_sorted = reference.sort_values("flux", ascending=False)
    cur_sorted = sources.sort_values("flux", ascending=False)
    ref = ref_sorted[["x", "y"]].to_numpy(float)
    cur = cur_sorted[["x", "y"]].to_numpy(float)
    ref = ref[np.isfinite(ref).all(axis=1)]
    cur = cur[np.isfinite(cur).all(axis=1)]
    if len(ref) < 3 or len(cur) < 3:
        raise SourceError(f"too few sources to align: {len(cur)} in the frame, "
                          f"{len(ref)} in the reference (clouds?)")
    from ..spatial import PointTree

    tree = PointTree(cur)  # the frame's detections, for every method's matching
    needed = max(3, min(min_matched, len(ref)), int(np.ceil(min_matched_fraction * len(ref))))
    tried = []

    def attempt(method, start):
        matrix, n, rms = _refine(start, ref, cur, tree=tree, tolerance=tolerance_px)
        if n < needed and n < SPARSE_MIN_MATCHED:
            tried.append(f"{method}: {n} stars matched of {needed} needed")
            return None
        tight = _tight_matches(matrix, ref, tree=tree, radius=tolerance_px / 2)
        if (tight < max(needed, TIGHT_FRACTION * n)
                and not _beyond_chance(matrix, ref, cur, n=n, tight=tight,
                                       radius=tolerance_px / 2)):
            tried.append(f"{method}: {n} stars matched of {needed} needed" if n < needed
                         else f"{method}: {n} stars matched, but only {tight} within "
                         f"{tolerance_px / 2:.2f} px (chance pairs, not the field)")
            return None
        return Alignment(matrix=matrix, n_matched=n, residual_px=rms, method=method)

    def vote():  # milliseconds: tried before the asterism (~0.2 s)
        dx, dy, _ = frame_offset(reference=ref_sorted, sources=cur_sorted,
                                 max_shift=max_shift_px, tolerance=tolerance_px)
        return _translation(dx, dy)

    steps = [("translation", vote), ("asterism",
                                      lambda: _asterism(ref, cur, max_control_points))]
    if guess is not None:
        steps.insert(0, ("tracked", lambda: np.asarray(guess, float)))
    weak = []
    for method, start in steps:
        try:
            found = attempt(method, start())
        except SourceError as exc:
            tried.append(f"{method}: {exc}")
            continue
        except Exception as exc:  # astroalign: MaxIterError, ValueError for degenerate lists
            if method != "asterism":
                raise
            tried.append(f"{method}: {type(exc).__name__}: {exc}")
            continue
        if found is None:
            continue
        if found.n_matched >= STRONG_FRACTION * _shared(found.matrix, ref, cur):
            return found
        weak.append(found)
    if weak:  # none matched most of the stars it could: the one matching the most
        return max(weak, key=lambda a: a.n_matched)
    raise SourceError("cannot align: " + "; ".join(tried))


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


def _guard_centroids(x0: np.ndarray, y0: np.ndarray, cx: np.ndarray, cy: np.ndarray, *,
                     snr: np.ndarray, fwhm: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the aligned positions where re-centroiding cannot be trusted.

    The alignment already places each star to a fraction of a pixel; a centroid
    that moves further than ``max(1, 0.3·FWHM)`` px was pulled by something else,
    and two sources that end within ``0.5·FWHM`` of each other (a faint one
    dragged onto a bright neighbour) keep only the brighter's centroid.
    """
    from ..spatial import PointTree

    cx, cy = cx.copy(), cy.copy()
    far = np.hypot(cx - x0, cy - y0) > max(1.0, 0.3 * fwhm)
    cx[far], cy[far] = x0[far], y0[far]
    if len(cx) > 1:
        for i, j in PointTree(np.column_stack([cx, cy])).query_pairs(0.5 * fwhm):
            if np.hypot(x0[i] - x0[j], y0[i] - y0[j]) > 0.5 * fwhm:
                k = i if snr[i] < snr[j] else j
                cx[k], cy[k] = x0[k], y0[k]
    return cx, cy
