"""Bad raw files never stop a night (issue 11).

Unit level: :func:`ccdflow.integrity.check_fits_file` on every way a file can be
incomplete, the inventory rejecting such files with the reason and path, and a
batch job that loses one frame but makes the others.  Workflow level: a small
simulated night with a truncated science frame, a truncated bias among ten, a
zero-byte file, a 16-bit header over a float image of another shape, a text
file named .fits and an all-NaN frame reduces to the end.
"""

from __future__ import annotations

import bz2
import gzip
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from ccdflow.batch import (
    SUMMARY,
    failed_frames,
    missing_products,
    read_summary,
    series_products,
)
from ccdflow.chain import reduce_batch
from ccdflow.integrity import FitsIntegrityError, check_fits_file
from ccdflow.inventory import build_inventory
from ccdflow.simulate import simulate_night

from .conftest import SMALL_SPEC, profile, run_snakemake, write_masters


@pytest.fixture
def good_bytes(rng) -> bytes:
    data = rng.integers(0, 4096, size=(100, 120)).astype(np.uint16)
    header = fits.Header({"IMAGETYP": "Light Frame", "EXPTIME": 10.0,
                          "DATE-OBS": "2024-01-02T03:04:05", "FILTER": "V"})
    return _hdu_bytes(fits.PrimaryHDU(data, header=header))


def _hdu_bytes(hdu) -> bytes:
    import io

    buffer = io.BytesIO()
    hdu.writeto(buffer)
    return buffer.getvalue()


def _float_under_int16_header(shape_header=(1024, 1056), shape_data=(600, 600), seed=1) -> bytes:
    """A header saying BITPIX=16 of ``shape_header`` over float32 pixels of ``shape_data``."""
    header = fits.PrimaryHDU(np.zeros(shape_header, np.uint16)).header
    header["IMAGETYP"] = "Light Frame"
    header["EXPTIME"] = 10.0
    pixels = np.random.default_rng(seed).normal(size=shape_data).astype(">f4").tobytes()
    raw = header.tostring().encode() + pixels
    return raw + b"\0" * (-len(raw) % 2880)


def test_complete_files_pass(tmp_path, good_bytes):
    (tmp_path / "ok.fits").write_bytes(good_bytes)
    assert check_fits_file(tmp_path / "ok.fits") == 1
    # a writer that omits the final padding still wrote every pixel
    unpadded = good_bytes[: 2880 + 100 * 120 * 2]
    (tmp_path / "unpadded.fits").write_bytes(unpadded)
    assert check_fits_file(tmp_path / "unpadded.fits") == 1
    (tmp_path / "zeros.fits").write_bytes(good_bytes + b"\0" * 5760)  # trailing zero blocks
    assert check_fits_file(tmp_path / "zeros.fits") == 1
    with gzip.open(tmp_path / "ok.fits.gz", "wb") as handle:
        handle.write(good_bytes)
    assert check_fits_file(tmp_path / "ok.fits.gz") == 1
    with bz2.open(tmp_path / "ok.fits.bz2", "wb") as handle:
        handle.write(good_bytes)
    assert check_fits_file(tmp_path / "ok.fits.bz2") == 1
    mef = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((10, 12), np.int16)),
                        fits.ImageHDU(np.ones((10, 12), np.int16))])
    mef.writeto(tmp_path / "mef.fits")
    assert check_fits_file(tmp_path / "mef.fits") == 3
    fits.CompImageHDU(np.arange(1200, dtype=np.int32).reshape(30, 40)).writeto(
        tmp_path / "tile.fits.fz")
    assert check_fits_file(tmp_path / "tile.fits.fz") == 2


