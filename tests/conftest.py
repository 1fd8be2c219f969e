"""Shared fixtures: seeded generators, small simulated nights, the shared real data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ccdflow.config import load_profile
from ccdflow.simulate import NightSpec, simulate_night

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PROFILES = ROOT / "config" / "instruments"
SCHEMAS = ROOT / "workflow" / "schemas"

# A night small enough for unit tests (< 1 s to simulate), with every frame type.
SMALL_SPEC = NightSpec(nx=256, ny=256, n_bias=5, n_dark=3, n_flat=3,
                       science=(("V", 4), ("R", 2)), n_stars=40, seed=7)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261121)


@pytest.fixture(scope="session")
def small_night(tmp_path_factory) -> Path:
    """Directory with raw/ and truth/ of SMALL_SPEC (shared, read-only)."""
    return simulate_night(out_dir=tmp_path_factory.mktemp("night") / "small", spec=SMALL_SPEC)


def profile(name: str) -> dict:
    return load_profile(name, profiles_dir=PROFILES, schema=SCHEMAS / "instrument.schema.yaml")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample frames not available: {SHARED_DATA} is absent")
    return SHARED_DATA


# A night for calibration tests: enough frames per master for per-pixel statistics.
CAL_SPEC = NightSpec(nx=320, ny=300, n_bias=8, n_dark=5, n_flat=6,
                     science=(("V", 2), ("R", 1)), n_stars=50, seed=11)


@pytest.fixture(scope="session")
def cal_night(tmp_path_factory) -> Path:
    return simulate_night(out_dir=tmp_path_factory.mktemp("night") / "cal", spec=CAL_SPEC)


@pytest.fixture(scope="session")
def cal_masters(cal_night):
    """Master bias, dark, flat V and BPM of CAL_SPEC, made once."""
    from ccdflow.calibrate import (
        make_bad_pixel_mask,
        make_master_bias,
        make_master_dark,
        make_master_flat,
    )
    from ccdflow.simulate import load_truth

    truth = load_truth(cal_night)
    det = profile("demo")["detector"]
    frames = truth.frames

    def files(kind, filt=""):
        sel = (frames["type"] == kind) & ((frames["filter"] == filt) if filt else True)
        return [truth.raw_dir / f for f in frames.loc[sel, "file"]]

    bias = make_master_bias(paths=files("bias"), detector=det)
    dark = make_master_dark(paths=files("dark"), detector=det, bias=bias)
    flat = make_master_flat(paths=files("flat", "V"), detector=det, bias=bias, dark=dark)
    bpm = make_bad_pixel_mask(shape=bias.data.shape, detector=det, masters=[bias, dark, flat])
    return {"truth": truth, "detector": det, "bias": bias, "dark": dark, "flat": flat,
            "bpm": bpm, "files": files}


def write_masters(masters: dict, directory: Path) -> dict[str, Path]:
    """The bias, dark, flat and BPM of :func:`cal_masters` as files in ``directory``."""
    from ccdflow.products import write_mask, write_product

    paths = {}
    for kind in ("bias", "dark", "flat"):
        paths[kind] = directory / f"{kind}.fits"
        write_product(paths[kind], masters[kind], unit="electron")
    paths["bpm"] = directory / "bpm.fits"
    write_mask(paths["bpm"], masters["bpm"], inputs=[], step="test")
    return paths


@pytest.fixture(scope="session")
def cal_science_v(cal_masters):
    """(truth row, calibrated product) of the first V science frame of CAL_SPEC."""
    from ccdflow.calibrate import calibrate_science

    m = cal_masters
    truth = m["truth"]
    row = truth.frames[(truth.frames["type"] == "science") & (truth.frames["filter"] == "V")
                       ].iloc[0]
    product = calibrate_science(path=truth.raw_dir / row["file"], detector=m["detector"],
                                bias=m["bias"], dark=m["dark"], flat=m["flat"],
                                bad_pixel_mask=m["bpm"])
    return row, product


def product(results: Path, stage: str, frame: str, suffix: str = ".fits") -> Path:
    """Product of one frame from a per-frame stage: ``<stage>/<night>/<batch>/<frame><suffix>``."""
    found = list(Path(results).glob(f"{stage}/*/*/{frame}{suffix}"))
    assert len(found) == 1, f"{stage} product of {frame}: {found}"
    return found[0]


def run_snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True):
    """Run the workflow's CLI in ``workdir``; ``config`` goes through --configfile."""
    import yaml

    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), *args]
    if config is not None:
        path = workdir / "test-config.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


# The demo night at its smallest: 128² frames, 3 per filter, 40 stars.
TINY_DEMO = {"dir": "demo", "seed": 5, "size": 128, "n_science": 3, "n_stars": 40}


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """Working directory of one complete local run of the tiny demo night (read-only:
    tests that change it work on a copy, see :func:`copy_run`)."""
    work = tmp_path_factory.mktemp("tiny_demo")
    run_snakemake(work, "--cores", "2", config={"demo": TINY_DEMO})
    return work


def copy_run(src: Path, dst: Path) -> Path:
    """Copy a run's directory with its Snakemake metadata and file times."""
    import shutil

    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
    return dst


#: header keywords that may differ between two reductions of the same data
VOLATILE_KEYWORDS = {"DATE-RED", "CHECKSUM", "DATASUM"}


def assert_same_results(a: Path, b: Path) -> int:
    """Every product of run ``a`` exists in run ``b`` with identical pixel data and tables.

    FITS: every HDU's data equal (NaN = NaN) and headers equal but for the
    processing date; ``batch-summary.tsv``: equal but for the ``seconds`` column;
    every other table and ECSV: identical text.  Logs and Snakemake's markers are
    not compared, nor the inventory's header cache.  Returns the number of files compared.
    """
    import pandas as pd
    from astropy.io import fits

    def products(root):
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()
                      and not {"logs", "cache"} & set(p.relative_to(root).parts)
                      and p.name != ".snakemake_timestamp")

    files, other = products(a), products(b)
    assert files, f"no products under {a}"
    assert files == other, set(files) ^ set(other)
    for rel in files:
        pa, pb = a / rel, b / rel
        if rel.suffix == ".fits":
            with fits.open(pa) as ha, fits.open(pb) as hb:
                assert len(ha) == len(hb), rel
                for x, y in zip(ha, hb, strict=True):
                    if x.data is not None or y.data is not None:
                        assert np.array_equal(x.data, y.data, equal_nan=True), (rel, x.name)
                    kx = {k: v for k, v in x.header.items() if k not in VOLATILE_KEYWORDS}
                    ky = {k: v for k, v in y.header.items() if k not in VOLATILE_KEYWORDS}
                    assert kx == ky, (rel, x.name, set(kx.items()) ^ set(ky.items()))
        elif rel.name == "batch-summary.tsv":
            ta = pd.read_csv(pa, sep="\t", comment="#").drop(columns="seconds")
            tb = pd.read_csv(pb, sep="\t", comment="#").drop(columns="seconds")
            pd.testing.assert_frame_equal(ta, tb, obj=str(rel))
        elif rel.suffix == ".png":
            assert pb.stat().st_size > 0, rel  # figures: made, not compared pixel by pixel
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel
    return len(files)
