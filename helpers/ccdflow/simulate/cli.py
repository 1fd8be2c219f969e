"""``ccdflow-simulate``: the simulator on the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace

from .night import simulate_night
from .spec import NightSpec


def _science_arg(text: str) -> tuple[str, int]:
    filt, _, count = text.partition(":")
    if not filt or not count.isdigit():
        raise argparse.ArgumentTypeError(f"--science expects FILTER:COUNT, got {text!r}")
    return filt, int(count)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``ccdflow-simulate``."""
    p = argparse.ArgumentParser(
        prog="ccdflow-simulate",
        description="Write a simulated CCD night (raw frames + truth) for demos, tests and "
                    "benchmarks.")
    p.add_argument("out_dir", help="destination directory (raw/ and truth/ are created)")
    d = NightSpec()
    p.add_argument("--size", type=int, default=d.nx, help="data area side in pixels")
    p.add_argument("--n-bias", type=int, default=d.n_bias)
    p.add_argument("--n-dark", type=int, default=d.n_dark)
    p.add_argument("--n-flat", type=int, default=d.n_flat, help="flats per filter")
    p.add_argument("--filters", default=",".join(d.filters), help="comma-separated filters")
    p.add_argument("--science", type=_science_arg, action="append",
                   help="FILTER:COUNT science series, repeatable (default V:24 R:4)")
    p.add_argument("--n-stars", type=int, default=None)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--night", default=d.night, help="observing night, YYYY-MM-DD")
    p.add_argument("--realworld", type=int, metavar="N_FRAMES", default=None,
                   help="a small robotic telescope's night of N_FRAMES 650x500 12-bit frames "
                        "(NightSpec.realworld: no calibrations, hot pixels and columns, a dead "
                        "column, drift, clouds, "
                        "local DATE-OBS + UT-OBS, no WCS); --size and the counts are ignored")
    p.add_argument("--flip", action="store_true", help="with --realworld: a 180° meridian "
                   "flip half-way through the night")
    p.add_argument("--defocus", type=float, default=0.0, metavar="RADIUS_PX",
                   help="defocused 'donut' stars of this outer radius (px)")
    p.add_argument("--trail", type=float, nargs=2, default=(0.0, 0.0),
                   metavar=("LENGTH_PX", "ANGLE_DEG"), help="trailed stars (wind shake, "
                   "a tracking error): trail length and angle from +x")
    p.add_argument("--fwhm-growth", type=float, default=1.0, metavar="FACTOR",
                   help="focus drift: the FWHM at the night's end over its start")
    p.add_argument("--dither", type=float, default=0.0, metavar="SIGMA_PX",
                   help="random pointing offsets per science frame (σ px, each axis)")
    p.add_argument("--field-rotation", type=float, default=0.0, metavar="DEG",
                   help="an alt-az mount's field rotation by the night's end")
    p.add_argument("--exptime-change", type=float, nargs=2, default=None,
                   metavar=("FRACTION", "EXPTIME_S"), help="from this fraction of each "
                   "science series on, exposures of EXPTIME_S")
    a = p.parse_args(argv)
    try:  # a spec that cannot be simulated is one usage line, not a traceback
        if a.realworld is not None:
            spec = NightSpec.realworld(n_science=a.realworld, flip=a.flip, seed=a.seed)
        else:
            spec = NightSpec(nx=a.size, ny=a.size, n_bias=a.n_bias, n_dark=a.n_dark,
                             n_flat=a.n_flat, filters=tuple(a.filters.split(",")),
                             science=tuple(a.science) if a.science else d.science,
                             n_stars=a.n_stars, seed=a.seed, night=a.night)
        spec = replace(spec, defocus_radius_px=a.defocus, trail_px=tuple(a.trail),
                       fwhm_growth=a.fwhm_growth, dither_px=a.dither,
                       field_rotation_deg=a.field_rotation,
                       exptime_change=tuple(a.exptime_change) if a.exptime_change else None)
    except ValueError as exc:
        p.error(str(exc))
    out = simulate_night(out_dir=a.out_dir, spec=spec)
    kind = "real-world night" if a.realworld is not None else "night"
    print(f"simulated {kind} written to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
