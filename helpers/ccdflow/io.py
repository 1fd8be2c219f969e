"""Atomic writes and job logging shared by every workflow script.

A product is written to a temporary file beside its destination and renamed
into place, so a killed job never leaves a partial file that looks complete.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported by the functions that need it
    import pandas as pd

__all__ = ["atomic_directory", "atomic_path", "job_logging", "peak_rss_mb", "write_record",
           "write_table"]


@contextmanager
def atomic_path(path: str | Path, *, suffix: str | None = None):
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix,
                               dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # writers (astropy) refuse to overwrite; they create the file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_directory(path: str | Path, *, replace: bool = False):
    """Yield a new, empty directory beside ``path``; if the block succeeds it is renamed
    to ``path`` (mode 0755, readable by the other users of a shared cluster), else it is
    removed with everything in it, so a failed or interrupted writer leaves nothing behind.

    An existing empty ``path`` is always replaced; one with content only when
    ``replace`` is True (a rebuilt product), else the rename fails with OSError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp made it private
        if path.exists():
            if replace:
                shutil.rmtree(path)
            else:
                path.rmdir()
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_table(table: pd.DataFrame, path: str | Path, *, comments: Sequence[str] = (),
                **to_csv: Any) -> None:
    """Write ``table`` as CSV atomically (no index), after ``# `` comment lines.

    Read back with ``pandas.read_csv(path, comment="#")``.
    """
    from .csvtext import csv_text

    to_csv.setdefault("index", False)
    # plain tables are formatted without pandas' machinery (the same bytes: ccdflow.csvtext)
    text = (csv_text(table, sep=to_csv.get("sep", ","))
            if to_csv["index"] is False and set(to_csv) <= {"index", "sep"} else None)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            for line in comments:
                for part in str(line).splitlines() or [""]:
                    handle.write(f"# {part}\n")
            if text is None:
                table.to_csv(handle, **to_csv)
            else:
                handle.write(text)


def write_record(record: Mapping[str, Any], path: str | Path) -> None:
    """Write one row as CSV atomically, as :func:`write_table` would write
    ``DataFrame([record])``, without importing pandas when every value is plain
    (:func:`ccdflow.csvtext.record_text`)."""
    from .csvtext import record_text

    text = record_text(record)
    if text is None:
        import pandas as pd

        write_table(pd.DataFrame([dict(record)]), path)
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            handle.write(text)


def _process_age() -> float:
    """Seconds since this process started (Linux /proc, 10 ms ticks; NaN elsewhere)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            fields = stat.read().rsplit(")", 1)[1].split()
            started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
            return float(uptime.read().split()[0]) - started
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB since it started (Linux ``VmHWM``; NaN
    elsewhere).  Not ``getrusage``'s ru_maxrss, which Linux carries from the parent across
    fork + exec: a Snakemake job would report Snakemake's own peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass
    return float("nan")


def job_logging(log_path: str | Path | None, *, level: int = logging.INFO
                ) -> Callable[[], None]:
    """Send ``logging`` and warnings of a workflow job to its log file (and stderr).

    Returns a function that detaches the handlers (tests use it).  With the
    environment variable ``CCDFLOW_PROFILE`` set, the job runs under cProfile and
    writes ``<log>.prof`` (``python -m pstats``) when it ends: how a developer finds
    where a stage's time goes.
    """
    root = logging.getLogger()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    previous_hook = sys.excepthook

    def log_uncaught(exc_type, exc, tb):  # the job's log must say why it failed
        logging.getLogger("ccdflow").critical("job failed: %s: %s", exc_type.__name__, exc,
                                              exc_info=(exc_type, exc, tb))
        for handler in handlers:
            handler.flush()

    sys.excepthook = log_uncaught
    started = time.perf_counter()

    def report_duration() -> None:  # benchmarks/bench_overhead.py sums these lines
        since_start = _process_age()
        logging.getLogger("ccdflow").info(  # the peak sizes resources.mem_mb on a cluster
            "job seconds after imports: %.3f; since the process started: %.3f; peak RSS "
            "%.0f MB", time.perf_counter() - started, since_start, peak_rss_mb())
        for handler in handlers:
            handler.flush()

    atexit.register(report_duration)
    if log_path and os.environ.get("CCDFLOW_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        atexit.register(lambda: profiler.dump_stats(f"{log_path}.prof"))

    def detach() -> None:
        atexit.unregister(report_duration)
        sys.excepthook = previous_hook
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()

    return detach
