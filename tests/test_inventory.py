"""Inventory: finding files, classification rules, nights, groups, overrides, bad files."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import shutil
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from ccdflow.inventory import (
    InventoryError,
    build_inventory,
    classify,
    find_raw_files,
    frame_names,
    observing_night,
    read_frame_header,
)

from .conftest import SMALL_SPEC, profile


def _write(path, header=None, data=None):
    data = np.zeros((8, 10), dtype=np.uint16) if data is None else data
    fits.PrimaryHDU(data=data, header=fits.Header(header or {})).writeto(path)
    return path


def test_demo_night_inventory_matches_truth(small_night):
    table = build_inventory(raw_dir=small_night / "raw", profile=profile("demo"))
    truth = pd.read_csv(small_night / "truth" / "frames.csv", keep_default_na=False)
    merged = table.merge(truth, on="frame", suffixes=("", "_truth"))
    assert len(merged) == len(truth) == len(table)
    assert (merged["type"] == merged["type_truth"]).all()
    assert (merged["filter"] == merged["filter_truth"]).all()
    assert np.allclose(merged["exptime_s"], merged["exptime_s_truth"])
    assert table["night"].unique().tolist() == [SMALL_SPEC.night]  # darks at 12:40 UT too
    assert table["group"].nunique() == 1
    assert table["shape"].iloc[0] == f"{SMALL_SPEC.ny}x{SMALL_SPEC.nx + SMALL_SPEC.overscan_cols}"
    assert (table["mjd_obs"].diff().dropna() >= 0).all(), "sorted by time"


@pytest.mark.parametrize("value, expected", [
    ("Bias Frame", "bias"), ("ZERO", "bias"), ("  bias ", "bias"),
    ("Dark Frame", "dark"), ("flat field", "flat"), ("SKYFLAT", "flat"), ("Dome Flat", "flat"),
    ("Light Frame", "science"), ("OBJECT", "science"), ("EXPOSE", "science"),
])
def test_default_profile_synonyms(value, expected):
    kind, rule = classify(header={"IMAGETYP": value, "EXPTIME": 10.0}, profile=profile("default"))
    assert kind == expected
    assert rule.startswith("rule ")


def test_obstype_used_when_imagetyp_missing_and_zero_exptime_fallback():
    p = profile("default")
    assert classify(header={"OBSTYPE": "EXPOSE"}, profile=p)[0] == "science"
    assert classify(header={"EXPTIME": 0.0}, profile=p)[0] == "bias"
    kind, why = classify(header={"IMAGETYP": "focus", "EXPTIME": 5}, profile=p)
    assert kind == "unknown"
    assert "imagetyp='focus'" in why


def test_nickel_types_come_from_object_not_obstype():
    p = profile("nickel")
    header = {"OBSTYPE": "DARK", "OBJECT": "bias", "EXPTIME": 0}
    assert classify(header=header, profile=p)[0] == "bias"
    assert classify(header={"OBSTYPE": "OBJECT", "OBJECT": "sky flat", "EXPTIME": 4},
                    profile=p)[0] == "flat"
    assert classify(header={"OBSTYPE": "OBJECT", "OBJECT": "M13", "EXPTIME": 60},
                    profile=p)[0] == "science"


def test_rule_conditions_combine_and_missing_keyword_fails_the_rule():
    p = {"keywords": {"exptime": ["EXPTIME"]}, "classification": [
        {"type": "dark", "when": {"OBJECT": {"regex": "^dark"}, "exptime": {"min": 1}}},
        {"type": "rejected", "when": {"FOCUS": {"present": True}}},
    ]}
    assert classify(header={"OBJECT": "dark 30s", "EXPTIME": 30}, profile=p)[0] == "dark"
    assert classify(header={"OBJECT": "dark 30s", "EXPTIME": 0.5}, profile=p)[0] == "unknown"
    assert classify(header={"OBJECT": "dark"}, profile=p)[0] == "unknown"
    assert classify(header={"FOCUS": 1}, profile=p)[0] == "rejected"


def test_night_boundary_is_local_noon():
    # Arizona (UTC-7.44 h from longitude): 12:40 UT is 05:13 local -> previous evening
    t = datetime(2026, 3, 15, 12, 40, tzinfo=UTC)
    assert observing_night(t, utc_offset_hours=-111.6 / 15) == "2026-03-14"
    assert observing_night(datetime(2026, 3, 15, 20, 0, tzinfo=UTC),
                           utc_offset_hours=-7.44) == "2026-03-15"
    # Europe: 23:30 UT on the 14th and 03:00 UT on the 15th are one night
    assert observing_night(datetime(2026, 3, 14, 23, 30, tzinfo=UTC), utc_offset_hours=1) == \
        observing_night(datetime(2026, 3, 15, 3, 0, tzinfo=UTC), utc_offset_hours=1)


def test_frame_names_unique_deterministic_and_safe():
    names = frame_names(["a/d1001.fits", "b/d1001.fits.fz", "c/x y.fit", "d/ok.fts.gz"])
    assert names[2] == "x_y" and names[3] == "ok"
    assert names[0] != names[1] and names[0].startswith("d1001-")
    # a duplicate's name depends only on its own path
    assert frame_names(["a/d1001.fits", "z/d1001.fits"])[0] == names[0]


def test_compressed_and_unusual_files(tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    header = {"IMAGETYP": "Light Frame", "EXPTIME": 30.0, "FILTER": "V",
              "DATE-OBS": "2024-01-02T03:04:05.6"}
    plain = _write(raw / "sub" / "sci1.fits", header)
    with open(plain, "rb") as src:
        payload = src.read()
    (raw / "sci2.fits.gz").write_bytes(gzip.compress(payload))
    (raw / "sci3.fit.bz2").write_bytes(bz2.compress(payload))
    fits.HDUList([fits.PrimaryHDU(),
                  fits.CompImageHDU(np.ones((16, 16), np.int16), header=fits.Header(header))]
                 ).writeto(raw / "sci4.fits.fz")
    (raw / "broken.fits").write_bytes(b"this is not FITS at all" * 10)
    (raw / "empty.fits").write_bytes(b"")
    fits.PrimaryHDU().writeto(raw / "nodata.fits")
    (raw / "notes.txt").write_text("ignored")
    (raw / ".hidden.fits").write_bytes(b"")
    _write(raw / "weird.fits", {"IMAGETYP": "focus", "EXPTIME": 3.0})
    _write(raw / "notime.fits", {"IMAGETYP": "Light Frame", "EXPTIME": 3.0})
    # capture programs that write a cube of one plane (NAXIS3 = 1), and a real cube
    fits.PrimaryHDU(np.ones((1, 12, 16), np.uint16), header=fits.Header(header)
                    ).writeto(raw / "plane.fits")
    fits.PrimaryHDU(np.ones((5, 12, 16), np.uint16), header=fits.Header(header)
                    ).writeto(raw / "cube.fits")

    files = [p.as_posix() for p in find_raw_files(raw_dir=raw)]
    assert "notes.txt" not in files and ".hidden.fits" not in files
    assert len(files) == 11
    table = build_inventory(raw_dir=raw, profile=profile("default")).set_index("frame")
    for name in ("sci1", "sci2", "sci3", "sci4"):
        assert table.loc[name, "type"] == "science", name
        assert table.loc[name, "filter"] == "V"
        assert table.loc[name, "date_obs"] == "2024-01-02T03:04:05.600"
    assert table.loc["sci4", "shape"] == "16x16"
    assert table.loc["plane", "type"] == "science" and table.loc["plane", "shape"] == "12x16"
    assert table.loc["cube", "type"] == "rejected"
    assert "a data cube of 5 planes (NAXIS = 3)" in table.loc["cube", "reason"]
    assert table.loc["broken", "type"] == "rejected" and table.loc["broken", "reason"]
    assert table.loc["empty", "type"] == "rejected"
    assert "no image HDU" in table.loc["nodata", "reason"]
    assert table.loc["weird", "type"] == "unknown"
    assert "no classification rule matched" in table.loc["weird", "reason"]
    assert table.loc["notime", "type"] == "science"
    assert "no observation time" in table.loc["notime", "reason"]
    assert table.index[-1] in {"broken", "empty", "nodata", "notime", "weird", "cube"}


def test_unreadable_files_are_rejected_not_fatal(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "good.fits", {"IMAGETYP": "Bias Frame", "EXPTIME": 0.0,
                               "DATE-OBS": "2024-01-02T03:04:05"})
    _write(raw / "locked.fits", {"IMAGETYP": "Bias Frame"})
    (raw / "dangling.fits").symlink_to(tmp_path / "gone.fits")
    # mode-000 files are readable by root (CI), so the permission error is injected
    real_open = fits.open

    def guarded_open(name, *args, **kwargs):
        if str(name).endswith("locked.fits"):
            raise PermissionError(13, "Permission denied", str(name))
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(fits, "open", guarded_open)
    table = build_inventory(raw_dir=raw, profile=profile("default")).set_index("frame")
    assert table.loc["locked", "type"] == "rejected"
    assert table.loc["locked", "reason"].startswith("unreadable file locked.fits: PermissionError")
    assert table.loc["dangling", "type"] == "rejected"
    assert "FileNotFoundError" in table.loc["dangling", "reason"]
    assert table.loc["good", "type"] == "bias"


def test_date_only_header_combines_with_ut_and_mjd_fallback(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "a.fits", {"IMAGETYP": "object", "DATE-OBS": "2013-07-13", "UT": "00:57:33",
                            "EXPTIME": 1.0})
    _write(raw / "b.fits", {"IMAGETYP": "object", "MJD-OBS": 60000.5, "EXPTIME": 1.0})
    # an archive frame in the pre-1999 FITS form: DATE-OBS = 'DD/MM/YY' is 19YY
    _write(raw / "c.fits", {"IMAGETYP": "object", "DATE-OBS": "13/07/97", "UT": "03:12:09.5",
                            "EXPTIME": 1.0})
    table = build_inventory(raw_dir=raw, profile=profile("default")).set_index("frame")
    assert table.loc["a", "date_obs"] == "2013-07-13T00:57:33.000"
    assert table.loc["c", "date_obs"] == "1997-07-13T03:12:09.500"
    assert table.loc["b", "date_obs"] == "2023-02-25T12:00:00.000"
    assert table.loc["b", "mjd_obs"] == pytest.approx(60000.5)


def test_frames_table_overrides(tmp_path, small_night):
    tsv = tmp_path / "frames.tsv"
    tsv.write_text("file\ttype\tfilter\tnight\n"
                   "WASP-SIM_V_001.fits\trejected\t\t\n"
                   "flat_R_001\tflat\tRc\t2026-03-13\n")
    table = build_inventory(raw_dir=small_night / "raw", profile=profile("demo"),
                            frames_table=tsv).set_index("frame")
    assert table.loc["WASP-SIM_V_001", "type"] == "rejected"
    assert table.loc["WASP-SIM_V_001", "rule"] == "frames table frames.tsv"
    assert table.loc["flat_R_001", "filter"] == "Rc"
    assert table.loc["flat_R_001", "night"] == "2026-03-13"
    assert table.loc["flat_R_001", "night_source"] == "frames table"

    tsv.write_text("file\ttype\nnot_there.fits\tbias\n")
    with pytest.raises(InventoryError, match=r"names 'not_there\.fits', which is not a FITS file"):
        build_inventory(raw_dir=small_night / "raw", profile=profile("demo"), frames_table=tsv)
    tsv.write_text("file\ttype\tnight\nbias_001.fits\tbias\t14/03/2026\n")
    with pytest.raises(InventoryError, match=r"night '14/03/2026' is not YYYY-MM-DD"):
        build_inventory(raw_dir=small_night / "raw", profile=profile("demo"), frames_table=tsv)
    tsv.write_text("file\ttype\nbias_001.fits\tbiass\n")
    with pytest.raises(InventoryError, match=r"type 'biass' for 'bias_001\.fits' is not one of"):
        build_inventory(raw_dir=small_night / "raw", profile=profile("demo"), frames_table=tsv)


def test_missing_and_empty_raw_dir(tmp_path):
    with pytest.raises(InventoryError, match=r"raw_dir .*nowhere does not exist"):
        build_inventory(raw_dir=tmp_path / "nowhere", profile=profile("default"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InventoryError, match=r"holds no FITS files"):
        build_inventory(raw_dir=tmp_path / "empty", profile=profile("default"))


def test_raw_files_are_never_written(tmp_path, small_night):
    raw = tmp_path / "raw"
    shutil.copytree(small_night / "raw", raw)
    before = {p.name: (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
              for p in raw.iterdir()}
    build_inventory(raw_dir=raw, profile=profile("demo"))
    after = {p.name: (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
             for p in raw.iterdir()}
    assert before == after


def test_multi_extension_header_merge(tmp_path):
    primary = fits.PrimaryHDU(header=fits.Header({"OBSTYPE": "EXPOSE", "EXPTIME": 5.0,
                                                  "DATE-OBS": "2021-10-08T01:55:17"}))
    amps = [fits.ImageHDU(np.zeros((6, 7), np.uint16), name="SCI") for _ in range(4)]
    fits.HDUList([primary, *amps]).writeto(tmp_path / "mef.fits")
    header, n_ext, shape = read_frame_header(tmp_path / "mef.fits")
    assert (n_ext, shape) == (4, (6, 7))
    assert header["OBSTYPE"] == "EXPOSE"


def test_header_cache_reads_only_new_or_changed_files(small_night, tmp_path, monkeypatch):
    """Keyed on path, size and mtime (and the profile): a rerun reads no header; a
    touched file is read again; the table is the same either way."""
    import os

    import ccdflow.inventory as inventory

    raw = tmp_path / "raw"
    shutil.copytree(small_night / "raw", raw)
    cache = tmp_path / "cache" / "headers.json"
    first = build_inventory(raw_dir=raw, profile=profile("demo"), cache=cache)
    assert cache.is_file()
    read = []
    real = inventory._describe
    monkeypatch.setattr(inventory, "_describe",
                        lambda path, rel, prof: read.append(rel.as_posix()) or real(path, rel,
                                                                                    prof))
    again = build_inventory(raw_dir=raw, profile=profile("demo"), cache=cache)
    assert read == []
    pd.testing.assert_frame_equal(first, again)
    os.utime(raw / "bias_001.fits", ns=(1, 1))
    build_inventory(raw_dir=raw, profile=profile("demo"), cache=cache)
    assert read == ["bias_001.fits"]
    read.clear()  # another profile: every header again
    build_inventory(raw_dir=raw, profile=profile("default"), cache=cache)
    assert len(read) == len(first)


def test_date_with_a_utc_offset_is_converted_and_sets_the_night(tmp_path):
    """Issue 12: ``DATE-OBS`` in local time with its offset (a robotic telescope's
    ``'2017-12-19T18:33:43.317-0700'``) is 01:33:43.317 UTC on the 20th, on the night of
    the 19th; ``UT-OBS`` (a UTC time of day) wins when the profile lists it first."""
    import copy

    from ccdflow.times import mid_exposure, parse_iso_utc

    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "local.fits", {"IMAGETYP": "Light Frame", "EXPTIME": 60.0,
                                "DATE-OBS": "2017-12-19T18:33:43.317-0700"})
    _write(raw / "ut.fits", {"IMAGETYP": "Light Frame", "EXPTIME": 60.0,
                             "DATE-OBS": "2017-12-19T18:35:00-0700", "UT-OBS": "01:35:02.5"})
    _write(raw / "bad.fits", {"IMAGETYP": "Light Frame", "EXPTIME": 60.0,
                              "DATE-OBS": "19/12/2017 18:33"})
    prof = copy.deepcopy(profile("default"))
    table = build_inventory(raw_dir=raw, profile=prof).set_index("frame")
    assert table.loc["local", "date_obs"] == "2017-12-20T01:33:43.317"
    assert table.loc["local", "night"] == "2017-12-19"  # local noon boundary from -0700
    assert table.loc["ut", "date_obs"] == "2017-12-20T01:35:00.000"  # DATE-OBS first
    assert table.loc["bad", "date_obs"] == "" and table.loc["bad", "night"] == ""
    assert "DATE-OBS = '19/12/2017 18:33' is not an ISO 8601 date and time" in \
        table.loc["bad", "reason"]
    prof["keywords"]["date_obs"] = ["UT-OBS", "DATE-OBS"]
    table = build_inventory(raw_dir=raw, profile=prof).set_index("frame")
    assert table.loc["ut", "date_obs"] == "2017-12-20T01:35:02.500"  # UT-OBS on the UTC day
    assert table.loc["local", "date_obs"] == "2017-12-20T01:33:43.317"  # no UT-OBS: DATE-OBS
    # the photometry's own fallback reads the same instant
    mid = mid_exposure(header={"DATE-OBS": "2017-12-19T18:33:43.317-0700", "EXPTIME": 60.0})
    assert mid.isot == "2017-12-20T01:34:13.317"
    assert parse_iso_utc("2017-12-20T01:33:43Z").hour == 1
    # spellings capture programs write: a space before the offset, a 'UTC' or 'UT' suffix
    same = parse_iso_utc("2017-12-20T01:33:43.317Z")
    for text in ("2017-12-19T18:33:43.317 -0700", "2017-12-19 18:33:43.317 -07:00",
                 "2017-12-20T01:33:43.317UTC", "2017-12-20 01:33:43.317 UT"):
        assert parse_iso_utc(text) == same, text
    with pytest.raises(ValueError, match=r"DATE-OBS = 'tonight' is not an ISO 8601"):
        parse_iso_utc("tonight", "DATE-OBS")


@pytest.mark.parametrize(("text", "utc"), [
    ("2017-12-19T18:33:60.000", "2017-12-19T18:34:00"),  # 59.9996 s rounded up
    ("2017-12-19T24:00:00", "2017-12-20T00:00:00"),  # ISO 8601's end of the day
    ("2017-12-19T23:59:60.5-0700", "2017-12-20T07:00:00.500000"),  # carried, then offset
    ("2016-12-31T23:59:60.5", "2017-01-01T00:00:00.500000"),  # a leap second: 1 s late
])
def test_clocks_past_their_minute_or_day_are_carried(tmp_path, text, utc):
    # what astropy's Time does with '…:60' (and a leap second's exact time is lost by a
    # datetime); the inventory dates the frame instead of calling it unreadable
    from ccdflow.times import parse_iso_utc

    assert parse_iso_utc(text, "DATE-OBS").replace(tzinfo=None).isoformat() == utc
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "odd.fits", {"IMAGETYP": "Light Frame", "EXPTIME": 60.0, "DATE-OBS": text})
    row = build_inventory(raw_dir=raw, profile=profile("default")).set_index("frame").loc["odd"]
    assert row["date_obs"].startswith(utc[:19]) and row["night"]
    for bad in ("2017-12-19T24:00:01", "2017-12-19T18:60:00", "2017-12-19T18:33:61"):
        with pytest.raises(ValueError, match="is not an ISO 8601 date and time"):
            parse_iso_utc(bad, "DATE-OBS")


def test_a_date_without_a_usable_time_is_never_silently_midnight(tmp_path):
    # DATE-OBS a date alone: the time comes from TIME-OBS/UT (a one-digit hour padded); a
    # time keyword that holds no time of day is named and the next keyword (MJD-OBS, JD)
    # used; a date with no time anywhere is taken at 00:00 UTC only as the last resort,
    # and `reason` says so.  Before, each of these was read as 00:00 UTC without a word
    # (1.5 h early here) and an MJD-OBS beside the date was ignored
    raw = tmp_path / "raw"
    raw.mkdir()
    base = {"IMAGETYP": "Light Frame", "EXPTIME": 60.0, "DATE-OBS": "2017-12-20"}
    cases = {"padded": {"UT": "1:33:43"}, "odd": {"TIME-OBS": "01h33m43s"},
             "odd_jd": {"TIME-OBS": "01h33m43s", "JD": 2458107.56508},
             "mjd": {"MJD-OBS": 58107.06508}, "alone": {}}
    for name, extra in cases.items():
        _write(raw / f"{name}.fits", {**base, **extra})
    table = build_inventory(raw_dir=raw, profile=profile("default")).set_index("frame")
    assert table.loc["padded", "date_obs"] == "2017-12-20T01:33:43.000"
    assert table.loc["padded", "reason"] == ""
    assert table.loc["odd", "date_obs"] == "" and (
        "TIME-OBS = '01h33m43s' is not a time of day (HH:MM:SS)" in table.loc["odd", "reason"])
    for name in ("odd_jd", "mjd"):
        assert table.loc[name, "date_obs"].startswith("2017-12-20T01:33:4"), name
    assert table.loc["mjd", "reason"] == ""
    assert table.loc["alone", "date_obs"] == "2017-12-20T00:00:00.000"
    assert "DATE-OBS = '2017-12-20' is a date without a time of day" in \
        table.loc["alone", "reason"] and "taken as 00:00 UTC" in table.loc["alone", "reason"]


def test_times_in_another_scale_are_converted_to_utc_and_slashed_dates_read(tmp_path):
    # TIMESYS (FITS time paper, Rots et al. 2015) puts DATE-OBS and MJD-OBS in its scale:
    # read as UTC, a TT time is 69.184 s late (2017) — a transit mid-time off by more
    # than a minute.  TAI is UTC + 37 s, GPS UTC + 18 s; LOCAL is not converted but said.
    # A time a UT keyword gives (UT, UT-OBS) or one written with Z is UTC whatever
    # TIMESYS says.  'YYYY/MM/DD' (year first, unambiguous) is read as an ISO date
    raw = tmp_path / "raw"
    raw.mkdir()
    base = {"IMAGETYP": "Light Frame", "EXPTIME": 60.0, "DATE-OBS": "2017-12-20T01:33:43"}
    cases = {"utc": {}, "tt": {"TIMESYS": "TT"}, "tai": {"TIMESYS": "TAI"},
             "gps": {"TIMESYS": "GPS"}, "mjd_tt": {"DATE-OBS": None, "MJD-OBS": 58107.0,
                                                  "TIMESYS": "TT"},
             "local": {"TIMESYS": "LOCAL"}, "slashed": {"DATE-OBS": "2017/12/20",
                                                        "UT": "01:33:43"},
             "tt_ut": {"DATE-OBS": "2017-12-20", "UT": "01:33:43", "TIMESYS": "TT"},
             "tt_z": {"DATE-OBS": "2017-12-20T01:33:43Z", "TIMESYS": "TT"}}
    for name, extra in cases.items():
        header = {k: v for k, v in {**base, **extra}.items() if v is not None}
        _write(raw / f"{name}.fits", header)
    table = build_inventory(raw_dir=raw, profile=profile("default")).set_index("frame")
    assert table.loc["utc", "date_obs"] == "2017-12-20T01:33:43.000"
    assert table.loc["utc", "reason"] == ""
    assert table.loc["tt", "date_obs"] == "2017-12-20T01:32:33.816"
    assert "TIMESYS = 'TT': converted to UTC (-69.184 s)" in table.loc["tt", "reason"]
    assert table.loc["tai", "date_obs"] == "2017-12-20T01:33:06.000"
    assert table.loc["gps", "date_obs"] == "2017-12-20T01:33:25.000"
    assert table.loc["mjd_tt", "mjd_obs"] == pytest.approx(58107.0 - 69.184 / 86400, abs=1e-9)
    assert table.loc["local", "date_obs"] == "2017-12-20T01:33:43.000"
    assert "TIMESYS = 'LOCAL' is not a time scale" in table.loc["local", "reason"]
    assert table.loc["slashed", "date_obs"] == "2017-12-20T01:33:43.000"
    assert table.loc["slashed", "reason"] == ""
    for name in ("tt_ut", "tt_z"):
        assert table.loc[name, "date_obs"] == "2017-12-20T01:33:43.000", name
        assert table.loc[name, "reason"] == "", name


def test_a_one_shot_colour_camera_is_said(tmp_path, caplog):
    import copy

    # BAYERPAT (N.I.N.A., SharpCap, ASI cameras, Seestar): the frames are reduced as 2x2
    # superpixels, and the inventory says so once in its log and per frame in `reason`
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(2):
        _write(raw / f"osc{i}.fits", {"IMAGETYP": "Light Frame", "EXPTIME": 30.0,
                                      "DATE-OBS": f"2024-01-02T03:0{i}:00", "BAYERPAT": "RGGB"})
    _write(raw / "mono.fits", {"IMAGETYP": "Light Frame", "EXPTIME": 30.0,
                               "DATE-OBS": "2024-01-02T03:05:00"})
    with caplog.at_level("WARNING", logger="ccdflow.inventory"):
        table = build_inventory(raw_dir=raw, profile=profile("default")).set_index("frame")
    assert (table["type"] == "science").all()
    assert ("one-shot colour mosaic (BAYERPAT = 'RGGB'): reduced as 2x2 superpixels"
            in table.loc["osc0", "reason"])
    assert table.loc["mono", "reason"] == ""
    assert "2 frame(s) are one-shot colour (Bayer) mosaics, e.g. osc0.fits" in caplog.text
    # a bias of the same camera without the keyword (lights-only BAYERPAT): said, with
    # the setting that reads every frame alike; with it set, nothing to say
    _write(raw / "bias.fits", {"IMAGETYP": "Bias Frame", "EXPTIME": 0.0,
                               "DATE-OBS": "2024-01-02T02:00:00"})
    caplog.clear()
    with caplog.at_level("WARNING", logger="ccdflow.inventory"):
        build_inventory(raw_dir=raw, profile=profile("default"))
    assert "1 bias frame(s) (e.g. bias.fits) have no colour-pattern keyword" in caplog.text
    assert "set detector.bayer.pattern" in caplog.text
    said = copy.deepcopy(profile("default"))
    said["detector"]["bayer"] = {"mode": "superpixel", "pattern": "RGGB"}
    caplog.clear()
    with caplog.at_level("WARNING", logger="ccdflow.inventory"):
        build_inventory(raw_dir=raw, profile=said)
    assert "no colour-pattern keyword" not in caplog.text


def test_too_few_calibration_frames_are_named_in_the_plan_error(small_night):
    # the bias frames exist but are fewer than min_frames: the error says so, not only
    # "no bias" (the set's frames and the minimum, so the user knows which knob)
    from ccdflow.plan import CalibrationError as PlanError
    from ccdflow.plan import calibration_sets, plan_calibrations

    inventory = build_inventory(raw_dir=small_night / "raw", profile=profile("demo"))
    n_bias = int((inventory["type"] == "bias").sum())
    sets = calibration_sets(inventory, min_frames={"bias": n_bias + 1, "dark": 1, "flat": 1})
    with pytest.raises(PlanError, match=rf"no bias within 30 d for .*fewer frames than "
                                        rf"calibration\.min_frames, not used: bias .*: "
                                        rf"{n_bias} frame\(s\) \(bias_001\.fits, .*minimum "
                                        rf"{n_bias + 1}"):
        plan_calibrations(inventory, sets=sets, max_age_days=30)


def test_calibrations_of_another_group_are_named_in_the_plan_error(small_night):
    # science frames read out as a subframe (another shape: another calibration group)
    # while the bias, darks and flats are full frames: the error says that sets exist for
    # the other group and why they are not used, not only "no bias"
    from ccdflow.plan import CalibrationError as PlanError
    from ccdflow.plan import calibration_sets, plan_calibrations

    def plan(inventory):
        sets = calibration_sets(inventory, min_frames={"bias": 1, "dark": 1, "flat": 1})
        return plan_calibrations(inventory, sets=sets, max_age_days=30)

    inventory = build_inventory(raw_dir=small_night / "raw", profile=profile("demo"))
    science = inventory["type"] == "science"
    full = inventory.loc[science, "group"].iloc[0]
    inventory.loc[science, "group"] = full.replace("_1x1_", "_2x2_")
    with pytest.raises(PlanError, match=rf"no bias within 30 d for .* \(of group "
                                        rf"{full.replace('_1x1_', '_2x2_')}; there are bias "
                                        rf"sets of group\(s\) {full}: a group is instrument, "
                                        rf"binning, shape and readout"):
        plan(inventory)
    # flats written 'V' and science 'v' (another program's spelling): maybe one filter
    inventory = build_inventory(raw_dir=small_night / "raw", profile=profile("demo"))
    inventory.loc[(inventory["filter"] == "V") & (inventory["type"] == "science"),
                  "filter"] = "v"
    with pytest.raises(PlanError, match=r"no flat in filter v within 30 d .* \(there are "
                                        r"flat sets in filter 'V': if that is the same "
                                        r"filter, map one name to the other with the "
                                        r"profile's filter_aliases\)"):
        plan(inventory)


def test_a_west_positive_header_longitude_sets_the_night_when_said():
    """A UTC time without an offset: the night boundary is local noon from the header's
    longitude.  LONGITUD = +111.6 written west-positive (MicroObservatory) read as east
    would put local noon 14.9 h off, and an evening frame on the wrong night; the
    profile's site.header_longitude: west reads it right (and a site's own longitude is
    always east-positive)."""
    from ccdflow.headertime import _utc_offset

    header = {"DATE-OBS": "2018-03-02T06:00:00", "LONGITUD": 111.5967}
    keywords = {"date_obs": ["DATE-OBS"], "longitude": ["SITELONG", "LONGITUD"]}
    east = _utc_offset(header, {"keywords": keywords})
    west = _utc_offset(header, {"keywords": keywords, "site": {"header_longitude": "west"}})
    assert east == pytest.approx(111.5967 / 15) and west == pytest.approx(-111.5967 / 15)
    stamp = datetime(2018, 3, 2, 6, 0, tzinfo=UTC)  # 22:33 local on 1 March; read east: 13:27
    assert observing_night(stamp, utc_offset_hours=west) == "2018-03-01"
    assert observing_night(stamp, utc_offset_hours=east) == "2018-03-02"
    site = {"keywords": keywords, "site": {"header_longitude": "west", "longitude_deg": 10.0}}
    assert _utc_offset({"DATE-OBS": "2018-03-02T06:00:00"}, site) == pytest.approx(10 / 15)


@pytest.mark.parametrize(("marks", "start"), [("start", "2018-03-02T03:00:00.000"),
                                              ("mid", "2018-03-02T02:57:30.000"),
                                              ("end", "2018-03-02T02:55:00.000")])
def test_a_date_keyword_that_marks_mid_or_end_gives_the_start(tmp_path, marks, start):
    """Software that writes the mid-exposure (or shutter-close) time in DATE-OBS: with
    timing.date_obs_marks the inventory's start (date_obs, mjd_obs) is that minus
    EXPTIME/2 (or EXPTIME), so every mid-exposure time and BJD after it is right; a
    300-s frame's would otherwise be 150 s late."""
    import copy

    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "f.fits", {"IMAGETYP": "Light Frame", "EXPTIME": 300.0,
                            "DATE-OBS": "2018-03-02T03:00:00"})
    prof = copy.deepcopy(profile("default"))
    prof["timing"] = {"date_obs_marks": marks}
    row = build_inventory(raw_dir=raw, profile=prof).iloc[0]
    assert row["date_obs"] == start
    expected = datetime.fromisoformat(start).replace(tzinfo=UTC)
    assert row["mjd_obs"] == pytest.approx((expected - datetime(1858, 11, 17, tzinfo=UTC))
                                           .total_seconds() / 86400.0, abs=1e-9)
