"""Benchmark: Snakemake's orchestration overhead on a long night of small frames.

    python benchmarks/bench_overhead.py [--frames 2000] [--size 256] [--frames-per-job auto]

Simulates one night of N science frames (V, 5 s exposures every 10 s, so the
whole series falls in one night) plus its calibrations, and reduces it with
``snakemake --cores 2``: masters, calibration, background, cosmic rays,
sources, photometry, light curves, QC.  Then it splits the wall time:

* ``frame science``: the seconds the per-frame stages spent on their frames
  (reading, computing, writing; the ``seconds`` column of every batch's
  ``batch-summary.tsv``);
* ``job science``: the seconds every job spent after its imports (each job's
  log ends with ``job seconds after imports``), which adds the masters, the
  series-level steps and the QC figures;
* ``job starts``: each job's life since its process started, less its
  science (a fresh Python importing numpy, pandas and Snakemake's script
  preamble);
* ``Snakemake's own process``: the CPU seconds of the main Snakemake process
  (parsing, DAG, job selection, output checks, metadata);
* ``idle cores``: what is left of cores × wall: cores waiting while fewer jobs
  than cores are ready (the series-level steps, the last batches of a stage);
* ``orchestration``: the two together, an upper bound of the overhead.

Target (issue 6): orchestration ≤ 10 % of the science on a 2,000-frame night.
Run with ``--frames-per-job 1`` (and fewer frames) to see what one job per
frame and stage would cost.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from bench_night import job_figures  # benchmarks/ is the script's own directory

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames-per-job", default="auto")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ccdflow-overhead"))
    args = parser.parse_args()
    from ccdflow.simulate import NightSpec, load_truth, simulate_night

    night = args.work / f"night-{args.frames}-{args.size}"
    if not (night / "raw").is_dir():
        t0 = time.perf_counter()
        spec = NightSpec(nx=args.size, ny=args.size, n_bias=9, n_dark=5, n_flat=7,
                         filters=("V",), science=(("V", args.frames),),
                         science_exptime_s=5.0, overhead_s=5.0, seed=7)
        simulate_night(out_dir=night, spec=spec)
        print(f"# simulated {args.frames} frames of {args.size}² in "
              f"{time.perf_counter() - t0:.0f} s")
    n_science = int((load_truth(night).frames["type"] == "science").sum())
    work = args.work / f"run-{args.frames}-{args.size}-{args.frames_per_job}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fpj = args.frames_per_job if args.frames_per_job == "auto" else int(args.frames_per_job)
    # run Snakemake in a wrapper that reports the CPU seconds of Snakemake's own process
    probe = ("import atexit, resource, sys; atexit.register(lambda: print('SNAKEMAKE_CPU', "
             "sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), file=sys.stderr)); "
             "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()")
    cmd = [sys.executable, "-c", probe, "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(work), "--cores", str(args.cores), "--config",
           f"raw_dir={night / 'raw'}", "instrument=demo", f"frames_per_job={fpj}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"the run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    results = work / "results"
    frame_science = sum(pd.read_csv(p, sep="\t", comment="#")["seconds"].sum()
                        for p in results.rglob("batch-summary.tsv"))
    figures = job_figures(results / "logs")  # the job logs' last lines, as bench_night
    jobs, job_life = figures["jobs"], figures.get("process_s", 0.0)
    job_science = job_life - figures.get("starts_s", 0.0)
    batches = len(list(results.glob("calibrated/*/*")))
    scheduler = float(re.findall(r"SNAKEMAKE_CPU ([\d.]+)", out.stderr)[-1])
    starts = job_life - job_science
    rest = args.cores * wall - job_life
    print(f"# {os.cpu_count()} cores (snakemake --cores {args.cores}); {n_science} science "
          f"frames of {args.size}²; frames_per_job={args.frames_per_job} -> {batches} batches "
          f"per per-frame stage; {jobs} jobs")
    print(f"{'figure':<44} {'seconds':>9} {'of job science':>15}")
    for name, value in (("wall", wall), (f"cores x wall ({args.cores} x)", args.cores * wall),
                        ("frame science (batch summaries)", frame_science),
                        ("job science (all jobs, after imports)", job_science),
                        ("job starts (interpreter, imports)", starts),
                        ("Snakemake's own process (CPU s)", scheduler),
                        ("idle cores (the rest)", rest - scheduler),
                        ("orchestration = cores x wall - job science", starts + rest)):
        print(f"{name:<44} {value:>9.1f} {100 * value / job_science:>14.1f}%")
    print(f"{'per frame: wall':<44} {wall / n_science:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
