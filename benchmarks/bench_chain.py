"""Benchmark: seconds per stage of one frame's chain at 1k², 2k² and 4k², beside the references.

    python benchmarks/bench_chain.py [--sizes 1024 2048 4096]

For each size one raw science frame (and the few calibration frames its
masters need) is simulated; the masters are made once.  Then the frame goes
through ccdflow's per-frame chain, each step timed with its FITS write (and
the next step's read): calibration, background (iterative masking, SEP),
cosmic rays (``lacosmic``: astroscrappy's ``sepmed: false`` answer with the
frame's noise model), sources (detection reused from the background, shapes,
FWHM), photometry (every detection, three apertures, PSF fit, repair,
neighbours, optimal).  Then the real per-frame jobs in child processes:
``ccdflow.chain.reduce_batch`` (what rule ``frames_reduce`` runs) on the same frame,
then ``ccdflow.batch.photometry_batch`` (rule ``measure_photometry``) on its products:
each one's wall seconds for a frame (the second of two) and its peak RSS.
Beside each, the reference way of the same step: ``ccdproc``'s
``ccd_process``, photutils ``Background2D`` with a dilated source mask,
``astroscrappy.detect_cosmics`` with its defaults, photutils
``aperture_photometry`` of the same sources.

Targets (issue 13): the 4096² chain ≤ 2 × (FITS I/O + astroscrappy with its
defaults on the same frame); peak RSS of every per-frame job (chain, photometry) ≤ 1 GB
at 4k².
Single process, so per-frame figures compare core for core; each step is timed
on its second call (steady state inside a batch job).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn):
    """Seconds of the second call: the first pays one-time costs (lazy imports, the IERS
    table for BJD) that a batch job pays once for all its frames."""
    fn()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _chain_child(raw, work, detector, queue):
    # peak RSS from VmHWM: getrusage's ru_maxrss carries the parent's peak across spawn
    # (4.3 GB reported at 4k² before stop 19, the job's own 2.1 GB)
    from ccdflow.chain import reduce_batch

    item = {"raw": str(raw), **{k: str(work / f"m_{k}.fits") for k in ("bias", "dark", "flat",
                                                                      "bpm")}}
    out = {s: work / f"job_{s}" for s in ("calibrated", "background", "cosmics", "sources")}
    seconds = []
    for k in range(2):
        start = time.perf_counter()
        reduce_batch(frames=[{**item, "frame": f"f{k}"}], detector=detector,
                     steps=["bias", "dark", "flat"], subtract_dark=True, background={},
                     cosmics={}, detect={}, out_dirs=out)
        seconds.append(time.perf_counter() - start)
    from ccdflow.io import peak_rss_mb

    queue.put((seconds[-1], peak_rss_mb()))


def chain_job(raw, work, detector) -> tuple[float, float]:
    """Seconds of the second frame and peak RSS (MB) of the job function in a fresh process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_chain_child, args=(raw, work, detector, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def _photometry_child(work, queue):
    from ccdflow.batch import photometry_batch, product_path
    from ccdflow.io import peak_rss_mb
    from ccdflow.photometry import build_reference, write_reference

    out = {s: work / f"job_{s}" for s in ("calibrated", "background", "cosmics", "sources")}
    names = ["f0", "f1"]
    catalog, meta = build_reference(
        sources={f: product_path(out["sources"], f, "sources") for f in names},
        calibrated={f: product_path(out["calibrated"], f, "calibrated") for f in names})
    write_reference(work / "job_reference.ecsv", catalog, meta)
    # one batch of both frames, as the job runs them (until stop 35 one call per frame: the
    # runner's collection of the first frame's garbage cycles never ran, 1 320 MB peak)
    summary = photometry_batch(frames=names, calibrated_dir=out["calibrated"],
                               background_dir=out["background"], cosmics_dir=out["cosmics"],
                               sources_dir=out["sources"], reference=work / "job_reference.ecsv",
                               out_dir=work / "job_photometry", options={})
    queue.put((float(summary["seconds"].iloc[-1]), peak_rss_mb()))


def photometry_job(work) -> tuple[float, float]:
    """Seconds of the second frame and peak RSS (MB) of the photometry job function
    (what rule ``measure_photometry`` runs: the pipeline's defaults, optimal included)
    on the chain job's products, in a fresh process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_photometry_child, args=(work, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def run(size: int, work: Path) -> list[tuple[str, str, float]]:
    import astropy.units as u
    import astroscrappy
    import ccdproc
    from astropy.nddata import CCDData
    from astropy.stats import SigmaClip
    from photutils.aperture import CircularAperture, aperture_photometry
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import detect_sources, detect_threshold

    from ccdflow.background import background_for_product, write_background
    from ccdflow.calibrate import (
        calibrate_science,
        make_bad_pixel_mask,
        make_master_bias,
        make_master_dark,
        make_master_flat,
    )
    from ccdflow.config import load_profile
    from ccdflow.cosmics import detect_cosmic_rays, write_cosmics
    from ccdflow.photometry import frame_photometry, frame_sources, load_frame
    from ccdflow.products import read_product, write_product
    from ccdflow.simulate import NightSpec, load_truth, simulate_night

    root = Path(__file__).resolve().parents[1]
    detector = load_profile("demo", profiles_dir=root / "config" / "instruments",
                            schema=root / "workflow" / "schemas" / "instrument.schema.yaml"
                            )["detector"]
    night = work / f"night{size}"
    if not night.is_dir():
        simulate_night(out_dir=night, spec=NightSpec(
            nx=size, ny=size, n_bias=5, n_dark=3, n_flat=3, filters=("V",),
            science=(("V", 1),), seed=3))
    truth = load_truth(night)
    frames = truth.frames

    def files(kind):
        return [truth.raw_dir / f for f in frames.loc[frames["type"] == kind, "file"]]

    bias = make_master_bias(paths=files("bias"), detector=detector)
    dark = make_master_dark(paths=files("dark"), detector=detector, bias=bias)
    flat = make_master_flat(paths=files("flat"), detector=detector, bias=bias, dark=dark)
    bpm = make_bad_pixel_mask(shape=bias.data.shape, detector=detector,
                              masters=[bias, dark, flat])
    raw = files("science")[0]
    rows = []
    cal_path, bkg_path, cr_path = work / "cal.fits", work / "bkg.fits", work / "cr.fits"

    t, _ = timed(lambda: write_product(cal_path, calibrate_science(
        path=raw, detector=detector, bias=bias, dark=dark, flat=flat, bad_pixel_mask=bpm),
        unit="electron"))
    rows.append(("calibrate", "ccdflow calibrate_science + write", t))
    io, product = timed(lambda: read_product(cal_path))
    t_w, _ = timed(lambda: write_product(work / "copy.fits", product, unit="electron"))
    rows.append(("FITS I/O", "read + write one calibrated product", io + t_w))
    t, result = timed(lambda: background_for_product(product=read_product(cal_path)))
    t_w, _ = timed(lambda: write_background(bkg_path, result, inputs=[cal_path], params={}))
    rows.append(("background", "ccdflow iterative masking + write", t + t_w))
    t, cr = timed(lambda: detect_cosmic_rays(
        data=product.data, error=product.error, mask=product.mask,
        background=result.background, read_noise_e=product.header["RDNOISE"],
        saturation_e=product.header["SATURATE"]))
    t_w, _ = timed(lambda: write_cosmics(cr_path, cr, inputs=[], params={}))
    rows.append(("cosmic rays", "ccdflow lacosmic + write", t + t_w))
    t_r, frame = timed(lambda: load_frame(calibrated=cal_path, background=bkg_path,
                                          cosmics=cr_path))
    t, (sources, meta) = timed(lambda: frame_sources(
        data=frame.data, mask=frame.mask, background=frame.background, rms=frame.rms))
    rows.append(("sources", f"ccdflow detect + FWHM ({len(sources)} sources)", t + t_r))
    import pandas as pd

    catalog = pd.DataFrame({"source_id": sources["source_id"], "name": "",
                            "x_ref": sources["x"], "y_ref": sources["y"],
                            "flux_ref": sources["flux"], "snr_ref": sources["snr"],
                            "ra_deg": np.nan, "dec_deg": np.nan})
    t, _ = timed(lambda: frame_photometry(
        data=frame.data, error=frame.error, mask=frame.mask, header=frame.header,
        background=frame.background, background_rms=frame.rms, source_mask=frame.source_mask,
        sources=sources, meta=meta, catalog=catalog, reference_meta=meta))
    rows.append(("photometry", "ccdflow align + 3 apertures + PSF + optimal", t))
    for name, product_ in (("bias", bias), ("dark", dark), ("flat", flat)):
        write_product(work / f"m_{name}.fits", product_, unit="electron")
    from ccdflow.products import write_mask

    write_mask(work / "m_bpm.fits", bpm, inputs=[], step="bench")
    job_s, rss_mb = chain_job(raw, work, detector)
    rows.append(("chain job", f"reduce_batch, one frame (peak RSS {rss_mb:.0f} MB)", job_s))
    job_s, rss_mb = photometry_job(work)
    rows.append(("photometry job", f"photometry_batch, one frame (peak RSS {rss_mb:.0f} MB)",
                 job_s))

    # the references
    def ref_calibrate():
        ccd = CCDData.read(raw, unit="adu")
        mb = CCDData(bias.data, unit=u.electron)
        md = CCDData(dark.data, unit=u.electron / u.s)
        mf = CCDData(flat.data, unit=u.dimensionless_unscaled)
        out = ccdproc.ccd_process(ccd, oscan=ccd.header["BIASSEC"], oscan_median=True,
                                  trim=ccd.header["TRIMSEC"], error=True,
                                  gain=ccd.header["GAIN"] * u.electron / u.adu,
                                  readnoise=ccd.header["RDNOISE"] * u.electron,
                                  master_bias=mb, master_flat=mf, gain_corrected=True)
        out = out.subtract(md.multiply(ccd.header["EXPTIME"] * u.s))
        out.write(work / "ref.fits", overwrite=True)
        return out

    t, _ = timed(ref_calibrate)
    rows.append(("calibrate", "reference ccdproc.ccd_process + write", t))

    def ref_background():
        data = product.data
        threshold = detect_threshold(data, n_sigma=2.0, sigma_clip=SigmaClip(3.0))
        segm = detect_sources(data, threshold, n_pixels=10)
        mask = segm.make_source_mask(size=11)
        return Background2D(data, (64, 64), filter_size=(3, 3), sigma_clip=SigmaClip(3.0),
                            bkg_estimator=MedianBackground(), mask=mask)

    t, _ = timed(ref_background)
    rows.append(("background", "reference Background2D + source mask", t))
    t, _ = timed(lambda: astroscrappy.detect_cosmics(
        product.data, gain=1.0, readnoise=product.header["RDNOISE"],
        satlevel=product.header["SATURATE"]))
    rows.append(("cosmic rays", "reference astroscrappy defaults", t))
    positions = np.column_stack([sources["x"], sources["y"]])
    t, _ = timed(lambda: [aperture_photometry(product.data, CircularAperture(positions, r))
                          for r in (4.5, 6.0, 9.0)])
    rows.append(("photometry", "reference aperture_photometry, 3 radii", t))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ccdflow-chain")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"# {os.cpu_count()} cores; one process")
    print(f"{'size':>6} {'stage':<14} {'method':<46} {'s/frame':>8}")
    for size in args.sizes:
        rows = run(size, args.work)
        for stage, method, seconds in rows:
            print(f"{size:>6} {stage:<14} {method:<46} {seconds:>8.2f}")
        ours = {stage: s for stage, m, s in rows if m.startswith(("ccdflow", "read"))}
        chain = sum(ours.values()) - ours["FITS I/O"]
        reference = {m: s for stage, m, s in rows if stage == "cosmic rays"}
        floor = ours["FITS I/O"] + reference["reference astroscrappy defaults"]
        job = next(s for stage, m, s in rows if stage == "chain job")
        print(f"{size:>6} chain {chain:.2f} s (stages), {job:.2f} s (job) = "
              f"{chain / floor:.2f} / {job / floor:.2f} × (FITS I/O + astroscrappy defaults "
              f"{floor:.2f} s); target ≤ 2")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
