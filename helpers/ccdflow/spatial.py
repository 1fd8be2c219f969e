"""Nearest neighbours and close pairs of a frame's stars, without importing scipy.spatial.

The photometry stages match a few hundred stars per frame.  ``scipy.spatial``
took 0.1-0.18 s to import in every frames, reference and photometry job
(scipy 1.17 parses docstrings at import), longer than their queries.
:class:`PointTree` answers the part of ``scipy.spatial.cKDTree``'s interface
that ccdflow uses (``query`` with ``k`` of 1 or 2 and ``distance_upper_bound``,
``query_pairs``) with the same semantics: pairs at distance ``<= r``, neighbours
at distance ``< distance_upper_bound``, missing neighbours as ``inf`` and index
``n`` (a tie goes to the lower index; cKDTree's pick among equals follows its
tree).  Close pairs and bounded neighbours come from a sweep over the points
sorted by x (only candidates within the radius in x are measured); unbounded
neighbours from all distances, in chunks.  Above
:data:`LARGE` points (or when a sweep would measure too many candidates) it
hands the query to ``cKDTree``, whose import is then a small part of the job.
``tests/test_spatial.py`` puts cKDTree's answers beside these.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LARGE", "PointTree"]

#: points above which the queries go to scipy's cKDTree
LARGE = 2048
#: distances measured at once (a chunk of queries × points, or of sweep candidates)
_CHUNK = 1 << 20


class PointTree:
    """2-D points, queried as ``scipy.spatial.cKDTree`` is.

    Parameters
    ----------
    points : array_like, shape (n, 2)
        x, y of each point.  Copied; not modified.
    """

    def __init__(self, points) -> None:
        data = np.array(points, dtype=float)
        if data.size == 0:
            data = data.reshape(0, 2)
        if data.ndim != 2 or data.shape[1] != 2:
            raise ValueError(f"points must have shape (n, 2), got {np.shape(points)}")
        self.data = data
        self.n = len(data)
        self._order = np.argsort(data[:, 0], kind="stable")
        self._xs = data[self._order, 0]
        self._ys = data[self._order, 1]
        self._kdtree = None

    def _scipy(self):
        if self._kdtree is None:
            from scipy.spatial import cKDTree

            self._kdtree = cKDTree(self.data)
        return self._kdtree

    # ------------------------------------------------------------------ sweep

    def _candidates(self, qx: np.ndarray, reach: float, *, after_self: bool = False):
        """(query index, sorted-point index) of every point within ``reach`` in x of each
        query (``after_self``: the queries are the sorted points, pairs i < j only), or
        None when there would be more than ``_CHUNK`` of them."""
        if after_self:
            lo = np.arange(1, self.n + 1)
        else:
            lo = np.searchsorted(self._xs, qx - reach, side="left")
        hi = np.searchsorted(self._xs, qx + reach, side="right")
        counts = np.maximum(hi - lo, 0)
        total = int(counts.sum())
        if total > _CHUNK:
            return None
        qi = np.repeat(np.arange(len(qx)), counts)
        starts = np.cumsum(counts) - counts
        j = lo[qi] + (np.arange(total) - starts[qi])
        return qi, j

    def query_pairs(self, r: float, output_type: str = "set"):
        """Pairs ``(i, j)``, ``i < j``, of points at distance ``<= r``: a set of tuples, or
        with ``output_type='ndarray'`` an int array of shape (k, 2)."""
        if output_type not in ("set", "ndarray"):
            raise ValueError(f"output_type must be 'set' or 'ndarray', got {output_type!r}")
        found = None
        if self.n <= LARGE:
            found = self._candidates(self._xs, r, after_self=True)
        if found is None:
            return self._scipy().query_pairs(r, output_type=output_type)
        a, b = found
        d2 = (self._xs[b] - self._xs[a]) ** 2 + (self._ys[b] - self._ys[a]) ** 2
        keep = d2 <= r * r
        i, j = self._order[a[keep]], self._order[b[keep]]
        pairs = np.column_stack([np.minimum(i, j), np.maximum(i, j)]).astype(np.int64)
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        if output_type == "ndarray":
            return pairs.reshape(-1, 2)
        return {(int(p), int(q)) for p, q in pairs}

    # --------------------------------------------------------------- neighbours

    def query(self, x, k: int = 1, distance_upper_bound: float = np.inf):
        """Distances and indices of the ``k`` (1 or 2) nearest points to each of ``x``
        (shape (2,) or (m, 2)), nearer than ``distance_upper_bound``; missing ones are
        ``inf`` and ``n``.  Shapes as ``cKDTree.query``: scalars for one point and k=1,
        a trailing axis of length k for k=2."""
        if k not in (1, 2):
            raise ValueError(f"k must be 1 or 2, got {k!r}")
        q = np.asarray(x, dtype=float)
        single = q.ndim == 1
        q = q.reshape(-1, 2)
        if self.n > LARGE:
            return self._scipy().query(x, k=k, distance_upper_bound=distance_upper_bound)
        if np.isfinite(distance_upper_bound):
            found = self._bounded(q, k, float(distance_upper_bound))
            if found is None:
                return self._scipy().query(x, k=k, distance_upper_bound=distance_upper_bound)
            dist, idx = found
        else:
            dist, idx = self._all_distances(q, k)
        if k == 1:
            dist, idx = dist[:, 0], idx[:, 0]
            if single:
                return float(dist[0]), int(idx[0])
        elif single:
            return dist[0], idx[0]
        return dist, idx

    def _all_distances(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        m = len(q)
        dist = np.full((m, k), np.inf)
        idx = np.full((m, k), self.n, dtype=np.int64)
        if self.n == 0 or m == 0:
            return dist, idx
        step = max(1, _CHUNK // self.n)
        kk = min(k, self.n)
        for s in range(0, m, step):
            part = q[s:s + step]
            d2 = ((part[:, 0, None] - self.data[None, :, 0]) ** 2
                  + (part[:, 1, None] - self.data[None, :, 1]) ** 2)
            # nearest first, ties to the lower index (a stable sort of each row)
            near = np.argsort(d2, axis=1, kind="stable")[:, :kk]
            dist[s:s + step, :kk] = np.sqrt(np.take_along_axis(d2, near, axis=1))
            idx[s:s + step, :kk] = near
        return dist, idx

    def _bounded(self, q: np.ndarray, k: int, bound: float):
        m = len(q)
        dist = np.full((m, k), np.inf)
        idx = np.full((m, k), self.n, dtype=np.int64)
        if self.n == 0 or m == 0:
            return dist, idx
        found = self._candidates(q[:, 0], bound)
        if found is None:
            return None
        qi, j = found
        d2 = (self._xs[j] - q[qi, 0]) ** 2 + (self._ys[j] - q[qi, 1]) ** 2
        keep = d2 < bound * bound
        qi, d2, point = qi[keep], d2[keep], self._order[j[keep]]
        order = np.lexsort((point, d2, qi))  # per query: nearest first, then lower index
        qi, d2, point = qi[order], d2[order], point[order]
        first = np.ones(len(qi), dtype=bool)
        first[1:] = qi[1:] != qi[:-1]
        rank = np.arange(len(qi)) - np.maximum.accumulate(np.where(first, np.arange(len(qi)), 0))
        use = rank < k
        dist[qi[use], rank[use]] = np.sqrt(d2[use])
        idx[qi[use], rank[use]] = point[use]
        return dist, idx
