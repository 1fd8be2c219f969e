"""A simulated long-slit night with its truth (issue 15).

``simulate_longslit(out_dir=..., spec=LongslitSpec())`` writes ``out_dir/raw``
(bias frames, lamp flats, arc frames and science frames of one setup, FITS with an
overscan strip and MaxIm-style keywords plus ``OBSMODE = 'SPECTROSCOPY'``) and
``out_dir/truth``:

========================  =============================================================
``effpix.fits``           the true effective pixel x_eff of every pixel (the dispersion
                          coordinate of the arc's lines at the slit's reference row)
``slit_function.fits``    the slit illumination × pixel response (what the flats carry)
``sky_<frame>.fits``      the true sky of each science frame (e-, before the slit
                          function; calibrated frames hold it times the flat's norm)
``trace.csv``             per column: the trace's row and the object's flux (e-)
``frames.csv``            one row per raw frame; ``cosmics.csv`` every cosmic-ray pixel
``truth.json``            the warp's coefficients, arc and sky lines, geometry, gain
========================  =============================================================

Geometry (dispersion along x before any transpose): a wavelength's column at slit row
y is ``x = e + (t0 + t1·(e − xc)/nx)·(y − yc) + q·(y − yc)²`` — tilted lines whose
tilt changes along the dispersion, and curved.  ``e`` is the line's column at the
reference row ``yc``.  Sky and arc lines are Gaussians in ``e``; every pixel value is
the exact integral of the spectrum over the pixel's extent in ``e``.  The object is a
point source on a slightly tilted trace (FWHM 3 px across the slit).  With
``dispersion_axis='y'`` every frame is written transposed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from scipy.special import erf

from ..io import atomic_directory
from ..simulate import cosmic_ray_hits

__all__ = ["LongslitSpec", "effective_pixel", "simulate_longslit", "sky_counts"]


@dataclass(frozen=True)
class LongslitSpec:
    """What to simulate (defaults: a CI-sized night of 1024 × 256 px frames)."""

    nx: int = 1024  #: pixels along the dispersion
    ny: int = 256  #: pixels along the slit
    overscan_cols: int = 16
    n_bias: int = 5
    n_dark: int = 3  #: darks of the science exposure time (0: none)
    dark_current_e_per_s: float = 0.002
    n_flat: int = 5
    n_arc: int = 3
    n_science: int = 4
    science_exptime_s: float = 600.0
    gain_e_per_adu: float = 1.5
    read_noise_e: float = 5.0
    bias_level_adu: float = 500.0
    tilt: float = 0.02  #: t0: px of x per px of y at the centre of the dispersion
    tilt_gradient: float = 0.012  #: t1: change of the tilt across the dispersion
    curvature: float = 3e-5  #: q: px of x per px² of y
    n_arc_lines: int = 20
    n_sky_lines: int = 30
    line_sigma_px: float = 1.1
    sky_continuum_e: float = 250.0
    trace_row_offset: float = 12.0  #: the trace's row at the centre, from the slit centre
    trace_slope: float = 0.004  #: rows per column
    trace_fwhm_px: float = 3.0
    object_flux_e: float = 4000.0  #: per column, mean
    cosmic_rate_per_mpix_s: float = 0.4
    dispersion_axis: str = "x"
    night: str = "2026-03-15"
    seed: int = 7

    def __post_init__(self) -> None:
        if self.dispersion_axis not in ("x", "y"):
            raise ValueError(f"dispersion_axis must be 'x' or 'y', got {self.dispersion_axis!r}")
        if self.nx < 128 or self.ny < 64:
            raise ValueError(f"frames must be at least 128 x 64 px, got {self.nx} x {self.ny}")


def _geometry(spec: LongslitSpec):
    return (spec.nx - 1) / 2.0, (spec.ny - 1) / 2.0


def column_of(e: np.ndarray, y: np.ndarray, spec: LongslitSpec) -> np.ndarray:
    """Column of effective pixel ``e`` at row ``y`` (the forward warp)."""
    xc, yc = _geometry(spec)
    dy = y - yc
    return e + (spec.tilt + spec.tilt_gradient * (e - xc) / spec.nx) * dy + spec.curvature * dy**2


def effective_pixel(x: np.ndarray, y: np.ndarray, spec: LongslitSpec) -> np.ndarray:
    """The inverse warp: effective pixel of column ``x`` at row ``y`` (exact to 1e-12)."""
    xc, yc = _geometry(spec)
    dy = y - yc
    # x = e·(1 + t1·dy/nx) + (t0 − t1·xc/nx)·dy + q·dy²: linear in e
    slope = 1.0 + spec.tilt_gradient * dy / spec.nx
    offset = (spec.tilt - spec.tilt_gradient * xc / spec.nx) * dy + spec.curvature * dy**2
    return (x - offset) / slope


def _gauss_cdf(e, centre, sigma):
    return 0.5 * (1.0 + erf((e - centre) / (math.sqrt(2.0) * sigma)))


def sky_counts(e_lo: np.ndarray, e_hi: np.ndarray, *, continuum, lines, sigma) -> np.ndarray:
    """Counts between effective pixels e_lo and e_hi: the continuum (per unit e, a
    callable antiderivative) plus Gaussian lines ``[(centre, total counts), ...]``."""
    out = continuum(e_hi) - continuum(e_lo)
    for centre, total in lines:
        out = out + total * (_gauss_cdf(e_hi, centre, sigma) - _gauss_cdf(e_lo, centre, sigma))
    return out


def _lines(rng, n, nx, *, lo, hi, min_sep, max_draws=100_000):
    """``n`` line centres at least ``min_sep`` px apart in [15, nx - 16), and their total
    counts (log-uniform between 10**lo and 10**hi).  A spec with no room for them stops
    with an error instead of drawing forever."""
    centres = []
    draws = 0
    while len(centres) < n:
        draws += 1
        if draws > max_draws:
            raise ValueError(f"no room for {n} lines {min_sep} px apart on nx={nx} columns "
                             f"(placed {len(centres)}): raise nx or lower the number of lines")
        c = rng.uniform(15, nx - 16)
        if all(abs(c - o) > min_sep for o in centres):
            centres.append(c)
    return sorted(centres), 10 ** rng.uniform(lo, hi, n)


def _slit_function(rng, spec):
    """Slit illumination (vignetting along the slit) × pixel response."""
    y = np.arange(spec.ny)
    u = (y - (spec.ny - 1) / 2) / (spec.ny / 2)
    slit = 1.0 - 0.12 * u**2 + 0.02 * np.sin(2 * np.pi * y / 37.0)
    response = 1.0 + rng.normal(0, 0.01, (spec.ny, spec.nx))
    return slit[:, None] * response


def _pixel_edges_in_e(spec):
    y = np.arange(spec.ny, dtype=float)[:, None]
    x = np.arange(spec.nx, dtype=float)[None, :]
    return effective_pixel(x - 0.5, y, spec), effective_pixel(x + 0.5, y, spec)


def _scenes(rng: np.random.Generator, spec: LongslitSpec, *, xc: float, yc: float) -> dict:
    """What reaches the detector before the slit function: the arc lamp, the flat lamp,
    the night sky (continuum and lines, through the warp) and the object's trace."""
    e_lo, e_hi = _pixel_edges_in_e(spec)
    arc_c, arc_f = _lines(rng, spec.n_arc_lines, spec.nx, lo=3.6, hi=4.8, min_sep=18)
    sky_c, sky_f = _lines(rng, spec.n_sky_lines, spec.nx, lo=2.5, hi=4.3, min_sep=8)
    sigma = spec.line_sigma_px
    arc = sky_counts(e_lo, e_hi, continuum=lambda e: 0.0 * e,
                     lines=list(zip(arc_c, arc_f, strict=True)), sigma=sigma)
    lamp = 20000.0 * (0.6 + 0.4 * np.sin(np.pi * np.arange(spec.nx) / spec.nx))[None, :]

    def sky_cont(e):  # antiderivative of c·(1 + 0.3 sin(2πe/400))
        c = spec.sky_continuum_e
        return c * (e - 0.3 * 400 / (2 * np.pi) * np.cos(2 * np.pi * e / 400))

    sky = sky_counts(e_lo, e_hi, continuum=sky_cont,
                     lines=list(zip(sky_c, sky_f, strict=True)), sigma=sigma)
    columns = np.arange(spec.nx, dtype=float)
    trace_row = yc + spec.trace_row_offset + spec.trace_slope * (columns - xc)
    obj_flux = spec.object_flux_e * (1.0 + 0.5 * np.cos(2 * np.pi * columns / 700.0))
    s_t = spec.trace_fwhm_px / 2.3548
    rows = np.arange(spec.ny, dtype=float)[:, None]
    profile = (_gauss_cdf(rows + 0.5, trace_row[None, :], s_t)
               - _gauss_cdf(rows - 0.5, trace_row[None, :], s_t))
    return {"arc": arc, "lamp": lamp, "sky": sky, "obj": profile * obj_flux[None, :],
            "columns": columns, "trace_row": trace_row, "obj_flux": obj_flux,
            "arc_lines": (arc_c, arc_f), "sky_lines": (sky_c, sky_f)}


