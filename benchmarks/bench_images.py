"""Benchmark: background and cosmic-ray seconds per frame at 2k² and 4k².

    python benchmarks/bench_images.py [--sizes 2048 4096] [--skip-cosmics]

A synthetic calibrated frame (sky 1000 e- with a gradient, 260 stars per Mpx,
read noise 7.5 e-, cosmic rays) is processed by: ccdflow's background
(iterative source masking, defaults), a single-pass photutils Background2D
with the same box, and sep.Background (the fast reference); then ccdflow's
cosmic-ray step (astroscrappy, sepmed=False) and astroscrappy with sepmed=True.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def frame(size: int, rng: np.random.Generator):
    from ccdflow.simulate import render_gaussian_stars

    _, xx = np.indices((size, size))
    sky = 1000.0 * (1 + 0.08 * (2 * xx / size - 1))
    n = int(260 * size * size / 2**20)
    mag = rng.uniform(13, 19.5, n)
    stars = render_gaussian_stars(shape=(size, size), x=rng.uniform(0, size, n),
                                  y=rng.uniform(0, size, n),
                                  flux=60 * 10 ** (-0.4 * (mag - 22.5)), fwhm=3.0)
    data = rng.poisson(sky + stars).astype(np.float32) + rng.normal(0, 7.5, sky.shape)
    hits = rng.random(sky.shape) < 2e-4
    data[hits] += rng.uniform(500, 5000, hits.sum())
    return data.astype(np.float32), np.sqrt(np.abs(data) + 7.5**2).astype(np.float32), sky


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--skip-cosmics", action="store_true")
    args = parser.parse_args()
    import astroscrappy
    import sep
    from astropy.stats import SigmaClip
    from photutils.background import Background2D, MedianBackground

    from ccdflow.background import estimate_background
    from ccdflow.cosmics import detect_cosmic_rays

    rng = np.random.default_rng(7)
    rows = []
    for size in args.sizes:
        data, err, sky = frame(size, rng)
        sigma = float(np.sqrt(1000 + 7.5**2))
        t_it, res = timed(lambda d=data: estimate_background(data=d))
        t_one, one = timed(lambda d=data: Background2D(
            d, 64, filter_size=3, sigma_clip=SigmaClip(3.0), bkg_estimator=MedianBackground(),
            exclude_percentile=50).background)
        t_sep, sepb = timed(lambda d=data: sep.Background(d.astype(np.float64), bw=64, bh=64,
                                                          fw=3, fh=3).back())
        for name, t, bkg in (("ccdflow background (iterative)", t_it, res.background),
                             ("Background2D single pass", t_one, one),
                             ("sep.Background", t_sep, sepb)):
            rms = float(np.sqrt(np.mean((bkg - sky) ** 2)) / sigma)
            rows.append((size, name, t, f"{rms:.3f} σ"))
        if not args.skip_cosmics:
            t_cr, _ = timed(lambda d=data, e=err, b=res.background: detect_cosmic_rays(
                data=d, error=e, mask=None, background=b, read_noise_e=7.5, saturation_e=1e5))
            rows.append((size, "ccdflow cosmics (sepmed=False)", t_cr, ""))
            t_cr2, _ = timed(lambda d=data: astroscrappy.detect_cosmics(
                d, readnoise=7.5, satlevel=1e5, gain=1.0, sepmed=True)[0])
            rows.append((size, "astroscrappy sepmed=True", t_cr2, ""))
    print(f"{os.cpu_count()} cores")
    print(f"{'size':>6}  {'step':<34}{'s/frame':>9}  {'RMS(bkg − truth)':>18}")
    for size, name, t, extra in rows:
        print(f"{size:>6}  {name:<34}{t:>9.2f}  {extra:>18}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
