"""ccdflow.ecsv beside astropy's ECSV reader and writer, on the same tables."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from ccdflow import ecsv

UNITS = {"x": "pix", "flux": "electron", "area": "pix2"}


def _table(rng, n=200) -> pd.DataFrame:
    """Every column kind ccdflow writes, with the awkward values of each."""
    x = rng.uniform(0, 4096, n)
    x[:6] = [np.nan, np.inf, -np.inf, 1e16, 1.2345678901234568e-17, 0.0]
    flux = 10 ** rng.uniform(-3, 8, n)
    f32 = rng.normal(0, 1, n).astype(np.float32)
    f32[3] = np.nan
    names = np.array([f"star {i}" if i % 7 == 0 else f"s{i}" for i in range(n)], dtype=object)
    names[:5] = ["", 'q"uote', "nan", "None", "#hash"]
    return pd.DataFrame({"source_id": np.arange(1, n + 1), "name": names, "x": x,
                         "flux": flux, "roundness": f32, "area": rng.integers(0, 99, n),
                         "small": rng.integers(0, 9, n).astype(np.uint16),
                         "saturated": rng.random(n) < 0.2})


META = {"frame": "WASP-SIM_V_003", "fwhm_px": np.float64(3.2867355701110923),
        "n_sources": np.int64(110), "shape": (1024, 1024), "note": "", "flag": True,
        "none": None, "targets": [{"name": "WASP-SIM", "ra": 157.5, "dec": 20.1}],
        "comparison_ids": {}, "text": "it's: a note, with # and \"quotes\""}


def _astropy_text(frame, meta, units) -> str:
    table = Table.from_pandas(frame)
    table.meta.update(meta)
    for name, unit in units.items():
        table[name].unit = unit
    out = io.StringIO()
    table.write(out, format="ascii.ecsv")
    return out.getvalue()


def _body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def _assert_frames_equal(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    assert list(ours.columns) == list(theirs.columns)
    for name in ours.columns:
        a, b = ours[name].to_numpy(), theirs[name].to_numpy()
        if b.dtype.kind in "US":
            b = b.astype(object)
        assert a.dtype == b.dtype, name
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=name)  # NaN equals NaN here
        else:
            assert list(a) == list(b), name


def test_body_is_astropys_byte_for_byte(tmp_path, rng):
    frame = _table(rng)
    ours = tmp_path / "ours.ecsv"
    ecsv.write_ecsv(ours, frame, meta=META, units=UNITS)
    # the data rows (and the column-name row) are what astropy writes, to the byte:
    # shortest round-trip floats, NaN as a masked "" field, strings quoted where needed
    assert _body(ours.read_text()) == _body(_astropy_text(frame, META, UNITS))


def test_astropy_reads_ours_as_it_reads_its_own(tmp_path, rng):
    frame = _table(rng)
    path = tmp_path / "ours.ecsv"
    ecsv.write_ecsv(path, frame, meta=META, units=UNITS)
    ours = Table.read(path, format="ascii.ecsv")
    theirs = Table.read(_astropy_text(frame, META, UNITS), format="ascii.ecsv")
    assert ours.colnames == theirs.colnames
    for name in ours.colnames:
        assert ours[name].dtype == theirs[name].dtype, name
        assert ours[name].unit == theirs[name].unit, name
        assert np.array_equal(np.ma.getmaskarray(ours[name]), np.ma.getmaskarray(theirs[name]))
        np.testing.assert_array_equal(np.asarray(ours[name]), np.asarray(theirs[name]),
                                      err_msg=name)
    # astropy writes a tuple with a Python tag, ours as a list: the values are the same
    assert {**dict(theirs.meta), "shape": list(theirs.meta["shape"])} == dict(ours.meta)


@pytest.mark.parametrize("writer", ["astropy", "ccdflow"])
def test_read_equals_astropys_read(tmp_path, rng, writer):
    frame = _table(rng)
    path = tmp_path / "t.ecsv"
    if writer == "astropy":  # files written by earlier ccdflow versions: !!omap, !!python/tuple
        path.write_text(_astropy_text(frame, META, UNITS))
    else:
        ecsv.write_ecsv(path, frame, meta=META, units=UNITS)
    ours, meta = ecsv.read_ecsv(path)
    theirs, their_meta = ecsv._astropy_read(path)
    _assert_frames_equal(ours, theirs)
    assert meta == their_meta
    # and both give back what was written (NaN stays NaN, '' stays '')
    _assert_frames_equal(ours, frame)


def test_empty_table_round_trip(tmp_path):
    frame = pd.DataFrame({"source_id": np.zeros(0, np.int64), "x": np.zeros(0),
                          "name": np.zeros(0, dtype=object)})
    path = tmp_path / "empty.ecsv"
    ecsv.write_ecsv(path, frame, meta={"n_sources": 0}, units={"x": "pix"})
    ours, meta = ecsv.read_ecsv(path)
    assert list(ours.columns) == ["source_id", "x", "name"] and len(ours) == 0
    assert meta == {"n_sources": 0}
    assert len(Table.read(path, format="ascii.ecsv")) == 0


def test_what_it_does_not_know_goes_through_astropy(tmp_path):
    import astropy.units as u

    lines = pd.DataFrame({"name": ["two\nlines", "one"], "x": [1.0, 2.0]})
    ecsv.write_ecsv(tmp_path / "lines.ecsv", lines)  # a line break in a field: astropy
    back, _ = ecsv.read_ecsv(tmp_path / "lines.ecsv")
    assert list(back["name"]) == ["two\nlines", "one"]
    frame = pd.DataFrame({"x": [1.0, 2.0], "n": pd.array([1, None], dtype="Int64")})
    path = tmp_path / "odd.ecsv"
    ecsv.write_ecsv(path, frame, meta={"exptime": 30 * u.s})  # a Quantity: astropy's tag
    assert "!astropy.units.Quantity" in path.read_text()
    ours, meta = ecsv.read_ecsv(path)  # the safe loader refuses the tag: astropy reads it
    assert meta["exptime"] == 30 * u.s
    np.testing.assert_array_equal(ours["x"], [1.0, 2.0])


def test_input_not_mutated_and_units_checked(tmp_path, rng):
    frame = _table(rng, n=10).set_index("source_id", drop=False)
    before = frame.copy()
    ecsv.write_ecsv(tmp_path / "t.ecsv", frame, meta=META, units=UNITS)
    pd.testing.assert_frame_equal(frame, before)
    with pytest.raises(ValueError, match=r"units name column\(s\) \['nope'\]"):
        ecsv.write_ecsv(tmp_path / "u.ecsv", frame, units={"nope": "pix"})


def test_plain_tables_never_import_astropy_table(tmp_path, rng):
    """The point of the module: a job that reads the reference or writes source lists
    does not pay astropy.table's import (0.25 s alone, 0.09 s after astropy.io.fits)."""
    import subprocess
    import sys

    path = tmp_path / "t.ecsv"
    ecsv.write_ecsv(path, _table(rng), meta=META, units=UNITS)
    code = ("import sys, pandas as pd; from ccdflow.ecsv import read_ecsv, write_ecsv; "
            f"t, m = read_ecsv({str(path)!r}); write_ecsv({str(tmp_path / 'u.ecsv')!r}, t, "
            "meta=m, units={'x': 'pix'}); print(sorted(k for k in sys.modules "
            "if k.startswith('astropy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
