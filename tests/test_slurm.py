"""The workflow through Snakemake's SLURM executor, against a real one-node SLURM.

The fixture starts munge, slurmctld and slurmd on this machine
(``tests/slurm/start_local_slurm.sh``) and stops exactly those daemons, by
PID, at the end.  It uses a SLURM already installed; it installs Debian's
slurm-wlm and munge (root and apt) only when asked, with
``CCDFLOW_INSTALL_SLURM=1`` in the environment.  Otherwise, and where SLURM
cannot be installed, the tests skip and say how to enable them.  ``.ci/run``
sets the variable, so CI runs them.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT, TINY_DEMO, assert_same_results, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

SCRIPTS = Path(__file__).parent / "slurm"
#: the repository's SLURM profile, with status checks every second for a test
SLURM = ["--workflow-profile", str(ROOT / "profiles" / "slurm"),
         "--slurm-init-seconds-before-status-checks", "1",
         "--seconds-between-status-checks", "1", "--slurm-no-account", "--latency-wait", "5"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm-state")
    out = subprocess.run([str(SCRIPTS / "start_local_slurm.sh"), str(state)],
                         capture_output=True, text=True, timeout=900)
    asked = os.environ.get("CCDFLOW_INSTALL_SLURM") == "1"
    if out.returncode == 3 and not asked:
        pytest.skip(f"SLURM tests not run: {out.stderr.strip()}")
    # asked to install it (CI): a SLURM that cannot be had is a failure, not a skip
    try:
        assert out.returncode == 0, f"SLURM did not start:\n{out.stdout}\n{out.stderr}"
        yield state
    finally:
        subprocess.run([str(SCRIPTS / "stop_local_slurm.sh"), str(state)], timeout=120)


def test_slurm_run_equals_the_local_run(slurm, tiny_demo, tmp_path):
    """The tiny demo night reduced through `--executor slurm` (the repository's profile:
    frame and photometry group jobs) gives the local run's pixels and tables."""
    out = run_snakemake(tmp_path, *SLURM, config={"demo": TINY_DEMO})
    text = out.stdout + out.stderr
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", text)
    assert len(submitted) >= 10, text[-3000:]
    assert "Group job frames" in text, "the per-frame stages of a batch ran as one SLURM job"
    assert assert_same_results(tiny_demo / "results", tmp_path / "results") > 80


def test_memory_beyond_the_node_is_a_clear_error_not_a_hang(slurm, tmp_path):
    start = time.monotonic()
    out = run_snakemake(tmp_path, *SLURM, "--set-resources", "demo_simulate:mem_mb=100000000",
                        config={"demo": TINY_DEMO}, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Memory specification can not be satisfied" in text, text[-3000:]
    assert time.monotonic() - start < 120
