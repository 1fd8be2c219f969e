"""Real frames from ../shared/data reduce through their profiles alone (skip if absent)."""

from __future__ import annotations

import pytest

from ccdflow.inventory import build_inventory, read_frame_header

from .conftest import profile

pytestmark = pytest.mark.shared_data


def test_nickel_inventory(shared_data):
    table = build_inventory(raw_dir=shared_data / "nickel_lick_2024-05-13" / "raw",
                            profile=profile("nickel"))
    assert table["type"].value_counts().to_dict() == {"bias": 10, "science": 6, "flat": 3}
    assert set(table.loc[table["type"] != "bias", "filter"]) == {"V"}
    assert table["night"].unique().tolist() == ["2024-05-12"]  # Lick evening of May 12 (PDT)
    assert table["group"].nunique() == 1
    assert (table["reason"] == "").all()


def test_bsu_inventory_separates_ngc6760_night(shared_data):
    table = build_inventory(raw_dir=shared_data / "bsu_stxl6303_2022-10-29",
                            profile=profile("bsu_stxl6303"))
    counts = table.groupby(["type", "filter"]).size().to_dict()
    assert counts == {("dark", ""): 10, ("flat", "B"): 5, ("flat", "V"): 5,
                      ("science", "B"): 5, ("science", "V"): 13}
    ngc = table[table["file"].str.startswith("NGC6760")]
    assert len(ngc) == 3 and set(ngc["night"]) == {"2022-10-27"}
    rest = table[~table["file"].str.startswith("NGC6760")]
    assert set(rest["night"]) == {"2022-10-29"}  # darks at 22:11 UT and science at 01-02 UT
    assert table["exptime_s"].min() == 1.0


def test_singles_are_read_without_error(shared_data):
    table = build_inventory(raw_dir=shared_data / "singles", profile=profile("default"))
    assert len(table) == 2
    assert (table["type"] == "science").all()
    lco = table[table["file"].str.startswith("lco")].iloc[0]
    assert lco["n_ext"] == 4 and lco["shape"] == "522x544" and lco["filter"] == "w"
    assert lco["binning"] == "2x2"
    header, n_ext, _ = read_frame_header(
        shared_data / "singles" / "saao_1m_ste3_a8280271.fits")
    assert header["BIASSEC"].replace(" ", "") == "[4:13,1:520]" and n_ext == 1
