"""The simulated night's parameters (:class:`NightSpec`) and the camera, site and field
constants the simulator uses."""

from __future__ import annotations

from dataclasses import dataclass

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
    defocus_radius_px : float
        Above 0, stars are defocused "donuts": an annulus of this outer radius (inner
        radius 0.4 of it, a secondary mirror's shadow) seen through the seeing, as
        transit observers defocus to spread a bright star's light.
    trail_px : (float, float)
        Trailed stars (wind shake, a tracking error): trail length in pixels and its
        angle in degrees counter-clockwise from +x.

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
    hot_columns: int = 0  # hot column segments (the first a whole column), 2-6 e-/s
    dead_columns: int = 0  # columns of 2 % response
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
    header_longitude: str = "east"  # 'west': LONGITUD west-positive instead of SITELONG
    bayer_pattern: str | None = None  # a one-shot colour camera: 'RGGB', ... (BAYERPAT)
    flat_structure: float = 1.0
    mag_range: tuple[float, float] = (13.0, 19.5)
    mag_slope: float = 0.3
    defocus_radius_px: float = 0.0  # > 0: defocused "donut" stars of this outer radius
    trail_px: tuple[float, float] = (0.0, 0.0)  # trailed stars: (length px, angle deg)
    fwhm_growth: float = 1.0  # focus drift: the FWHM at the night's end over its start
    dither_px: float = 0.0  # random pointing offsets per science frame (σ px, each axis)
    field_rotation_deg: float = 0.0  # an alt-az mount's field rotation by the night's end
    # (fraction of each science series, new exposure s): the observer changes the
    # exposure time part-way through (a target nearing saturation, clouds)
    exptime_change: tuple[float, float] | None = None

    @classmethod
    def realworld(cls, *, flip: bool = False, n_science: int = 140, nx: int = 650,
                  ny: int = 500, n_stars: int | None = None, seed: int = 2017) -> NightSpec:
        """A time-series night of a small robotic telescope, as users bring them.

        12-bit data (saturation 4095 ADU), no bias, dark or flat frames, ~1,000 hot
        pixels (0.3 % of 650×500), a hot column, a hot column segment and a dead
        column, FWHM 1.8 px, a tracking drift growing to 60 px over
        ``n_science`` 60-s frames (7 h at 180 s cadence), optionally a 180° meridian
        flip half-way, thin clouds on 8 % of the frames (30 % transparency drops), an
        airmass trend (0.15 mag/airmass), a 2 % transit, no WCS, DATE-OBS in local
        time with its UTC offset (−07:00) and the UTC start in UT-OBS, the site's
        longitude west-positive in LONGITUD.  Its pixel
        response has 0.3 of the demo camera's structure (vignetting 3 %, dust donuts
        1-2 %, PRNU 0.3 %): without flats all of it stays in the photometry, and the
        demo's full structure moves a drifting star's flux by several per cent.
        """
        return cls(nx=nx, ny=ny, overscan_cols=8, n_bias=0, n_dark=0, n_flat=0,
                   filters=("R",), science=(("R", n_science),), science_exptime_s=60.0,
                   overhead_s=120.0, n_stars=n_stars if n_stars is not None else 250,
                   gain_e_per_adu=1.0, read_noise_e=10.0, bias_level_adu=100.0,
                   dark_rate_e_per_s=0.02, hot_pixel_fraction=1000 / (650 * 500),
                   hot_columns=2, dead_columns=1,
                   sky_rate_e_per_s=5.0, transit_depth=0.02, night="2018-03-01", seed=seed,
                   adc_max=4095, zero_point_mag=21.0, target_mag=15.5, fwhm_px=1.8,
                   drift_px=(60.0, -25.0),
                   flip_at=0.5 if flip else None, cloud_fraction=0.08,
                   extinction_mag_per_airmass=0.15, local_utc_offset_hours=-7.0, wcs=False,
                   header_longitude="west",
                   flat_structure=0.3)

    def __post_init__(self) -> None:
        if self.bayer_pattern is not None and (
                len(self.bayer_pattern) != 4 or set(self.bayer_pattern.upper()) - set("RGB")):
            raise ValueError(f"bayer_pattern must be 4 of R, G, B (e.g. 'RGGB'), got "
                             f"{self.bayer_pattern!r}")
        if self.header_longitude not in ("east", "west"):
            raise ValueError(f"header_longitude must be 'east' or 'west', got "
                             f"{self.header_longitude!r}")
        if not 0.25 <= self.fwhm_growth <= 4.0:
            raise ValueError(f"fwhm_growth must be in [0.25, 4], got {self.fwhm_growth}")
        if self.exptime_change is not None and not (
                0 < self.exptime_change[0] < 1 and self.exptime_change[1] > 0):
            raise ValueError(f"exptime_change must be (fraction in (0, 1), exposure s > 0), "
                             f"got {self.exptime_change}")
        if self.dither_px < 0:
            raise ValueError(f"dither_px must be >= 0, got {self.dither_px}")
        if self.defocus_radius_px < 0 or self.trail_px[0] < 0:
            raise ValueError("defocus_radius_px and trail_px's length must be >= 0")
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
