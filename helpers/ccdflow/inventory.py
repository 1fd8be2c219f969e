"""Inventory of a raw directory: find, read headers only, classify, group.

Every file found is listed: a frame that no rule recognises is ``unknown`` and
a file that cannot be read as FITS, or whose header and data units are not
complete (:mod:`ccdflow.integrity`: truncated, empty, not FITS, more data than
the header declares), is ``rejected``, both with the reason naming the file.
Rejected files take no part in any later stage.
Raw files are opened read-only and never written.

Columns of the inventory table
------------------------------
frame        unique product name: the file stem, disambiguated (see :func:`frame_names`)
file         path relative to ``raw_dir``
type         bias | dark | flat | science | unknown | rejected
rule         what decided the type (profile rule, fallback or frames table)
reason       why a frame is unknown/rejected, or what is missing in its header
filter       filter name after ``filter_aliases`` ("" for bias/dark)
exptime_s    exposure time in seconds (NaN when absent)
object, instrument, readout
binning      "XxY", e.g. "2x2"
shape        "NAXIS2xNAXIS1" of the (first) image HDU
n_ext        number of image HDUs (amplifiers) with data
date_obs     ISO UTC start of exposure ("" when absent)
mjd_obs      MJD (UTC) of the start of exposure
night        YYYY-MM-DD of the evening the night began (local-noon boundary)
night_source header | filename | frames table
group        calibration group key: instrument, binning, shape, readout, amplifiers, and
             ``at<x0>-<y0>`` for a subframe read out away from the detector's corner
subframe_x0, subframe_y0
             origin of a subframe on the detector (XORGSUBF/YORGSUBF, binned pixels,
             0-based; 0 for a full frame)
size_bytes   file size
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .classify import _norm, classify, observing_mode
from .config import bayer_channel, superpixel_mosaics
from .groups import group_fields
from .headertime import (
    _MJD0,
    _as_float,
    _first,
    _night_from_filename,
    _parse_time,
    _utc_offset,
    observing_night,
)
from .integrity import FitsIntegrityError, check_fits_file

log = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "FRAME_TYPES",
    "InventoryError",
    "build_inventory",
    "classify",
    "find_raw_files",
    "frame_names",
    "observing_night",
    "read_frame_header",
    "read_inventory",
]

FRAME_TYPES = ("bias", "dark", "flat", "arc", "science", "unknown", "rejected")
COMPRESSION = (".fz", ".gz", ".bz2")
COLUMNS = [
    "frame", "file", "type", "rule", "reason", "filter", "exptime_s", "object", "instrument",
    "readout", "binning", "shape", "n_ext", "date_obs", "mjd_obs", "night", "night_source",
    "group", "size_bytes", "mode", "subframe_x0", "subframe_y0",
]
#: version of what a header-cache row holds (2: files are checked for completeness;
#: 4: colour mosaics are noted; 5: a truncated file keeps what its header says;
#: 6: subframe origins, times converted from TIMESYS)
_CACHE_FORMAT = 6
#: the note a one-shot colour frame's ``reason`` carries (and the inventory's log counts)
_COLOUR_MOSAIC = "one-shot colour mosaic"


class InventoryError(ValueError):
    """The raw directory or the frames table cannot be inventoried; the message says why."""


def find_raw_files(*, raw_dir: str | Path, extensions: Sequence[str] = (".fits", ".fit", ".fts"),
                   ) -> list[Path]:
    """Paths (relative to ``raw_dir``, sorted) of the FITS files below ``raw_dir``.

    A name matches when it ends with one of ``extensions`` (case-insensitive),
    optionally followed by ``.fz``, ``.gz`` or ``.bz2``; ``name.fz`` also
    matches.  Hidden files and directories are skipped.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.exists():
        raise InventoryError(f"raw_dir {raw_dir} does not exist")
    if not raw_dir.is_dir():
        raise InventoryError(f"raw_dir {raw_dir} is not a directory")
    exts = tuple(e.lower() for e in extensions)
    endings = exts + tuple(e + c for e in exts for c in COMPRESSION) + (".fz",)
    found = []
    for root, dirs, files in os.walk(raw_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(endings):
                found.append((Path(root) / name).relative_to(raw_dir))
    return sorted(found, key=lambda p: p.as_posix())


def _stem(path: Path) -> str:
    name = path.name
    for suffix in COMPRESSION:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ext.lower() in {"fits", "fit", "fts"} else name


def frame_names(files: Iterable[str | Path]) -> list[str]:
    """Unique, filesystem- and wildcard-safe frame names for relative raw paths.

    The name is the file stem (``d1001`` for ``raw/d1001.fits.fz``) with any
    character outside ``[A-Za-z0-9._+-]`` replaced by ``_``.  When several files
    share a name, each of them gets ``-`` and the first 6 hex digits of the
    SHA-1 of its relative path appended: deterministic, and independent of
    which other files are present.
    """
    paths = [Path(f) for f in files]
    base = [re.sub(r"[^A-Za-z0-9._+-]", "_", _stem(p)) or "frame" for p in paths]
    counts = Counter(base)
    return [
        f"{b}-{hashlib.sha1(p.as_posix().encode()).hexdigest()[:6]}" if counts[b] > 1 else b
        for b, p in zip(base, paths, strict=True)
    ]


def read_frame_header(path: str | Path) -> tuple[Mapping, int, tuple[int, int]]:
    """Read the headers of a raw file (no pixel data) read-only.

    Returns the merged header (first image HDU's header overlaid with the
    primary header's non-structural cards, so that keywords of a
    multi-extension or tile-compressed file are all visible), the number of
    image HDUs, and the ``(ny, nx)`` shape of the first one.

    Raises
    ------
    OSError, ValueError
        The file is not FITS or has no 2-D image; the message says which.
    """
    from astropy.io import fits  # here: the Snakemake process imports this module

    from .ccd import image_hdus, merged_header, plane_count

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, mode="readonly", memmap=False, lazy_load_hdus=True) as hdul:
            headers = [hdu.header for hdu in image_hdus(hdul)]
            if not headers:
                raise ValueError("no image HDU with two dimensions")
            if (planes := plane_count(headers[0])) > 1:
                raise ValueError(f"a data cube of {planes} planes (NAXIS = "
                                 f"{headers[0]['NAXIS']}): ccdflow reduces one image per "
                                 "file; split the cube into frames")
            merged = merged_header(hdul[0].header, headers[0])
            shape = (int(headers[0]["NAXIS2"]), int(headers[0]["NAXIS1"]))
            return merged, len(headers), shape


