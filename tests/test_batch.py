"""Batches of frames per job: the assignment, and batch helpers equal to the per-frame ones."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ccdflow.batch import (
    SUMMARY,
    BatchError,
    assign_batches,
    background_batch,
    calibrate_batch,
    frames_per_job,
    missing_products,
    read_summary,
)

from .conftest import write_masters


def test_frames_per_job_auto_and_explicit():
    assert frames_per_job(n_frames=12) == 4  # short night: at least 4 per job
    assert frames_per_job(n_frames=160) == 10  # 16 jobs
    assert frames_per_job(n_frames=10_000) == 100  # capped
    assert frames_per_job(n_frames=10, setting=1) == 1
    for bad in (0, -2, 2.5, "many", True):
        with pytest.raises(BatchError, match="frames_per_job must be a positive integer"):
            frames_per_job(n_frames=10, setting=bad)


def test_batches_follow_night_series_and_time():
    rng = np.random.default_rng(3)
    frames = pd.DataFrame({
        "frame": [f"f{i:02d}" for i in range(30)],
        "night": ["n1"] * 20 + ["n2"] * 10,
        "series": (["A_V", "B_V"] * 10) + ["A_V"] * 10,
        "mjd_obs": rng.uniform(0, 1, 30)})
    before = frames.copy()
    out = assign_batches(frames, setting=4)
    pd.testing.assert_frame_equal(frames, before)  # input not mutated
    assert list(out.index) == list(frames.index)
    for (night, series), rows in out.groupby(["night", "series"]):
        rows = rows.sort_values("mjd_obs")
        # consecutive in time, 4 per batch, named {series}-{k:03d}
        expected = [f"{series}-{i // 4:03d}" for i in range(len(rows))]
        assert list(rows["batch"]) == expected, (night, series)
    # a batch never mixes nights or series
    assert (out.groupby(["night", "batch"])["series"].nunique() == 1).all()
    with pytest.raises(BatchError, match=r"lacks column\(s\) \['mjd_obs'\]"):
        assign_batches(frames.drop(columns="mjd_obs"))


def test_calibrate_and_background_batches_equal_the_per_frame_helpers(cal_masters, tmp_path):
    """One product per frame, identical to calibrating the frame alone, plus the summary."""
    from ccdflow.background import background_for_product
    from ccdflow.calibrate import calibrate_science
    from ccdflow.products import read_product

    m = cal_masters
    truth = m["truth"]
    science = truth.frames[(truth.frames["type"] == "science") & (truth.frames["filter"] == "V")]
    masters = write_masters(m, tmp_path)
    frames = [{"frame": row["frame"], "raw": str(truth.raw_dir / row["file"]),
               **{k: str(v) for k, v in masters.items()}} for _, row in science.iterrows()]
    out = tmp_path / "calibrated" / "batch-000"
    summary = calibrate_batch(frames=frames, detector=m["detector"], steps=["bias", "dark", "flat"],
                              subtract_dark=True, out_dir=out)
    assert list(summary["frame"]) == list(science["frame"]) and (summary["seconds"] > 0).all()
    pd.testing.assert_frame_equal(read_summary(out), summary, check_dtype=False)
    for item in frames:
        alone = calibrate_science(path=item["raw"], detector=m["detector"], bias=m["bias"],
                                  dark=m["dark"], flat=m["flat"], bad_pixel_mask=m["bpm"])
        batch = read_product(out / f"{item['frame']}.fits")
        np.testing.assert_array_equal(batch.data, alone.data.astype(np.float32))
        np.testing.assert_array_equal(batch.error, alone.error.astype(np.float32))
        np.testing.assert_array_equal(batch.mask, alone.mask)
    bkg_out = tmp_path / "background" / "batch-000"
    options = {"box_size": 32, "filter_size": 3, "manual_masks": []}
    summary = background_batch(frames=[f["frame"] for f in frames], calibrated_dir=out,
                               out_dir=bkg_out, options=options)
    from astropy.io import fits

    for frame, sky in zip(summary["frame"], summary["sky_median_e"], strict=True):
        alone = background_for_product(product=read_product(out / f"{frame}.fits"),
                                       box_size=32, filter_size=3)
        np.testing.assert_array_equal(fits.getdata(bkg_out / f"{frame}.fits", "BKG"),
                                      alone.background)
        assert sky == pytest.approx(alone.sky_median, abs=1e-3)
    assert sorted(p.name for p in bkg_out.iterdir()) == sorted(
        [SUMMARY, *(f"{f['frame']}.fits" for f in frames)])


def test_missing_products_lists_what_a_batch_directory_lacks(tmp_path):
    frames = ["a_001", "a_002", "a_003"]
    for name in ("a_001.fits", "a_003.fits", SUMMARY, "a_002.log"):
        (tmp_path / name).write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert missing_products(tmp_path, frames=frames, suffix=".fits") == ["a_002.fits"]
    assert missing_products(tmp_path, frames=frames[::2], suffix=".fits") == []
    (tmp_path / SUMMARY).unlink()
    assert missing_products(tmp_path, frames=frames, suffix=".ecsv") == [
        "a_001.ecsv", "a_002.ecsv", "a_003.ecsv", SUMMARY]
    assert missing_products(tmp_path / "absent", frames=frames[:1], suffix=".csv") == [
        "a_001.csv", SUMMARY]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(before) - {SUMMARY})
    with pytest.raises(BatchError, match=r"suffix must start with '\.'"):
        missing_products(tmp_path, frames=frames, suffix="fits")
