"""ECSV tables (source lists, the photometric reference) without importing astropy.table.

A photometry or light-curve job reads one ECSV reference and a frames job writes one
source list per frame; through ``astropy.table`` that costs 0.25 s of import per job
(0.09 s when ``astropy.io.fits`` is already loaded) and 25-40 ms per file. The tables
ccdflow writes are plain: scalar columns of ints, floats, bools and strings, a YAML
``meta`` of numbers, strings, lists and mappings. For those, :func:`write_ecsv` writes
the body byte for byte as astropy's ``Table.from_pandas(...).write(format='ascii.ecsv')``
does (NaN floats as empty, masked, fields; strings quoted where they must be) and a
header astropy reads to the same columns, units and meta; :func:`read_ecsv` reads such a
file (and those astropy wrote before) to what ``Table.read`` gives, as a DataFrame.
Anything else (an object column, a multidimensional or complex column, a meta value
YAML's safe dumper does not know, a tag the safe loader does not know) goes through
astropy, so nothing is lost. ``tests/test_ecsv.py`` shows astropy's result beside these.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["read_ecsv", "write_ecsv"]

_NUMERIC = {f"{kind}{bits}" for kind in ("int", "uint") for bits in (8, 16, 32, 64)} | {
    "float16", "float32", "float64", "bool"}


class _Fallback(Exception):
    """The table or its meta needs astropy."""


# ----------------------------------------------------------------------------- writing

def _plain(value: Any) -> Any:
    """``value`` as plain YAML data (tuples and arrays become lists); _Fallback if not."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float
        return _plain(value.item())
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise _Fallback("meta mapping with a key that is not a string")
        return {k: _plain(v) for k, v in value.items()}
    raise _Fallback(f"meta value of type {type(value).__name__}")


def _datatype(series: pd.Series) -> str:
    kind, name = series.dtype.kind, series.dtype.name
    if kind in "iufb" and name in _NUMERIC:
        return "bool" if kind == "b" else name
    if kind == "O" and all(isinstance(v, str) and "\n" not in v and "\r" not in v
                           for v in series):
        return "string"  # (a line break inside a field: astropy's writer and reader)
    raise _Fallback(f"column {series.name!r} of dtype {series.dtype}")


def _quoted(text: str, *, first: bool = False) -> str:
    """A string field as astropy writes it (quoted when empty or holding a space, tab,
    newline or quote), and also quoted when it would start a line with '#' (a comment)."""
    if text == "" or any(c in text for c in ' "\t\n\r') or (first and text[:1] == "#"):
        return '"' + text.replace('"', '""') + '"'
    return text


def _field_strings(series: pd.Series, datatype: str, *, first: bool) -> list[str]:
    from .csvtext import number_strings

    values = series.to_numpy()
    if datatype == "string":
        return [_quoted(v, first=first) for v in values]
    return number_strings(values, na='""')  # a masked (NaN) float: astropy's ""


def _header(columns: list[tuple[str, str, str | None]], meta: Mapping) -> str:
    import yaml

    entries = []
    for name, datatype, unit in columns:
        entry = {"name": name}
        if unit:
            entry["unit"] = unit
        entry["datatype"] = datatype
        entries.append(entry)
    header: dict[str, Any] = {"datatype": entries}
    if meta:
        header["meta"] = _plain(dict(meta))
    header["schema"] = "astropy-2.0"
    text = yaml.safe_dump(header, sort_keys=False, default_flow_style=None, width=10**9,
                          allow_unicode=True)
    lines = ["# %ECSV 1.0", "# ---", *(f"# {line}" for line in text.splitlines())]
    return "\n".join(lines) + "\n"


def _fast_text(frame: pd.DataFrame, meta: Mapping, units: Mapping[str, str]) -> str:
    if not all(isinstance(c, str) for c in frame.columns) or frame.columns.duplicated().any():
        raise _Fallback("column names must be distinct strings")
    columns, fields = [], []
    for i, name in enumerate(frame.columns):
        series = frame[name]
        datatype = _datatype(series)
        columns.append((name, datatype, units.get(name)))
        fields.append(_field_strings(series, datatype, first=i == 0))
    body = io.StringIO()
    body.write(_header(columns, meta))
    body.write(" ".join(_quoted(name) for name in frame.columns) + "\n")
    for row in zip(*fields, strict=True):
        body.write(" ".join(row) + "\n")
    return body.getvalue()


def _astropy_text(frame: pd.DataFrame, meta: Mapping, units: Mapping[str, str]) -> str:
    from astropy.table import Table

    table = Table.from_pandas(frame)
    table.meta.update(dict(meta))
    for name, unit in units.items():
        table[name].unit = unit
    out = io.StringIO()
    table.write(out, format="ascii.ecsv")
    return out.getvalue()