def _describe(path: Path, relpath: Path, profile: Mapping) -> dict[str, Any]:
    row: dict[str, Any] = {"file": relpath.as_posix(), "reason": "", "size_bytes": None}
    try:
        row["size_bytes"] = path.stat().st_size
        check_fits_file(path)
        header, n_ext, shape = read_frame_header(path)
    except Exception as exc:  # a bad file is listed and rejected, never dropped
        message = " ".join(str(exc).split()) or type(exc).__name__
        kind = "incomplete" if isinstance(exc, FitsIntegrityError) else "unreadable"
        detail = message if kind == "incomplete" else f"{type(exc).__name__}: {message}"
        rejected = {"type": "rejected", "rule": kind,
                    "reason": f"{kind} file {relpath.as_posix()}: {detail}"}
        return {**row, **_rejected_header_fields(path, relpath, profile, kind), **rejected}
    return {**row, **_header_fields(header, n_ext, shape, relpath, profile)}


def _rejected_header_fields(path: Path, relpath: Path, profile: Mapping,
                            kind: str) -> dict[str, Any]:
    """What a rejected file's header still says.  A truncated file (one being written,
    or cut off in a copy) usually keeps its header: its object, filter, time and night
    place it in its series, so the light curves and summaries name the frame they
    lack.  Nothing for an unreadable file."""
    if kind != "incomplete":
        return {}
    try:
        header, n_ext, shape = read_frame_header(path)
        return _header_fields(header, n_ext, shape, relpath, profile)
    except Exception:  # the header itself is cut: the file stays only its name
        return {}


