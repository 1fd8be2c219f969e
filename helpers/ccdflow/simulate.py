"""Simulated observing night with truth: the demo data and the test oracle.

``simulate_night`` writes raw frames as a real camera would (uint16 FITS with
BZERO=32768, an overscan strip, IRAF/MaxIm header keywords) and, beside them,
the truth every later stage is tested against.

Conventions
-----------
* Pixel coordinates in the truth tables are 0-based ``(x, y)`` of the trimmed
  data area, pixel ``i`` covering ``[i - 0.5, i + 0.5]`` (the photutils
  convention).  FITS sections in headers are 1-based and inclusive.
* Electrons (``_e``) are charge collected in a pixel *before* the flat field,
  i.e. what a perfectly calibrated frame should show.  ``flux_e`` of a star is
  the total charge over the whole plane for that exposure.
* The raw frame is, in ADU::

      raw = round(level + drift[y] + pattern[y, x]
                  + (flat * (sky + stars) + dark_rate * t + cosmics + noise_e) / gain)

  clipped to ``[0, 65535]``, where ``noise_e`` is Poisson noise of the
  collected charge plus Gaussian read noise.  The overscan columns carry
  ``level + drift[y]`` and read noise only.

Truth layout (``<out>/truth``)
------------------------------
``truth.json``               scalars: gain, read noise, geometry, site, field, transit
``bias_pattern_adu.fits``    fixed 2-D bias structure over the data area (ADU)
``dark_rate_e_per_s.fits``   dark current per pixel
``flat_<filter>.fits``       true flat per filter (median 1)
``row_drift_adu.fits``       per frame (row of the image) bias drift per detector row
``frames.csv``               one row per raw frame (type, times, sky, seeing, drift)
``stars.csv``                star list with base positions, sky coordinates, rates
``star_frames.csv``          per science frame and star: position and electrons
``cosmics.csv``              every cosmic-ray pixel: frame, x, y, electrons
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits
from scipy.special import expit, ndtr

from . import __version__

__all__ = ["NightSpec", "Truth", "cosmic_ray_hits", "load_truth", "main", "simulate_night",
           "sky_model"]

ADC_MAX = 65535
ZERO_POINT_MAG = 22.5  # magnitude giving 1 e-/s
SITE = {"name": "Demo Observatory", "lat_deg": 31.9583, "lon_deg": -111.5967, "height_m": 2096.0}
FIELD = {"name": "WASP-SIM", "ra_deg": 157.5, "dec_deg": 20.1}
PIXEL_SCALE_ARCSEC = 0.62


@dataclass(frozen=True)
class NightSpec:
    """What to simulate.  Defaults give a CI-sized night (~40 frames of 1k²).

    Parameters
    ----------
    nx, ny : int
        Size of the light-sensitive (trimmed) area in pixels.
    overscan_cols : int
        Serial overscan columns appended on the right of each row.
    n_bias, n_dark, n_flat : int
        Number of bias frames, dark frames and flats *per filter*.
    science : sequence of (filter, count)
        Science time series per filter, taken one after the other.
    adc_max : int
        Saturation of the digitiser (4095 for a 12-bit camera).
    fwhm_px : float, optional
        Mean seeing (px); default 2.8 with a slow ±0.5 variation.
    drift_px : (float, float)
        Tracking drift (x, y) reached by the last science frame, growing with time.
    flip_at : float, optional
        Fraction of the science series after which the field is rotated by 180°
        (a German mount's meridian flip).
    cloud_fraction : float
        Fraction of science frames seen through thin clouds (transparency 0.7-0.9).
    extinction_mag_per_airmass : float
        Atmospheric extinction applied to every star (an airmass trend).
    local_utc_offset_hours : float, optional
        Write DATE-OBS in local time with this offset (``...-0700``) and the UTC
        start as a time of day in UT-OBS, as some robotic telescopes do.
    wcs : bool
        Write a TAN WCS in science headers.
    flat_structure : float
        Scale of the pixel response's structure (vignetting 10 %, dust donuts 3-6 %,
        PRNU 1 % at 1); a night without flats keeps all of it in its photometry.
    mag_range, mag_slope : (float, float), float
        Field stars' magnitudes: p(m) ∝ 10^(mag_slope·m) between the two limits (plus
        three bright stars of 10.3-11.3 mag that saturate the demo camera).

    :meth:`realworld` gives the night of a small robotic telescope (issue 12).
    """

    nx: int = 1024
    ny: int = 1024
    overscan_cols: int = 32
    n_bias: int = 9
    n_dark: int = 5
    dark_exptime_s: float = 300.0
    filters: tuple[str, ...] = ("V", "R")
    n_flat: int = 7
    flat_level_adu: float = 28000.0
    science: tuple[tuple[str, int], ...] = (("V", 24), ("R", 4))
    science_exptime_s: float = 60.0
    overhead_s: float = 40.0
    n_stars: int | None = None  # default: 260 per megapixel
    gain_e_per_adu: float = 1.6
    read_noise_e: float = 7.5
    bias_level_adu: float = 1000.0
    dark_rate_e_per_s: float = 0.01
    hot_pixel_fraction: float = 5e-4
    sky_rate_e_per_s: float = 12.0
    cosmic_rate_per_mpix_s: float = 0.5
    transit_depth: float = 0.01
    night: str = "2026-03-14"
    seed: int = 42
    adc_max: int = 65535
    zero_point_mag: float = 22.5
    target_mag: float = 13.6
    fwhm_px: float | None = None
    drift_px: tuple[float, float] = (4.0, -2.5)
    flip_at: float | None = None
    cloud_fraction: float = 0.0
    extinction_mag_per_airmass: float = 0.0
    local_utc_offset_hours: float | None = None
    wcs: bool = True
    flat_structure: float = 1.0
    mag_range: tuple[float, float] = (13.0, 19.5)
    mag_slope: float = 0.3

    @classmethod
    def realworld(cls, *, flip: bool = False, n_science: int = 140, nx: int = 650,
                  ny: int = 500, n_stars: int | None = None, seed: int = 2017) -> NightSpec:
        """A time-series night of a small robotic telescope, as users bring them.

        12-bit data (saturation 4095 ADU), no bias, dark or flat frames, ~1,000 hot
        pixels (0.3 % of 650×500), FWHM 1.8 px, a tracking drift growing to 60 px over
        ``n_science`` 60-s frames (7 h at 180 s cadence), optionally a 180° meridian
        flip half-way, thin clouds on 8 % of the frames (30 % transparency drops), an
        airmass trend (0.15 mag/airmass), a 2 % transit, no WCS, DATE-OBS in local
        time with its UTC offset (−07:00) and the UTC start in UT-OBS.  Its pixel
        response has 0.3 of the demo camera's structure (vignetting 3 %, dust donuts
        1-2 %, PRNU 0.3 %): without flats all of it stays in the photometry, and the
        demo's full structure moves a drifting star's flux by several per cent.
        """
        return cls(nx=nx, ny=ny, overscan_cols=8, n_bias=0, n_dark=0, n_flat=0,
                   filters=("R",), science=(("R", n_science),), science_exptime_s=60.0,
                   overhead_s=120.0, n_stars=n_stars if n_stars is not None else 250,
                   gain_e_per_adu=1.0, read_noise_e=10.0, bias_level_adu=100.0,
                   dark_rate_e_per_s=0.02, hot_pixel_fraction=1000 / (650 * 500),
                   sky_rate_e_per_s=5.0, transit_depth=0.02, night="2018-03-01", seed=seed,
                   adc_max=4095, zero_point_mag=21.0, target_mag=15.5, fwhm_px=1.8,
                   drift_px=(60.0, -25.0),
                   flip_at=0.5 if flip else None, cloud_fraction=0.08,
                   extinction_mag_per_airmass=0.15, local_utc_offset_hours=-7.0, wcs=False,
                   flat_structure=0.3)

    def __post_init__(self) -> None:
        for name in ("nx", "ny"):
            if getattr(self, name) < 64:
                raise ValueError(f"{name} must be >= 64 pixels, got {getattr(self, name)}")
        if self.overscan_cols < 8:
            raise ValueError(f"overscan_cols must be >= 8, got {self.overscan_cols}")
        if self.n_bias < 0 or self.n_dark < 0 or self.n_flat < 0:
            raise ValueError("n_bias, n_dark and n_flat must be >= 0")
        for filt, count in self.science:
            if filt not in self.filters and self.n_flat:
                raise ValueError(f"science filter {filt!r} has no flats; filters={self.filters}")
            if count < 1:
                raise ValueError(f"science count for {filt!r} must be >= 1, got {count}")

    @property
    def stars(self) -> int:
        return self.n_stars if self.n_stars is not None else int(260 * self.nx * self.ny / 2**20)


@dataclass
class Truth:
    """The truth written next to a simulated night (see the module docstring)."""

    meta: dict
    bias_pattern_adu: np.ndarray
    dark_rate_e_per_s: np.ndarray
    flats: dict[str, np.ndarray]
    row_drift_adu: np.ndarray
    frames: pd.DataFrame
    stars: pd.DataFrame
    star_frames: pd.DataFrame
    cosmics: pd.DataFrame
    raw_dir: Path = field(default_factory=Path)

    def sky(self, frame: str) -> np.ndarray:
        """True sky in electrons (before the flat) for ``frame``."""
        row = self.frames.set_index("frame").loc[frame]
        return sky_model(
            level_e=row["sky_level_e"], gx=row["sky_gx"], gy=row["sky_gy"],
            shape=self.bias_pattern_adu.shape,
        )

    def cosmic_mask(self, frame: str) -> np.ndarray:
        """Boolean mask of the pixels hit by a cosmic ray in ``frame``."""
        mask = np.zeros(self.bias_pattern_adu.shape, dtype=bool)
        hits = self.cosmics[self.cosmics["frame"] == frame]
        mask[hits["y"].to_numpy(), hits["x"].to_numpy()] = True
        return mask


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
        block("science", filt, spec.science_exptime_s, t_hours, count, cadence)
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
    h["CCD-TEMP"] = (-20.0, "[C] Detector temperature")
    h["INSTRUME"] = ("ccdflow-sim CCD", "Simulated camera")
    h["TELESCOP"] = ("Demo 0.6m", "Telescope")
    h["OBSERVAT"] = SITE["name"]
    h["SITELAT"] = (SITE["lat_deg"], "[deg] Site latitude")
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
            drift: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Add Poisson + read noise to collected charge and digitise with the overscan strip."""
    noisy = rng.poisson(np.clip(electrons, 0, None)).astype(np.float64)
    noisy += rng.normal(0.0, spec.read_noise_e, size=noisy.shape)
    data = level + drift[:, np.newaxis] + pattern + noisy / spec.gain_e_per_adu
    over = level + drift[:, np.newaxis] + rng.normal(
        0.0, spec.read_noise_e / spec.gain_e_per_adu, size=(spec.ny, spec.overscan_cols))
    raw = np.hstack([data, over])
    return np.clip(np.round(raw), 0, spec.adc_max).astype(np.uint16)


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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _simulate_into(tmp, spec)
        tmp.chmod(0o755)  # mkdtemp made it private
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


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
    stars = _star_list(static_rng, spec)

    schedule = _schedule(spec)
    frame_rngs = [np.random.default_rng(s) for s in seeds.spawn(len(schedule) + 1)[1:]]
    sci_times = Time([t for kind, _, _, t in schedule if kind == "science"])
    airmass = _airmass(sci_times, spec) if len(sci_times) else []
    first_filter = spec.science[0][0]
    first_block = [t.mjd for kind, f, _, t in schedule if kind == "science" and f == first_filter]
    span = first_block[-1] - first_block[0] if len(first_block) > 1 else 0.05
    transit = {"t0_mjd": float(np.mean([first_block[0], first_block[-1]])),
               "duration_d": 0.45 * span, "ingress_d": 0.15 * 0.45 * span,
               "depth": spec.transit_depth}
    sci_first, sci_last = sci_times.mjd.min(), sci_times.mjd.max()

    frames, star_rows, cr_rows, drifts = [], [], [], []
    counters: dict[str, int] = {}
    i_sci = 0
    for i, (kind, filt, exptime, start) in enumerate(schedule):
        rng = frame_rngs[i]
        key = f"{kind}_{filt}" if filt else kind
        counters[key] = counters.get(key, 0) + 1
        if kind == "dark":
            prefix = f"dark_{int(exptime)}s"
        else:
            prefix = {"bias": "bias", "flat": f"flat_{filt}",
                      "science": f"{FIELD['name']}_{filt}"}[kind]
        stem = f"{prefix}_{counters[key]:03d}"
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
            # twilight: the level falls, the exposure is chosen to keep it near flat_level
            target_adu = spec.flat_level_adu * (1.0 - 0.06 * (counters[key] - 1))
            exptime = float(round(1.0 + 1.2 * (counters[key] - 1), 2))
            rate = target_adu * spec.gain_e_per_adu / exptime
            n_fs = max(1, round(20 * spec.nx * spec.ny / 2**20))  # 20 per megapixel
            fstars = render_gaussian_stars(
                shape=electrons.shape, x=rng.uniform(0, spec.nx, n_fs),
                y=rng.uniform(0, spec.ny, n_fs), flux=10 ** rng.uniform(3.5, 4.7, n_fs),
                fwhm=3.0)
            electrons = flats[filt] * (rate * exptime + fstars)
            info["sky_level_e"] = rate * exptime
        elif kind == "science":
            u = (start.mjd - sci_first) / max(sci_last - sci_first, 1e-9)
            if spec.fwhm_px is None:
                fwhm = float(np.clip(2.8 + 0.5 * math.sin(2 * math.pi * 1.3 * u + 0.4)
                                     + rng.normal(0, 0.08), 2.0, 5.0))
            else:
                fwhm = float(np.clip(spec.fwhm_px * (1 + 0.08 * math.sin(2 * math.pi * u))
                                     + rng.normal(0, 0.03), 0.8 * spec.fwhm_px,
                                     1.5 * spec.fwhm_px))
            dx = spec.drift_px[0] * u + rng.normal(0, 0.15)
            dy = spec.drift_px[1] * u + rng.normal(0, 0.15)
            t_mid = start.mjd + exptime / 2 / 86400.0
            fac = np.ones(len(stars))
            fac[stars["is_target"].to_numpy()] = transit_factor(
                np.array([t_mid]), t0=transit["t0_mjd"], duration_d=transit["duration_d"],
                ingress_d=transit["ingress_d"], depth=transit["depth"])[0]
            transparency = 1.0
            if spec.cloud_fraction and rng.random() < spec.cloud_fraction:
                transparency = float(rng.uniform(0.7, 0.9))
            extinction = 10 ** (-0.4 * spec.extinction_mag_per_airmass * float(airmass[i_sci]))
            flux = stars["flux_e_per_s"].to_numpy() * exptime * fac * transparency * extinction
            flipped = spec.flip_at is not None and u > spec.flip_at
            if flipped:  # 180° about the frame centre, then the drift
                xs = (spec.nx - 1) - stars["x0"].to_numpy() + dx
                ys = (spec.ny - 1) - stars["y0"].to_numpy() + dy
            else:
                xs, ys = stars["x0"].to_numpy() + dx, stars["y0"].to_numpy() + dy
            info.update(transparency=transparency, flipped=flipped, extinction=extinction)
            sky_level = spec.sky_rate_e_per_s * exptime * (1.0 + 0.6 * u)
            gx, gy = 0.08 + 0.02 * u, -0.04
            sky = sky_model(level_e=sky_level, gx=gx, gy=gy, shape=electrons.shape)
            electrons = flats[filt] * (sky + render_gaussian_stars(
                shape=electrons.shape, x=xs, y=ys, flux=flux, fwhm=fwhm))
            am = float(airmass[i_sci])
            i_sci += 1
            info.update(sky_level_e=sky_level, sky_gx=gx, sky_gy=gy, fwhm_px=fwhm,
                        dx_px=dx, dy_px=dy, airmass=am)
            star_rows.append(pd.DataFrame({"frame": stem, "star_id": stars["star_id"],
                                           "x": xs, "y": ys, "flux_e": flux, "fwhm_px": fwhm}))
        electrons = electrons + dark * exptime
        if exptime > 0:
            cx, cy, ce = cosmic_ray_hits(rng, spec, exptime)
            np.add.at(electrons, (cy, cx), ce)
            cr_rows.append(pd.DataFrame({"frame": stem, "x": cx, "y": cy, "electrons": ce}))
        raw = _to_adu(rng, spec, electrons, level, drift, pattern)
        header = _header(spec, kind, filt, exptime, start, am, dx, dy)
        hdu = fits.PrimaryHDU(data=raw, header=header)
        path = raw_dir / info["file"]
        hdu.writeto(path)
        path.chmod(0o444)
        info.update(exptime_s=float(exptime), date_obs=start.isot,
                    mjd_mid=start.mjd + exptime / 2 / 86400.0,
                    n_saturated=int((raw[:, : spec.nx] == spec.adc_max).sum()))
        frames.append(info)
        drifts.append(drift)

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
        "transit": {**transit, "star_id": 0}, "ccdflow_version": __version__,
        "pixel_convention": "0-based (x, y) of the trimmed area; pixel i spans i-0.5..i+0.5",
    }
    (truth_dir / "truth.json").write_text(json.dumps(meta, indent=2))


