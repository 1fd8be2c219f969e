"""Batches of frames per job: the assignment, and batch helpers equal to the per-frame ones."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from ccdflow.batch import (
    SUMMARY,
    BatchError,
    assign_batches,
    frames_per_job,
    missing_products,
    read_summary,
    series_by_binning,
)

from .conftest import write_masters


def test_frames_per_job_auto_and_explicit():
    assert frames_per_job(n_frames=12) == 6  # short night: at least 4 per job; 2 jobs, not 3
    assert frames_per_job(n_frames=160) == 10  # 16 jobs
    assert frames_per_job(n_frames=10_000) == 100  # capped
    # frames of known size: at least MIN_JOB_SECONDS of science per job, spread evenly
    # (1k²: 15 frames at least; 4k²: one; 650×500: 50)
    assert frames_per_job(n_frames=8, megapixels=1.08) == 8  # one job, not two of 4
    assert frames_per_job(n_frames=24, megapixels=1.08) == 12  # two even jobs, not 15 + 9
    assert frames_per_job(n_frames=10, megapixels=16.8) == 1
    assert frames_per_job(n_frames=142, megapixels=0.325) == 71  # 2 jobs, not 3 of 47-48
    assert frames_per_job(n_frames=2000, megapixels=0.07) == 100
    # an odd count of jobs leaves a core idle through the last round on two cores: one
    # fewer, or one more when fewer would exceed max_frames (2 100 frames: 22 jobs, not 21)
    assert frames_per_job(n_frames=2100) == 96
    for megapixels in (0.07, 0.325, 1.08, 4.2, 16.8):
        for n in range(2, 2001):
            jobs = -(-n // frames_per_job(n_frames=n, megapixels=megapixels))
            assert jobs == 1 or jobs % 2 == 0, (n, megapixels, jobs)
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


@pytest.mark.parametrize("large", [False, True], ids=["in memory", "large-frame path"])
def test_chain_batch_equals_the_per_frame_helpers(cal_masters, tmp_path, large, monkeypatch):
    """The fused chain (issue 13) writes, per stage, one product per frame identical to
    the stage's helper called alone on the previous stage's product, and a summary.
    Frames above 4 Mpx take the large-frame path (masters read in row strips, ERR read
    back for the cosmic rays): forced here on small frames, the products are the same."""
    if large:
        monkeypatch.setattr("ccdflow.chain.LARGE_FRAME_PIXELS", 0)
    from astropy.io import fits

    from ccdflow.background import background_for_product
    from ccdflow.calibrate import calibrate_science
    from ccdflow.chain import reduce_batch
    from ccdflow.cosmics import detect_cosmic_rays
    from ccdflow.masks import MaskBit
    from ccdflow.photometry import frame_sources, read_sources
    from ccdflow.products import read_product

    m = cal_masters
    truth = m["truth"]
    science = truth.frames[(truth.frames["type"] == "science") & (truth.frames["filter"] == "V")]
    masters = write_masters(m, tmp_path)
    frames = [{"frame": row["frame"], "raw": str(truth.raw_dir / row["file"]),
               **{k: str(v) for k, v in masters.items()}} for _, row in science.iterrows()]
    out = {s: tmp_path / s / "batch-000" for s in ("calibrated", "background", "cosmics",
                                                    "sources")}
    background = {"box_size": 32, "filter_size": 3, "manual_masks": []}
    cosmics = {"niter": 4}
    detect = {"nsigma": 5.0, "npixels": 5}
    summaries = reduce_batch(frames=frames, detector=m["detector"],
                             steps=["bias", "dark", "flat"], subtract_dark=True,
                             background=background, cosmics=cosmics, detect=detect,
                             out_dirs=out)
    for stage, summary in summaries.items():
        assert list(summary["frame"]) == list(science["frame"]), stage
        assert (summary["status"] == "ok").all() and (summary["seconds"] > 0).all(), stage
        pd.testing.assert_frame_equal(read_summary(out[stage]), summary, check_dtype=False)
        suffix = ".ecsv" if stage == "sources" else ".fits"
        assert sorted(p.name for p in out[stage].iterdir()) == sorted(
            [SUMMARY, *(f"{f['frame']}{suffix}" for f in frames)])
    for item in frames:
        alone = calibrate_science(path=item["raw"], detector=m["detector"], bias=m["bias"],
                                  dark=m["dark"], flat=m["flat"], bad_pixel_mask=m["bpm"])
        batch = read_product(out["calibrated"] / f"{item['frame']}.fits")
        np.testing.assert_array_equal(batch.data, alone.data.astype(np.float32))
        np.testing.assert_array_equal(batch.error, alone.error.astype(np.float32))
        np.testing.assert_array_equal(batch.mask, alone.mask)
        bkg = background_for_product(product=batch, box_size=32, filter_size=3)
        np.testing.assert_array_equal(
            fits.getdata(out["background"] / f"{item['frame']}.fits", "BKG"), bkg.background)
        cr = detect_cosmic_rays(data=batch.data, error=batch.error, mask=batch.mask,
                                background=bkg.background,
                                read_noise_e=batch.header["RDNOISE"],
                                saturation_e=batch.header["SATURATE"], **cosmics)
        np.testing.assert_array_equal(
            fits.getdata(out["cosmics"] / f"{item['frame']}.fits", "CRMASK") != 0, cr)
        mask = batch.mask.copy()
        mask[cr] |= np.uint16(MaskBit.COSMIC)
        sources, meta = frame_sources(data=batch.data, mask=mask, background=bkg.background,
                                      rms=bkg.rms, labels=np.where(cr, 0, bkg.labels), **detect)
        written, written_meta = read_sources(out["sources"] / f"{item['frame']}.ecsv")
        np.testing.assert_allclose(written[["x", "y", "flux"]].to_numpy(float),
                                   sources[["x", "y", "flux"]].to_numpy(float), rtol=1e-12)
        assert written_meta["fwhm_px"] == pytest.approx(meta["fwhm_px"], rel=1e-12)


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


def test_a_frame_held_in_a_garbage_cycle_is_freed_before_the_next_frame(tmp_path,
                                                                        monkeypatch):
    # A traceback caught in a library's one-time set-up (astropy's first leap-second load
    # while the first frame's times are computed) holds the stack's frames, hence that
    # frame's planes, in a cycle until Python's next full collection: at 4k² the
    # photometry job's second frame started with ~400 MB still held (1 330 MiB peak).
    # With automatic collection off, only the runner's own collection can free it.
    import gc
    import weakref

    from ccdflow.batch import _run

    held: list[weakref.ref] = []
    freed: dict[str, bool] = {}  # frame -> the previous frame's planes were freed

    def step(frame, out_dir):
        if held:
            freed[frame] = held[-1]() is None
        planes = np.ones((64, 64))
        held.append(weakref.ref(planes))
        cycle = {"planes": planes}
        cycle["self"] = cycle  # kept alive by the cycle alone once the step returns
        if frame == "c":
            raise ValueError("a bad frame")  # its traceback holds this stack
        return {"n": 1}

    # pytest's log capture would keep the failed frame's traceback (its record's exc_info),
    # which a job's file handler does not
    monkeypatch.setattr(logging.getLogger("ccdflow.batch"), "propagate", False)
    enabled = gc.isenabled()
    gc.disable()
    try:
        summary = _run(["a", "b", "c", "d", "e"], tmp_path, step, str)
    finally:
        if enabled:
            gc.enable()
    assert list(summary["status"]) == ["ok", "ok", "failed", "ok", "ok"]
    # before b the first frame's cycle was freed, before d the failed frame's; before c
    # and e nothing was collected (b and d succeeded): no full collection per frame
    assert freed == {"b": True, "c": False, "d": True, "e": False}


def test_chain_and_photometry_jobs_of_a_4k_frame_stay_under_1_gib(tmp_path):
    # issue 13: peak RSS of a per-frame job <= 1 GB at 4k². Two 4096² frames through the
    # whole chain in a fresh process (its own VmHWM): the masters (480 MB whole) are read
    # in row strips, calibration works in strips, the cosmic-ray search in its own padded
    # planes; measured 910 MiB for 3 frames (1 360 MiB before; 1 637 MB in stop 19's
    # 4k² night). A frame's state alone (SCI, ERR, MASK, background, RMS, segments) is
    # ~530 MB, so a 1 GiB bound leaves the chain ~350 MB of work space.
    import subprocess
    import sys

    from ccdflow.products import Product, write_mask, write_product
    from ccdflow.simulate import NightSpec, simulate_night

    from .conftest import profile

    night = simulate_night(out_dir=tmp_path / "night", spec=NightSpec(
        nx=4096, ny=4096, n_bias=0, n_dark=0, n_flat=0, science=(("V", 1),), seed=3))
    raw = next((night / "raw").glob("*.fits"))
    shape = (4096, 4096)
    header = fits.Header({"EXPTIME": 0.0})
    masters = {}
    for kind, level, err in (("bias", 0.0, 2.0), ("dark", 0.002, 0.001), ("flat", 1.0, 0.003)):
        masters[kind] = tmp_path / f"{kind}.fits"
        write_product(masters[kind], Product(
            data=np.full(shape, level, np.float32), error=np.full(shape, err, np.float32),
            mask=np.zeros(shape, np.uint16), header=header), unit="electron")
    masters["bpm"] = tmp_path / "bpm.fits"
    write_mask(masters["bpm"], np.zeros(shape, np.uint16), inputs=[], step="test")
    code = """if True:
        import json, sys
        from ccdflow.chain import reduce_batch
        from ccdflow.io import peak_rss_mb
        args = json.loads(sys.argv[1])
        out = {s: args["out"] + "/" + s for s in ("calibrated", "background", "cosmics",
                                                  "sources")}
        # the bad-pixel mask made by the job from the masters, as in the workflow
        frames = [{"frame": f"f{k}", "raw": args["raw"], **args["masters"],
                   "bpm_sources": args["bpm_sources"]} for k in range(2)]
        summaries = reduce_batch(frames=frames, detector=args["detector"],
                                 steps=["bias", "dark", "flat"], subtract_dark=True,
                                 background={}, cosmics={}, detect={}, out_dirs=out)
        assert (summaries["sources"]["status"] == "ok").all(), summaries["sources"]
        print(int(summaries["sources"]["n_sources"].min()), peak_rss_mb())
    """
    args = {"raw": str(raw), "out": str(tmp_path / "out"), "detector": profile("demo")["detector"],
            "masters": {k: str(v) for k, v in masters.items()},
            "bpm_sources": {"reference": str(raw), "hot_pixels": None, "origin": None,
                            "masters": {k: str(masters[k]) for k in ("bias", "dark", "flat")}}}
    import json

    run = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    n_sources, peak_mib = (float(v) for v in run.stdout.split()[-2:])
    assert n_sources > 1000  # a real star field went through every stage
    assert peak_mib < 1024, f"chain: peak RSS {peak_mib:.0f} MiB"
    # the photometry job of both frames, in its own fresh process: the frame's state (SCI
    # float64; ERR, ERR_CAL and BKG float32 as stored; MASK) is ~370 MB, the random
    # variance is evaluated where needed, the hidden-neighbour search works on stamps and
    # the sums' planes are built in float32: 950 MiB in a 4k² demo night's job (1 587 MiB
    # before, 1 914 in stop 19). Two frames, because the first frame's planes were held
    # in a garbage cycle through the second (1 330 MiB until stop 35)
    code = """if True:
        import json, sys
        from ccdflow.batch import photometry_batch, product_path
        from ccdflow.io import peak_rss_mb
        from ccdflow.photometry import build_reference, write_reference
        args = json.loads(sys.argv[1])
        out = {s: args["out"] + "/" + s for s in ("calibrated", "background", "cosmics",
                                                  "sources")}
        names = ["f0", "f1"]
        catalog, meta = build_reference(
            sources={f: product_path(out["sources"], f, "sources") for f in names},
            calibrated={f: product_path(out["calibrated"], f, "calibrated") for f in names})
        write_reference(args["out"] + "/reference.ecsv", catalog, meta)
        summary = photometry_batch(
            frames=names, calibrated_dir=out["calibrated"], background_dir=out["background"],
            cosmics_dir=out["cosmics"], sources_dir=out["sources"],
            reference=args["out"] + "/reference.ecsv", out_dir=args["out"] + "/photometry",
            options={})
        assert (summary["status"] == "ok").all(), summary
        print(int(summary["n_usable"].min()), peak_rss_mb())
    """
    run = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    n_usable, phot_mib = (float(v) for v in run.stdout.split()[-2:])
    assert n_usable > 1000  # rows measured and usable, every aperture and optimal
    assert phot_mib < 1024, f"photometry: peak RSS {phot_mib:.0f} MiB"
    print(f"4k² jobs: chain peak RSS {peak_mib:.0f} MiB, photometry {phot_mib:.0f} MiB")


def test_job_memory_grows_with_the_frame_and_keeps_the_floor():
    # peaks measured per job (VmHWM): chain 239/523/895 MB, photometry 234/951 MB at
    # 1k²/2k²/4k²; a request must cover them with room to spare, never ask less than
    # the old flat 2000 MB, and grow for mosaics a flat request would get killed at
    from ccdflow.batch import MIN_JOB_MEMORY_MB, job_memory_mb

    measured = {("frames", 1.05): 239, ("frames", 4.19): 523, ("frames", 16.8): 895,
                ("photometry", 1.05): 234, ("photometry", 16.8): 951}
    for (stage, mpx), peak in measured.items():
        assert job_memory_mb(stage=stage, megapixels=mpx) >= 1.4 * peak
    assert job_memory_mb(stage="frames", megapixels=1.0) == MIN_JOB_MEMORY_MB
    assert job_memory_mb(stage="frames", megapixels=None) == job_memory_mb(
        stage="frames", megapixels=4096 * 4096 / 1e6)
    assert job_memory_mb(stage="photometry", megapixels=float("nan")) == MIN_JOB_MEMORY_MB
    big = job_memory_mb(stage="photometry", megapixels=81.0)  # a 9k² mosaic
    assert 5000 < big < 7000
    assert job_memory_mb(stage="frames", megapixels=81.0) < big
    with pytest.raises(BatchError, match="stage must be one of"):
        job_memory_mb(stage="cosmics", megapixels=1.0)


def test_a_series_read_out_in_two_binnings_is_split_by_binning(caplog):
    # 1x1 and 2x2 frames of one field and filter cannot share a source list: the
    # binning most frames have keeps the series' name, the others get their own series
    frames = pd.DataFrame({
        "series": ["M67_V"] * 5 + ["M67_R"] * 2 + ["NGC1_V"] * 2,
        "binning": ["2x2", "1x1", "1x1", "1x1", "2x2", "1x1", "1x1", "1x1", "2x2"],
        "mjd_obs": np.arange(9, dtype=float)}, index=np.arange(10, 19))
    with caplog.at_level("WARNING", logger="ccdflow.batch"):
        series = series_by_binning(frames)
    assert list(series.index) == list(frames.index)  # aligned with the input
    assert list(series) == ["M67_V_bin2x2", "M67_V", "M67_V", "M67_V", "M67_V_bin2x2",
                            "M67_R", "M67_R",
                            "NGC1_V", "NGC1_V_bin2x2"]  # a tie: the first frame's binning
    assert "series M67_V holds frames binned 1x1, 2x2: the 2 2x2 frame(s) form series " \
           "M67_V_bin2x2" in caplog.text
    assert list(frames["series"]) == ["M67_V"] * 5 + ["M67_R"] * 2 + ["NGC1_V"] * 2