def _header_fields(header: Mapping, n_ext: int, shape: tuple[int, int], relpath: Path,
                   profile: Mapping) -> dict[str, Any]:
    """The inventory columns of one readable header."""
    keywords = profile.get("keywords", {})
    ftype, rule = classify(header=header, profile=profile)
    problems = [] if ftype != "unknown" else [rule]
    exptime = _as_float(_first(header, keywords.get("exptime", [])))
    if exptime is None:
        problems.append("no exposure time keyword " + "/".join(keywords.get("exptime", [])))
    raw_filter = _first(header, keywords.get("filter", []))
    aliases = {_norm(k): v for k, v in profile.get("filter_aliases", {}).items()}
    filt = "" if raw_filter is None else str(raw_filter).strip()
    filt = aliases.get(_norm(filt), filt)
    stamp, time_notes = _parse_time(header, keywords)
    marks = profile.get("timing", {}).get("date_obs_marks", "start")
    if stamp is not None and marks != "start" and exptime is not None:
        stamp -= timedelta(seconds=exptime * (0.5 if marks == "mid" else 1.0))
    if stamp is None:
        problems.append("no observation time (" + "/".join(keywords.get("date_obs", [])) + ")"
                        + "".join(f"; {n}" for n in time_notes))
    elif time_notes:
        problems.append("; ".join(time_notes))
    bayer = next((k for k in keywords.get("bayer_pattern", [])
                  if isinstance(_first(header, [k]), str)), None)
    if bayer is not None:
        problems.append(f"{_COLOUR_MOSAIC} ({bayer} = '{_first(header, [bayer])}'): reduced "
                        + _mosaic_reduction(profile.get("detector", {})))
    night = _night_from_filename(relpath, profile.get("night", {}))
    night_source = "filename" if night else "header"
    if night is None and stamp is not None:
        night = observing_night(stamp, utc_offset_hours=_utc_offset(header, profile))
    fields = group_fields(header, keywords=keywords, n_ext=n_ext, shape=shape,
                          default_instrument=profile.get("name", ""))
    return dict(
        type=ftype, rule=rule if ftype != "unknown" else "", reason="; ".join(problems),
        filter=filt if ftype not in ("bias", "dark") else "", exptime_s=exptime,
        object=str(_first(header, keywords.get("object", [])) or ""),
        n_ext=n_ext, date_obs=stamp.isoformat(timespec="milliseconds")[:23] if stamp else "",
        mjd_obs=(stamp - _MJD0).total_seconds() / 86400.0 if stamp else None,
        night=night or "", night_source=night_source if night else "",
        mode=observing_mode(header=header, profile=profile), **fields,
    )


def _read_frames_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InventoryError(f"frames table {path} does not exist")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    missing = {"file", "type"} - set(table.columns)
    if missing:
        raise InventoryError(f"frames table {path} lacks column(s) {sorted(missing)}")
    unknown_cols = set(table.columns) - {"file", "type", "filter", "night", "mode"}
    if unknown_cols:
        raise InventoryError(f"frames table {path} has unknown column(s) {sorted(unknown_cols)}; "
                             "allowed: file, type, filter, night, mode")
    if "mode" in table:
        bad_modes = table.loc[~table["mode"].isin(["", "imaging", "spectroscopy"])]
        if len(bad_modes):
            row = bad_modes.iloc[0]
            raise InventoryError(f"frames table {path}: mode {row['mode']!r} for {row['file']!r} "
                                 "is not imaging or spectroscopy")
    bad = table.loc[~table["type"].isin(["bias", "dark", "flat", "arc", "science", "rejected"])]
    if len(bad):
        row = bad.iloc[0]
        raise InventoryError(f"frames table {path}: type {row['type']!r} for {row['file']!r} is "
                             "not one of bias, dark, flat, arc, science, rejected")
    if "night" in table:
        nights = table["night"]
        bad_nights = nights[(nights != "") & ~nights.str.match(r"^\d{4}-\d{2}-\d{2}$")]
        if len(bad_nights):
            raise InventoryError(f"frames table {path}: night {bad_nights.iloc[0]!r} "
                                 "is not YYYY-MM-DD")
    return table


def _load_cache(path: Path | None, key: str) -> dict[str, dict]:
    import json

    if path is None or not path.is_file():
        return {}
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # a damaged cache is only a slower run
        log.warning("header cache %s unreadable (%s): reading every header", path, exc)
        return {}
    return cached.get("rows", {}) if cached.get("key") == key else {}


