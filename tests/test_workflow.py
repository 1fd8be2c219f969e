"""The workflow itself: lint, dry run, a full run on a tiny simulated night, bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from ccdflow.photometry import PhotFlag, read_photometry
from ccdflow.simulate import load_truth, simulate_night

from .conftest import ROOT, SMALL_SPEC, TINY_DEMO, assert_same_results, copy_run, product
from .conftest import run_snakemake as snakemake

pytestmark = pytest.mark.workflow

def test_lint_is_clean(tmp_path):
    out = snakemake(tmp_path, "--lint")
    assert "Congratulations, your workflow is in a good condition" in out.stdout + out.stderr


def test_the_snakemake_process_does_not_import_astropy():
    # every ccdflow module common.smk imports (and calls while it builds the DAG) stays
    # free of astropy.io.fits and astropy.stats: ~0.3 s of each Snakemake start, which
    # every SLURM job pays again (measured dry run 2.15 -> 1.87 s)
    imports = re.findall(r"^from (ccdflow[\w.]*) import", (ROOT / "workflow" / "rules" /
                                                           "common.smk").read_text(), re.M)
    assert {"ccdflow.config", "ccdflow.inventory", "ccdflow.plan"} <= set(imports)
    code = "; ".join(f"import {m}" for m in imports) + (
        "; import sys; print(sorted(m for m in sys.modules if m.startswith('astropy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_dry_run_lists_demo_jobs(tmp_path):
    out = snakemake(tmp_path, "-n", config={"demo": TINY_DEMO})
    text = out.stdout + out.stderr
    assert "demo_simulate" in text and "inventory_scan" in text


def test_dry_run_after_the_inventory_lists_the_whole_dag(tmp_path):
    # with the inventory made, `-n` evaluates every rule's input functions, threads and
    # resources before any master exists (a threads function once failed only here)
    simulate_night(out_dir=tmp_path / "night", spec=SMALL_SPEC)
    config = ["--config", f"raw_dir={tmp_path / 'night' / 'raw'}", "results_dir=out",
              f"instrument={ROOT / 'config' / 'instruments' / 'demo.yaml'}"]
    snakemake(tmp_path, "--cores", "1", "--until", "inventory_scan", *config)
    out = snakemake(tmp_path, "-n", "--cores", "2", *config)
    text = out.stdout + out.stderr
    for rule in ("master_bias", "master_dark", "master_flat", "frames_reduce",
                 "measure_photometry", "qc_night", "qc_conditions"):
        assert rule in text, rule
    # the batch jobs ask for memory by their frames' size (ccdflow.batch.job_memory_mb;
    # these small frames get the 2000 MB floor)
    from ccdflow.batch import job_memory_mb

    inventory = pd.read_csv(tmp_path / "out" / "inventory.csv", keep_default_na=False)
    ny, nx = (int(v) for v in inventory["shape"].iloc[0].split("x"))
    asked = re.findall(r"rule (frames_reduce|measure_photometry):.*?resources: [^\n]*"
                       r"mem_mb=(\d+)", text, flags=re.S)
    assert {rule for rule, _ in asked} == {"frames_reduce", "measure_photometry"}
    stage = {"frames_reduce": "frames", "measure_photometry": "photometry"}
    for rule, mem_mb in asked:
        assert int(mem_mb) == job_memory_mb(stage=stage[rule], megapixels=ny * nx / 1e6)


def test_demo_night_end_to_end_then_up_to_date(tiny_demo):
    tmp_path = tiny_demo
    results = tmp_path / "results"
    inventory = pd.read_csv(results / "inventory.csv", keep_default_na=False)
    truth = load_truth(tmp_path / "demo")
    assert sorted(inventory["frame"]) == sorted(truth.frames["frame"])
    merged = inventory.merge(truth.frames, on="frame", suffixes=("", "_truth"))
    assert (merged["type"] == merged["type_truth"]).all()
    assert (merged["night"] == "2026-03-14").all()
    assert (results / "logs" / "inventory.log").stat().st_size > 0
    # calibration: every science frame, masters, plan, detector report
    plan = pd.read_csv(results / "calibration_plan.csv", keep_default_na=False)
    science = truth.frames[truth.frames["type"] == "science"]
    assert sorted(plan["frame"]) == sorted(science["frame"])
    for frame in science["frame"]:
        path = product(results, "calibrated", frame)
        with fits.open(path) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "MASK", "ERR_CAL"]
            assert hdul["SCI"].header["BUNIT"] == "electron"
            assert hdul[0].header["FLATFILE"].endswith(f"flat_{frame.split('_')[1]}.fits")
    # the masters' long paths go on CONTINUE cards: no header warning in any log
    for log in (results / "logs").rglob("*.log"):
        assert "Card is too long" not in log.read_text(), log
    # every job reports its own peak memory (VmHWM), which sizes resources.mem_mb
    for log in (results / "logs" / "frames").rglob("*.log"):
        peaks = re.findall(r"job seconds after imports: [\d.]+; since the process started: "
                           r"[\d.]+; peak RSS (\d+) MB", log.read_text())
        assert peaks and 50 < int(peaks[-1]) < 2000, (log, peaks)
    for frame in science["frame"]:
        with fits.open(product(results, "background", frame)) as hdul:
            assert hdul["BKG"].data.shape == (128, 128) and hdul[0].header["BKGITER"] >= 0
        assert fits.getheader(product(results, "cosmics", frame))["NCOSMIC"] >= 0
    # photometry: one CSV per frame, a light curve per series, the target's differential
    for frame in science["frame"]:
        table = pd.read_csv(product(results, "photometry", frame, ".csv"), comment="#")
        assert {"flux", "flux_err", "bkg", "bkg_err", "bjd_tdb", "flags"} <= set(table.columns)
        assert table["flux"].notna().any()
    for series in ("WASP-SIM_V", "WASP-SIM_R"):
        assert (results / "lightcurves" / f"{series}.csv").stat().st_size > 0
        assert (results / "lightcurves" / series / "differential_WASP-SIM.csv").exists()
    report = pd.read_csv(next((results / "reports").rglob("detector.csv")))
    # the gain rests on a MAD variance of the central 80 % (N ≈ 10 500 px): relative
    # error √(2/(0.37·N)) ≈ 2.3 %, so 3σ is 7 %
    n_pix = (0.8 * TINY_DEMO["size"]) ** 2
    assert report["gain_measured"].iloc[0] == pytest.approx(
        truth.meta["gain_e_per_adu"], rel=3 * np.sqrt(2 / (0.37 * n_pix)))
    out = snakemake(tmp_path, "-n", config={"demo": TINY_DEMO})
    assert "Nothing to be done" in out.stdout + out.stderr
    assert not list(results.rglob(".*.fits*")), "no temporary files left behind"


def test_missing_calibration_type_names_frames_and_type(tmp_path):
    simulate_night(out_dir=tmp_path / "night", spec=SMALL_SPEC)
    raw = tmp_path / "night" / "raw"
    tsv = tmp_path / "frames.tsv"  # declare every flat rejected: science has no flat
    flats = sorted(p.name for p in raw.glob("flat_*"))
    tsv.write_text("file\ttype\n" + "".join(f"{f}\trejected\n" for f in flats))
    out = snakemake(tmp_path, "--cores", "1", "--config", f"raw_dir={raw}",
                    f"frames={tsv}", "instrument=demo", check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "no flat in filter V within 30" in text and "WASP-SIM_V_001.fits" in text
    assert not (tmp_path / "results" / "calibrated").exists()
    # the run stops when it plans its jobs, before any master; the inventory job that
    # writes the plan file succeeded, so its table is there to read, and the plan file
    # says why there is no plan
    assert not (tmp_path / "results" / "masters").exists()
    inventory = pd.read_csv(tmp_path / "results" / "inventory.csv", keep_default_na=False)
    assert set(inventory.loc[inventory["file"].isin(flats), "type"]) == {"rejected"}
    plan_text = (tmp_path / "results" / "calibration_plan.csv").read_text()
    assert plan_text.startswith("# no plan: calibration plan: no flat in filter V")
    assert pd.read_csv(tmp_path / "results" / "calibration_plan.csv", comment="#").empty


def test_failed_job_leaves_no_partial_output(tmp_path):
    """A flat of zeros fails master_flat with a clear message and no file survives."""
    simulate_night(out_dir=tmp_path / "night", spec=SMALL_SPEC)
    raw = tmp_path / "night" / "raw"
    for path in raw.glob("flat_R_*"):
        with fits.open(path) as hdul:
            header = hdul[0].header
            data = np.zeros_like(hdul[0].data)
        path.chmod(0o644)
        path.unlink()
        fits.PrimaryHDU(data, header=header).writeto(path)
    out = snakemake(tmp_path, "--cores", "1", "--keep-going", "--config", f"raw_dir={raw}",
                    "instrument=demo", check=False)
    assert out.returncode != 0
    log = next((tmp_path / "results" / "logs").rglob("flat_R.log")).read_text()
    assert "flat level" in log and "not positive" in log
    masters = tmp_path / "results" / "masters"
    assert not list(masters.rglob("flat_R.fits"))
    assert not list(masters.rglob(".*")), "no temporary files"
    # --keep-going: the V frames still calibrate
    assert list((tmp_path / "results" / "calibrated").rglob("WASP-SIM_V_*.fits"))


def test_own_raw_dir_and_instrument_from_command_line(tmp_path):
    simulate_night(out_dir=tmp_path / "mynight", spec=SMALL_SPEC)
    snakemake(tmp_path, "--cores", "1", "--config", f"raw_dir={tmp_path / 'mynight' / 'raw'}",
              "results_dir=out", f"instrument={ROOT / 'config' / 'instruments' / 'demo.yaml'}")
    inventory = pd.read_csv(tmp_path / "out" / "inventory.csv", keep_default_na=False)
    assert inventory["type"].value_counts().to_dict() == {"science": 6, "bias": 5, "flat": 6,
                                                          "dark": 3}
    assert not (tmp_path / "demo").exists(), "the demo is only simulated for the demo location"


@pytest.mark.parametrize("args, message", [
    (["instrument=nosuch"], "config key 'instrument': unknown instrument 'nosuch'"),
    (["raw_dir=/no/such/dir"], "config key 'raw_dir': raw_dir /no/such/dir does not exist"),
    (["raw_dir=EMPTY"], "holds no FITS files"),
    (["results_dir="], "config key 'results_dir'"),
    (["bogus_key=1"], "unknown key 'bogus_key'"),
    (["frames=/no/frames.tsv"], "config key 'frames': frames table /no/frames.tsv does not exist"),
])
def test_bad_input_stops_before_any_job_with_one_line(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "empty")) for a in args]
    out = snakemake(tmp_path, "-n", "--config", *args, check=False)
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if message in line]
    assert lines, out.stdout + out.stderr
    assert not (tmp_path / "results").exists()


def test_python_sources_are_ruff_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_photometry_bad_input_is_flagged_and_the_night_still_reduces(tmp_path):
    """Issue 5's bad input, all in one night, and the run still finishes:

    * a target outside the frame (x/y) -> its rows flagged OFF_FRAME, flux empty;
    * a cloudy frame (sky only, no stars) -> its rows flagged NOT_ALIGNED;
    * a target in RA/Dec on a series without a WCS (R frames stripped of
      theirs) -> its rows flagged NO_POSITION;
    * a science frame without DATE-OBS/MJD-OBS -> left out, with the reason
      in the inventory and a warning naming the file;
    * (issue 12) a frame whose sky is rotated by 90° (a camera turned) -> aligned by the
      asterism step, its rows unflagged; a frame of another field inside the series ->
      flagged NOT_ALIGNED, never taken for aligned by chance pairs;
    * a target given on a frame name that is not in the series -> an error naming it.
    """
    simulate_night(out_dir=tmp_path / "night", spec=SMALL_SPEC)
    raw = tmp_path / "night" / "raw"

    def rewrite(src, dst, edit):
        with fits.open(src) as hdul:
            header, data = hdul[0].header.copy(), hdul[0].data.copy()
        header, data = edit(header, data)
        fits.PrimaryHDU(data, header=header).writeto(dst)

    science_v = sorted(raw.glob("WASP-SIM_V_*.fits"))
    bias = sorted(raw.glob("bias_*.fits"))[0]
    with fits.open(bias) as hdul:
        bias_adu = hdul[0].data.astype(float)
    rng = np.random.default_rng(1)

    def cloudy(header, data):  # bias level + 200 ADU of flat sky with its noise, no stars
        header["DATE-OBS"] = header["DATE-OBS"][:-3] + "999"
        header["MJD-OBS"] = header["MJD-OBS"] + 1e-5
        sky = bias_adu + 200 + rng.normal(0, 9.0, bias_adu.shape)
        return header, np.clip(sky, 0, 65535).astype(np.uint16)

    def no_time(header, data):
        for key in ("DATE-OBS", "MJD-OBS"):
            del header[key]
        return header, data

    rewrite(science_v[1], raw / "WASP-SIM_V_cloudy.fits", cloudy)
    rewrite(science_v[2], raw / "WASP-SIM_V_notime.fits", no_time)
    nx = SMALL_SPEC.nx

    def rotated(header, data):  # the sky turned 90° on the chip; overscan as read out
        header["DATE-OBS"] = header["DATE-OBS"][:-3] + "998"
        header["MJD-OBS"] = header["MJD-OBS"] + 2e-5
        out = data.copy()
        out[:, :nx] = np.rot90(data[:, :nx])
        return header, out

    rewrite(science_v[3], raw / "WASP-SIM_V_rotated.fits", rotated)
    other = simulate_night(out_dir=tmp_path / "other", spec=replace(SMALL_SPEC, seed=99))
    with fits.open(sorted((other / "raw").glob("WASP-SIM_V_*.fits"))[0]) as hdul:
        stranger = hdul[0].data.copy()

    def another_field(header, data):  # same OBJECT and filter, other stars
        header["DATE-OBS"] = header["DATE-OBS"][:-3] + "997"
        header["MJD-OBS"] = header["MJD-OBS"] + 3e-5
        return header, stranger

    rewrite(science_v[0], raw / "WASP-SIM_V_otherfield.fits", another_field)
    for path in raw.glob("WASP-SIM_R_*.fits"):
        with fits.open(path) as hdul:
            header, data = hdul[0].header.copy(), hdul[0].data.copy()
        for key in [k for k in header if k[:5] in ("CTYPE", "CRVAL", "CRPIX", "CDELT")
                    or k[:2] in ("CD", "PC")]:
            del header[key]
        path.chmod(0o644)
        path.unlink()
        fits.PrimaryHDU(data, header=header).writeto(path)
    targets = [{"name": "OUTSIDE", "x": 5000.0, "y": 10.0, "field": "WASP-SIM"},
               {"name": "SKYPOS", "ra": 157.5, "dec": 20.1}]
    out = snakemake(tmp_path, "--cores", "2", config={
        "raw_dir": str(raw), "instrument": "demo", "photometry": {"targets": targets}})
    results = tmp_path / "results"
    text = out.stdout + out.stderr
    inventory = pd.read_csv(results / "inventory.csv", keep_default_na=False).set_index("frame")
    assert "WASP-SIM_V_notime" in inventory.index and inventory.loc["WASP-SIM_V_notime", "reason"]
    plan = pd.read_csv(results / "calibration_plan.csv")
    assert "WASP-SIM_V_notime" not in set(plan["frame"]) and len(plan) == 9
    assert "WASP-SIM_V_notime.fits: science frame left out" in text

    def rows(frame):
        return read_photometry(product(results, "photometry", frame, ".csv"))

    v = rows("WASP-SIM_V_001")
    outside = v[v["name"] == "OUTSIDE"]
    assert (outside["flags"] & int(PhotFlag.OFF_FRAME)).all() and outside["flux"].isna().all()
    assert ((v.loc[v["name"] == "", "flags"] & int(PhotFlag.NOT_ALIGNED)) == 0).all()
    cloud = rows("WASP-SIM_V_cloudy")
    assert len(cloud) == len(v) and (cloud["flags"] & int(PhotFlag.NOT_ALIGNED)).all()
    turned = rows("WASP-SIM_V_rotated")
    assert ((turned.loc[turned["name"] == "", "flags"] & int(PhotFlag.NOT_ALIGNED)) == 0).all()
    assert "aligned (asterism)" in product(results, "photometry", "WASP-SIM_V_rotated",
                                           ".csv").read_text()
    stranger_rows = rows("WASP-SIM_V_otherfield")
    assert (stranger_rows["flags"] & int(PhotFlag.NOT_ALIGNED)).all()
    r = rows("WASP-SIM_R_001")
    skypos = r[r["name"] == "SKYPOS"]
    assert len(skypos) and (skypos["flags"] & int(PhotFlag.NO_POSITION)).all()
    assert skypos["flux"].isna().all() and r.loc[r["name"] == "", "flux"].notna().any()
    for series in ("WASP-SIM_V", "WASP-SIM_R"):
        assert (results / "lightcurves" / f"{series}.csv").stat().st_size > 0
    # a target on a frame the series does not have: one line naming it, nothing measured
    bad = snakemake(tmp_path, "--cores", "2", config={
        "raw_dir": str(raw), "instrument": "demo", "results_dir": "results-bad",
        "photometry": {"targets": [{"name": "T", "x": 10.0, "y": 10.0,
                                    "frame": "WASP-SIM_V_099", "field": "WASP-SIM"}]}},
        check=False)
    assert bad.returncode != 0
    assert ("config photometry.targets: target T: frame 'WASP-SIM_V_099' is not a science "
            "frame of this run") in bad.stdout + bad.stderr
    assert not (tmp_path / "results-bad" / "calibrated").exists()  # stopped before any


def test_report_holds_every_qc_figure(tiny_demo, tmp_path):
    """`snakemake --report` gives one HTML with the night's and the series' figures."""
    results = tiny_demo / "results"
    figures = sorted(p.relative_to(results).as_posix() for p in results.glob("qc/**/*.png"))
    assert figures == ["qc/2026-03-14/background.png", "qc/2026-03-14/conditions.png",
                       "qc/2026-03-14/masters.png", "qc/lightcurves/WASP-SIM_R.png",
                       "qc/lightcurves/WASP-SIM_V.png"]
    for path in results.glob("qc/**/*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    html = tmp_path / "report.html"
    snakemake(tiny_demo, "--report", str(html), config={"demo": TINY_DEMO})
    text = html.read_text()
    for name in ("masters.png", "background.png", "conditions.png", "WASP-SIM_V.png",
                 "WASP-SIM_R.png"):
        assert name in text, name
    for caption in ("dust donuts", "should be flat noise", "Clouds show as a drop",
                    "differential light curve"):
        assert caption in text, caption


def _rerun_jobs(workdir, *args, config=None):
    """{rule: number of jobs} that `snakemake -n` would run."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *args, config=config)
    jobs = {}
    for line in (out.stdout + out.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("job", "total"):
            jobs[parts[0]] = int(parts[1])
    return jobs


def test_background_parameter_reruns_only_its_stage_and_after(tiny_demo, tmp_path):
    work = copy_run(tiny_demo, tmp_path / "work")
    assert _rerun_jobs(work, config={"demo": TINY_DEMO}) == {}
    jobs = _rerun_jobs(work, config={"demo": TINY_DEMO, "background": {"box_size": 32}})
    # 2 batches (V, R): the per-frame chain (calibration, background, cosmic rays and
    # sources run in one job per batch, issue 13), the reference and light curves that
    # follow from the sources; the masters are untouched
    assert jobs == {"frames_reduce": 2, "photometry_reference": 2, "measure_photometry": 2,
                    "lightcurve_build": 2, "qc_night": 1, "qc_conditions": 1, "all": 1}


def test_product_deleted_inside_a_batch_remakes_that_batch(tiny_demo, tmp_path):
    """Snakemake sees a batch directory as one output: a frame's product deleted by
    hand inside it is noticed (the batch is marked stale, with a warning naming the
    file), only that batch's chain reruns, and the results equal the first run's."""
    work = copy_run(tiny_demo, tmp_path / "work")
    config = {"demo": TINY_DEMO}
    victim = product(work / "results", "calibrated", "WASP-SIM_V_001")
    victim.unlink()
    out = snakemake(work, "-n", "--quiet", "rules", config=config)
    assert f"lacks {victim.name}: the batch is marked stale" in out.stdout + out.stderr
    # the V batch's image stages and what follows from them; not the masters, not R
    assert _rerun_jobs(work, config=config) == {
        "frames_reduce": 1, "photometry_reference": 1, "measure_photometry": 1,
        "lightcurve_build": 1, "qc_night": 1, "qc_conditions": 1, "all": 1}
    snakemake(work, "--cores", "2", config=config)
    assert victim.is_file()
    assert _rerun_jobs(work, config=config) == {}
    assert assert_same_results(tiny_demo / "results", work / "results") > 80


def test_touching_one_raw_frame_reruns_only_its_chain(tmp_path):
    """One job per frame here (frames_per_job 1): the touched V frame's calibration,
    background, cosmic rays and sources; its series' reference, photometry and light
    curve; not the masters, not the other frames' image stages, not the R series.
    (The inventory reads the headers again: its input is every raw file.)"""
    simulate_night(out_dir=tmp_path / "night", spec=SMALL_SPEC)
    config = {"raw_dir": str(tmp_path / "night" / "raw"), "instrument": "demo",
              "frames_per_job": 1}
    snakemake(tmp_path, "--cores", "2", config=config)
    assert _rerun_jobs(tmp_path, config=config) == {}  # up to date
    path = tmp_path / "night" / "raw" / "WASP-SIM_V_002.fits"
    path.chmod(0o644)  # re-written by the observer (Snakemake checksums inputs < 1 MB,
    with fits.open(path, mode="update") as hdul:  # so a bare touch would not count)
        hdul[0].header["OBSERVER"] = "re-written"
    out = snakemake(tmp_path, "--cores", "2", config=config)
    jobs = {}
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith(("rule ", "localrule ", "checkpoint ", "localcheckpoint ")):
            rule = line.split()[1].rstrip(":")
            jobs[rule] = jobs.get(rule, 0) + 1
    # the inventory table comes out identical, so the plan is not redone (Snakemake
    # compares checksums of small inputs); 4 V frames measured against the new reference
    assert jobs == {"inventory_scan": 1, "frames_reduce": 1, "photometry_reference": 1,
                    "measure_photometry": 4, "lightcurve_build": 1, "qc_night": 1,
                    "qc_conditions": 1, "all": 1}


def _snakemake_popen(workdir, config):
    import yaml

    (workdir / "test-config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), "--cores", "2", "--configfile",
           str(workdir / "test-config.yaml")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_job(proc, script, *, ready=lambda child: True, timeout=300):
    """The process of the running job whose script is ``script`` (once ``ready(child)``
    holds for that process)."""
    import time

    import psutil

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert proc.poll() is None, "the run ended before the job could be killed"
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if any(script in part for part in child.cmdline()) and ready(child):
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.005)
    raise AssertionError(f"no {script} job within {timeout} s")


def _no_partial_files(results):
    """No temporary file left, and every FITS product opens and verifies."""
    assert not [p for p in results.rglob(".*") if p.name != ".snakemake_timestamp"]
    for path in results.rglob("*.fits"):
        with fits.open(path) as hdul:
            hdul.verify("exception")
            for hdu in hdul:
                _ = hdu.data


def test_killed_run_resumes_with_identical_results(tiny_demo, tmp_path):
    """kill -9 of one job mid-way, then of the whole run mid-way: no partial file
    survives either, and a plain rerun ends with the uninterrupted run's pixels and
    tables (headers differ at most in DATE-RED)."""
    import signal

    config = {"demo": TINY_DEMO}
    cosmics = tmp_path / "results" / "cosmics" / "2026-03-14"

    def own_batch_started(child):
        # the job's own output directories exist (not only the other batch's, which
        # two jobs starting together can make first): its log, open in the job
        # (logs/frames/<night>/<batch>.log), names its batch
        for f in child.open_files():
            log = Path(f.path)
            if log.suffix == ".log" and log.parent.parent.name == "frames":
                return (cosmics / log.stem).is_dir()
        return False

    # 1) one job killed while it writes its batch: Snakemake removes the batch, stops
    proc = _snakemake_popen(tmp_path, config)
    victim = _wait_for_job(proc, "frames_reduce.py", ready=own_batch_started)
    victim.kill()
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, output
    assert "Removing output files of failed job frames_reduce" in output
    _no_partial_files(tmp_path / "results")
    # 2) the whole run (Snakemake and its jobs) killed while photometry runs, and no
    # frames job beside it: a job killed with the run cannot remove its temporary file
    # (the resume removes that incomplete batch; step 1 covers a killed frames job), and
    # since the frames jobs no longer wait for the bad-pixel-mask jobs, one series'
    # photometry can start while the other series' frames job still writes
    proc = _snakemake_popen(tmp_path, config)

    def no_frames_job_beside(child):
        import psutil

        try:
            others = psutil.Process(proc.pid).children(recursive=True)
            return not any("frames_reduce.py" in " ".join(c.cmdline()) for c in others)
        except psutil.NoSuchProcess:
            return False

    _wait_for_job(proc, "measure_photometry.py", ready=no_frames_job_beside)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    _no_partial_files(tmp_path / "results")
    # 3) plain `snakemake` (the default profile reruns incomplete jobs) finishes
    snakemake(tmp_path, "--cores", "2", config=config)
    assert assert_same_results(tiny_demo / "results", tmp_path / "results") > 80


def test_long_slit_night_beside_an_imaging_night(tmp_path):
    # one raw directory with an imaging night and a long-slit night (its own bias, dark,
    # lamp flats, arcs): the spectra branch runs, and every imaging product is identical
    # to a run on the imaging night alone
    import shutil

    from ccdflow.longslit.simulate import LongslitSpec, simulate_longslit

    simulate_night(out_dir=tmp_path / "img", spec=SMALL_SPEC)
    spec = replace(LongslitSpec(), nx=512, ny=160, n_science=2)
    simulate_longslit(out_dir=tmp_path / "ls", spec=spec)
    for name, parts in (("mixed", ("img", "ls")), ("alone", ("img",))):
        for part in parts:
            shutil.copytree(tmp_path / part / "raw", tmp_path / name / "raw" / part)
    demo = str(ROOT / "config" / "instruments" / "demo.yaml")
    for name in ("mixed", "alone"):
        snakemake(tmp_path / name, "--cores", "2", "--config", "raw_dir=raw",
                  "results_dir=out", f"instrument={demo}")
    out = tmp_path / "mixed" / "out"
    inventory = pd.read_csv(out / "inventory.csv", keep_default_na=False)
    assert (inventory["type"] == "arc").sum() == spec.n_arc
    assert set(inventory.loc[inventory["file"].str.startswith("ls/") & (inventory["type"] ==
                                                                         "science"), "mode"]) \
        == {"spectroscopy"}
    night = spec.night
    spectra = sorted((out / "spectra" / night).glob("*/*.fits"))
    assert [p.stem for p in spectra] == ["SN-SIM_G600_001", "SN-SIM_G600_002"]
    for path in spectra:
        with fits.open(path) as hdul:
            assert [h.name for h in hdul][1:] == ["SCI", "ERR", "MASK", "SKY", "SKY_ERR",
                                                  "SKYSUB", "EFFPIX"]
            # calibrated with the spectroscopic flat: INPUT cards name it and the warp
            inputs = {v for k, v in hdul[0].header.items() if k.startswith("INPUT")}
            assert {"specflat_G600.fits", "warp_G600.fits", "specbpm_G600.fits"} <= inputs
        spectrum = pd.read_csv(path.with_name(path.stem + "_1d.csv"), comment="#")
        truth = pd.read_csv(tmp_path / "ls" / "truth" / "trace.csv")["flux_e"]
        # the master flat is normalised to 1 in the centre: the flux is the truth times
        # the slit function's level there (~1), to a few per cent
        assert np.median(spectrum["flux"] / truth) == pytest.approx(1.0, abs=0.05)
        assert (out / "qc" / "spectra" / night / path.parent.name / f"{path.stem}.png").is_file()
    warp_figures = list((out / "qc" / night).glob("warp_*_G600.png"))
    assert len(warp_figures) == 1
    masters = {p.name for p in (out / "masters" / night).rglob("*.fits")}
    assert {"bias.fits", "dark.fits", "specflat_G600.fits", "arc_G600.fits", "warp_G600.fits",
            "specbpm_G600.fits"} == masters
    alone = tmp_path / "alone" / "out"
    compared = sum(assert_same_results(alone / stage, out / stage)
                   for stage in ("calibrated", "background", "cosmics", "sources", "photometry",
                                 "lightcurves"))
    assert compared > 30


def test_every_calibrated_frame_holds_the_bad_pixel_mask_the_run_wrote(tiny_demo):
    """The frames jobs make their frames' bad-pixel masks from the masters (not waiting
    for rule bad_pixel_mask): every bit of the mask file BPMFILE names is set in each
    calibrated frame's MASK, and the file is made (a product of the run)."""
    from ccdflow.products import read_mask

    results = tiny_demo / "results"
    frames = sorted(results.glob("calibrated/*/*/*.fits"))
    assert len(frames) >= 4
    masks = {}
    for path in frames:
        with fits.open(path) as hdul:
            mask = hdul["MASK"].data
            named = hdul[0].header["BPMFILE"]
        if named not in masks:
            masks[named] = read_mask(tiny_demo / named)
        bpm = masks[named]
        assert bpm.shape == mask.shape
        np.testing.assert_array_equal(mask & bpm, bpm, err_msg=str(path))
    assert len(masks) == 2 and all(m.any() for m in masks.values())  # V and R, not empty
