"""Benchmark: a whole night, ccdflow against a tutorial-style reference script.

    python benchmarks/bench_night.py [--size 1024] [--science 24] [--cores 2]

One simulated night (the demo camera: overscan strip, V and R flats, darks,
bias) is reduced twice on the same raw files with the same cores:

* **ccdflow**: ``snakemake --cores N`` (masters, calibration with ERR/MASK,
  iterative background, astroscrappy with the frame's noise model and
  ``sepmed: false``, sources, alignment, photometry with honest errors, light
  curves, QC figures);
* **reference**, written the way the seed tutorials do it (the CCD Data
  Reduction Guide, photutils' and astroscrappy's docs): ``ccdproc`` overscan +
  trim + ``combine`` (average, 5σ MAD clip) for bias, dark and flats,
  ``ccd_process`` per science frame, photutils ``Background2D`` with a source
  mask (``detect_threshold`` + ``detect_sources`` + dilated
  ``make_source_mask``), ``astroscrappy.detect_cosmics`` with its defaults,
  ``DAOStarFinder`` on the first frame and photutils aperture photometry with
  an annulus median in every frame, a ``multiprocessing.Pool`` over frames.

Printed: wall seconds of each, their ratio, and the peak RSS of any one
process of each tree (``getrusage(RUSAGE_CHILDREN)`` of a wrapper); what
ccdflow's jobs did (:func:`job_figures`) and its cosmic-ray masks against the
night's truth (:func:`cosmic_figures`: issue 13's quality condition).
``--configfile`` passes a YAML of ccdflow settings (e.g. ``cosmics: {sepmed:
true}`` to compare like for like with astroscrappy's defaults).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- reference script

def _process(path, *, bias=None, dark=None, flat=None):
    """One raw frame the tutorial way: overscan, trim, gain, masters (ccdproc)."""
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData

    ccd = CCDData.read(path, unit="adu")
    gain = ccd.header["GAIN"] * u.electron / u.adu
    return ccdproc.ccd_process(
        ccd, oscan=ccd.header["BIASSEC"], oscan_median=True, trim=ccd.header["TRIMSEC"],
        gain=gain, readnoise=ccd.header["RDNOISE"] * u.electron, error=True,
        master_bias=bias, dark_frame=dark, master_flat=flat,
        exposure_key="EXPTIME", exposure_unit=u.s, dark_scale=dark is not None,
        gain_corrected=True)


def _combine(ccds, scale=None):
    import ccdproc
    from astropy.stats import mad_std

    return ccdproc.combine(ccds, method="average", sigma_clip=True,
                           sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
                           sigma_clip_func=np.ma.median, sigma_clip_dev_func=mad_std,
                           scale=scale, mem_limit=2e9)


def _science(job):
    """Calibrate, background, cosmic rays and photometry of one science frame."""
    import astroscrappy
    from astropy.stats import SigmaClip
    from photutils.aperture import (
        ApertureStats,
        CircularAnnulus,
        CircularAperture,
        aperture_photometry,
    )
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import detect_sources, detect_threshold

    path, masters, positions, out = job
    ccd = _process(path, **masters)
    ccd.write(out / f"{Path(path).stem}_cal.fits", overwrite=True)
    data = ccd.data
    threshold = detect_threshold(data, n_sigma=2.0, sigma_clip=SigmaClip(3.0))
    segm = detect_sources(data, threshold, n_pixels=10)
    mask = segm.make_source_mask(size=11) if segm is not None else None
    bkg = Background2D(data, (64, 64), filter_size=(3, 3), sigma_clip=SigmaClip(3.0),
                       bkg_estimator=MedianBackground(), mask=mask)
    crmask, _ = astroscrappy.detect_cosmics(data, gain=1.0, readnoise=ccd.header["RDNOISE"],
                                            satlevel=65535 * ccd.header["GAIN"])
    from astropy.io import fits

    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(bkg.background.astype(np.float32)),
                  fits.ImageHDU(crmask.astype(np.uint8))]).writeto(
        out / f"{Path(path).stem}_bkg_cr.fits", overwrite=True)
    apertures = CircularAperture(positions, r=5.0)
    annulus = CircularAnnulus(positions, r_in=12.0, r_out=20.0)
    sky = ApertureStats(data, annulus, sigma_clip=SigmaClip(3.0)).median
    table = aperture_photometry(data, apertures, error=ccd.uncertainty.array,
                                mask=crmask)
    table["sky"] = sky
    table["flux"] = table["aperture_sum"] - sky * apertures.area
    table.write(out / f"{Path(path).stem}_phot.csv", overwrite=True)
    return len(table)


def reference(raw: Path, out: Path, cores: int) -> None:
    """The tutorial-style reduction of every frame in ``raw`` into ``out``."""
    from multiprocessing import get_context

    from astropy.io import fits
    from photutils.detection import DAOStarFinder

    out.mkdir(parents=True, exist_ok=True)
    by_type: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(raw.glob("*.fits")):
        h = fits.getheader(path)
        by_type.setdefault((h["IMAGETYP"], h.get("FILTER", "")), []).append(path)
    bias = _combine([_process(p) for p in by_type[("Bias Frame", "")]])
    dark = _combine([_process(p, bias=bias) for p in by_type[("Dark Frame", "")]])
    flats = {}
    for (kind, filt), paths in by_type.items():
        if kind == "Flat Field":
            flats[filt] = _combine([_process(p, bias=bias, dark=dark) for p in paths],
                                   scale=lambda a: 1.0 / np.ma.median(a))
    science = [(p, f) for (kind, f), ps in by_type.items() if kind == "Light Frame" for p in ps]
    first = _process(science[0][0], bias=bias, dark=dark, flat=flats[science[0][1]])
    stars = DAOStarFinder(fwhm=3.0, threshold=10 * np.std(first.data))(
        first.data - np.median(first.data))
    positions = np.column_stack([stars["x_centroid"], stars["y_centroid"]])
    jobs = [(p, {"bias": bias, "dark": dark, "flat": flats[f]}, positions, out)
            for p, f in science]
    with get_context("fork").Pool(cores) as pool:
        pool.map(_science, jobs)


# ---------------------------------------------------------------- driver

def _night_dir(args) -> Path:
    """The simulated night of this size and length (kept between runs: a night of
    another --science or --size is another directory, not the last one reused)."""
    return args.work / f"night-{args.size}-{args.science}"


def job_figures(log_dir: Path) -> dict:
    """What the night's jobs did, from the last line of each job log (``job seconds after
    imports: A; since the process started: B``, timestamped at the job's end): jobs,
    process-seconds (sum of B), starts (sum of B - A: interpreter, Snakemake's script
    preamble, imports), and the span from the first job's start to the last one's end.
    span / process-seconds is how well the cores were packed (1/cores at best)."""
    import datetime as dt
    import re

    pattern = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) .*job seconds after "
                         r"imports: ([\d.]+); since the process started: ([\d.]+)", re.M)
    jobs = []
    for log in log_dir.rglob("*.log"):
        found = pattern.findall(log.read_text(errors="replace"))
        if found:
            stamp, after, life = found[-1]
            end = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            jobs.append((end - float(life), end, float(life), float(life) - float(after)))
    if not jobs:
        return {"jobs": 0}
    process = sum(j[2] for j in jobs)
    span = max(j[1] for j in jobs) - min(j[0] for j in jobs)
    return {"jobs": len(jobs), "process_s": process, "starts_s": sum(j[3] for j in jobs),
            "span_s": span, "packing": span / process}


def cosmic_figures(night: Path, results: Path) -> dict:
    """ccdflow's cosmic-ray masks against the night's truth (the simulator's
    ``truth/cosmics.csv``), as bench_images counts them: the injected pixels above 5σ
    (charge > 5 × ERR, unmasked) that are flagged; false pixels, flagged and not within
    1 px of an injected one; and those within 1.5 px of a star whose peak is above 20 ×
    the frame's median ERR.  The truth's charge and star fluxes are in electrons before
    the pixel response (the demo's flat varies by ~10 %), so a pixel near 5σ may count
    on either side: the threshold, not the masks, is approximate."""
    import pandas as pd
    from astropy.io import fits
    from scipy import ndimage

    rays = pd.read_csv(night / "truth" / "cosmics.csv")
    stars = pd.read_csv(night / "truth" / "star_frames.csv")
    out = {"frames": 0, "strong": 0, "found": 0, "false": 0, "on_star_cores": 0}
    for path in sorted(results.glob("cosmics/*/*/*.fits")):
        frame = path.stem
        flagged = fits.getdata(path, "CRMASK") & 1 != 0
        with fits.open(next(results.glob(f"calibrated/*/*/{frame}.fits"))) as hdul:
            error, masked = hdul["ERR"].data.astype(float), hdul["MASK"].data != 0
        hits, charge = np.zeros(flagged.shape, bool), np.zeros(flagged.shape)
        mine = rays[rays["frame"] == frame]
        y, x = mine["y"].to_numpy(int), mine["x"].to_numpy(int)
        hits[y, x] = True
        np.add.at(charge, (y, x), mine["electrons"].to_numpy())
        strong = hits & (charge > 5 * error) & ~masked
        false = flagged & ~ndimage.binary_dilation(hits, np.ones((3, 3), bool))
        cores = np.zeros(flagged.shape, bool)
        on = stars[stars["frame"] == frame]
        sigma = on["fwhm_px"].to_numpy() / 2.3548
        bright = on[on["flux_e"].to_numpy() / (2 * np.pi * sigma**2) > 20 * np.median(error)]
        yy, xx = np.indices(flagged.shape)
        for x0, y0 in zip(bright["x"], bright["y"], strict=True):
            box = (slice(max(int(y0) - 2, 0), int(y0) + 3), slice(max(int(x0) - 2, 0),
                                                                  int(x0) + 3))
            cores[box] |= (xx[box] - x0) ** 2 + (yy[box] - y0) ** 2 <= 1.5**2
        out["frames"] += 1
        out["strong"] += int(strong.sum())
        out["found"] += int((flagged & strong).sum())
        out["false"] += int(false.sum())
        out["on_star_cores"] += int((false & cores).sum())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--science", type=int, default=24, help="V frames (plus 4 R)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ccdflow-night"))
    parser.add_argument("--configfile", type=Path, help="extra ccdflow config (YAML)")
    parser.add_argument("--child", choices=["reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "reference":
        reference(_night_dir(args) / "raw", args.work / "reference", args.cores)
        return 0
    from ccdflow.simulate import NightSpec, simulate_night

    night = _night_dir(args)
    if not (night / "raw").is_dir():
        simulate_night(out_dir=night, spec=NightSpec(nx=args.size, ny=args.size,
                                                     science=(("V", args.science), ("R", 4))))
    shutil.rmtree(args.work / "reference", ignore_errors=True)
    shutil.rmtree(args.work / "ccdflow", ignore_errors=True)
    (args.work / "ccdflow").mkdir()

    def run(cmd):
        """Wall seconds and the peak RSS (MB) of any one process of ``cmd``'s tree."""
        probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
                 "file=sys.stderr); sys.exit(r.returncode)")
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True,
                             text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"{cmd[:4]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        return wall, int(out.stderr.strip().splitlines()[-1]) / 1024

    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(args.work / "ccdflow"), "--cores", str(args.cores),
           "--config", f"raw_dir={night / 'raw'}", "instrument=demo"]
    if args.configfile:
        cmd += ["--configfile", str(args.configfile)]
    ours, rss_ours = run(cmd)
    theirs, rss_theirs = run([sys.executable, __file__, "--child", "reference", "--work",
                              str(args.work), "--cores", str(args.cores), "--size",
                              str(args.size), "--science", str(args.science)])
    n = args.science + 4
    print(f"# {os.cpu_count()} cores, --cores {args.cores}; {n} science frames of "
          f"{args.size}² + calibrations")
    print(f"{'method':<52} {'wall s':>8} {'s/frame':>8} {'peak RSS MB':>12}")
    print(f"{'ccdflow (snakemake, everything incl. QC)':<52} {ours:>8.1f} {ours / n:>8.2f} "
          f"{rss_ours:>12.0f}")
    print(f"{'reference (ccdproc + photutils + astroscrappy, Pool)':<52} {theirs:>8.1f} "
          f"{theirs / n:>8.2f} {rss_theirs:>12.0f}")
    jobs = job_figures(args.work / "ccdflow" / "results" / "logs")
    if jobs["jobs"]:
        print(f"# ccdflow's {jobs['jobs']} jobs: {jobs['process_s']:.1f} process-s (starts "
              f"{jobs['starts_s']:.1f} s), spanning {jobs['span_s']:.1f} s "
              f"(span / process-s {jobs['packing']:.2f}); Snakemake outside them "
              f"{ours - jobs['span_s']:.1f} s")
    if (night / "truth" / "cosmics.csv").is_file():
        cr = cosmic_figures(night, args.work / "ccdflow" / "results")
        if cr["strong"]:
            print(f"# cosmic rays against the truth ({cr['frames']} frames): "
                  f"{cr['found']} of {cr['strong']} pixels above 5σ found "
                  f"({100 * cr['found'] / cr['strong']:.2f} %), {cr['false']} false pixels, "
                  f"{cr['on_star_cores']} on star cores")
    print(f"ratio ccdflow / reference: {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