def _save_cache(path: Path | None, key: str, rows: Mapping[str, dict]) -> None:
    import json

    from .io import atomic_path

    if path is None:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"key": key, "rows": rows}, default=str))


def build_inventory(*, raw_dir: str | Path, profile: Mapping,
                    frames_table: str | Path | None = None,
                    extensions: Sequence[str] = (".fits", ".fit", ".fts"),
                    cache: str | Path | None = None) -> pd.DataFrame:
    """Inventory every FITS file below ``raw_dir`` (see the module docstring for columns).

    Parameters
    ----------
    raw_dir : path
        Directory scanned recursively; opened read-only.
    profile : mapping
        A validated instrument profile (:func:`ccdflow.config.load_profile`).
    frames_table : path, optional
        TSV overriding ``type`` (and optionally ``filter``, ``night``) per file;
        ``file`` is the path relative to ``raw_dir`` or the frame name.
    extensions : sequence of str
        FITS name endings (compressed variants are added).
    cache : path, optional
        JSON file of what each file's header gave, keyed on its relative path,
        size and modification time (and on the profile and software version):
        a rerun reads only the headers of new or changed files.  Rewritten
        after every inventory.

    Returns
    -------
    pandas.DataFrame
        Sorted by observation time, then file (files without a time last).

    Raises
    ------
    InventoryError
        ``raw_dir`` missing, not a directory, or holding no FITS file; a frames
        table that names a file not found or has a bad value.
    """
    raw_dir = Path(raw_dir)
    files = find_raw_files(raw_dir=raw_dir, extensions=extensions)
    if not files:
        raise InventoryError(
            f"raw_dir {raw_dir} holds no FITS files (looked for "
            f"{', '.join(extensions)}, optionally compressed .fz/.gz/.bz2)")
    from . import __version__
    from .products import param_hash

    key = f"{__version__}:{_CACHE_FORMAT}:{param_hash(dict(profile))}"
    cache = Path(cache) if cache else None
    cached = _load_cache(cache, key)
    rows, fresh, n_read = [], {}, 0
    for rel in files:
        path = raw_dir / rel
        try:
            stat = path.stat()
            stamp = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            stamp = None
        hit = cached.get(rel.as_posix())
        if stamp is not None and hit is not None and hit["stamp"] == stamp:
            row = hit["row"]
        else:
            row = _describe(path, rel, profile)
            n_read += 1
        rows.append(row)
        if stamp is not None:
            fresh[rel.as_posix()] = {"stamp": stamp, "row": row}
    _save_cache(cache, key, fresh)
    if cache is not None:
        log.info("headers read: %d of %d files (the rest unchanged, from %s)", n_read,
                 len(files), cache)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table["frame"] = frame_names(files)
    for col in ("filter", "object", "instrument", "readout", "binning", "shape", "date_obs",
                "night", "night_source", "group", "rule", "reason"):
        table[col] = table[col].fillna("").astype(str)
    table["mode"] = table["mode"].fillna("imaging").replace("", "imaging").astype(str)
    table[["subframe_x0", "subframe_y0"]] = table[["subframe_x0", "subframe_y0"]].fillna(0)
    if frames_table:
        overrides = _read_frames_table(frames_table)
        for _, over in overrides.iterrows():
            hit = (table["file"] == over["file"]) | (table["frame"] == over["file"])
            if not hit.any():
                raise InventoryError(f"frames table {frames_table} names {over['file']!r}, "
                                     f"which is not a FITS file below {raw_dir}")
            broken = hit & table["rule"].isin(["incomplete", "unreadable"])
            if broken.any() and over["type"] != "rejected":
                log.warning("frames table %s: %s stays rejected (%s)", frames_table,
                            over["file"], table.loc[broken, "reason"].iloc[0])
                hit &= ~broken
            table.loc[hit, "type"] = over["type"]
            table.loc[hit, "rule"] = f"frames table {Path(frames_table).name}"
            for col in ("filter", "night", "mode"):
                if over.get(col, ""):
                    table.loc[hit, col] = over[col]
                    if col == "night":
                        table.loc[hit, "night_source"] = "frames table"
            if over["type"] != "rejected":
                table.loc[hit & table["reason"].str.startswith("no classification"), "reason"] = ""
    table = table.assign(_t=table["mjd_obs"].fillna(np.inf)).sort_values(
        ["_t", "file"], kind="stable").drop(columns="_t").reset_index(drop=True)
    counts = table["type"].value_counts().to_dict()
    log.info("inventory of %s: %d files, %s", raw_dir, len(table),
             ", ".join(f"{counts.get(t, 0)} {t}" for t in FRAME_TYPES))
    for _, row in table[table["type"].isin(["unknown", "rejected"])].iterrows():
        log.warning("%s: %s (%s)", row["file"], row["type"], row["reason"])
    colour = table["reason"].str.contains(_COLOUR_MOSAIC, regex=False)
    if colour.any():
        _log_mosaics(table, colour, profile.get("detector", {}))
        _warn_mixed_mosaics(table, colour, profile)
    return table


