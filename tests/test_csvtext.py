"""ccdflow.csvtext and io.write_table: pandas' own ``to_csv`` bytes, faster."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ccdflow.csvtext import csv_text
from ccdflow.io import write_table


@pytest.fixture
def rng():
    return np.random.default_rng(20261206)


def _plain_table(rng, n: int = 300) -> pd.DataFrame:
    """Every kind of column csv_text formats, with the values that trip formatters up."""
    floats = rng.normal(size=n) * 10.0 ** rng.integers(-30, 30, n)
    edge = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e16, 1e15, 9999999999999998.0, 1e-4, 1e-5,
            5e-324, 1.7976931348623157e308, 0.1, 1.0, 100.0]
    floats[: len(edge)] = edge[:n]
    words = np.array(["star", "", "a,b", 'say "hi"', "tab\there", " lead", "ünï", "#x"],
                     dtype=object)
    text = words[rng.integers(0, len(words), n)]
    text[3] = None
    text[4] = np.nan
    return pd.DataFrame({
        "flux": floats,
        "x": rng.normal(100, 30, n).astype(np.float32),
        "half": rng.normal(size=n).astype(np.float16),
        "id": rng.integers(-(2**62), 2**62, n),
        "n": rng.integers(0, 255, n).astype(np.uint8),
        "usable": rng.random(n) > 0.5,
        "name": text,
        "a,b": np.arange(n),
        'q"uote': np.full(n, np.nan),
    })


@pytest.mark.parametrize("sep", [",", "\t"])
def test_csv_text_is_pandas_byte_for_byte(rng, sep):
    table = _plain_table(rng)
    before = table.copy()
    assert csv_text(table, sep=sep) == table.to_csv(index=False, sep=sep)
    pd.testing.assert_frame_equal(table, before)  # input not mutated


def test_csv_text_empty_and_one_row(rng):
    table = _plain_table(rng, n=20)
    for part in (table.iloc[:0], table.iloc[:1]):
        assert csv_text(part) == part.to_csv(index=False)


@pytest.mark.parametrize("frame", [
    pd.DataFrame({"only": [1.0, np.nan]}),  # one column: csv quotes an empty lone field
    pd.DataFrame({"a": pd.array([1, None], dtype="Int64"), "b": [1, 2]}),
    pd.DataFrame({"a": pd.Categorical(["x", "y"]), "b": [1, 2]}),
    pd.DataFrame({"a": pd.to_datetime(["2026-01-01", "2026-01-02"]), "b": [1, 2]}),
    pd.DataFrame({"a": ["line\nbreak", "x"], "b": [1, 2]}),
    pd.DataFrame({"a": [1, "x"], "b": [1, 2]}),  # an object column holding an int
    pd.DataFrame({0: [1.0, 2.0], 1: [1, 2]}),  # labels that are not strings
])
def test_csv_text_leaves_other_columns_to_pandas(frame):
    assert csv_text(frame) is None


def test_csv_text_refuses_a_bad_separator():
    with pytest.raises(ValueError, match="sep must be one character"):
        csv_text(pd.DataFrame({"a": [1], "b": [2]}), sep='"')


@pytest.mark.parametrize("fast", [True, False])
def test_write_table_writes_what_pandas_writes(rng, tmp_path, fast):
    table = _plain_table(rng, n=40)
    if not fast:  # a nullable integer column: the whole table goes through pandas
        table["count"] = pd.array(range(40), dtype="Int64")
    assert (csv_text(table) is not None) == fast
    comments = ["ccdflow test", "two\nlines"]
    write_table(table, tmp_path / "t.csv", comments=comments)
    write_table(table, tmp_path / "t.tsv", comments=comments, sep="\t")
    head = "# ccdflow test\n# two\n# lines\n"
    assert (tmp_path / "t.csv").read_text() == head + table.to_csv(index=False)
    assert (tmp_path / "t.tsv").read_text() == head + table.to_csv(index=False, sep="\t")
    back = pd.read_csv(tmp_path / "t.csv", comment="#", keep_default_na=False,
                       na_values={"flux": [""], 'q"uote': [""]})
    np.testing.assert_array_equal(back["flux"].to_numpy(), table["flux"].to_numpy())
    np.testing.assert_array_equal(back["id"].to_numpy(), table["id"].to_numpy())


@pytest.mark.parametrize("sep", [",", "\t"])
def test_record_text_is_pandas_one_row_byte_for_byte(sep):
    # a one-row report (the detector report) written without importing pandas: the bytes
    # pandas writes for DataFrame([record]), with every plain kind of value
    from ccdflow.csvtext import record_text

    record = {"night": "2026-03-14", "group": "ccd_1x1, normal", "gain": 1.2345678901234,
              "gain32": np.float32(0.1), "n_pairs": 3, "n64": np.int64(-7), "ok": True,
              "flag": np.bool_(False), "missing": float("nan"), "none": None,
              "quoted": 'say "hi"', "big": 1e300, "tiny": 5e-324, "zero": -0.0}
    expected = pd.DataFrame([record]).to_csv(index=False, sep=sep)
    assert record_text(record, sep=sep) == expected
    # what it does not format it leaves to pandas
    assert record_text({"a": 1, "b": [1, 2]}) is None
    assert record_text({"a": 1}) is None


def test_write_record_writes_what_write_table_writes(tmp_path):
    from ccdflow.io import write_record

    for record in ({"night": "n", "gain": 1.5, "warn": ""}, {"night": "n", "list": [1, 2]}):
        write_record(record, tmp_path / "fast.csv")
        write_table(pd.DataFrame([record]), tmp_path / "pandas.csv")
        assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
