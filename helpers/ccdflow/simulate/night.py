"""Raw frames and truth of a whole night: the schedule, headers, digitisation and
:func:`simulate_night`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from .. import __version__
from ..io import atomic_directory
from .scene import (
    _airmass,
    _bias_pattern,
    _dark_rate,
    _flats,
    _line_defects,
    _sexagesimal,
    _star_list,
    _wcs,
    cosmic_ray_hits,
    psf_image,
    render_gaussian_stars,
    render_psf_stars,
    sky_model,
    transit_factor,
)
from .spec import FIELD, PIXEL_SCALE_ARCSEC, SITE, NightSpec


def _schedule(spec: NightSpec):
    """Frames of the night in time order: (kind, filter, exptime, start time)."""
    from astropy.time import Time, TimeDelta

    night = Time(f"{spec.night}T00:00:00", scale="utc")
    rows = []

    def block(kind, filt, exptime, start_hours_after_0h_next_day, count, step_s):
        start = night + TimeDelta((24 + start_hours_after_0h_next_day) * 3600.0, format="sec")
        for i in range(count):
            rows.append((kind, filt, exptime, start + TimeDelta(i * step_s, format="sec")))

    block("bias", "", 0.0, 0.6, spec.n_bias, 30.0)
    for k, filt in enumerate(spec.filters):  # evening twilight, one filter after the other
        block("flat", filt, None, 1.75 + 0.25 * k, spec.n_flat, 45.0)
    cadence = spec.science_exptime_s + spec.overhead_s
    t_hours = 3.0
    for filt, count in spec.science:
        first = len(rows)
        block("science", filt, spec.science_exptime_s, t_hours, count, cadence)
        if spec.exptime_change is not None:  # the same cadence, another exposure time
            at, exptime = spec.exptime_change
            rows[first:] = [(k, f, exptime if i >= at * count else e, t)
                            for i, (k, f, e, t) in enumerate(rows[first:])]
        t_hours += count * cadence / 3600.0 + 0.05
    # darks before dawn (05:40 local, 12:40 UTC): same night by the local-noon rule
    block("dark", "", spec.dark_exptime_s, 12.67, spec.n_dark, spec.dark_exptime_s + 20.0)
    return rows


def _header(spec: NightSpec, kind: str, filt: str, exptime: float, start, airmass: float | None,
            dx: float, dy: float) -> fits.Header:
    h = fits.Header()
    imagetyp = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field",
                "science": "Light Frame"}[kind]
    nx_raw = spec.nx + spec.overscan_cols
    h["IMAGETYP"] = (imagetyp, "Type of image")
    h["OBJECT"] = {"bias": "Bias", "dark": "Dark", "flat": f"Sky flat {filt}",
                   "science": FIELD["name"]}[kind]
    h["EXPTIME"] = (float(exptime), "[s] Exposure time")
    h["EXPOSURE"] = (float(exptime), "[s] Exposure time")
    if spec.local_utc_offset_hours is None:
        h["DATE-OBS"] = (start.isot, "UTC start of exposure")
    else:  # local time with its offset, the UTC start as a time of day (robotic telescopes)
        from astropy.time import TimeDelta

        off = spec.local_utc_offset_hours
        local = (start + TimeDelta(off * 3600.0, format="sec")).isot
        sign, hours = ("-" if off < 0 else "+"), abs(off)
        h["DATE-OBS"] = (f"{local}{sign}{int(hours):02d}{round(60 * (hours % 1)):02d}",
                         "local start, UTC offset")
        h["UT-OBS"] = (start.isot.split("T")[1], "UTC start (time of day)")
    h["MJD-OBS"] = (round(start.mjd, 8), "MJD (UTC) at start of exposure")
    if filt:
        h["FILTER"] = (filt, "Filter used")
    h["GAIN"] = (spec.gain_e_per_adu, "[e-/ADU] Detector gain")
    h["RDNOISE"] = (spec.read_noise_e, "[e-] Read noise")
    h["SATURATE"] = (spec.adc_max, "[ADU] Saturation level")
    h["BIASSEC"] = (f"[{spec.nx + 5}:{nx_raw},1:{spec.ny}]", "Overscan section")
    h["TRIMSEC"] = (f"[1:{spec.nx},1:{spec.ny}]", "Section of useful data")
    h["DATASEC"] = (f"[1:{spec.nx},1:{spec.ny}]", "Light-sensitive section")
    h["CCDSUM"] = ("1 1", "Binning")
    h["XBINNING"] = 1
    h["YBINNING"] = 1
    h["READOUTM"] = ("Normal", "Readout mode")
    if spec.bayer_pattern:
        h["BAYERPAT"] = (spec.bayer_pattern, "Colour filter array, from pixel (1, 1)")
    h["CCD-TEMP"] = (-20.0, "[C] Detector temperature")
    h["INSTRUME"] = ("ccdflow-sim CCD", "Simulated camera")
    h["TELESCOP"] = ("Demo 0.6m", "Telescope")
    h["OBSERVAT"] = SITE["name"]
    h["SITELAT"] = (SITE["lat_deg"], "[deg] Site latitude")
    if spec.header_longitude == "west":  # as MicroObservatory writes it
        h["LONGITUD"] = (-SITE["lon_deg"], "[deg] Site longitude, west positive")
    else:
        h["SITELONG"] = (SITE["lon_deg"], "[deg] Site longitude, east positive")
    h["SITEELEV"] = (SITE["height_m"], "[m] Site elevation")
    if kind == "science":
        ra, dec = _sexagesimal(FIELD["ra_deg"], FIELD["dec_deg"])
        h["RA"], h["DEC"] = ra, dec
        h["OBJCTRA"], h["OBJCTDEC"] = ra.replace(":", " "), dec.replace(":", " ")
        h["EQUINOX"] = 2000.0
        h["AIRMASS"] = (round(float(airmass), 4), "Airmass at start")
        if spec.wcs:
            h.update(_wcs(spec, dx, dy).to_header())
    h["SIMULATE"] = (True, "Frame made by ccdflow.simulate")
    h["SIMSEED"] = (spec.seed, "Simulator seed")
    h["SIMVERS"] = (__version__, "ccdflow version of the simulator")
    return h


def _to_adu(rng: np.random.Generator, spec: NightSpec, electrons: np.ndarray, level: float,
            drift: np.ndarray, pattern: np.ndarray, *, defects: Sequence[Mapping] = (),
            defect_rng: np.random.Generator | None = None, exptime: float = 0.0) -> np.ndarray:
    """Add Poisson + read noise to collected charge and digitise with the overscan strip."""
    noisy = rng.poisson(np.clip(electrons, 0, None)).astype(np.float64)
    if defects:
        noisy = _apply_line_defects(noisy, defects, defect_rng, exptime)
    noisy += rng.normal(0.0, spec.read_noise_e, size=noisy.shape)
    data = level + drift[:, np.newaxis] + pattern + noisy / spec.gain_e_per_adu
    over = level + drift[:, np.newaxis] + rng.normal(
        0.0, spec.read_noise_e / spec.gain_e_per_adu, size=(spec.ny, spec.overscan_cols))
    raw = np.hstack([data, over])
    return np.clip(np.round(raw), 0, spec.adc_max).astype(np.uint16)


#: a one-shot colour camera's response to a Sun-like star through R, G and B
_CFA_RESPONSE = {"R": 0.55, "G": 1.0, "B": 0.35}


def _bayer_response(pattern: str, shape: tuple[int, int]) -> np.ndarray:
    """The colour filter array's relative response, ``pattern`` ('RGGB', ...) read
    row by row from pixel (0, 0)."""
    cell = np.array([_CFA_RESPONSE[c] for c in pattern.upper()]).reshape(2, 2)
    reps = (shape[0] // 2 + 1, shape[1] // 2 + 1)
    return np.tile(cell, reps)[:shape[0], :shape[1]]


def _apply_line_defects(collected: np.ndarray, defects: Sequence[Mapping],
                        rng: np.random.Generator, exptime: float) -> np.ndarray:
    """The collected charge with the column defects: a hot segment's dark charge
    (Poisson) added, a dead column's charge thinned to its response (binomial: a
    Poisson thinned is the Poisson of the thinned mean).  Drawn after, and apart from,
    the frame's own noise, so that a night with defects differs from the same night
    without them at the defects' pixels alone."""
    out = collected.copy()
    for d in defects:
        x, rows = d["x"], slice(d["y0"], d["y1"] + 1)
        if d["kind"] == "hot":
            out[rows, x] += rng.poisson(d["rate_e_per_s"] * exptime, size=out[rows, x].shape)
        else:
            out[rows, x] = rng.binomial(out[rows, x].astype(np.int64), d["response"])
    return out


