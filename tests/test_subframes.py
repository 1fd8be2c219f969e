"""Subframes (a region of interest read out for speed, XORGSUBF/YORGSUBF) calibrated
with the masters of the full frame, cut at the subframe's origin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from ccdflow.calibrate import cut_master, make_bad_pixel_mask
from ccdflow.errors import CalibrationError
from ccdflow.inventory import build_inventory
from ccdflow.masks import MaskBit
from ccdflow.plan import calibration_sets, plan_calibrations
from ccdflow.products import Product, read_product, write_product
from ccdflow.simulate import NightSpec, simulate_night

from .conftest import PROFILES, product, run_snakemake

#: the demo camera read without overscan (a CMOS-like camera): raw pixels are the
#: product's, so a subframe is a cut of the full frame
NO_OVERSCAN_PROFILE = (PROFILES / "demo.yaml").read_text().replace(
    "overscan: {from: biassec, function: mean}", "overscan: {from: none}").replace(
    "trim: {from: trimsec}", "trim: {from: full}\n  bad_columns: [61, 12]")
SPEC = NightSpec(nx=256, ny=256, n_bias=5, n_dark=3, n_flat=3, science=(("V", 3),),
                 n_stars=40, seed=7)
ORIGIN = (40, 64)  # x, y of the subframe on the detector (0-based)
SUB_SHAPE = (128, 160)  # ny, nx


def _without_overscan(night: Path, full: Path, sub: Path) -> list[str]:
    """The night's raw frames as a camera without overscan writes them, into ``full``;
    into ``sub`` the same, but the science frames read out as the subframe at ORIGIN.
    Returns the science frames' names."""
    full.mkdir(parents=True)
    sub.mkdir(parents=True)
    science = []
    (x0, y0), (ny, nx) = ORIGIN, SUB_SHAPE
    for path in sorted((night / "raw").glob("*.fits")):
        with fits.open(path) as hdul:
            header = hdul[0].header.copy()
            data = hdul[0].data[:, :SPEC.nx].copy()
        for key in ("BIASSEC", "TRIMSEC", "DATASEC"):
            header.remove(key, ignore_missing=True)
        fits.PrimaryHDU(data, header=header).writeto(full / path.name)
        if str(header["IMAGETYP"]).lower() == "light frame":
            science.append(path.stem)
            header["XORGSUBF"], header["YORGSUBF"] = x0, y0
            data = data[y0:y0 + ny, x0:x0 + nx]
        fits.PrimaryHDU(data, header=header).writeto(sub / path.name)
    return science


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    base = tmp_path_factory.mktemp("subframes")
    night = simulate_night(out_dir=base / "night", spec=SPEC)
    science = _without_overscan(night, base / "full" / "raw", base / "sub" / "raw")
    (base / "camera.yaml").write_text(NO_OVERSCAN_PROFILE)
    return base, science


def _profile(base: Path) -> dict:
    from ccdflow.config import load_profile

    return load_profile(str(base / "camera.yaml"), profiles_dir=PROFILES,
                        schema=PROFILES.parents[1] / "workflow" / "schemas"
                        / "instrument.schema.yaml")


def test_plan_takes_a_subframes_masters_from_the_full_frame_that_encloses_it(nights):
    base, science = nights
    inventory = build_inventory(raw_dir=base / "sub" / "raw", profile=_profile(base))
    sci = inventory[inventory["type"] == "science"]
    cal = inventory[inventory["type"] != "science"]
    assert (sci["subframe_x0"] == ORIGIN[0]).all() and (sci["subframe_y0"] == ORIGIN[1]).all()
    assert (cal["subframe_x0"] == 0).all()
    (sub_group,), (full_group,) = set(sci["group"]), set(cal["group"])
    assert sub_group.endswith(f"_at{ORIGIN[0]}-{ORIGIN[1]}") and "128x160" in sub_group
    sets = calibration_sets(inventory, min_frames={"bias": 3, "dark": 3, "flat": 3})
    plan = plan_calibrations(inventory, sets=sets, max_age_days=30, cut_subframes=True)
    assert sorted(plan["frame"]) == science
    for kind in ("bias", "dark", "flat"):
        assert (plan[f"{kind}_group"] == full_group).all()
        assert (plan[f"{kind}_x0"] == ORIGIN[0]).all() and (plan[f"{kind}_y0"] == ORIGIN[1]).all()
    assert plan["note"].str.contains(f"bias cut from group {full_group} at x 40, y 64").all()
    # a profile with an overscan or a trim section does not cut (the cut would not be
    # the subframe's pixels): the error says so
    with pytest.raises(CalibrationError, match=r"no bias .*subframe is cut from a full-frame "
                                               r"master only when the profile has no "
                                               r"overscan"):
        plan_calibrations(inventory, sets=sets, max_age_days=30)


def _master(rng, shape, n_used=True) -> Product:
    header = fits.Header({"IMAGETYP": "flat", "LTV1": -2.0})
    return Product(data=rng.normal(1, 0.01, shape).astype(np.float32),
                   error=rng.uniform(0, 1, shape).astype(np.float32),
                   mask=rng.integers(0, 2**16, shape).astype(np.uint16), header=header,
                   extras={"NUSED": rng.integers(0, 9, shape).astype(np.uint16)}
                   if n_used else {})