def write_ecsv(path: str | Path, frame: pd.DataFrame, *, meta: Mapping | None = None,
               units: Mapping[str, str] | None = None) -> None:
    """Write ``frame`` as ECSV 1.0 at ``path`` (not atomically: callers use
    :func:`ccdflow.io.atomic_path`).

    Parameters
    ----------
    path : path
        Output file.
    frame : DataFrame
        Columns of bool, int, uint, float or str values (NaN floats are written as
        missing, as astropy's ``Table.from_pandas`` masks them); the index is not written.
    meta : mapping, optional
        The header's ``meta`` (numbers, strings, None, lists, tuples, mappings; numpy
        scalars and arrays become plain numbers and lists).
    units : mapping, optional
        Unit of a column by name (e.g. ``{'x': 'pix'}``).
    """
    units = dict(units or {})
    unknown = set(units) - set(frame.columns)
    if unknown:
        raise ValueError(f"units name column(s) {sorted(unknown)} not in the table")
    frame = frame.reset_index(drop=True)
    try:
        text = _fast_text(frame, meta or {}, units)
    except _Fallback:
        text = _astropy_text(frame, meta or {}, units)
    Path(path).write_text(text)


# ----------------------------------------------------------------------------- reading

def _loader():
    import yaml

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        """Safe YAML plus the tuple tag astropy writes for tuples in meta."""

    def tuple_(loader, node):
        return tuple(loader.construct_sequence(node, deep=True))

    Loader.add_constructor("tag:yaml.org,2002:python/tuple", tuple_)
    return Loader


def _split(path: Path) -> tuple[dict, list[str]]:
    import yaml

    text = path.read_text()
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# %ECSV"):
        raise _Fallback("not an ECSV file")
    header = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in lines[1:]
              if ln.startswith("#")]
    if not header or header[0].strip() != "---":
        raise _Fallback("no YAML header")
    try:
        spec = yaml.load("\n".join(header[1:]), Loader=_loader())
    except yaml.YAMLError as exc:  # a tag the safe loader does not know
        raise _Fallback(str(exc)) from exc
    data = [ln for ln in lines[1:] if not ln.startswith("#") and ln.strip()]
    return spec, data


def _meta(value: Any) -> dict:
    if isinstance(value, list):  # !!omap: a list of (key, value) pairs
        return {k: v for k, v in value}
    return dict(value or {})


def _column(values: list[str], datatype: str, name: str) -> np.ndarray:
    if datatype == "string":
        return np.array(values, dtype=object)
    if datatype == "bool":
        if not set(values) <= {"True", "False"}:
            raise _Fallback(f"column {name!r}: bool values other than True/False")
        return np.array([v == "True" for v in values], dtype=bool)
    if datatype.startswith("float"):
        text = np.array(values, dtype=str)
        text[text == ""] = "nan"
        return text.astype(datatype)
    if "" in values:
        raise _Fallback(f"column {name!r}: missing integers")
    return np.array([int(v) for v in values], dtype=datatype)


def _fast_read(path: Path) -> tuple[pd.DataFrame, dict]:
    spec, data = _split(path)
    if not isinstance(spec, dict) or spec.get("delimiter", " ") != " ":
        raise _Fallback("a delimiter other than a space")
    columns = spec.get("datatype") or []
    for column in columns:
        if column.get("datatype") not in _NUMERIC | {"string"} or "subtype" in column:
            raise _Fallback(f"column {column.get('name')!r}: {column.get('datatype')}")
    names = [c["name"] for c in columns]
    if any(line.count('"') % 2 for line in data):  # a quoted field holds a line break
        raise _Fallback("a field spans lines")
    rows = list(csv.reader(data, delimiter=" ", quotechar='"', doublequote=True,
                           strict=True))
    if not rows or rows[0] != names:
        raise _Fallback("the column-name row does not match the header")
    if any(len(r) != len(names) for r in rows[1:]):
        raise _Fallback("a row with the wrong number of fields")
    by_column = list(zip(*rows[1:], strict=True)) if len(rows) > 1 else [() for _ in names]
    frame = pd.DataFrame({c["name"]: _column(list(v), c["datatype"], c["name"])
                          for c, v in zip(columns, by_column, strict=True)})
    return frame, _meta(spec.get("meta"))


def _astropy_read(path: Path) -> tuple[pd.DataFrame, dict]:
    from astropy.table import Table

    table = Table.read(path, format="ascii.ecsv")

    def column(col) -> np.ndarray:  # masked floats as NaN, masked strings as ''
        if not hasattr(col, "filled"):
            return np.asarray(col)
        if col.dtype.kind in "fc":
            return np.asarray(col.filled(np.nan))
        if col.dtype.kind in "US":
            return np.asarray(col.filled(""))
        return np.asarray(col.filled())

    frame = pd.DataFrame({c: column(table[c]) for c in table.colnames})
    for name in frame.columns:
        if frame[name].dtype.kind in "US":
            frame[name] = frame[name].astype(object)
    return frame, dict(table.meta)


def read_ecsv(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read an ECSV table: (DataFrame, meta).

    Missing floats are NaN and missing strings ``''``, as ccdflow has always read them
    through astropy; string columns hold Python ``str`` (object dtype). Files with
    columns or meta beyond plain scalars and YAML are read by astropy (same result).
    """
    path = Path(path)
    try:
        return _fast_read(path)
    except (_Fallback, csv.Error, ValueError):
        return _astropy_read(path)
