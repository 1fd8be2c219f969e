"""Benchmark: inventory and DAG construction for a night of 10,000 frames.

    python benchmarks/bench_scale.py [--frames 10000] [--work /tmp/ccdflow-scale]

Writes N raw frames with the demo camera's headers (MaxIm/IRAF keywords, an
overscan strip; 16×20-pixel data, since only headers are read here): 20 bias,
10 dark, 20 flats per filter and the rest science in V and R, on one night.
Then, with ``snakemake --cores 2`` on this workflow:

1. the inventory checkpoint alone, cold (every header read);
2. the inventory again after deleting inventory.csv only: the header cache
   answers (paths, sizes and mtimes unchanged);
3. ``snakemake -n`` with the inventory in place: the whole DAG (masters,
   batches of every per-frame stage, series, QC) is built and printed.

Target (issue 6): the dry run ≤ 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_frames(raw: Path, n: int) -> None:
    from astropy.io import fits
    from astropy.time import Time, TimeDelta

    raw.mkdir(parents=True, exist_ok=True)
    kinds = ([("bias", "", 0.0)] * 20 + [("dark", "", 300.0)] * 10
             + [("flat", "V", 5.0)] * 20 + [("flat", "R", 5.0)] * 20)
    n_sci = n - len(kinds)
    kinds += [("science", "V" if i < n_sci // 2 else "R", 30.0) for i in range(n_sci)]
    start = Time("2026-03-15T01:00:00", scale="utc")
    data = np.full((20, 16), 1000, np.uint16)
    types = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field",
             "science": "Light Frame"}
    for i, (kind, filt, exptime) in enumerate(kinds):
        h = fits.Header()
        h["IMAGETYP"] = types[kind]
        h["OBJECT"] = "WASP-SIM" if kind == "science" else kind
        h["EXPTIME"] = exptime
        h["DATE-OBS"] = (start + TimeDelta(i * 35.0, format="sec")).isot
        if filt:
            h["FILTER"] = filt
        h["GAIN"], h["RDNOISE"], h["SATURATE"] = 1.5, 7.5, 65535
        h["BIASSEC"], h["TRIMSEC"] = "[13:16,1:20]", "[1:12,1:20]"
        h["INSTRUME"], h["READOUTM"] = "ccdflow-sim CCD", "Normal"
        h["SITELAT"], h["SITELONG"] = 31.68, -110.88
        name = f"{kind}_{filt}_{i:05d}.fits" if filt else f"{kind}_{i:05d}.fits"
        fits.PrimaryHDU(data, header=h).writeto(raw / name, overwrite=True)


def snakemake(work: Path, *args: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(work), "--cores", "2", "--config",
           f"raw_dir={work / 'raw'}", "instrument=demo", *args]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{out.stdout[-3000:]}\n"
                         f"{out.stderr[-3000:]}")
    return seconds, out.stdout + out.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ccdflow-scale"))
    args = parser.parse_args()
    work = args.work
    raw = work / "raw"
    if not raw.is_dir() or len(list(raw.iterdir())) != args.frames:
        t0 = time.perf_counter()
        write_frames(raw, args.frames)
        print(f"# wrote {args.frames} frames in {time.perf_counter() - t0:.1f} s")
    inventory = work / "results" / "inventory.csv"
    for path in (inventory, work / "results" / "cache" / "inventory-headers.json"):
        path.unlink(missing_ok=True)
    print(f"# {os.cpu_count()} cores; {args.frames} frames; snakemake --cores 2")
    cold, _ = snakemake(work, "--until", "inventory_scan")
    inventory.unlink()
    warm, _ = snakemake(work, "--until", "inventory_scan")
    read = re.search(r"headers read: (\d+) of (\d+)", (work / "results" / "logs" /
                                                        "inventory.log").read_text())
    dry, text = snakemake(work, "-n", "--quiet", "rules")
    total = re.search(r"total\s+(\d+)", text)
    print(f"{'step':<52} {'wall s':>8}")
    print(f"{'inventory checkpoint, cold (every header read)':<52} {cold:>8.1f}")
    print(f"{'inventory checkpoint, header cache (' + read.group(1) + ' read)':<52} "
          f"{warm:>8.1f}")
    print(f"{'snakemake -n: full DAG, ' + (total.group(1) if total else '?') + ' jobs':<52} "
          f"{dry:>8.1f}")
    print("\n" + "\n".join(line for line in text.splitlines()
                           if re.match(r"^\w+\s+\d+$", line.strip())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