def simulate_night(*, out_dir: str | Path, spec: NightSpec | None = None) -> Path:
    """Write a simulated night to ``out_dir/raw`` and its truth to ``out_dir/truth``.

    The whole night is built in a temporary directory beside ``out_dir`` and
    moved into place at the end, so an interrupted run leaves nothing behind.
    Raw files are made read-only, as an archive's would be.

    Parameters
    ----------
    out_dir : path
        Destination; must not exist yet (or be empty).
    spec : NightSpec, optional
        What to simulate; ``NightSpec()`` by default.

    Returns
    -------
    Path
        ``out_dir``.
    """
    spec = spec or NightSpec()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"out_dir {out_dir} exists and is not empty")
    with atomic_directory(out_dir) as tmp:
        _simulate_into(tmp, spec)
    return out_dir


def _transit_truth(schedule, spec: NightSpec) -> dict:
    """The target's transit: centred on the first filter's block, 45 % of it long."""
    first_filter = spec.science[0][0]
    first_block = [t.mjd for kind, f, _, t in schedule if kind == "science" and f == first_filter]
    span = first_block[-1] - first_block[0] if len(first_block) > 1 else 0.05
    return {"t0_mjd": float(np.mean([first_block[0], first_block[-1]])),
            "duration_d": 0.45 * span, "ingress_d": 0.15 * 0.45 * span,
            "depth": spec.transit_depth}