@pytest.mark.parametrize("name, make, message", [
    ("truncated", lambda b: b[: len(b) // 2],
     r"data of HDU 0 is truncated: its header declares 24000 bytes \(BITPIX=16, 120x100\), "
     r"the file holds 11520"),
    ("empty", lambda b: b"", r"empty file \(0 bytes\)"),
    ("text", lambda b: b"SIMPLE? no, this is a text file\n" * 100,
     r"not a FITS file \(it does not begin with SIMPLE =\)"),
    ("header_cut", lambda b: b[:1000], r"header of HDU 0 is truncated"),
    ("junk_after", lambda b: b + b"x" * 4000,
     r"bytes after the last HDU .* are not a FITS extension: the data unit is larger"),
])
def test_incomplete_files_are_named_with_the_problem(tmp_path, good_bytes, name, make, message):
    path = tmp_path / f"{name}.fits"
    path.write_bytes(make(good_bytes))
    with pytest.raises(FitsIntegrityError, match=message):
        check_fits_file(path)


def test_float_image_under_a_16_bit_header_is_caught(tmp_path):
    # fewer bytes than the header declares (600x600 float32 < 1056x1024 int16) ...
    (tmp_path / "small.fits").write_bytes(_float_under_int16_header())
    with pytest.raises(FitsIntegrityError, match=r"declares 2162688 bytes \(BITPIX=16, "
                       r"1056x1024\), the file holds 1440000"):
        check_fits_file(tmp_path / "small.fits")
    # ... or more (1200x1024 float32 > 1056x1024 int16)
    (tmp_path / "large.fits").write_bytes(_float_under_int16_header(shape_data=(1024, 1200)))
    with pytest.raises(FitsIntegrityError, match="larger than its header declares"):
        check_fits_file(tmp_path / "large.fits")


def test_truncated_extension_and_compressed_streams(tmp_path):
    mef = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((100, 120), np.int16)),
                        fits.ImageHDU(np.ones((100, 120), np.int16))])
    mef.writeto(tmp_path / "mef.fits")
    whole = (tmp_path / "mef.fits").read_bytes()
    (tmp_path / "mef_cut.fits").write_bytes(whole[:-5000])
    with pytest.raises(FitsIntegrityError, match="data of HDU 2 is truncated"):
        check_fits_file(tmp_path / "mef_cut.fits")
    with gzip.open(tmp_path / "short.fits.gz", "wb") as handle:
        handle.write(whole[:20000])  # a complete gzip stream of an incomplete file
    with pytest.raises(FitsIntegrityError, match="data of HDU 1 is truncated"):
        check_fits_file(tmp_path / "short.fits.gz")
    packed = gzip.compress(whole)
    (tmp_path / "cut.fits.gz").write_bytes(packed[: len(packed) // 2])  # a cut gzip stream
    with pytest.raises(EOFError):
        check_fits_file(tmp_path / "cut.fits.gz")


def test_inventory_rejects_bad_files_with_path_and_reason(tmp_path, good_bytes):
    raw = tmp_path / "raw"
    (raw / "sub").mkdir(parents=True)
    (raw / "good.fits").write_bytes(good_bytes)
    (raw / "sub" / "cut.fits").write_bytes(good_bytes[:9000])
    (raw / "zero.fits").write_bytes(b"")
    (raw / "notes.fits").write_text("observing log, not FITS\n" * 50)
    (raw / "float.fits").write_bytes(_float_under_int16_header())
    before = {p: p.read_bytes() for p in raw.rglob("*.fits")}
    table = build_inventory(raw_dir=raw, profile=profile("default")).set_index("file")
    assert table.loc["good.fits", "type"] == "science"
    expected = {"sub/cut.fits": "incomplete file sub/cut.fits: data of HDU 0 is truncated",
                "zero.fits": "incomplete file zero.fits: empty file (0 bytes)",
                "notes.fits": "incomplete file notes.fits: not a FITS file",
                "float.fits": "incomplete file float.fits: data of HDU 0 is truncated: its "
                              "header declares 2162688 bytes (BITPIX=16, 1056x1024)"}
    for file, reason in expected.items():
        assert table.loc[file, "type"] == "rejected", file
        assert table.loc[file, "rule"] == "incomplete", file
        assert table.loc[file, "reason"].startswith(reason), table.loc[file, "reason"]
    # the cut file's header survived: it still says what the frame was (its series and
    # night), so the light curves can name the frame they lack; the others say nothing
    cut = table.loc["sub/cut.fits"]
    assert (cut["filter"], cut["exptime_s"], cut["night"]) == ("V", 10.0, "2024-01-01")
    assert cut["date_obs"] == "2024-01-02T03:04:05.000" and cut["shape"] == "100x120"
    for file in ("zero.fits", "notes.fits"):
        assert (table.loc[file, "filter"], table.loc[file, "night"]) == ("", ""), file
    assert {p: p.read_bytes() for p in raw.rglob("*.fits")} == before  # raw files untouched


def test_frames_table_cannot_revive_an_incomplete_file(tmp_path, good_bytes):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "good.fits").write_bytes(good_bytes)
    (raw / "cut.fits").write_bytes(good_bytes[:9000])
    frames = tmp_path / "frames.tsv"
    frames.write_text("file\ttype\ncut.fits\tscience\n")
    table = build_inventory(raw_dir=raw, profile=profile("default"),
                            frames_table=frames).set_index("file")
    assert table.loc["cut.fits", "type"] == "rejected"


@pytest.fixture
def calibrated_batch(cal_masters, tmp_path):
    """A batch of three V frames whose second raw file was cut after the inventory,
    and a fourth whose pixels are all NaN."""
    m = cal_masters
    truth = m["truth"]
    science = truth.frames[(truth.frames["type"] == "science") & (truth.frames["filter"] == "V")]
    masters = write_masters(m, tmp_path)
    raws = [truth.raw_dir / f for f in science["file"]]
    cut = tmp_path / "cut.fits"
    cut.write_bytes(raws[0].read_bytes()[:50_000])
    with fits.open(raws[0]) as hdul:
        nan = fits.PrimaryHDU(np.full(hdul[0].data.shape, np.nan, np.float32),
                              header=hdul[0].header)
        nan.header.remove("BZERO", ignore_missing=True)
        nan.writeto(tmp_path / "nan.fits")
    items = [("ok1", raws[0]), ("cut", cut), ("ok2", raws[1]), ("nan", tmp_path / "nan.fits")]
    frames = [{"frame": name, "raw": str(path), **{k: str(v) for k, v in masters.items()}}
              for name, path in items]
    out = {s: tmp_path / s / "2024-01-01" / "V-000" for s in ("calibrated", "background",
                                                                "cosmics", "sources")}
    summaries = reduce_batch(frames=frames, detector=m["detector"],
                             steps=["bias", "dark", "flat"], subtract_dark=True,
                             background={"box_size": 32, "filter_size": 3}, cosmics={},
                             detect={}, out_dirs=out)
    return summaries, out, frames


def test_one_bad_frame_does_not_stop_its_batch(calibrated_batch, caplog):
    summaries, dirs, frames = calibrated_batch
    out = dirs["calibrated"]
    summary = summaries["calibrated"].set_index("frame")
    assert list(summary["status"]) == ["ok", "failed", "ok", "failed"]
    assert "cut.fits: pixel data cannot be read" in summary.loc["cut", "reason"]
    assert "no finite pixel in the raw data" in summary.loc["nan", "reason"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["ok1.fits", "ok2.fits", SUMMARY])
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no partial product"
    assert missing_products(out, frames=[f["frame"] for f in frames], suffix=".fits") == []
    # the later stages skip the lost frames, saying which stage lost them, and make the rest
    bkg = dirs["background"]
    for stage in ("background", "cosmics", "sources"):
        later = summaries[stage].set_index("frame")
        assert list(later["status"]) == ["ok", "skipped", "ok", "skipped"], stage
        assert later.loc["cut", "reason"].startswith("calibrated failed: CalibrationError: ")
    assert failed_frames([out, bkg]) == {
        name: f"calibrated failed: {summary.loc[name, 'reason']}" for name in ("cut", "nan")}
    present, absent = series_products({f["frame"]: bkg / f"{f['frame']}.fits" for f in frames})
    assert list(present) == ["ok1", "ok2"] and list(absent) == ["cut", "nan"]
    assert read_summary(bkg)["status"].tolist() == ["ok", "skipped", "ok", "skipped"]


# --------------------------------------------------------------------- workflow

def test_a_night_with_bad_files_reduces_to_the_end(tmp_path):
    """Every bad file of issue 11 in one night; the run finishes, nothing bad is used."""
    spec = replace(SMALL_SPEC, n_bias=10)
    simulate_night(out_dir=tmp_path / "night", spec=spec)
    raw = tmp_path / "night" / "raw"
    science = sorted(raw.glob("WASP-SIM_V_*.fits"))
    biases = sorted(raw.glob("bias_*.fits"))
    assert len(biases) == 10

    def cut(path):  # the raw files are read-only: replace, do not write into
        data = path.read_bytes()
        path.chmod(0o644)
        path.unlink()
        path.write_bytes(data[: len(data) // 2])

    cut(science[1])
    cut(biases[3])
    (raw / "zero.fits").write_bytes(b"")
    (raw / "observing_log.fits").write_text("22:10 clouds coming in\n" * 40)
    header = fits.getheader(science[0])
    ny, nx = header["NAXIS2"], header["NAXIS1"]
    float_header = fits.PrimaryHDU(np.zeros((ny, nx), np.uint16), header=header).header
    pixels = np.random.default_rng(2).normal(size=(ny // 2, nx)).astype(">f4").tobytes()
    blob = float_header.tostring().encode() + pixels[: ny * nx * 2 - 4000]
    (raw / "WASP-SIM_V_float.fits").write_bytes(blob + b"\0" * (-len(blob) % 2880))
    # complete and valid FITS, so it passes the inventory and fails in its batch job
    with fits.open(science[2]) as hdul:
        nan = fits.PrimaryHDU(np.full((ny, nx), np.nan, np.float32), header=hdul[0].header)
    nan.header["DATE-OBS"] = nan.header["DATE-OBS"][:-3] + "999"
    nan.header["MJD-OBS"] += 1e-5
    nan.writeto(raw / "WASP-SIM_V_nan.fits")
    # ... and a failed readout: every pixel 0 ADU, overscan included
    blank = fits.PrimaryHDU(np.zeros((ny, nx), np.uint16), header=header)
    blank.header["DATE-OBS"] = blank.header["DATE-OBS"][:-3] + "998"
    blank.header["MJD-OBS"] += 2e-5
    blank.writeto(raw / "WASP-SIM_V_blank.fits")

    out = run_snakemake(tmp_path, "--cores", "2",
                        config={"raw_dir": str(raw), "instrument": "demo"})
    text = out.stdout + out.stderr
    results = tmp_path / "results"
    inventory = pd.read_csv(results / "inventory.csv", keep_default_na=False).set_index("file")
    rejected = inventory[inventory["type"] == "rejected"]
    assert sorted(rejected.index) == sorted([science[1].name, biases[3].name, "zero.fits",
                                             "observing_log.fits", "WASP-SIM_V_float.fits"])
    for file, row in rejected.iterrows():
        assert row["reason"].startswith(f"incomplete file {file}: "), row["reason"]
    log = (results / "logs" / "inventory.log").read_text()
    assert f"{science[1].name}: rejected (incomplete file {science[1].name}: data of HDU 0 " \
           "is truncated" in log
    plan = pd.read_csv(results / "calibration_plan.csv")
    assert science[1].stem not in set(plan["frame"])
    bias_master = next(results.glob("masters/*/*/bias.fits"))
    assert fits.getheader(bias_master, 0)["NCOMBINE"] == 9  # the truncated one left out

    summaries = {stage: pd.concat([read_summary(d) for d in results.glob(f"{stage}/*/*")
                                   if (d / SUMMARY).is_file()]).set_index("frame")
                 for stage in ("calibrated", "background", "cosmics", "sources", "photometry")}
    bad = {"WASP-SIM_V_nan": "no finite pixel in the raw data",
           "WASP-SIM_V_blank": "every pixel of the image area is 0 e- after the overscan: "
                               "no signal and no read noise (a failed readout?)"}
    for frame, reason in bad.items():
        row = summaries["calibrated"].loc[frame]
        assert row["status"] == "failed" and reason in row["reason"], row["reason"]
        for stage in ("background", "cosmics", "sources", "photometry"):
            row = summaries[stage].loc[frame]
            assert row["status"] == "skipped" and row["reason"].startswith("calibrated failed: ")
        assert f"{frame}: FAILED, left out of this and later stages" in text
    for stage in ("background", "cosmics", "sources", "photometry"):
        others = summaries[stage].drop(index=list(bad))
        assert (others["status"] == "ok").all(), stage
    light = (results / "lightcurves" / "WASP-SIM_V.csv").read_text()
    # the truncated V frame's header placed it in the series: every light curve names it
    assert (f"# frame {science[1].stem} not measured: rejected by the inventory: incomplete "
            f"file {science[1].name}: data of HDU 0 is truncated") in light
    for frame in bad:
        assert f"# frame {frame} not measured: calibrated failed: CalibrationError" in light
        assert frame not in pd.read_csv(results / "lightcurves" / "WASP-SIM_V.csv",
                                        comment="#")["frame"].tolist()
    # the failed frame is not taken for a deleted product: the run is up to date
    again = run_snakemake(tmp_path, "-n", config={"raw_dir": str(raw), "instrument": "demo"})
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "marked stale" not in again.stdout + again.stderr
