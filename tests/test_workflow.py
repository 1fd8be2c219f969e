"""The workflow itself: lint, dry run, a full run on a tiny simulated night, bad input."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from ccdflow.simulate import load_truth, simulate_night

from .conftest import ROOT, SMALL_SPEC

pytestmark = pytest.mark.workflow

TINY_DEMO = {"dir": "demo", "seed": 5, "size": 128, "n_science": 3}


def snakemake(workdir, *args, config=None, check=True):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), *args]
    if config is not None:
        path = workdir / "test-config.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def test_lint_is_clean(tmp_path):
    out = snakemake(tmp_path, "--lint")
    assert "Congratulations, your workflow is in a good condition" in out.stdout + out.stderr


def test_dry_run_lists_demo_jobs(tmp_path):
    out = snakemake(tmp_path, "-n", config={"demo": TINY_DEMO})
    text = out.stdout + out.stderr
    assert "demo_simulate" in text and "inventory_scan" in text


def test_demo_night_end_to_end_then_up_to_date(tmp_path):
    snakemake(tmp_path, "--cores", "2", config={"demo": TINY_DEMO})
    inventory = pd.read_csv(tmp_path / "results" / "inventory.csv", keep_default_na=False)
    truth = load_truth(tmp_path / "demo")
    assert sorted(inventory["frame"]) == sorted(truth.frames["frame"])
    merged = inventory.merge(truth.frames, on="frame", suffixes=("", "_truth"))
    assert (merged["type"] == merged["type_truth"]).all()
    assert (merged["night"] == "2026-03-14").all()
    assert (tmp_path / "results" / "logs" / "inventory.log").stat().st_size > 0
    out = snakemake(tmp_path, "-n", config={"demo": TINY_DEMO})
    assert "Nothing to be done" in out.stdout + out.stderr


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