def test_cut_master_is_every_plane_at_the_subframes_pixels(rng, tmp_path):
    master = _master(rng, (60, 80))
    write_product(tmp_path / "flat.fits", master, unit="")
    before = (tmp_path / "flat.fits").read_bytes()
    shape = cut_master(master_path=tmp_path / "flat.fits", output_path=tmp_path / "cut.fits",
                       origin_xy=(12, 30), raw_shape=(60, 80), subframe_shape=(20, 50))
    assert shape == (20, 50)
    assert (tmp_path / "flat.fits").read_bytes() == before  # the master is not touched
    cut = read_product(tmp_path / "cut.fits")
    rows, cols = slice(30, 50), slice(12, 62)
    np.testing.assert_array_equal(cut.data, master.data[rows, cols])
    np.testing.assert_array_equal(cut.error, master.error[rows, cols])
    np.testing.assert_array_equal(cut.mask, master.mask[rows, cols])
    with fits.open(tmp_path / "cut.fits") as hdul:
        np.testing.assert_array_equal(hdul["NUSED"].data, master.extras["NUSED"][rows, cols])
        assert hdul[0].header["LTV1"] == -14.0 and hdul[0].header["LTV2"] == -30.0
        assert hdul[0].header["CCDFSTEP"] == "master_cut"
        assert hdul[0].header["INPUT001"] == "flat.fits"


def test_cut_master_keeps_a_colour_mosaics_phase_and_stays_inside(rng, tmp_path):
    # a colour camera's master is 2x2 superpixels: half the raw frame
    write_product(tmp_path / "flat.fits", _master(rng, (30, 40), n_used=False), unit="")
    kw = dict(master_path=tmp_path / "flat.fits", output_path=tmp_path / "cut.fits",
              raw_shape=(60, 80))
    assert cut_master(origin_xy=(12, 30), subframe_shape=(20, 50), **kw) == (10, 25)
    with pytest.raises(CalibrationError, match="multiples of 2"):
        cut_master(origin_xy=(13, 30), subframe_shape=(20, 50), **kw)
    with pytest.raises(CalibrationError, match="not inside the full frame of 60x80"):
        cut_master(origin_xy=(40, 30), subframe_shape=(20, 50), **kw)
    assert not (tmp_path / "cut.fits").exists() or read_product(
        tmp_path / "cut.fits").data.shape == (10, 25)  # no partial file from the errors


def test_bad_pixel_mask_moves_the_profiles_positions_to_the_subframe():
    detector = {"bad_columns": [61, 12], "bad_rows": [70], "bad_pixels": [[45, 100], [1, 1]],
                "bad_regions": ["[30:45,60:66]"]}
    mask = make_bad_pixel_mask(shape=SUB_SHAPE, detector=detector, origin=ORIGIN)
    bad = (mask & MaskBit.BAD) != 0
    expected = np.zeros(SUB_SHAPE, bool)
    expected[:, 61 - 1 - 40] = True  # column 61 of the detector (1-based)
    expected[70 - 1 - 64, :] = True
    expected[100 - 1 - 64, 45 - 1 - 40] = True
    expected[0:66 - 64, 0:45 - 40] = True  # the region's part on the subframe
    np.testing.assert_array_equal(bad, expected)  # column 12 and pixel (1, 1) are off it
    with pytest.raises(CalibrationError, match=r"bad_columns: column 200 outside 1\.\.160"):
        make_bad_pixel_mask(shape=SUB_SHAPE, detector={"bad_columns": [200]})


def test_a_subframe_night_reduces_like_the_full_frame_cut(nights):
    """The same night reduced twice: science frames read out whole, and as a 160x128
    subframe at x 40, y 64 beside full-frame calibrations.  Calibration is per pixel, so
    the subframe's calibrated pixels are the full frame's at the same place, bit for bit
    (the profile's bad column 61 is column 21 of the subframe)."""
    base, science = nights
    results = {}
    for name in ("full", "sub"):
        work = base / name / "work"
        work.mkdir()
        run_snakemake(work, "--cores", "2", config={
            "raw_dir": str(base / name / "raw"), "instrument": str(base / "camera.yaml")})
        results[name] = work / "results"
    plan = pd.read_csv(results["sub"] / "calibration_plan.csv")
    assert plan["note"].str.contains("cut from group").all()
    assert len(list(results["sub"].glob("masters/*/*/subframe/*.fits"))) == 3  # bias, dark, flat
    (x0, y0), (ny, nx) = ORIGIN, SUB_SHAPE
    for frame in science:
        with fits.open(product(results["full"], "calibrated", frame)) as full, \
                fits.open(product(results["sub"], "calibrated", frame)) as sub:
            for plane in ("SCI", "ERR"):
                np.testing.assert_array_equal(sub[plane].data,
                                              full[plane].data[y0:y0 + ny, x0:x0 + nx])
            bpm_bits = int(MaskBit.BAD | MaskBit.HOT | MaskBit.SATURATED)
            np.testing.assert_array_equal(
                sub["MASK"].data & bpm_bits,
                full["MASK"].data[y0:y0 + ny, x0:x0 + nx] & bpm_bits)
            assert ((sub["MASK"].data[:, 61 - 1 - x0] & MaskBit.BAD) != 0).all()
    assert len(list(results["sub"].glob("photometry/*/*/*.csv"))) == len(science)