def _schedule(spec: LongslitSpec) -> list[tuple[str, float]]:
    """(kind, exposure) of every frame in the order taken."""
    return ([("bias", 0.0)] * spec.n_bias + [("dark", spec.science_exptime_s)] * spec.n_dark
            + [("flat", 5.0)] * spec.n_flat + [("arc", 10.0)] * spec.n_arc
            + [("science", spec.science_exptime_s)] * spec.n_science)


def _digitise(rng: np.random.Generator, spec: LongslitSpec, electrons: np.ndarray,
              cosmics: tuple[np.ndarray, np.ndarray, np.ndarray], pattern: np.ndarray
              ) -> np.ndarray:
    """Poisson noise, cosmic rays, gain, bias pattern, read noise and the overscan strip:
    the raw ADU with the dispersion along x."""
    cx, cy, ce = cosmics
    noisy = rng.poisson(np.clip(electrons, 0, None)).astype(float)
    if len(cx):
        np.add.at(noisy, (cy.astype(int), cx.astype(int)), ce)
    data = np.empty((spec.ny, spec.nx + spec.overscan_cols))
    data[:, :spec.nx] = noisy / spec.gain_e_per_adu
    data[:, spec.nx:] = 0.0
    data += spec.bias_level_adu + pattern + rng.normal(
        0, spec.read_noise_e / spec.gain_e_per_adu, data.shape)
    return np.clip(np.round(data), 0, 65535).astype(np.uint16)