def _frame_stem(kind: str, filt: str, exptime: float, number: int) -> str:
    """File stem of a frame: ``bias_001``, ``dark_300s_001``, ``flat_V_001``, ``<field>_V_001``."""
    if kind == "dark":
        prefix = f"dark_{int(exptime)}s"
    else:
        prefix = {"bias": "bias", "flat": f"flat_{filt}",
                  "science": f"{FIELD['name']}_{filt}"}[kind]
    return f"{prefix}_{number:03d}"


def _flat_electrons(rng: np.random.Generator, spec: NightSpec, flat: np.ndarray,
                    number: int) -> tuple[np.ndarray, float, float]:
    """Twilight flat ``number`` of its filter: electrons, exposure and sky level.  The sky
    fades and the exposure grows to keep the level near ``flat_level_adu``; a few stars
    (20 per megapixel) shine through, as on real sky flats."""
    target_adu = spec.flat_level_adu * (1.0 - 0.06 * (number - 1))
    exptime = float(round(1.0 + 1.2 * (number - 1), 2))
    rate = target_adu * spec.gain_e_per_adu / exptime
    n_fs = max(1, round(20 * spec.nx * spec.ny / 2**20))
    fstars = render_gaussian_stars(
        shape=flat.shape, x=rng.uniform(0, spec.nx, n_fs), y=rng.uniform(0, spec.ny, n_fs),
        flux=10 ** rng.uniform(3.5, 4.7, n_fs), fwhm=3.0)
    return flat * (rate * exptime + fstars), exptime, rate * exptime