def _read_image(path: Path) -> np.ndarray:
    return fits.getdata(path).astype(np.float64)


def load_truth(night_dir: str | Path) -> Truth:
    """Read the truth written by :func:`simulate_night` (``night_dir`` holds raw/ and truth/)."""
    night_dir = Path(night_dir)
    tdir = night_dir / "truth"
    if not (tdir / "truth.json").is_file():
        raise FileNotFoundError(f"no simulator truth in {tdir} (truth.json missing)")
    meta = json.loads((tdir / "truth.json").read_text())
    return Truth(
        meta=meta,
        bias_pattern_adu=_read_image(tdir / "bias_pattern_adu.fits"),
        dark_rate_e_per_s=_read_image(tdir / "dark_rate_e_per_s.fits"),
        flats={f: _read_image(tdir / f"flat_{f}.fits") for f in meta["spec"]["filters"]},
        row_drift_adu=_read_image(tdir / "row_drift_adu.fits"),
        frames=pd.read_csv(tdir / "frames.csv", keep_default_na=False, na_values=[""]),
        stars=pd.read_csv(tdir / "stars.csv"),
        star_frames=pd.read_csv(tdir / "star_frames.csv"),
        cosmics=pd.read_csv(tdir / "cosmics.csv"),
        raw_dir=night_dir / "raw",
    )


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
                        "(NightSpec.realworld: no calibrations, hot pixels, drift, clouds, "
                        "local DATE-OBS + UT-OBS, no WCS); --size and the counts are ignored")
    p.add_argument("--flip", action="store_true", help="with --realworld: a 180° meridian "
                   "flip half-way through the night")
    a = p.parse_args(argv)
    if a.realworld is not None:
        spec = NightSpec.realworld(n_science=a.realworld, flip=a.flip, seed=a.seed)
        out = simulate_night(out_dir=a.out_dir, spec=spec)
        print(f"simulated real-world night written to {out}")
        return 0
    spec = NightSpec(nx=a.size, ny=a.size, n_bias=a.n_bias, n_dark=a.n_dark, n_flat=a.n_flat,
                     filters=tuple(a.filters.split(",")),
                     science=tuple(a.science) if a.science else d.science,
                     n_stars=a.n_stars, seed=a.seed, night=a.night)
    out = simulate_night(out_dir=a.out_dir, spec=spec)
    print(f"simulated night written to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
