"""Mid-exposure times in UTC and barycentric dynamical time, and airmass.

``bjd_tdb = JD_TDB(mid) + light travel time to the solar-system barycentre``
toward the target (astropy ``Time.light_travel_time``, the method of Eastman
et al. 2010), for the observatory's location; ``bmjd_tdb = bjd_tdb − 2400000.5``.
IERS tables come from the installed astropy-iers-data package (no download).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

__all__ = ["TimeError", "barycentric_times", "mid_exposure", "parse_iso_utc"]


class TimeError(ValueError):
    """A time cannot be computed; the message names the frame and the keyword."""


def parse_iso_utc(text: str, keyword: str = "date") -> datetime:
    """An ISO 8601 date and time as an aware UTC datetime; a UTC offset is applied.

    ``'2017-12-19T18:33:43.317-0700'`` is 2017-12-20 01:33:43.317 UTC; ``Z`` is
    UTC; no offset is UTC (the FITS standard's convention for DATE-OBS).

    Raises
    ------
    ValueError
        The text is not ISO 8601; the message names ``keyword`` and the value.
    """
    clean = text.strip().replace(" ", "T")
    if clean.endswith("Z"):
        clean = clean[:-1] + "+00:00"
    try:
        stamp = datetime.fromisoformat(clean)
    except ValueError:
        raise ValueError(f"{keyword} = {text!r} is not an ISO 8601 date and time") from None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def mid_exposure(*, header: Mapping, date_keywords: Sequence[str] = ("DATE-OBS", "DATE-BEG"),
                 exptime_keywords: Sequence[str] = ("EXPTIME", "EXPOSURE"),
                 where: str = "frame"):
    """Mid-exposure time (astropy Time, UTC): start + exposure / 2."""
    from astropy import units as u
    from astropy.time import Time

    key = next((k for k in date_keywords if k in header), None)
    if key is None:
        raise TimeError(f"{where}: no start time ({'/'.join(date_keywords)})")
    start = header[key]
    exptime = next((header[k] for k in exptime_keywords if k in header), None)
    if exptime is None:
        raise TimeError(f"{where}: no exposure time ({'/'.join(exptime_keywords)})")
    try:  # a UTC offset in the value is applied (local time -0700 -> UTC)
        t0 = Time(parse_iso_utc(str(start), key).replace(tzinfo=None), scale="utc")
    except ValueError as exc:
        raise TimeError(f"{where}: start time {exc}") from None
    return t0 + float(exptime) / 2 * u.s


def barycentric_times(*, times, ra_deg: float, dec_deg: float, site: Mapping) -> pd.DataFrame:
    """``mjd_utc``, ``bjd_tdb``, ``bmjd_tdb`` and ``airmass`` for ``times`` toward a target.

    ``site``: ``latitude_deg``, ``longitude_deg`` (east positive), ``height_m``.
    """
    from astropy import units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.utils import iers

    iers.conf.auto_download = False
    for key in ("latitude_deg", "longitude_deg", "height_m"):
        if site.get(key) is None:
            raise TimeError(f"site lacks {key}: give it in the instrument profile's site")
    location = EarthLocation(lat=site["latitude_deg"] * u.deg, lon=site["longitude_deg"] * u.deg,
                             height=site["height_m"] * u.m)
    target = SkyCoord(ra_deg * u.deg, dec_deg * u.deg, frame="icrs")
    from astropy.time import Time

    t = Time(times, location=location)
    ltt = t.light_travel_time(target, kind="barycentric")
    bjd = (t.tdb + ltt).jd
    alt = target.transform_to(AltAz(obstime=t, location=location)).alt.to_value(u.rad)
    airmass = np.where(alt > 0, 1.0 / np.sin(np.clip(alt, 1e-3, None)), np.nan)
    return pd.DataFrame({"mjd_utc": np.atleast_1d(t.utc.mjd), "bjd_tdb": np.atleast_1d(bjd),
                         "bmjd_tdb": np.atleast_1d(bjd) - 2400000.5,
                         "airmass": np.atleast_1d(airmass)})
