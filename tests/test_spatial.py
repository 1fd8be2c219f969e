"""ccdflow.spatial.PointTree beside scipy.spatial.cKDTree on the same points."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ccdflow.spatial import LARGE, PointTree


@pytest.fixture
def rng():
    return np.random.default_rng(1206)


def _field(rng, n):
    """A frame's stars: uniform over 1k², with a few close doubles."""
    xy = rng.uniform(0, 1024, (n, 2))
    if n > 10:
        xy[: n // 10] = xy[n // 10: 2 * (n // 10)] + rng.normal(0, 2, (n // 10, 2))
    return xy


@pytest.mark.parametrize("n", [0, 1, 2, 40, 600, LARGE + 500])
@pytest.mark.parametrize("r", [0.5, 3.0, 12.0, 80.0])
def test_query_pairs_as_ckdtree(rng, n, r):
    xy = _field(rng, n)
    ours, theirs = PointTree(xy), cKDTree(xy)
    assert ours.query_pairs(r) == theirs.query_pairs(r)
    got = ours.query_pairs(r, output_type="ndarray")
    want = theirs.query_pairs(r, output_type="ndarray")
    assert {tuple(p) for p in got.tolist()} == {tuple(p) for p in want.tolist()}
    assert got.shape == want.reshape(-1, 2).shape


@pytest.mark.parametrize("n", [0, 1, 3, 40, 600, LARGE + 500])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("bound", [np.inf, 1.5, 6.0])
def test_query_as_ckdtree(rng, n, k, bound):
    xy = _field(rng, n)
    queries = np.vstack([xy[: min(n, 50)] + rng.normal(0, 1, (min(n, 50), 2)),
                         rng.uniform(-50, 1100, (30, 2))])
    d1, i1 = PointTree(xy).query(queries, k=k, distance_upper_bound=bound)
    d2, i2 = cKDTree(xy).query(queries, k=k, distance_upper_bound=bound)
    assert d1.shape == d2.shape and i1.shape == i2.shape
    np.testing.assert_allclose(d1, d2, rtol=1e-12)  # sqrt of the same sum of squares
    np.testing.assert_array_equal(i1, i2)


def test_query_one_point_and_self_neighbours(rng):
    xy = _field(rng, 300)
    ours, theirs = PointTree(xy), cKDTree(xy)
    got, want = ours.query([512.0, 300.0]), theirs.query([512.0, 300.0])
    assert isinstance(got[0], float) and isinstance(got[1], int)
    assert got == pytest.approx(want, rel=1e-12)
    # a point's nearest other star (centroids.py's use): k=2 on the points themselves
    d1, i1 = ours.query(xy, k=2)
    d2, i2 = theirs.query(xy, k=2)
    np.testing.assert_allclose(d1, d2, rtol=1e-12)
    np.testing.assert_array_equal(i1[:, 1], i2[:, 1])


def test_boundaries_and_ties_on_a_grid():
    """Integer grid: distances land exactly on the radius and neighbours tie."""
    gx, gy = np.meshgrid(np.arange(12.0), np.arange(9.0))
    xy = np.column_stack([gx.ravel(), gy.ravel()])
    ours, theirs = PointTree(xy), cKDTree(xy)
    for r in (1.0, np.sqrt(2.0), 2.0, 3.0):
        assert ours.query_pairs(r) == theirs.query_pairs(r)  # d <= r kept
    queries = np.array([[0.5, 0.0], [3.5, 3.5], [20.0, 0.0], [5.0, 5.0]])
    for bound in (np.inf, 0.5, 0.75, 1.0):  # d < bound: exactly 0.5 away is not a match
        d1, i1 = ours.query(queries, distance_upper_bound=bound)
        d2, i2 = theirs.query(queries, distance_upper_bound=bound)
        np.testing.assert_array_equal(d1, d2)
        # a tie goes to the lower index here; cKDTree's pick follows its tree: either
        # is a point at that distance
        found = np.isfinite(d1)
        np.testing.assert_array_equal(np.hypot(*(xy[i1[found]] - queries[found]).T),
                                      d1[found])
        np.testing.assert_array_equal(i1[~found], i2[~found])


def test_inputs_not_mutated_and_refusals(rng):
    xy = _field(rng, 50)
    before = xy.copy()
    tree = PointTree(xy)
    tree.query(xy, k=2, distance_upper_bound=5.0)
    tree.query_pairs(10.0)
    np.testing.assert_array_equal(xy, before)
    with pytest.raises(ValueError, match=r"points must have shape \(n, 2\)"):
        PointTree(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="k must be 1 or 2"):
        tree.query(xy, k=3)
    with pytest.raises(ValueError, match="output_type must be"):
        tree.query_pairs(1.0, output_type="list")


def test_dense_sweep_hands_over_to_ckdtree(rng):
    """A radius as wide as the field makes every pair a candidate: cKDTree answers."""
    xy = rng.uniform(0, 100, (1500, 2))
    tree = PointTree(xy)
    assert tree.query_pairs(150.0) == cKDTree(xy).query_pairs(150.0)
    assert tree._kdtree is not None


def test_photometry_imports_no_scipy_spatial(tmp_path):
    """A fresh interpreter that aligns and measures a small field never imports it."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from ccdflow.spatial import PointTree\n"
            "xy = np.random.default_rng(1).uniform(0, 1024, (500, 2))\n"
            "t = PointTree(xy); t.query_pairs(12.0); t.query(xy, k=2)\n"
            "t.query(xy + 0.3, distance_upper_bound=2.0)\n"
            "print('scipy.spatial' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