def _science_fwhm(rng: np.random.Generator, spec: NightSpec, u: float) -> float:
    """Seeing at the fraction ``u`` of the science span: a slow wave plus jitter, times
    the focus drift (``fwhm_growth``, linear in ``u``)."""
    focus = 1.0 + (spec.fwhm_growth - 1.0) * u
    if spec.fwhm_px is None:
        return focus * float(np.clip(2.8 + 0.5 * math.sin(2 * math.pi * 1.3 * u + 0.4)
                                     + rng.normal(0, 0.08), 2.0, 5.0))
    return focus * float(np.clip(spec.fwhm_px * (1 + 0.08 * math.sin(2 * math.pi * u))
                                 + rng.normal(0, 0.03), 0.8 * spec.fwhm_px,
                                 1.5 * spec.fwhm_px))


def _science_electrons(rng: np.random.Generator, spec: NightSpec, *, flat: np.ndarray,
                       stars: pd.DataFrame, start, exptime: float, u: float, airmass: float,
                       transit: Mapping) -> tuple[np.ndarray, dict, np.ndarray, np.ndarray,
                                                  np.ndarray]:
    """One science frame's electrons (sky and stars through the flat) at the fraction
    ``u`` of the science span: seeing, drift, optional flip, thin clouds, extinction and
    the target's transit.  Returns the electrons, the frame's truth, and the stars' x, y
    and collected electrons."""
    fwhm = _science_fwhm(rng, spec, u)
    dx = spec.drift_px[0] * u + rng.normal(0, 0.15)
    dy = spec.drift_px[1] * u + rng.normal(0, 0.15)
    if spec.dither_px > 0:  # drawn only when asked: other nights keep their frames
        dx, dy = dx + rng.normal(0, spec.dither_px), dy + rng.normal(0, spec.dither_px)
    t_mid = start.mjd + exptime / 2 / 86400.0
    fac = np.ones(len(stars))
    fac[stars["is_target"].to_numpy()] = transit_factor(
        np.array([t_mid]), t0=transit["t0_mjd"], duration_d=transit["duration_d"],
        ingress_d=transit["ingress_d"], depth=transit["depth"])[0]
    transparency = 1.0
    if spec.cloud_fraction and rng.random() < spec.cloud_fraction:
        transparency = float(rng.uniform(0.7, 0.9))
    extinction = 10 ** (-0.4 * spec.extinction_mag_per_airmass * airmass)
    flux = stars["flux_e_per_s"].to_numpy() * exptime * fac * transparency * extinction
    flipped = spec.flip_at is not None and u > spec.flip_at
    if spec.field_rotation_deg:  # about the frame centre, with the flip, then the drift
        angle = math.radians(spec.field_rotation_deg * u + (180.0 if flipped else 0.0))
        cx, cy = (spec.nx - 1) / 2, (spec.ny - 1) / 2
        x0, y0 = stars["x0"].to_numpy() - cx, stars["y0"].to_numpy() - cy
        xs = cx + math.cos(angle) * x0 - math.sin(angle) * y0 + dx
        ys = cy + math.sin(angle) * x0 + math.cos(angle) * y0 + dy
    elif flipped:  # 180° about the frame centre, then the drift
        xs = (spec.nx - 1) - stars["x0"].to_numpy() + dx
        ys = (spec.ny - 1) - stars["y0"].to_numpy() + dy
    else:
        xs, ys = stars["x0"].to_numpy() + dx, stars["y0"].to_numpy() + dy
    sky_level = spec.sky_rate_e_per_s * exptime * (1.0 + 0.6 * u)
    gx, gy = 0.08 + 0.02 * u, -0.04
    sky = sky_model(level_e=sky_level, gx=gx, gy=gy, shape=flat.shape)
    if spec.defocus_radius_px > 0 or spec.trail_px[0] > 0:
        psf, oversample = psf_image(fwhm=fwhm, defocus_radius_px=spec.defocus_radius_px,
                                    trail_px=spec.trail_px[0],
                                    trail_angle_deg=spec.trail_px[1])
        light = render_psf_stars(shape=flat.shape, x=xs, y=ys, flux=flux, psf=psf,
                                 oversample=oversample)
    else:
        light = render_gaussian_stars(shape=flat.shape, x=xs, y=ys, flux=flux, fwhm=fwhm)
    electrons = flat * (sky + light)
    info = {"transparency": transparency, "flipped": flipped, "extinction": extinction,
            "sky_level_e": sky_level, "sky_gx": gx, "sky_gy": gy, "fwhm_px": fwhm,
            "dx_px": dx, "dy_px": dy, "airmass": airmass}
    return electrons, info, xs, ys, flux


