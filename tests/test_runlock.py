"""A killed run's Snakemake lock is cleared only when its process is provably gone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from ccdflow.runlock import cancel_pending_timers, claim_run


def _locked(workdir, owner):
    locks = workdir / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("results/a.fits\n")
    (locks / "0.output.lock").write_text("results/b.fits\n")
    (workdir / ".snakemake" / "ccdflow-run.json").write_text(json.dumps(owner))
    return locks


def test_no_lock_records_this_run(tmp_path):
    assert claim_run(workdir=tmp_path, pid=1234) is None
    record = json.loads((tmp_path / ".snakemake" / "ccdflow-run.json").read_text())
    assert record["pid"] == 1234 and record["host"] == socket.gethostname()


def test_dead_owner_on_this_host_loses_its_lock(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    locks = _locked(tmp_path, {"host": socket.gethostname(), "pid": dead.pid})
    message = claim_run(workdir=tmp_path, pid=99)
    assert f"removed the lock left by run {dead.pid}" in message
    assert not list(locks.iterdir())
    assert json.loads((tmp_path / ".snakemake" / "ccdflow-run.json").read_text())["pid"] == 99


def test_live_owner_or_another_host_keeps_the_lock(tmp_path):
    locks = _locked(tmp_path / "a", {"host": socket.gethostname(), "pid": os.getpid()})
    assert "locked by the running process" in claim_run(workdir=tmp_path / "a", pid=99)
    assert len(list(locks.iterdir())) == 2
    locks = _locked(tmp_path / "b", {"host": "login-node-7", "pid": 1})
    assert "login-node-7" in claim_run(workdir=tmp_path / "b", pid=99)
    assert len(list(locks.iterdir())) == 2
    record = json.loads((tmp_path / "b" / ".snakemake" / "ccdflow-run.json").read_text())
    assert record["host"] == "login-node-7"  # the owner's record is not overwritten


def test_pending_timers_are_cancelled_so_the_process_can_exit():
    """What the workflow's onsuccess does: a 30-s timer (Snakemake's is 1 s) would keep
    the interpreter alive at exit; cancelled, its thread ends at once and never fires."""
    import threading
    import time

    fired = []
    timer = threading.Timer(30, lambda: fired.append(True))
    timer.start()
    t0 = time.perf_counter()
    assert cancel_pending_timers() >= 1
    timer.join(timeout=5)
    assert not timer.is_alive() and time.perf_counter() - t0 < 1 and not fired
    assert cancel_pending_timers() == 0
