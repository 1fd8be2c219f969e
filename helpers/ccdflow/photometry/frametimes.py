"""When and where a frame was taken, for its photometry rows: mid-exposure MJD (UTC),
BJD/BMJD (TDB) toward the first target (else the field centre or the header's RA/DEC),
the observatory from the profile or the header (with the west-positive longitude check)
and the header's airmass (:func:`frame_times`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from .targets import sky_coord

log = logging.getLogger(__name__)

__all__ = ["frame_times"]


def _site(header, site: Mapping | None) -> tuple[dict | None, str]:
    """Observatory from the profile, else SITELAT/SITELONG[/SITEELEV] of the header (its
    longitude east-positive unless the profile's ``site.header_longitude`` is west)."""
    if site and site.get("latitude_deg") is not None and site.get("longitude_deg") is not None:
        return {"latitude_deg": site["latitude_deg"], "longitude_deg": site["longitude_deg"],
                "height_m": site.get("height_m") or 0.0}, f"profile site {site.get('name', '')}"
    from astropy.coordinates import Angle

    def angle(keys):
        for k in keys:
            if k in header and str(header[k]).strip():
                value = header[k]
                return float(value) if not isinstance(value, str) else Angle(
                    value, unit="deg").deg
        return None

    lat = angle(("SITELAT", "LAT-OBS", "LATITUDE", "OBSLAT"))
    lon = angle(("SITELONG", "LONG-OBS", "LONGITUD", "OBSLONG"))
    if lat is None or lon is None:
        return None, "no site: BJD toward the geocentre, airmass from the header"
    height = header.get("SITEELEV", header.get("ALT-OBS"))
    west = (site or {}).get("header_longitude", "east") == "west"
    note = ("header SITELAT/SITELONG" + (" (west-positive, site.header_longitude)" if west
                                         else "") + ("" if height is not None
                                                     else ", elevation 0 m"))
    return {"latitude_deg": lat, "longitude_deg": -lon if west else lon,
            "height_m": float(height or 0.0), "from_header": True}, note


#: header longitude -> the sign that agrees with the header's AIRMASS (checked once)
_HEADER_LONGITUDE_SIGN: dict[tuple[float, float], float] = {}


def _check_header_longitude(where: dict, header, start, ra: float, dec: float,
                            frame: str) -> tuple[dict, str]:
    """A header site whose longitude gives an airmass far from the header's own
    ``AIRMASS`` while the opposite sign agrees is west-positive (MicroObservatory,
    some older software): adopt the opposite sign, and say so once per process."""
    from ..times import barycentric_times

    key = (where["longitude_deg"], where["latitude_deg"])
    if key not in _HEADER_LONGITUDE_SIGN:
        sign = 1.0
        try:
            stated = float(header["AIRMASS"])
        except (KeyError, TypeError, ValueError):
            stated = float("nan")
        if np.isfinite(stated) and stated >= 1.0:
            as_read, flipped = (float(barycentric_times(
                times=start, ra_deg=ra, dec_deg=dec,
                site={**where, "longitude_deg": s * where["longitude_deg"]})["airmass"].iloc[0])
                for s in (1.0, -1.0))

            def close(value):
                return np.isfinite(value) and abs(value - stated) <= 0.05 + 0.05 * stated

            if not close(as_read) and close(flipped):
                sign = -1.0
                log.warning("%s: the header's longitude %.4f deg gives an airmass of %.3f, "
                            "the header's AIRMASS is %.3f; read west-positive (%.4f deg "
                            "east) it gives %.3f: taken so (set site.header_longitude: west "
                            "in the profile to say it)", frame, where["longitude_deg"],
                            as_read, stated, -where["longitude_deg"], flipped)
        _HEADER_LONGITUDE_SIGN[key] = sign
    if _HEADER_LONGITUDE_SIGN[key] > 0:
        return where, ""
    return ({**where, "longitude_deg": -where["longitude_deg"]},
            "; header longitude read west-positive (it agrees with AIRMASS)")


def _pointing(header, catalog: pd.DataFrame, wcs) -> tuple[float, float, str] | None:
    """Coordinates for the barycentric correction: first target, WCS centre, header RA/DEC
    (``wcs``: the frame's WCS, None, or a function returning either, called only here)."""
    named = catalog[(catalog["name"] != "") & np.isfinite(catalog["ra_deg"])]
    if len(named):
        return float(named["ra_deg"].iloc[0]), float(named["dec_deg"].iloc[0]), \
            f"target {named['name'].iloc[0]}"
    if np.isfinite(catalog["ra_deg"]).any() and (wcs() if callable(wcs) else wcs) is not None:
        return float(np.nanmedian(catalog["ra_deg"])), float(np.nanmedian(catalog["dec_deg"])), \
            "source-list centre (WCS)"
    for ra_key, dec_key in (("RA", "DEC"), ("OBJCTRA", "OBJCTDEC")):
        if ra_key in header and dec_key in header:
            ra, dec = header[ra_key], header[dec_key]
            coord = sky_coord(ra if isinstance(ra, str) else float(ra),
                              dec if isinstance(dec, str) else float(dec))
            return float(coord.ra.deg), float(coord.dec.deg), f"header {ra_key}/{dec_key}"
    return None


def frame_times(*, header, catalog, wcs, site, start_mjd_utc, exptime_s, notes,
                 frame) -> dict[str, float]:
    """Mid-exposure MJD (UTC), BJD/BMJD (TDB) toward the first target (else the field
    centre) and the header's airmass."""
    from ..times import barycentric_times, mid_exposure

    if start_mjd_utc is not None and exptime_s is not None and np.isfinite(
            [start_mjd_utc, exptime_s]).all():
        from astropy import units as u
        from astropy.time import Time

        mid = Time(float(start_mjd_utc), format="mjd", scale="utc") + float(exptime_s) / 2 * u.s
    else:
        mid = mid_exposure(header=header, where=frame)
    where, site_note = _site(header, site)
    pointing = _pointing(header, catalog, wcs)
    times = {"mjd_utc": float(mid.utc.mjd), "bjd_tdb": float("nan"), "bmjd_tdb": float("nan"),
             "airmass": float(header["AIRMASS"]) if "AIRMASS" in header else float("nan")}
    if pointing is None:
        notes.append("no coordinates for BJD (no target, WCS or RA/DEC): bjd_tdb left empty")
        return times
    ra, dec, what = pointing
    if where is not None:
        if where.pop("from_header", False) and not (site or {}).get("header_longitude"):
            from astropy import units as u

            start = mid - float(exptime_s or 0.0) / 2 * u.s
            where, flipped = _check_header_longitude(where, header, start, ra, dec, frame)
            site_note += flipped
        times.update(barycentric_times(times=mid, ra_deg=ra, dec_deg=dec,
                                       site=where).iloc[0].to_dict())
    else:
        from astropy import units as u
        from astropy.coordinates import EarthLocation, SkyCoord

        geocentre = EarthLocation.from_geocentric(0, 0, 0, unit=u.m)  # error ≤ 21 ms
        bjd = (mid.tdb + mid.light_travel_time(SkyCoord(ra * u.deg, dec * u.deg),
                                               location=geocentre)).jd
        times.update(bjd_tdb=float(bjd), bmjd_tdb=float(bjd) - 2400000.5)
    notes.append(f"times: mid-exposure; BJD toward {what} (RA {ra:.5f}, Dec {dec:.5f}); "
                 f"{site_note}")
    return times