def _mosaic_reduction(detector: Mapping) -> str:
    """How a colour-mosaic frame is reduced, for its inventory row."""
    channel = bayer_channel(detector)
    if channel:
        return f"as 2x2 superpixels of its {channel} plane, half the resolution"
    if superpixel_mosaics(detector):
        return "as 2x2 superpixels (R+G+G+B), half the resolution"
    return "as a monochrome image, every star's colours mixed"


def _log_mosaics(table: pd.DataFrame, colour: pd.Series, detector: Mapping) -> None:
    """Say once how the night's colour-mosaic frames are reduced (:func:`_mosaic_reduction`):
    as information for one colour plane, as a warning when every star's light mixes the
    mosaic's colours, with the setting that keeps one plane."""
    mode = detector.get("bayer", {}).get("mode", "superpixel")
    said = (f"{int(colour.sum())} frame(s) are one-shot colour (Bayer) mosaics, e.g. "
            f"{table.loc[colour, 'file'].iloc[0]}: reduced {_mosaic_reduction(detector)} "
            f"(detector.bayer.mode {mode}"
            + ("; pixel positions in the config stay full-frame)"
               if superpixel_mosaics(detector) else ")"))
    if bayer_channel(detector):
        log.info("%s", said)
    else:
        log.warning("%s: every star's light mixes the mosaic's colours (a broad, white "
                    "band); for single-band photometry set detector.bayer.mode green (or "
                    "red, blue)", said)


def _warn_mixed_mosaics(table: pd.DataFrame, colour: pd.Series, profile: Mapping) -> None:
    """Calibration frames without the colour keyword in a group whose light frames have
    it (some capture programs write BAYERPAT on lights only): their masters would be
    full-frame, the lights superpixels.  Say which setting makes them alike."""
    detector = profile.get("detector", {})
    if detector.get("bayer", {}).get("pattern") or not superpixel_mosaics(detector):
        return
    frames = table["type"].isin(["bias", "dark", "flat", "science"])
    for group, rows in table[frames].groupby("group"):
        plain = rows[~colour[rows.index] & (rows["type"] != "science")]
        if colour[rows.index].any() and len(plain):
            log.warning("calibration group %s: %d %s frame(s) (e.g. %s) have no colour-"
                        "pattern keyword while its colour frames do: their masters would not "
                        "be superpixels and would not fit; set detector.bayer.pattern (e.g. "
                        "RGGB) in the profile so every frame is read alike", group, len(plain),
                        "/".join(sorted(set(plain["type"]))), plain["file"].iloc[0])


_NUMERIC = {"exptime_s", "mjd_obs", "n_ext", "size_bytes", "subframe_x0", "subframe_y0"}


def read_inventory(path: str | Path) -> pd.DataFrame:
    """Read ``inventory.csv`` back with the right types ("" stays "" in text columns)."""
    table = pd.read_csv(path, dtype={c: str for c in COLUMNS if c not in _NUMERIC},
                        keep_default_na=False, na_values={c: [""] for c in _NUMERIC})
    if "mode" not in table:  # an inventory of an older version: all imaging
        table["mode"] = "imaging"
    for column in ("subframe_x0", "subframe_y0"):  # older versions: full frames
        if column not in table:
            table[column] = 0
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise InventoryError(f"{path} is not an inventory table (missing {sorted(missing)})")
    return table
