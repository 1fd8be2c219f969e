"""Per-frame stages run on a batch of frames per workflow job.

Starting a workflow job costs ~0.3 s of wall time on two cores (a fresh Python
importing numpy, astropy and photutils, plus Snakemake's own bookkeeping), and
Snakemake's scheduler slows to 1–2 jobs/s with thousands of ready jobs
(``../shared/NOTES.md``).  On a 2,000-frame night five per-frame jobs per frame
would cost more than the science.  So each per-frame stage runs as one job per
*batch*: up to ``frames_per_job`` frames of one night and series (field ×
filter), consecutive in time.  Every frame still gets its own product file,
inside the batch's directory (``<stage>/<night>/<batch>/<frame>.<ext>``), and a
batch's job writes ``batch-summary.tsv`` beside them: one row per frame with
the stage's figures and the seconds its science took.

The image stages of a batch run in one job (:mod:`ccdflow.chain`); photometry
runs per batch after the series' source list.  A frame that changes reruns its
batch (and with ``frames_per_job: 1``, only itself).  Snakemake sees a batch
directory as one output, so a product deleted by hand inside it would go
unnoticed; :func:`missing_products` lists such gaps and the workflow marks the
batch stale (see ``workflow/rules/common.smk``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["PRODUCT_SUFFIX", "SUMMARY", "assign_batches", "failed_frames", "frames_per_job",
           "missing_products", "photometry_batch", "product_path", "read_frame_metas",
           "read_summary", "series_by_binning", "series_products"]

#: name of the per-batch summary table inside each batch directory
SUMMARY = "batch-summary.tsv"

#: file ending of each per-frame stage's product
PRODUCT_SUFFIX = {"calibrated": ".fits", "background": ".fits", "cosmics": ".fits",
                  "sources": ".ecsv", "photometry": ".csv", "spectra": ".fits"}


class BatchError(ValueError):
    """A batch cannot be formed or run; the message says why."""


#: science of the image chain plus photometry per megapixel of frame (s, measured on the
#: 2-core machine: ~0.4 s chain + ~0.1 s photometry per 1k² frame)
SECONDS_PER_MEGAPIXEL = 0.5

#: least science a batch job should carry: ~10× the start of a job (a fresh Python,
#: Snakemake's script preamble, the imports: ~0.8 s)
MIN_JOB_SECONDS = 8.0


def frames_per_job(*, n_frames: int, setting: int | str = "auto", target_jobs: int = 16,
                   max_frames: int = 100, megapixels: float | None = None) -> int:
    """Frames per job for a night and series of ``n_frames`` frames.

    ``setting`` is a positive integer, or ``'auto'``: ``ceil(n_frames /
    target_jobs)``, but at least enough frames for :data:`MIN_JOB_SECONDS` of
    science at :data:`SECONDS_PER_MEGAPIXEL` for frames of ``megapixels`` (4
    frames when the size is unknown), at most ``max_frames``; the frames are
    then spread evenly over the jobs that makes.  A short night of small frames
    thus runs in a few jobs instead of paying a job start per handful of frames,
    a long one still spreads over ``target_jobs`` cores and pays the start once
    per up to ``max_frames`` frames.  An odd number of jobs above one becomes an
    even number, below it (above, when that would exceed ``max_frames``): three jobs
    on two cores run in two rounds, the second on one core, and a 140-frame night of
    0.3 Mpx frames took 53-56 s in three jobs, 44-47 s in two.  The result depends on
    the data only (never on ``--cores``), so reruns on another machine find the same
    jobs.
    """
    if n_frames < 0:
        raise BatchError(f"n_frames must be >= 0, got {n_frames}")
    if setting == "auto":
        if megapixels is not None and megapixels > 0:
            least = math.ceil(MIN_JOB_SECONDS / (SECONDS_PER_MEGAPIXEL * megapixels))
        else:
            least = 4
        size = int(min(max_frames, max(1, least, math.ceil(n_frames / target_jobs))))
        jobs = max(1, math.ceil(n_frames / size))
        return _even_jobs(n_frames, jobs, max_frames)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise BatchError(f"frames_per_job must be a positive integer or 'auto', got {setting!r}")
    return setting


def _even_jobs(n_frames: int, jobs: int, max_frames: int) -> int:
    """Frames per job spreading ``n_frames`` evenly over ``jobs`` jobs, or, when that
    count is odd and above one, over the nearest even count below it that frames per
    job can give exactly (larger jobs, fewer starts), else the nearest above it (when
    fewer would exceed ``max_frames``)."""
    def size_for(n_jobs: int) -> int:
        return max(1, math.ceil(n_frames / n_jobs))

    if jobs > 1 and jobs % 2:
        for count in (*range(jobs - 1, 1, -2), *range(jobs + 1, n_frames + 1, 2)):
            size = size_for(count)
            if size <= max_frames and math.ceil(n_frames / size) == count:
                return size
    return size_for(jobs)


#: peak RSS of a batch job ≈ base + slope × the largest frame's megapixels, measured on
#: demo frames (each job's own VmHWM, stop 21): the chain 239/523/895 MB and photometry
#: 234/–/951 MB at 1k²/2k²/4k².  Requests add half again for crowded fields (more
#: sources, more stamps) and the allocator's slack.
JOB_MEMORY = {"frames": (300.0, 64.0), "photometry": (300.0, 70.0)}

#: the least a batch job asks for (MB): small frames keep the old flat request
MIN_JOB_MEMORY_MB = 2000


def job_memory_mb(*, stage: str, megapixels: float | None) -> int:
    """Memory (MB) a batch job of ``stage`` ('frames' or 'photometry') should ask the
    cluster for (``resources.mem_mb``), for frames of ``megapixels`` (the batch's
    largest; None when unknown: a 4k² frame is assumed).

    The peak of a job is one frame's (a batch frees each frame before the next), and
    grows linearly with the frame's size (:data:`JOB_MEMORY`); at least
    :data:`MIN_JOB_MEMORY_MB`.  A 9k² mosaic (81 Mpx) gets ~5.5 GB instead of a flat
    2 GB that SLURM would kill it at.
    """
    if stage not in JOB_MEMORY:
        raise BatchError(f"stage must be one of {sorted(JOB_MEMORY)}, got {stage!r}")
    if megapixels is None or not math.isfinite(megapixels) or megapixels <= 0:
        megapixels = 4096 * 4096 / 1e6
    base, slope = JOB_MEMORY[stage]
    return int(max(MIN_JOB_MEMORY_MB, math.ceil(base + slope * megapixels)))


def assign_batches(frames: pd.DataFrame, *, setting: int | str = "auto",
                   target_jobs: int = 16, max_frames: int = 100) -> pd.DataFrame:
    """Batch name of every frame.

    Parameters
    ----------
    frames : DataFrame
        Columns ``frame``, ``night``, ``series`` and ``mjd_obs``; optional
        ``megapixels`` (frame size, for ``'auto'``).
    setting, target_jobs, max_frames
        See :func:`frames_per_job`.

    Returns
    -------
    DataFrame
        A copy with ``batch`` (``{series}-{k:03d}``, k counting from 0 in time
        order within the night and series) and ``frames_per_job``.
    """
    missing = {"frame", "night", "series", "mjd_obs"} - set(frames.columns)
    if missing:
        raise BatchError(f"frames table lacks column(s) {sorted(missing)}")
    out = frames.sort_values(["night", "series", "mjd_obs", "frame"], kind="stable").copy()
    out["batch"] = ""
    out["frames_per_job"] = 0
    for (_, series), rows in out.groupby(["night", "series"], sort=False):
        size_mpx = (float(rows["megapixels"].max()) if "megapixels" in rows
                    and rows["megapixels"].notna().any() else None)
        size = frames_per_job(n_frames=len(rows), setting=setting, target_jobs=target_jobs,
                              max_frames=max_frames, megapixels=size_mpx)
        k = np.arange(len(rows)) // size
        out.loc[rows.index, "batch"] = [f"{series}-{i:03d}" for i in k]
        out.loc[rows.index, "frames_per_job"] = size
    return out.loc[frames.index]


def series_by_binning(frames: pd.DataFrame) -> pd.Series:
    """Each frame's series, a series whose frames were read out in more than one binning
    split by it: the binning of most of its frames (of its first frame, on a tie) keeps
    the name, the others become ``{series}_bin{XxY}`` (logged).  Frames binned 1x1 and
    2x2 do not share a source list or alignment (the minority frames came out
    NOT_ALIGNED): each binning gets its light curves.

    ``frames`` has ``series``, ``binning`` and ``mjd_obs``; returned in its index.
    """
    out = frames["series"].astype(str).copy()
    binning = frames["binning"].fillna("").astype(str)
    for series, rows in frames.groupby("series", sort=False):
        kinds = binning[rows.index]
        if kinds.nunique() < 2:
            continue
        first = kinds[rows["mjd_obs"].sort_values(kind="stable").index[0]]
        counts = kinds.value_counts()
        kept = max(counts.index, key=lambda b: (counts[b], b == first))
        moved = kinds[kinds != kept]
        out[moved.index] = f"{series}_bin" + moved
        log.warning("series %s holds frames binned %s: the %d %s frame(s) form series %s",
                    series, ", ".join(sorted(counts.index)), len(moved),
                    "/".join(sorted(set(moved))), ", ".join(sorted(set(out[moved.index]))))
    return out


def _stage_of(directory: str | Path) -> str:
    """Stage name of a batch directory ``<results>/<stage>/<night>/<batch>``."""
    return Path(directory).parents[1].name


def failed_frames(directories: Sequence[str | Path]) -> dict[str, str]:
    """Frames that a stage could not produce, with the reason, from batch summaries.

    Parameters
    ----------
    directories : sequence of path
        Batch directories of earlier stages (each with its ``batch-summary.tsv``).

    Returns
    -------
    dict
        ``{frame: reason}`` for every row whose ``status`` is not ``ok``: a
        ``failed`` row becomes ``"<stage> failed: <reason>"``, a ``skipped`` row
        keeps its reason (which already names the stage that failed first).
    """
    out: dict[str, str] = {}
    for directory in directories:
        path = Path(directory) / SUMMARY
        if not path.is_file():
            continue
        summary = read_summary(directory)
        if "status" not in summary:
            continue
        for row in summary[summary["status"] != "ok"].itertuples():
            reason = str(row.reason) if isinstance(row.reason, str) else ""
            out.setdefault(str(row.frame), reason if row.status == "skipped"
                           else f"{_stage_of(directory)} failed: {reason}")
    return out


def collect_frame_cycles(*, index: int, previous_ok: bool) -> None:
    """Free the cyclic garbage a batch's previous frame left, before frame ``index``
    (1-based) starts, when that frame was the batch's first or failed.

    An exception caught inside a library's one-time set-up (astropy's first IERS and
    leap-second loading while a frame's times are computed, a lazy
    ``astropy.coordinates`` import while its sources are written) or a failure's
    traceback holds the frame objects of the whole call stack in a cycle, hence that
    frame's planes, until Python's next full collection, which may come many frames
    later.  At 4k² the next frame then starts with ~400 MB still held: the photometry
    job of two frames peaked at 1 330 MiB instead of 940, the chain job of three at
    1 360 instead of 1 070.  A full collection costs ~25 ms in a job with astropy and
    pandas loaded; later frames that succeed leave no such cycle, so it runs only here.
    """
    if index > 1 and (index == 2 or not previous_ok):
        import gc

        gc.collect()


def _run(frames: Sequence[Any], out_dir: str | Path, step: Callable[[Any, Path], dict],
         name: Callable[[Any], str], upstream: Sequence[str | Path] = ()) -> pd.DataFrame:
    """Run ``step(item, out_dir)`` for every frame, time it, write the summary.

    One frame that fails (any exception: I/O error, wrong shape, no finite
    pixel) is logged by name with its traceback and written to the summary as
    ``status=failed`` with the ``reason``; the other frames are still made and
    the job succeeds.  Frames that an earlier stage (``upstream`` batch
    directories) could not make are ``skipped`` with that stage's reason.
    Writers are atomic (:func:`ccdflow.io.atomic_path`), so a failed frame
    leaves no partial product.  Garbage cycles of the first and of failed frames are
    freed before the next frame (:func:`collect_frame_cycles`).
    """
    from .io import write_table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gone = failed_frames(upstream)
    rows = []
    for k, item in enumerate(frames, start=1):
        collect_frame_cycles(index=k, previous_ok=not rows or rows[-1]["status"] != "failed")
        frame = name(item)
        start = time.perf_counter()
        if frame in gone:
            figures, status, reason = {}, "skipped", gone[frame]
            log.warning("%s: skipped (%s)", frame, reason)
        else:
            try:
                figures, status, reason = step(item, out_dir), "ok", ""
            except Exception as exc:  # one bad frame never stops its batch
                status = "failed"
                reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                figures = {}
                log.error("%s: FAILED, left out of this and later stages (%s)%s", frame,
                          reason, f"; raw file {item['raw']}" if isinstance(item, Mapping)
                          else "", exc_info=True)
        seconds = time.perf_counter() - start
        rows.append({"frame": frame, **figures, "status": status, "reason": reason,
                     "seconds": round(seconds, 4)})
        if status == "ok":
            log.info("%s: %s (%.2f s; frame %d of %d)", frame,
                     ", ".join(f"{k2}={v}" for k2, v in figures.items()), seconds, k, len(frames))
    summary = pd.DataFrame(rows)
    order = [c for c in summary.columns if c not in ("status", "reason", "seconds")]
    summary = summary[[*order, "status", "reason", "seconds"]]
    n_bad = int((summary["status"] != "ok").sum())
    if n_bad:
        log.warning("%d of %d frames of this batch not produced: %s", n_bad, len(summary),
                    "; ".join(f"{r.frame} ({r.status}: {r.reason})"
                              for r in summary[summary["status"] != "ok"].itertuples()))
    write_table(summary, out_dir / SUMMARY, sep="\t")
    return summary


def product_path(directory: str | Path, frame: str, stage: str) -> Path:
    """Path of one frame's product of ``stage`` inside a batch directory."""
    return Path(directory) / f"{frame}{PRODUCT_SUFFIX[stage]}"