def _longslit_header(spec: LongslitSpec, kind: str, exptime: float, t: pd.Timestamp
                     ) -> fits.Header:
    """Raw header of a frame of ``kind`` started at ``t``: type, grating, exposure, gain,
    read noise, dispersion axis and the overscan / trim sections in the raw orientation."""
    header = fits.Header()
    header["IMAGETYP"] = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field",
                          "arc": "Arc Lamp", "science": "Light Frame"}[kind]
    header["OBSMODE"] = ("SPECTROSCOPY", "long-slit spectroscopy")
    header["INSTRUME"] = "ccdflow-sim-spectrograph"
    header["OBJECT"] = {"bias": "bias", "dark": "dark", "flat": "lamp flat", "arc": "HeNeAr",
                        "science": "SN-SIM"}[kind]
    header["FILTER"] = ("G600" if kind not in ("bias", "dark") else "", "grating")
    header["GRATING"] = "G600"
    header["EXPTIME"] = exptime
    header["DATE-OBS"] = t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23]
    header["GAIN"] = (spec.gain_e_per_adu, "[e-/ADU]")
    header["RDNOISE"] = (spec.read_noise_e, "[e-]")
    header["SATURATE"] = 65535
    header["DISPAXIS"] = (1 if spec.dispersion_axis == "x" else 2, "dispersion axis")
    if spec.dispersion_axis == "x":
        header["BIASSEC"] = f"[{spec.nx + 3}:{spec.nx + spec.overscan_cols},1:{spec.ny}]"
        header["TRIMSEC"] = f"[1:{spec.nx},1:{spec.ny}]"
    else:
        header["BIASSEC"] = f"[1:{spec.ny},{spec.nx + 3}:{spec.nx + spec.overscan_cols}]"
        header["TRIMSEC"] = f"[1:{spec.ny},1:{spec.nx}]"
    return header


def simulate_longslit(*, out_dir: str | Path, spec: LongslitSpec | None = None) -> Path:
    """Write a simulated long-slit night and its truth into ``out_dir`` (must not exist).

    The night is built in a temporary directory beside ``out_dir`` and moved into place
    at the end: a failed or interrupted run leaves nothing behind."""
    spec = spec or LongslitSpec()
    root = Path(out_dir)
    if root.exists():
        raise FileExistsError(f"{root} exists; the simulator writes a new directory")
    with atomic_directory(root) as tmp:
        _simulate_longslit_into(tmp, spec)
    return root


