"""When a frame was taken and on which night, from the date keywords cameras write.

The exposure start in UTC (:func:`_parse_time`: ISO dates with or without a UTC
offset, a date plus a time keyword, a time of day on the day of another keyword, MJD
or JD), the hours from UTC to local time (the profile's, an offset a date keyword
carries, or the site's longitude) and the observing night: the date of the evening on
which it began (:func:`observing_night`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .times import parse_iso_utc, read_iso

__all__ = ["observing_night"]

_MJD0 = datetime(1858, 11, 17, tzinfo=UTC)


def _first(header: Mapping, keywords: Sequence[str]) -> Any:
    for key in keywords:
        value = header.get(key)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value.strip() if isinstance(value, str) else value
    return None


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


_CLOCK = re.compile(r"^\d{1,2}:\d{2}(:\d{2}(\.\d*)?)?$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: the FITS date format before 1999 (Wells et al. 1981; FITS standard 4.0 §9.1.1):
#: 'DD/MM/YY', a day of 19YY
_OLD_DAY = re.compile(r"^(\d{2})/(\d{2})/(\d{2})$")
#: a date with slashes, year first ('2017/12/20', '2017/12/20 01:33:43'): unambiguous
_SLASHED = re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})([T ].*)?$")


def _iso(value: str) -> str:
    """``value`` with an old-style 'DD/MM/YY' date written as '19YY-MM-DD' and a
    'YYYY/MM/DD' date as 'YYYY-MM-DD' (a time after it kept); else as is."""
    value = value.strip()
    old = _OLD_DAY.match(value)
    if old:
        return f"19{old[3]}-{old[2]}-{old[1]}"
    slashed = _SLASHED.match(value)
    if slashed:
        return (f"{slashed[1]}-{int(slashed[2]):02d}-{int(slashed[3]):02d}"
                + (slashed[4] or ""))
    return value


#: TIMESYS values whose times are UTC to the second or better (UT1 within 0.9 s)
_UTC_SCALES = {"", "UTC", "UT", "UT()", "UT1", "Z", "GMT"}
#: TIMESYS scales astropy converts to UTC (GPS time is read as TAI, then + 19 s:
#: GPS = TAI − 19 s)
_OTHER_SCALES = {"TAI": "tai", "TT": "tt", "TDT": "tt", "ET": "tt", "TDB": "tdb",
                 "TCG": "tcg", "TCB": "tcb", "GPS": "tai"}


def _timesys_to_utc(stamp: datetime, header: Mapping, notes: list[str]) -> datetime:
    """``stamp`` read in the header's TIMESYS (FITS: UTC when absent) as UTC.  TT, TAI,
    GPS, TDB, TCG and TCB are converted (TT is UTC + 69.184 s since 2017: a transit
    mid-time 69 s late otherwise), the change noted; LOCAL or another value is noted
    and the time read as UTC."""
    system = str(header.get("TIMESYS", "") or "").strip().upper()
    if system in _UTC_SCALES:
        return stamp
    if system not in _OTHER_SCALES:
        notes.append(f"TIMESYS = {system!r} is not a time scale ccdflow converts: the "
                     "time is read as UTC")
        return stamp
    from astropy.time import Time, TimeDelta

    naive = stamp.astimezone(UTC).replace(tzinfo=None)
    read = Time(naive, scale=_OTHER_SCALES[system])
    if system == "GPS":
        read = read + TimeDelta(19.0, format="sec")
    utc = read.utc.to_datetime().replace(tzinfo=UTC)
    notes.append(f"TIMESYS = {system!r}: converted to UTC "
                 f"({(utc - stamp).total_seconds():+.3f} s)")
    return utc


def _padded(clock: str) -> str:
    """A time of day with a two-digit hour, as ISO 8601 wants it ('1:33:43' → '01:33:43')."""
    clock = clock.strip()
    return f"0{clock}" if clock.index(":") == 1 else clock


def _clock_on_day(clock: str, anchor: datetime, keyword: str) -> datetime:
    """A UTC time of day on the UTC day within 12 h of ``anchor``."""
    stamp = parse_iso_utc(f"{anchor.date().isoformat()}T{_padded(clock)}", keyword)
    if stamp - anchor > timedelta(hours=12):
        stamp -= timedelta(days=1)
    elif anchor - stamp > timedelta(hours=12):
        stamp += timedelta(days=1)
    return stamp


def _parse_time(header: Mapping, keywords: Mapping[str, Sequence[str]]
                ) -> tuple[datetime | None, list[str]]:
    """UTC start of the exposure, and notes on keywords that could not be used (and on a
    TIMESYS other than UTC, whose times are converted: :func:`_timesys_to_utc`).
    The keywords are read as :func:`_parse_time_as_written` says."""
    stamp, notes, utc = _parse_time_as_written(header, keywords)
    if stamp is not None and not utc:
        stamp = _timesys_to_utc(stamp, header, notes)
    return stamp, notes


#: a keyword whose name says UT (UT, UT-OBS, UTSTART, UT-START, UTC-OBS) holds UTC
#: whatever TIMESYS says; so does a value that ends in Z, UTC or a UTC offset
_UTC_BY_NAME = re.compile(r"^UT")
_UTC_BY_VALUE = re.compile(r"(Z|UTC?|[+-]\d{2}:?\d{2})$", re.IGNORECASE)


def _parse_time_as_written(header: Mapping, keywords: Mapping[str, Sequence[str]]
                           ) -> tuple[datetime | None, list[str], bool]:
    """The start of the exposure in the header's time scale, notes on keywords that
    could not be used, and whether the time is UTC whatever TIMESYS says (a ``UT…``
    keyword gave its time of day, or the value carries Z, UTC or an offset).

    The ``date_obs`` keywords are tried in the profile's order:

    * a date and time: a UTC offset in it is applied (local time with
      ``-0700`` becomes UTC);
    * a date alone: completed with the first ``time_obs`` keyword present (the
      pre-1999 FITS form 'DD/MM/YY' is read as 19YY-MM-DD, 'YYYY/MM/DD' as
      YYYY-MM-DD); one that holds no time of day is noted and the next keyword
      tried; with no ``time_obs`` keyword at all the
      later keywords, ``mjd_obs`` and ``jd`` are tried first, and only then is the
      date taken at 00:00 UTC, noted (a time of day cannot be made up);
    * a time of day alone (``UT-OBS = '01:33:43.317'``): put on the UTC day of
      the next date keyword of the list (or DATE-OBS, DATE) within 12 h of it;
    * a value that is none of these is noted and the next keyword tried.

    Then ``mjd_obs``, then ``jd``.
    """
    primary = list(keywords.get("date_obs", [])) or ["DATE-OBS", "DATE"]
    notes: list[str] = []
    date_only: datetime | None = None  # a date without a time: the last resort
    date_note = ""
    for i, key in enumerate(primary):
        value = _first(header, [key])
        if not isinstance(value, str):
            continue
        written, value = value, _iso(value)
        try:
            if _CLOCK.match(value):
                anchors = dict.fromkeys([*primary[i + 1:], "DATE-OBS", "DATE"])
                anchor = next((t for t in (_day_of(header, k) for k in anchors if k != key)
                               if t is not None), None)
                if anchor is None:
                    notes.append(f"{key} = {value!r} is a time of day and no date keyword "
                                 "gives its day")
                    continue
                return _clock_on_day(value, anchor, key), notes, bool(_UTC_BY_NAME.match(key))
            if _DAY.match(value):
                time_keys = list(keywords.get("time_obs", []))
                time_key = next((k for k in time_keys if _first(header, [k]) is not None),
                                None)
                clock = _first(header, [time_key]) if time_key else None
                if isinstance(clock, str) and _CLOCK.match(clock):
                    return (parse_iso_utc(f"{value}T{_padded(clock)}", key), notes,
                            bool(_UTC_BY_NAME.match(time_key)))
                if clock is not None:
                    notes.append(f"{time_key} = {clock!r} is not a time of day (HH:MM:SS)")
                    continue
                if date_only is None:
                    date_only = parse_iso_utc(f"{value}T00:00:00", key)
                    date_note = (f"{key} = {written!r} is a date without a time of day and no "
                                 f"time keyword ({'/'.join(time_keys) or 'none'}) gives "
                                 "one: taken as 00:00 UTC")
                continue
            return (parse_iso_utc(value, key), notes,
                    bool(_UTC_BY_NAME.match(key) or _UTC_BY_VALUE.search(value.strip())))
        except ValueError as exc:
            notes.append(str(exc))
    mjd = _as_float(_first(header, keywords.get("mjd_obs", [])))
    if mjd is None:
        jd = _as_float(_first(header, keywords.get("jd", [])))
        mjd = jd - 2400000.5 if jd is not None else None
    if mjd is not None:
        return _MJD0 + timedelta(days=mjd), notes, False
    if date_only is not None:  # the night can still be told, not the time
        notes.append(date_note)
    return date_only, notes, False


def _day_of(header: Mapping, key: str) -> datetime | None:
    """The UTC instant a date keyword gives (a date alone: its noon UTC), or None."""
    value = _first(header, [key])
    if not isinstance(value, str) or _CLOCK.match(value):
        return None
    value = _iso(value)
    try:
        if _DAY.match(value):
            return parse_iso_utc(f"{value}T12:00:00", key)
        return parse_iso_utc(value, key)
    except ValueError:
        return None


def observing_night(utc: datetime, *, utc_offset_hours: float) -> str:
    """Date (YYYY-MM-DD) of the evening on which the night of ``utc`` began.

    The night runs from local noon to the next local noon, local time being
    ``utc + utc_offset_hours``.
    """
    local = utc + timedelta(hours=utc_offset_hours)
    return (local - timedelta(hours=12)).date().isoformat()


def _utc_offset(header: Mapping, profile: Mapping) -> float:
    """Hours from UTC to local time: the profile's, else the offset a date keyword carries
    (``DATE-OBS = '2017-12-19T18:33:43-0700'``), else longitude / 15 (east positive; a
    header's read west-positive when the profile's ``site.header_longitude`` says so)."""
    night = profile.get("night", {})
    if night.get("utc_offset_hours") is not None:
        return float(night["utc_offset_hours"])
    for key in profile.get("keywords", {}).get("date_obs", []) or ["DATE-OBS"]:
        value = _first(header, [key])
        if isinstance(value, str):
            stamp = read_iso(value)
            offset = None if stamp is None else stamp.utcoffset()
            if offset is not None:
                return offset.total_seconds() / 3600.0
    lon = _as_float(_first(header, profile.get("keywords", {}).get("longitude", [])))
    if lon is not None and profile.get("site", {}).get("header_longitude") == "west":
        lon = -lon
    if lon is None:
        lon = _as_float(profile.get("site", {}).get("longitude_deg"))
    if lon is None:
        return 0.0
    return ((lon + 180.0) % 360.0 - 180.0) / 15.0


def _night_from_filename(path: Path, night_cfg: Mapping) -> str | None:
    regex = night_cfg.get("filename_regex")
    if not regex:
        return None
    match = re.search(regex, path.name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), night_cfg.get("filename_date_format", "%Y%m%d")
                                 ).date().isoformat()
    except ValueError:
        return None
