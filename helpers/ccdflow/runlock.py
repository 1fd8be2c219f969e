"""Resume after a killed run: clear Snakemake's lock when its owner is provably dead.

Snakemake locks a working directory while it runs and removes the lock when it
ends; a run killed with SIGKILL (or a crashed node) leaves the lock behind and
the next ``snakemake`` stops with ``LockException`` until ``--unlock``.  The
workflow records which process holds the lock (host and PID, in
``.snakemake/ccdflow-run.json``); the next run on the *same host* removes the
lock only when that process no longer exists.  A lock held by a live process,
or by a run on another host (shared file systems), is left alone, and
Snakemake's own error explains it.

:func:`cancel_pending_timers` is the run's other end: the workflow's ``onsuccess`` and
``onerror`` handlers call it so that a finished run exits when its work is done.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["cancel_pending_timers", "claim_run"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def claim_run(*, workdir: str | Path = ".", pid: int | None = None) -> str | None:
    """Record this run as the lock holder of ``workdir``, clearing a dead run's lock.

    Parameters
    ----------
    workdir : path
        Snakemake's working directory (``.snakemake`` lives there).
    pid : int, optional
        This run's process id (default: the current process).

    Returns
    -------
    str or None
        What was done about an existing lock (for the log), or None.
    """
    state = Path(workdir) / ".snakemake"
    locks = sorted((state / "locks").glob("*.lock")) if (state / "locks").is_dir() else []
    record = state / "ccdflow-run.json"
    owner = None
    if record.is_file():
        try:
            owner = json.loads(record.read_text())
        except ValueError:
            owner = None
    message = None
    if locks:
        host = socket.gethostname()
        if not owner or owner.get("host") != host:
            where = f"host {owner['host']}" if owner else "an unknown process"
            return f"the directory is locked by a run on {where}: left to Snakemake"
        if _alive(int(owner["pid"])):
            return f"the directory is locked by the running process {owner['pid']}"
        for lock in locks:
            lock.unlink(missing_ok=True)
        message = (f"removed the lock left by run {owner['pid']} on {host} (started "
                   f"{owner.get('started', '?')}), which no longer runs: resuming")
    state.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": pid or os.getpid(),
                               "started": datetime.now(UTC).isoformat(timespec="seconds")}))
    os.replace(tmp, record)
    return message


def cancel_pending_timers() -> int:
    """Cancel the ``threading.Timer`` threads still waiting in this process; how many.

    Snakemake's scheduler (9.x, default ``--max-jobs-per-timespan 100/1s``) starts a
    non-daemon one-second ``threading.Timer`` on each pass of its loop to wake itself
    again; when the workflow is over, the last one keeps the finished process alive until
    it fires (1.2 s after the last output on the demo night, one run in every run of a
    user). The timers only wake the scheduler, which has stopped: cancelling them loses
    nothing. ('100/100ms' would not do: Snakemake reads it as 100 minutes.)
    """
    pending = [t for t in threading.enumerate()
               if isinstance(t, threading.Timer) and t.is_alive()]
    for timer in pending:
        timer.cancel()
    return len(pending)