def _simulate_longslit_into(root: Path, spec: LongslitSpec) -> None:
    raw_dir, truth_dir = root / "raw", root / "truth"
    raw_dir.mkdir()
    truth_dir.mkdir()
    rng = np.random.default_rng(spec.seed)
    xc, yc = _geometry(spec)
    slit = _slit_function(rng, spec)
    scenes = _scenes(rng, spec, xc=xc, yc=yc)
    frames, cosmic_rows = [], []
    counter: dict[str, int] = {}
    t = pd.Timestamp(f"{spec.night}T20:00:00")
    pattern = 2.0 * np.sin(np.arange(spec.nx + spec.overscan_cols) / 50.0)[None, :]
    for kind, exptime in _schedule(spec):
        counter[kind] = counter.get(kind, 0) + 1
        stem = {"bias": "bias", "dark": f"dark_{exptime:.0f}s", "flat": "flat_G600",
                "arc": "arc_G600", "science": "SN-SIM_G600"}[kind] + f"_{counter[kind]:03d}"
        electrons = np.zeros((spec.ny, spec.nx))
        if kind == "flat":
            electrons = scenes["lamp"] * slit * (1 - 0.05 * (counter[kind] - 1))
        elif kind == "arc":
            electrons = scenes["arc"] * slit
        elif kind == "science":
            electrons = (scenes["sky"] + scenes["obj"]) * slit
        electrons = electrons + spec.dark_current_e_per_s * exptime
        cosmics = (np.zeros(0),) * 3
        if kind == "science":
            cosmics = cosmic_ray_hits(rng, spec, exptime)
            cx, cy, ce = cosmics
            cosmic_rows.append(pd.DataFrame({"frame": stem, "x": cx, "y": cy, "electrons": ce}))
        adu = _digitise(rng, spec, electrons, cosmics, pattern)
        header = _longslit_header(spec, kind, exptime, t)
        path = raw_dir / f"{stem}.fits"
        fits.PrimaryHDU(adu if spec.dispersion_axis == "x" else adu.T.copy(),
                        header=header).writeto(path)
        path.chmod(0o444)
        frames.append({"frame": stem, "file": path.name, "type": kind, "exptime_s": exptime,
                       "date_obs": header["DATE-OBS"]})
        if kind == "science":
            image = scenes["sky"] if spec.dispersion_axis == "x" else scenes["sky"].T
            fits.PrimaryHDU(image.astype(np.float32)).writeto(truth_dir / f"sky_{stem}.fits")
        t = t + pd.Timedelta(seconds=exptime + 60)
    _write_longslit_truth(truth_dir, spec, slit=slit, scenes=scenes, frames=frames,
                          cosmic_rows=cosmic_rows, xc=xc, yc=yc)


def _write_longslit_truth(truth_dir: Path, spec: LongslitSpec, *, slit: np.ndarray,
                          scenes: dict, frames: list[dict], cosmic_rows: list[pd.DataFrame],
                          xc: float, yc: float) -> None:
    """Effective pixel map, slit function, frames, trace, cosmic rays and truth.json, in
    the raw frames' orientation."""
    def write(name, image):
        image = image if spec.dispersion_axis == "x" else image.T
        fits.PrimaryHDU(np.asarray(image, np.float32)).writeto(truth_dir / name)

    y = np.arange(spec.ny, dtype=float)[:, None]
    x = np.arange(spec.nx, dtype=float)[None, :]
    effpix = effective_pixel(x, y, spec)
    fits.PrimaryHDU(effpix if spec.dispersion_axis == "x" else effpix.T).writeto(
        truth_dir / "effpix.fits")
    write("slit_function.fits", slit)
    pd.DataFrame(frames).to_csv(truth_dir / "frames.csv", index=False)
    pd.DataFrame({"column": scenes["columns"], "row": scenes["trace_row"],
                  "flux_e": scenes["obj_flux"]}).to_csv(truth_dir / "trace.csv", index=False)
    cos = pd.concat(cosmic_rows) if cosmic_rows else pd.DataFrame(
        columns=["frame", "x", "y", "electrons"])
    if spec.dispersion_axis == "y":
        cos = cos.rename(columns={"x": "y", "y": "x"})
    cos.to_csv(truth_dir / "cosmics.csv", index=False)
    (arc_c, arc_f), (sky_c, sky_f) = scenes["arc_lines"], scenes["sky_lines"]
    meta = {"spec": asdict(spec), "reference_row": yc, "centre_column": xc,
            "arc_lines": [[float(c), float(f)] for c, f in zip(arc_c, arc_f, strict=True)],
            "sky_lines": [[float(c), float(f)] for c, f in zip(sky_c, sky_f, strict=True)],
            "line_sigma_px": spec.line_sigma_px, "trace_fwhm_px": spec.trace_fwhm_px}
    (truth_dir / "truth.json").write_text(json.dumps(meta, indent=2))