def missing_products(directory: str | Path, *, frames: Sequence[str],
                     suffix: str) -> list[str]:
    """Names of the products an existing batch directory should hold but does not.

    Parameters
    ----------
    directory : str or Path
        A batch directory (``<stage>/<night>/<batch>``) that a finished job wrote.
    frames : sequence of str
        The batch's frames; each should have ``<frame><suffix>``.
    suffix : str
        Product file ending of the stage, e.g. ``".fits"``, ``".ecsv"``, ``".csv"``.

    Returns
    -------
    list of str
        Missing file names (the frames' products and ``batch-summary.tsv``), in
        the order of ``frames``; empty when the batch is complete.  A frame the
        summary lists as ``failed`` or ``skipped`` has no product by design.
    """
    if not suffix.startswith("."):
        raise BatchError(f"suffix must start with '.', got {suffix!r}")
    directory = Path(directory)
    present = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    not_made = failed_frames([directory]) if SUMMARY in present else {}
    expected = [f"{frame}{suffix}" for frame in frames if frame not in not_made] + [SUMMARY]
    return [name for name in expected if name not in present]


def read_summary(directory: str | Path) -> pd.DataFrame:
    """The ``batch-summary.tsv`` of one batch directory."""
    table = pd.read_csv(Path(directory) / SUMMARY, sep="\t", comment="#",
                        keep_default_na=True)
    if "reason" in table:  # an empty reason is "", not NaN
        reason = table["reason"].astype(object)
        table["reason"] = reason.where(reason.notna(), "").astype(str)
    return table


