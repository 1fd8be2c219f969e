"""Detection + alignment per frame: ccdflow beside astroalign, in the same run.

A reference frame and a frame drifted by (37.3, -21.8) px and rotated 180° (a meridian
flip), both with stars (FWHM 2.5 px, 260 per Mpx), sky noise and 0.1 % hot pixels.

* ccdflow: ``detect_stars`` (segmentation, deblending, the DAOFIND shape test) on the
  frame, then ``align_frame`` against the reference's detections (vote, then asterism);
* astroalign: ``find_transform(frame, reference)`` on the images (its own SEP detection
  and triangle matching).

Both transforms are scored on the true one (largest error over the frame).

    python benchmarks/bench_align.py --sizes 1024 4096 --repeat 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def _frames(size: int, seed: int = 1):
    from ccdflow.simulate import render_gaussian_stars

    rng = np.random.default_rng(seed)
    n = int(260 * size * size / 2**20)
    x, y = rng.uniform(10, size - 10, n), rng.uniform(10, size - 10, n)
    flux = 10 ** rng.uniform(3.0, 5.5, n)
    c = (size - 1) / 2
    matrix = np.array([[-1.0, 0.0, 2 * c + 37.3], [0.0, -1.0, 2 * c - 21.8], [0, 0, 1]])

    def image(xs, ys):
        img = rng.normal(200.0, 15.0, (size, size))
        img += render_gaussian_stars(shape=(size, size), x=xs, y=ys, flux=flux, fwhm=2.5)
        hot = rng.integers(0, size, (2, size * size // 1000))
        img[hot[1], hot[0]] += 10 ** rng.uniform(2.5, 4, hot.shape[1])
        return img

    ref = image(x, y)
    moved = np.column_stack([x, y]) @ matrix[:2, :2].T + matrix[:2, 2]
    return ref, image(moved[:, 0], moved[:, 1]), matrix


def _error(apply, matrix, size):
    g = np.linspace(0, size - 1, 9)
    grid = np.array(np.meshgrid(g, g)).reshape(2, -1).T
    truth = grid @ matrix[:2, :2].T + matrix[:2, 2]
    return float(np.max(np.hypot(*(apply(grid) - truth).T)))


def run(size: int, repeat: int) -> list[dict]:
    import astroalign

    from ccdflow.photometry import align_frame, detect_stars

    ref, frame, matrix = _frames(size)
    bkg, rms = np.full(ref.shape, 200.0), np.full(ref.shape, 15.0)
    ref_det = detect_stars(data=ref, background=bkg, rms=rms)
    rows = []
    ours, theirs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        det = detect_stars(data=frame, background=bkg, rms=rms)
        t1 = time.perf_counter()
        found = align_frame(reference=ref_det, sources=det, tolerance_px=2.5)
        t2 = time.perf_counter()
        ours.append((t1 - t0, t2 - t1))
        t3 = time.perf_counter()
        transform, _ = astroalign.find_transform(ref, frame)
        theirs.append(time.perf_counter() - t3)
    det_s, align_s = np.median([o[0] for o in ours]), np.median([o[1] for o in ours])
    rows.append({"size": size, "method": f"ccdflow detect ({len(det)} stars) + align "
                 f"({found.method}, {found.n_matched} matched)",
                 "detect_s": round(det_s, 3), "align_s": round(align_s, 3),
                 "total_s": round(det_s + align_s, 3),
                 "max_error_px": round(_error(found.apply, matrix, size), 4)})
    lib = transform.params

    def apply_lib(xy):
        return xy @ lib[:2, :2].T + lib[:2, 2]

    rows.append({"size": size, "method": "astroalign.find_transform(images)",
                 "detect_s": np.nan, "align_s": np.nan,
                 "total_s": round(float(np.median(theirs)), 3),
                 "max_error_px": round(_error(apply_lib, matrix, size), 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = [r for size in args.sizes for r in run(size, args.repeat)]
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
