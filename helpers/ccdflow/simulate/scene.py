"""What the camera sees: sky, stars, bias structure, dark current, flats, cosmic rays,
the transit and the airmass."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.special import expit, ndtr

from .spec import FIELD, PIXEL_SCALE_ARCSEC, SITE, NightSpec


def sky_model(*, level_e: float, gx: float, gy: float, shape: tuple[int, int]) -> np.ndarray:
    """Moonlight sky: a plane through ``level_e`` at the centre.

    ``gx``/``gy`` are the fractional changes from the centre to the right/top edge.
    """
    ny, nx = shape
    x = (np.arange(nx) / (nx - 1) - 0.5) * 2.0
    y = (np.arange(ny) / (ny - 1) - 0.5) * 2.0
    return level_e * (1.0 + gx * x[np.newaxis, :] + gy * y[:, np.newaxis])


def render_gaussian_stars(
    *, shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray, fwhm: float
) -> np.ndarray:
    """Image of circular Gaussian stars integrated exactly over each pixel.

    Each star contributes ``flux`` in total (minus what falls off the frame);
    the stamp extends to 6 sigma (10 sigma for stars above 1e6 e-).
    """
    image = np.zeros(shape, dtype=np.float64)
    ny, nx = shape
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    for xc, yc, f in zip(x, y, flux, strict=True):
        half = math.ceil((10.0 if f > 1e6 else 6.0) * sigma) + 1
        x0, x1 = max(round(xc) - half, 0), min(round(xc) + half + 1, nx)
        y0, y1 = max(round(yc) - half, 0), min(round(yc) + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        ex = ndtr((np.arange(x0, x1 + 1) - 0.5 - xc) / sigma)
        ey = ndtr((np.arange(y0, y1 + 1) - 0.5 - yc) / sigma)
        image[y0:y1, x0:x1] += f * np.outer(np.diff(ey), np.diff(ex))
    return image


def psf_image(*, fwhm: float, defocus_radius_px: float = 0.0, obstruction: float = 0.4,
              trail_px: float = 0.0, trail_angle_deg: float = 0.0,
              oversample: int = 5) -> tuple[np.ndarray, int]:
    """A non-Gaussian PSF on a grid ``oversample`` times finer than the pixels, summing
    to 1: the seeing's Gaussian (``fwhm``) convolved with a defocused pupil (an annulus
    of outer radius ``defocus_radius_px`` and inner radius ``obstruction`` × that: the
    "donut" of a defocused telescope with a secondary mirror) and a trail of
    ``trail_px`` along ``trail_angle_deg`` (counter-clockwise from +x; wind shake or a
    tracking error).  Returns the image and its oversampling."""
    from scipy.ndimage import gaussian_filter

    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    half = math.ceil(defocus_radius_px + trail_px / 2 + 5 * sigma) + 1
    n = (2 * half + 1) * oversample
    c = (n - 1) / 2.0
    u = (np.arange(n) - c) / oversample
    xx, yy = np.meshgrid(u, u)
    kernel = np.zeros((n, n))
    if defocus_radius_px > 0:
        r = np.hypot(xx, yy)
        kernel[(r <= defocus_radius_px) & (r >= obstruction * defocus_radius_px)] = 1.0
    else:
        kernel[n // 2, n // 2] = 1.0
    if trail_px > 0:  # smear along the trail: shifted copies every 1/oversample px
        steps = max(round(trail_px * oversample), 1)
        ang = math.radians(trail_angle_deg)
        smeared = np.zeros_like(kernel)
        for k in np.linspace(-trail_px / 2, trail_px / 2, steps + 1):
            smeared += np.roll(kernel, (round(k * math.sin(ang) * oversample),
                                        round(k * math.cos(ang) * oversample)), axis=(0, 1))
        kernel = smeared
    image = gaussian_filter(kernel, sigma * oversample, mode="constant")
    return image / image.sum(), oversample


def render_psf_stars(*, shape: tuple[int, int], x: np.ndarray, y: np.ndarray,
                     flux: np.ndarray, psf: np.ndarray, oversample: int) -> np.ndarray:
    """Image of stars of the PSF ``psf`` (from :func:`psf_image`), each pixel the sum of
    the fine grid's cells it covers (bilinear at the star's sub-pixel position)."""
    from scipy.ndimage import map_coordinates

    image = np.zeros(shape, dtype=np.float64)
    ny, nx = shape
    n = psf.shape[0]
    c = (n - 1) / 2.0
    half = n // (2 * oversample) + 1
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    for xc, yc, f in zip(x, y, flux, strict=True):
        x0, x1 = max(round(xc) - half, 0), min(round(xc) + half + 1, nx)
        y0, y1 = max(round(yc) - half, 0), min(round(yc) + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        px = (np.arange(x0, x1)[:, None] + sub[None, :] - xc).ravel() * oversample + c
        py = (np.arange(y0, y1)[:, None] + sub[None, :] - yc).ravel() * oversample + c
        gy, gx = np.meshgrid(py, px, indexing="ij")
        vals = map_coordinates(psf, [gy.ravel(), gx.ravel()], order=1, mode="constant")
        vals = vals.reshape(y1 - y0, oversample, x1 - x0, oversample).sum(axis=(1, 3))
        image[y0:y1, x0:x1] += f * vals
    return image


def _bias_pattern(rng: np.random.Generator, ny: int, nx: int) -> np.ndarray:
    x = np.arange(nx)[np.newaxis, :]
    y = np.arange(ny)[:, np.newaxis]
    ramp = 3.0 * np.exp(-x / 60.0)  # amplifier start-up ramp near the readout corner
    columns = rng.normal(0.0, 0.8, size=(1, nx))  # column-to-column offsets
    wave = 0.6 * np.sin(2 * np.pi * x / 173.0) * np.cos(2 * np.pi * y / 311.0)
    fixed = rng.normal(0.0, 0.3, size=(ny, nx))  # pixel-level fixed pattern
    return (ramp + columns + wave + fixed).astype(np.float64)


def _dark_rate(rng: np.random.Generator, spec: NightSpec) -> np.ndarray:
    rate = np.full((spec.ny, spec.nx), spec.dark_rate_e_per_s)
    n_hot = round(spec.hot_pixel_fraction * spec.nx * spec.ny)
    idx = rng.choice(spec.nx * spec.ny, size=n_hot, replace=False)
    rate.flat[idx] = 10 ** rng.uniform(-0.5, 2.0, size=n_hot)  # 0.3 to 100 e-/s
    return rate


def _line_defects(spec: NightSpec, dark: np.ndarray, flats: Mapping[str, np.ndarray]
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict]]:
    """Hot column segments (dark current from a charge trap at ``y0`` to the last row;
    the first one the whole column) and dead columns (2 % response), drawn from their
    own random stream so that a spec without them draws everything else as before.
    Returns the true dark rate and flats with them, and the defects (0-based,
    inclusive rows) that each frame applies to its drawn charge."""
    n_hot, n_dead = spec.hot_columns, spec.dead_columns
    if not n_hot and not n_dead:
        return dark, dict(flats), []
    rng = np.random.default_rng([spec.seed, 0x11E])
    xs = rng.choice(np.arange(10, spec.nx - 10), size=n_hot + n_dead, replace=False)
    dark, flats, truth = dark.copy(), {k: v.copy() for k, v in flats.items()}, []
    for i, x in enumerate(xs[:n_hot]):
        y0 = 0 if i == 0 else int(rng.integers(spec.ny // 8, spec.ny // 2))
        rate = float(rng.uniform(2.0, 6.0))
        dark[y0:, x] += rate
        truth.append({"kind": "hot", "x": int(x), "y0": y0, "y1": spec.ny - 1,
                      "rate_e_per_s": rate})
    for x in xs[n_hot:]:
        for flat in flats.values():
            flat[:, x] *= 0.02
        truth.append({"kind": "dead", "x": int(x), "y0": 0, "y1": spec.ny - 1,
                      "response": 0.02})
    return dark, flats, truth


def _donut(ny: int, nx: int, xc: float, yc: float, radius: float, depth: float) -> np.ndarray:
    """Out-of-focus dust shadow: an annulus with soft edges (1 - depth inside)."""
    r = np.hypot(np.arange(nx)[np.newaxis, :] - xc, np.arange(ny)[:, np.newaxis] - yc)
    edge = 1.5
    outer = expit((radius - r) / edge)
    inner = expit((0.45 * radius - r) / edge)
    return 1.0 - depth * (outer - 0.6 * inner)


def _flats(rng: np.random.Generator, spec: NightSpec) -> dict[str, np.ndarray]:
    ny, nx = spec.ny, spec.nx
    x = (np.arange(nx)[np.newaxis, :] - 0.52 * nx) / (0.5 * nx)
    y = (np.arange(ny)[:, np.newaxis] - 0.47 * ny) / (0.5 * ny)
    k = spec.flat_structure
    vignetting = 1.0 - 0.10 * k * (x**2 + y**2)
    prnu = 1.0 + rng.normal(0.0, 0.01 * k, size=(ny, nx))

    def motes(n: int) -> np.ndarray:
        out = np.ones((ny, nx))
        for _ in range(n):
            out *= _donut(ny, nx, rng.uniform(0.1, 0.9) * nx, rng.uniform(0.1, 0.9) * ny,
                          rng.uniform(10, 25), k * rng.uniform(0.03, 0.06))
        return out

    window_dust = motes(3)  # on the dewar window: seen in every filter
    flats = {}
    for filt in spec.filters:
        colour = 1.0 + rng.normal(0.0, 0.002 * k, size=(ny, nx))  # filter-dependent PRNU
        flat = vignetting * prnu * colour * window_dust * motes(1)
        flats[filt] = flat / np.median(flat)
    return flats


def cosmic_ray_hits(
    rng: np.random.Generator, spec, exptime_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosmic-ray hits: short straight tracks; returns (x, y, electrons) per pixel.

    ``spec`` is any simulator spec with ``nx``, ``ny`` and ``cosmic_rate_per_mpix_s``
    (the imaging night's and the long-slit night's)."""
    n = rng.poisson(spec.cosmic_rate_per_mpix_s * exptime_s * spec.nx * spec.ny / 1e6)
    xs, ys, es = [], [], []
    for _ in range(n):
        length = rng.geometric(0.45)  # 1 to ~6 pixels
        angle = rng.uniform(0, np.pi)
        x0, y0 = rng.uniform(0, spec.nx - 1), rng.uniform(0, spec.ny - 1)
        t = np.linspace(0, length - 1, 3 * length)
        px = np.clip(np.round(x0 + t * np.cos(angle)), 0, spec.nx - 1).astype(int)
        py = np.clip(np.round(y0 + t * np.sin(angle)), 0, spec.ny - 1).astype(int)
        pix = np.unique(py * spec.nx + px)
        xs.append(pix % spec.nx)
        ys.append(pix // spec.nx)
        es.append(rng.lognormal(np.log(1500.0), 0.5, size=pix.size))
    if not xs:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    x, y, e = np.concatenate(xs), np.concatenate(ys), np.concatenate(es)
    # merge overlapping tracks so every pixel appears once
    pix = y * spec.nx + x
    upix, inverse = np.unique(pix, return_inverse=True)
    return upix % spec.nx, upix // spec.nx, np.bincount(inverse, weights=e)


def _star_list(rng: np.random.Generator, spec: NightSpec) -> pd.DataFrame:
    n = spec.stars
    # magnitudes with p(m) ∝ 10^(slope·m) between the limits (more faint stars) ...
    (lo, hi), a = spec.mag_range, spec.mag_slope * np.log(10)
    u = rng.uniform(size=n)
    mag = (np.log(np.exp(a * lo) + u * (np.exp(a * hi) - np.exp(a * lo))) / a if a > 0
           else lo + u * (hi - lo))
    # ... plus a few bright ones that saturate the detector
    mag[:3] = rng.uniform(10.3, 11.3, size=3)
    margin = 24
    x = rng.uniform(margin, spec.nx - margin, size=n)
    y = rng.uniform(margin, spec.ny - margin, size=n)
    target_xy = _target_xy(spec)
    keep = np.hypot(x - target_xy[0], y - target_xy[1]) > 15  # isolated target
    x, y, mag = x[keep], y[keep], mag[keep]
    x = np.concatenate([[target_xy[0]], x])
    y = np.concatenate([[target_xy[1]], y])
    mag = np.concatenate([[spec.target_mag], mag])
    stars = pd.DataFrame({
        "star_id": np.arange(len(x)), "x0": x, "y0": y, "mag": mag,
        "flux_e_per_s": 10 ** (-0.4 * (mag - spec.zero_point_mag)),
        "is_target": np.arange(len(x)) == 0,
    })
    wcs = _wcs(spec, 0.0, 0.0)
    ra, dec = wcs.all_pix2world(stars["x0"], stars["y0"], 0)
    stars["ra_deg"], stars["dec_deg"] = ra, dec
    return stars


def _target_xy(spec: NightSpec) -> tuple[float, float]:
    """Pixel (0-based) of the transit target, which sits at the field's RA/Dec."""
    return 0.5 * spec.nx + 13.3, 0.5 * spec.ny - 7.6


def _wcs(spec: NightSpec, dx: float, dy: float):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [FIELD["ra_deg"], FIELD["dec_deg"]]
    tx, ty = _target_xy(spec)  # the target is at FIELD's RA/Dec whatever the frame size
    w.wcs.crpix = [tx + 1 + dx, ty + 1 + dy]
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    w.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    w.wcs.radesys = "ICRS"
    return w


def transit_factor(t_mjd: np.ndarray, *, t0: float, duration_d: float, ingress_d: float,
                   depth: float) -> np.ndarray:
    """Trapezoidal transit: 1 outside, 1 - depth at the flat bottom."""
    dt = np.abs(np.asarray(t_mjd, dtype=float) - t0)
    half = duration_d / 2
    frac = np.clip((half - dt) / ingress_d, 0.0, 1.0)
    return 1.0 - depth * frac


def _airmass(times, spec: NightSpec) -> np.ndarray:
    from astropy import units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.utils import iers

    iers.conf.auto_download = False  # no network: use the bundled tables
    loc = EarthLocation(lat=SITE["lat_deg"] * u.deg, lon=SITE["lon_deg"] * u.deg,
                        height=SITE["height_m"] * u.m)
    coord = SkyCoord(FIELD["ra_deg"] * u.deg, FIELD["dec_deg"] * u.deg)
    alt = coord.transform_to(AltAz(obstime=times, location=loc)).alt
    return 1.0 / np.sin(alt.radian)


def _sexagesimal(ra_deg: float, dec_deg: float) -> tuple[str, str]:
    from astropy import units as u
    from astropy.coordinates import Angle

    ra = Angle(ra_deg, u.deg).to_string(unit=u.hourangle, sep=":", precision=2, pad=True)
    dec = Angle(dec_deg, u.deg).to_string(unit=u.deg, sep=":", precision=1, alwayssign=True,
                                          pad=True)
    return ra, dec


