"""Combination kernel and bounded-memory driver against astropy and ccdproc."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import sigma_clip
from astropy.utils.exceptions import AstropyUserWarning

from ccdflow import combine as C
from ccdflow.combine import clip_combine, combine_frames, rows_per_block


@pytest.fixture
def stack(rng):
    """15 frames of N(100, 5) with 3 % outliers (cosmic rays) and 1 % missing values."""
    data = rng.normal(100.0, 5.0, size=(15, 60, 70))
    hits = rng.random(data.shape) < 0.03
    data[hits] += rng.uniform(30, 500, hits.sum())
    data[rng.random(data.shape) < 0.01] = np.nan
    return data


@pytest.mark.parametrize("cenfunc", ["median", "mean"])
@pytest.mark.parametrize("method", ["mean", "median"])
@pytest.mark.parametrize("maxiters", [1, 5])
@pytest.mark.parametrize("stdfunc", ["std", "mad_std"])
def test_equals_astropy_sigma_clip(stack, cenfunc, method, maxiters, stdfunc):
    # the stack holds NaNs on purpose (missing pixels): astropy says so
    with pytest.warns(AstropyUserWarning, match="Input data contains invalid values"):
        clipped = sigma_clip(stack, sigma=3, maxiters=maxiters, cenfunc=cenfunc,
                             stdfunc=stdfunc, axis=0, masked=True)
    ref = clipped.mean(axis=0) if method == "mean" else np.ma.median(clipped, axis=0)
    value, _, n_used = clip_combine(stack, method=method, cenfunc=cenfunc, stdfunc=stdfunc,
                                    maxiters=maxiters)
    np.testing.assert_allclose(value, ref.filled(np.nan), rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(n_used, (~clipped.mask).sum(axis=0))


@pytest.mark.parametrize("n_frames", [4, 16, 17, 40])
def test_count_paths_equal_astropy_on_either_side_of_the_switch(rng, n_frames):
    # up to _DIRECT_COUNT_FRAMES frames the kept range is counted from every value,
    # beyond it walked from the previous bounds: both must be astropy's clipping
    assert C._DIRECT_COUNT_FRAMES == 16
    data = rng.normal(100.0, 5.0, size=(n_frames, 30, 40))
    hits = rng.random(data.shape) < 0.05
    data[hits] += rng.uniform(30, 500, hits.sum())
    data[rng.random(data.shape) < 0.02] = np.nan
    with pytest.warns(AstropyUserWarning, match="Input data contains invalid values"):
        clipped = sigma_clip(data, sigma=3, maxiters=5, axis=0, masked=True,
                             stdfunc="mad_std")
    value, _, n_used = clip_combine(data, stdfunc="mad_std")
    np.testing.assert_allclose(value, clipped.mean(axis=0).filled(np.nan), rtol=1e-12,
                               atol=1e-10)
    np.testing.assert_array_equal(n_used, (~clipped.mask).sum(axis=0))


@pytest.mark.parametrize("strict", [True, False])
def test_direct_count_equals_the_walk(rng, strict, monkeypatch):
    s = np.sort(rng.normal(0.0, 1.0, size=(9, 20, 30)), axis=0)
    s[-2:, ::3] = np.nan  # missing values sort last
    s[:, 0, 0] = 0.5  # ties at the bound: strict or not matters
    n_valid = np.isfinite(s).sum(axis=0)
    bound = rng.normal(0.0, 1.5, size=(20, 30))
    bound[0, 0] = 0.5
    start = rng.integers(0, 10, size=(20, 30))
    direct = C._count_below(s, n_valid, bound, strict=strict, start=start)
    monkeypatch.setattr(C, "_DIRECT_COUNT_FRAMES", 0)
    walked = C._count_below(s, n_valid, bound, strict=strict, start=start)
    np.testing.assert_array_equal(direct, walked)
    assert direct[0, 0] == (0 if strict else 9)


def test_flat_gather_equals_take_along_axis(rng):
    a = rng.normal(size=(7, 11, 13)).astype(np.float32)
    index = rng.integers(0, 7, size=(11, 13))
    ref = np.take_along_axis(a, index[np.newaxis], axis=0)[0]
    np.testing.assert_array_equal(C._take(a, index), ref)
    strided = a[:, ::2]  # not contiguous: the library's path
    np.testing.assert_array_equal(
        C._take(strided, index[::2]),
        np.take_along_axis(strided, index[::2][np.newaxis], axis=0)[0])


def test_minmax_rejection_drops_extremes():
    stack = np.arange(5.0)[:, None, None] * np.ones((5, 2, 3))
    value, _, n_used = clip_combine(stack, nlow=1, nhigh=2, sigma_lower=None, sigma_upper=None)
    assert np.all(value == 1.5) and np.all(n_used == 2)


@pytest.mark.parametrize("n", [5, 12])
def test_error_is_error_of_the_mean(rng, n):
    """Pure Gaussian noise σ: the error of the mean of n values is σ/√n (not σ).

    With the noise model (σ known) clipping at 3σ drops 0.27 % of good values,
    so the mean's scatter and the RMS of the per-pixel errors (sample variance,
    ddof=1, unbiased) both equal σ/√n within 3 % over 40 000 pixels.
    """
    sigma = 4.0
    stack = rng.normal(0.0, sigma, size=(n, 200, 200))
    value, error, n_used = clip_combine(stack, stdfunc="model", noise_model=(sigma**2, 0.0))
    assert n_used.mean() > 0.995 * n  # a 3σ cut drops ~0.3 % of good values
    assert np.sqrt(np.mean(error**2)) == pytest.approx(sigma / np.sqrt(n), rel=0.03)
    assert value.std() == pytest.approx(sigma / np.sqrt(n), rel=0.03)
    _, error_med, _ = clip_combine(stack, method="median", stdfunc="model",
                                   noise_model=(sigma**2, 0.0))
    assert np.sqrt(np.mean(error_med**2)) == pytest.approx(
        np.sqrt(np.pi / 2) * sigma / np.sqrt(n), rel=0.03)


def test_three_frames_clipping_cost_is_documented(rng):
    """With 3 frames, clipping at 3σ around their median drops a legitimate extreme
    value in ~1.6 % of pixels and the mean of the other two strays: the scatter of
    the result rises by a few per cent over σ/√3 (measured 4 %), while the model
    error stays σ/√n_used. Hence the docs' advice: ≥ 5 frames, or method 'median'.
    """
    stack = rng.normal(0.0, 4.0, size=(3, 200, 200))
    value, error, n_used = clip_combine(stack, stdfunc="model", noise_model=(16.0, 0.0))
    assert 0.005 < 1 - n_used.mean() / 3 < 0.01
    assert 1.0 < value.std() / (4.0 / np.sqrt(3)) < 1.08
    np.testing.assert_allclose(error, 4.0 / np.sqrt(n_used), rtol=1e-6)


@pytest.mark.parametrize("stdfunc, lost", [("std", 0.0), ("mad_std", 0.05)])
def test_why_not_std_or_mad_std(rng, stdfunc, lost):
    """Measured trade-off for 5 frames: std keeps all but cannot reject; mad_std loses data."""
    stack = rng.normal(0.0, 1.0, size=(5, 200, 200))
    _, _, n_used = clip_combine(stack, stdfunc=stdfunc)
    assert 1 - n_used.mean() / 5 >= lost


def test_inputs_not_mutated(stack):
    copy = stack.copy()
    clip_combine(stack, nlow=1)
    np.testing.assert_array_equal(stack, copy)


def test_single_value_pixels_have_no_error():
    stack = np.full((3, 2, 2), np.nan)
    stack[0] = 1.0
    value, error, n_used = clip_combine(stack)
    assert np.all(value == 1.0) and np.all(np.isnan(error)) and np.all(n_used == 1)


def test_bounded_driver_equals_in_memory(stack, tmp_path):
    frames = [lambda i=i: stack[i] for i in range(len(stack))]
    direct = clip_combine(stack.astype(np.float32))
    # 0.05 MB forces blocks of a few rows
    assert rows_per_block(n_frames=15, ncols=70, memory_limit_mb=0.05) < 60
    result = combine_frames(frames=frames, memory_limit_mb=0.05, scratch_dir=tmp_path)
    np.testing.assert_allclose(result.data, direct[0], rtol=1e-6)
    np.testing.assert_array_equal(result.n_used, direct[2])
    assert list(tmp_path.iterdir()) == [], "scratch file removed"


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="method must be 'mean' or 'median'"):
        clip_combine(np.zeros((3, 2, 2)), method="sum")
    with pytest.raises(ValueError, match="stdfunc='model' needs noise_model"):
        clip_combine(np.zeros((3, 2, 2)), stdfunc="model")
    with pytest.raises(ValueError, match="sigma_lower must be > 0"):
        clip_combine(np.zeros((3, 2, 2)), sigma_lower=-1)
    with pytest.raises(ValueError, match="frame 1 has shape"):
        combine_frames(frames=[lambda: np.zeros((4, 4)), lambda: np.zeros((5, 4))])
    with pytest.raises(ValueError, match="memory_limit_mb must be > 0"):
        rows_per_block(n_frames=3, ncols=3, memory_limit_mb=0)


def test_same_master_bias_as_ccdproc(rng):
    """Same frames through ccdproc.combine (average, 3σ clip around the mean, one pass)."""
    ccdproc = pytest.importorskip("ccdproc", reason="ccdproc is a test dependency")
    from astropy import units as u
    from astropy.nddata import CCDData

    frames = rng.normal(1000.0, 7.5, size=(9, 80, 90)).astype(np.float32)
    frames[rng.random(frames.shape) < 0.01] += 800.0
    ours, _, _ = clip_combine(frames, method="mean", cenfunc="mean", stdfunc="std", maxiters=1)
    theirs = ccdproc.combine([CCDData(f, unit=u.electron) for f in frames], method="average",
                             sigma_clip=True, sigma_clip_low_thresh=3,
                             sigma_clip_high_thresh=3, sigma_clip_func=np.ma.mean,
                             sigma_clip_dev_func=np.ma.std, mem_limit=1e9)
    np.testing.assert_allclose(ours, theirs.data, rtol=1e-5)


def test_combine_files_threads_equal_in_memory(stack, tmp_path):
    from astropy.io import fits

    from ccdflow.combine import combine_files

    paths = []
    for i, frame in enumerate(stack.astype(np.float32)):
        paths.append(tmp_path / f"f{i}.fits")
        fits.PrimaryHDU(frame).writeto(paths[-1])
    direct = clip_combine(stack.astype(np.float32), stdfunc="model", noise_model=(25.0, 0.0))
    result = combine_files(paths=paths, memory_limit_mb=0.05, threads=2, stdfunc="model",
                           noise_model=(25.0, 0.0))
    np.testing.assert_allclose(result.data, direct[0], rtol=1e-6)
    np.testing.assert_array_equal(result.n_used, direct[2])
    fits.PrimaryHDU(np.zeros((3, 3), np.float32)).writeto(tmp_path / "odd.fits")
    with pytest.raises(ValueError, match=r"odd\.fits has shape \(3, 3\)"):
        combine_files(paths=[*paths[:2], tmp_path / "odd.fits"])