def _simulate_into(root: Path, spec: NightSpec) -> None:
    from astropy.time import Time

    raw_dir, truth_dir = root / "raw", root / "truth"
    raw_dir.mkdir()
    truth_dir.mkdir()
    seeds = np.random.SeedSequence(spec.seed)
    static_rng = np.random.default_rng(seeds.spawn(1)[0])
    pattern = _bias_pattern(static_rng, spec.ny, spec.nx)
    dark = _dark_rate(static_rng, spec)
    flats = _flats(static_rng, spec)
    if spec.bayer_pattern:  # a one-shot colour camera: the filter array in the response
        flats = {f: flat * _bayer_response(spec.bayer_pattern, flat.shape)
                 for f, flat in flats.items()}
    stars = _star_list(static_rng, spec)
    # the images are rendered without the column defects, which are applied to each
    # frame's drawn charge (_apply_line_defects); the truth holds them
    true_dark, true_flats, defects = _line_defects(spec, dark, flats)

    schedule = _schedule(spec)
    frame_rngs = [np.random.default_rng(s) for s in seeds.spawn(len(schedule) + 1)[1:]]
    sci_times = Time([t for kind, _, _, t in schedule if kind == "science"])
    airmass = _airmass(sci_times, spec) if len(sci_times) else []
    transit = _transit_truth(schedule, spec)
    sci_first, sci_last = sci_times.mjd.min(), sci_times.mjd.max()

    frames, star_rows, cr_rows, drifts = [], [], [], []
    counters: dict[str, int] = {}
    i_sci = 0
    for i, (kind, filt, exptime, start) in enumerate(schedule):
        rng = frame_rngs[i]
        key = f"{kind}_{filt}" if filt else kind
        counters[key] = counters.get(key, 0) + 1
        stem = _frame_stem(kind, filt, exptime, counters[key])
        level = spec.bias_level_adu + 2.0 * math.sin(i / 7.0) + rng.normal(0, 0.5)
        rows = np.arange(spec.ny)
        drift = (1.5 * np.sin(2 * np.pi * rows / rng.uniform(250, 600) + rng.uniform(0, 6.3))
                 + rng.normal(0.0, 0.4, size=spec.ny))
        info = {"frame": stem, "file": f"{stem}.fits", "type": kind, "filter": filt,
                "bias_level_adu": level, "sky_level_e": 0.0, "sky_gx": 0.0, "sky_gy": 0.0,
                "fwhm_px": np.nan, "dx_px": 0.0, "dy_px": 0.0, "airmass": np.nan}
        electrons = np.zeros((spec.ny, spec.nx))
        am, dx, dy = None, 0.0, 0.0
        if kind == "flat":
            electrons, exptime, info["sky_level_e"] = _flat_electrons(
                rng, spec, flats[filt], counters[key])
        elif kind == "science":
            am = float(airmass[i_sci])
            i_sci += 1
            electrons, truth, xs, ys, flux = _science_electrons(
                rng, spec, flat=flats[filt], stars=stars, start=start, exptime=exptime,
                u=(start.mjd - sci_first) / max(sci_last - sci_first, 1e-9), airmass=am,
                transit=transit)
            info.update(truth)
            dx, dy = truth["dx_px"], truth["dy_px"]
            star_rows.append(pd.DataFrame({"frame": stem, "star_id": stars["star_id"],
                                           "x": xs, "y": ys, "flux_e": flux,
                                           "fwhm_px": truth["fwhm_px"]}))
        electrons = electrons + dark * exptime
        if exptime > 0:
            cx, cy, ce = cosmic_ray_hits(rng, spec, exptime)
            np.add.at(electrons, (cy, cx), ce)
            cr_rows.append(pd.DataFrame({"frame": stem, "x": cx, "y": cy, "electrons": ce}))
        raw = _to_adu(rng, spec, electrons, level, drift, pattern, defects=defects,
                      defect_rng=np.random.default_rng([spec.seed, 0x11E, i]),
                      exptime=exptime)
        header = _header(spec, kind, filt, exptime, start, am, dx, dy)
        path = raw_dir / info["file"]
        fits.PrimaryHDU(data=raw, header=header).writeto(path)
        path.chmod(0o444)
        info.update(exptime_s=float(exptime), date_obs=start.isot,
                    mjd_mid=start.mjd + exptime / 2 / 86400.0,
                    n_saturated=int((raw[:, : spec.nx] == spec.adc_max).sum()))
        frames.append(info)
        drifts.append(drift)
    _write_truth(truth_dir, spec, pattern=pattern, dark=true_dark, flats=true_flats,
                 drifts=drifts,
                 frames=frames, stars=stars, star_rows=star_rows, cr_rows=cr_rows,
                 transit=transit, defects=defects)