def read_frame_metas(directories: Sequence[str | Path]) -> dict[str, dict]:
    """Per frame, ``n_sources`` and ``fwhm_px`` from the sources' batch summaries
    (frames that were not produced are left out)."""
    metas = {}
    for directory in directories:
        for row in read_summary(directory).itertuples():
            if getattr(row, "status", "ok") != "ok":
                continue
            metas[str(row.frame)] = {"n_sources": int(row.n_sources),
                                     "fwhm_px": float(row.fwhm_px)}
    return metas


# ---------------------------------------------------------------- photometry stage

def _frame(frame: str, *, calibrated_dir, background_dir, cosmics_dir, read_rms=True):
    from .photometry import load_frame

    return load_frame(
        calibrated=product_path(calibrated_dir, frame, "calibrated"),
        background=product_path(background_dir, frame, "background"),
        cosmics=product_path(cosmics_dir, frame, "cosmics") if cosmics_dir else None,
        read_rms=read_rms)


def photometry_batch(*, frames: Sequence[str], calibrated_dir: str | Path,
                     background_dir: str | Path, cosmics_dir: str | Path | None,
                     sources_dir: str | Path, reference: str | Path, out_dir: str | Path,
                     options: Mapping, site: Mapping | None = None,
                     times: Mapping[str, Sequence[float]] | None = None,
                     header: Sequence[str] = ()) -> pd.DataFrame:
    """Every source of the series' list measured in each frame of a batch
    (``<frame>.csv``, units and flags in its comment lines).

    ``options`` are the keyword arguments of
    :func:`ccdflow.photometry.frame_photometry`; ``times`` gives per frame the
    (start MJD UTC, exposure s) the inventory read with the profile's keywords.

    Returns
    -------
    DataFrame
        ``frame, n_rows, n_usable, dx_px, dy_px, mjd_utc, airmass, seconds``.
    """
    from .io import write_table
    from .photometry import (
        SourceError,
        align_to_reference,
        frame_photometry,
        good_mask,
        read_reference,
        read_sources,
        unit_comments,
    )

    catalog, ref_meta = read_reference(reference)
    previous = None  # chained tracking: the last frame's transform is the next guess

    def step(frame, out):
        nonlocal previous
        data = _frame(frame, calibrated_dir=calibrated_dir, background_dir=background_dir,
                      cosmics_dir=cosmics_dir, read_rms=options.get("sky") == "map")
        sources, meta = read_sources(product_path(sources_dir, frame, "sources"))
        fwhm = float(meta.get("fwhm_px", float("nan")))
        try:
            alignment = align_to_reference(
                sources=sources, catalog=catalog, guess=previous,
                fwhm_px=fwhm if np.isfinite(fwhm) else float(ref_meta.get("fwhm_px", 2.0)),
                max_shift_px=float(options.get("max_shift_px", 50.0)))
            previous = alignment.matrix
        except SourceError as exc:
            alignment = exc  # frame_photometry notes it and flags NOT_ALIGNED
        table, notes = frame_photometry(
            alignment=alignment,
            data=data.data, error=data.error, error_cal=data.error_cal, mask=data.mask,
            header=data.header, background=data.background, background_rms=data.rms,
            source_mask=data.source_mask, sources=sources, meta=meta, catalog=catalog,
            reference_meta=ref_meta, site=site, frame=frame,
            start_mjd_utc=(times or {}).get(frame, (None, None))[0],
            exptime_s=(times or {}).get(frame, (None, None))[1], **options)
        write_table(table, product_path(out, frame, "photometry"), comments=[
            f"ccdflow photometry of {frame}", *header,
            f"source list: {Path(reference).name} (reference frame "
            f"{ref_meta['reference_frame']})", f"parameters: {dict(options)}", *notes,
            *unit_comments(list(table.columns))])
        usable = good_mask(table["flags"]) if len(table) else np.zeros(0, bool)
        first = (table.iloc[0] if len(table) else
                 pd.Series(np.nan, index=["dx", "dy", "rotation_deg", "mjd_utc", "airmass"]))
        return {"n_rows": len(table), "n_usable": int(usable.sum()),
                "dx_px": round(float(first["dx"]), 3), "dy_px": round(float(first["dy"]), 3),
                "rotation_deg": round(float(first.get("rotation_deg", np.nan)), 3),
                "mjd_utc": float(first["mjd_utc"]), "airmass": round(float(first["airmass"]), 4)}

    upstream = [calibrated_dir, background_dir, *([cosmics_dir] if cosmics_dir else []),
                sources_dir]
    return _run(frames, out_dir, step, str, upstream=upstream)


def series_products(paths: Mapping[str, str | Path]) -> tuple[dict[str, Path], dict[str, str]]:
    """Split a series' per-frame products into those that exist and those not made.

    Parameters
    ----------
    paths : mapping
        ``{frame: product path}`` inside batch directories (each directory
        holds the ``batch-summary.tsv`` of its job).

    Returns
    -------
    present : dict
        ``{frame: path}`` of the products that were made, in the order given.
    absent : dict
        ``{frame: reason}`` of the others, from the batch summaries (or "no
        product" when no summary explains it).
    """
    directories = sorted({Path(p).parent for p in paths.values()})
    reasons = failed_frames(directories)
    present, absent = {}, {}
    for frame, path in paths.items():
        if frame not in reasons and Path(path).is_file():
            present[frame] = Path(path)
        else:
            absent[frame] = reasons.get(frame, f"no product {Path(path).name}")
    return present, absent