def _write_truth(truth_dir: Path, spec: NightSpec, *, pattern: np.ndarray, dark: np.ndarray,
                 flats: Mapping[str, np.ndarray], drifts: list[np.ndarray], frames: list[dict],
                 stars: pd.DataFrame, star_rows: list[pd.DataFrame],
                 cr_rows: list[pd.DataFrame], transit: Mapping,
                 defects: Sequence[Mapping] = ()) -> None:
    """The truth beside the raw frames: images, per-frame and per-star tables, truth.json."""
    def write_image(name: str, data: np.ndarray, unit: str) -> None:
        fits.PrimaryHDU(data=data.astype(np.float32),
                        header=fits.Header([("BUNIT", unit)])).writeto(truth_dir / name)

    write_image("bias_pattern_adu.fits", pattern, "adu")
    write_image("dark_rate_e_per_s.fits", dark, "electron/s")
    for filt, flat in flats.items():
        write_image(f"flat_{filt}.fits", flat, "")
    write_image("row_drift_adu.fits", np.array(drifts), "adu")
    pd.DataFrame(frames).to_csv(truth_dir / "frames.csv", index=False)
    stars.to_csv(truth_dir / "stars.csv", index=False)
    pd.concat(star_rows).to_csv(truth_dir / "star_frames.csv", index=False)
    pd.concat(cr_rows).to_csv(truth_dir / "cosmics.csv", index=False)
    meta = {
        "spec": {**asdict(spec), "filters": list(spec.filters),
                 "science": [list(s) for s in spec.science]},
        "gain_e_per_adu": spec.gain_e_per_adu, "read_noise_e": spec.read_noise_e,
        "saturate_adu": spec.adc_max, "trimsec": f"[1:{spec.nx},1:{spec.ny}]",
        "biassec": f"[{spec.nx + 5}:{spec.nx + spec.overscan_cols},1:{spec.ny}]",
        "site": SITE, "field": FIELD, "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC,
        "transit": {**transit, "star_id": 0}, "line_defects": list(defects),
        "ccdflow_version": __version__,
        "pixel_convention": "0-based (x, y) of the trimmed area; pixel i spans i-0.5..i+0.5",
    }
    (truth_dir / "truth.json").write_text(json.dumps(meta, indent=2))
