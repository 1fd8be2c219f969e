"""The simulator's truth must describe its raw frames: read both back and compare."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from ccdflow.simulate import (
    NightSpec,
    load_truth,
    main,
    render_gaussian_stars,
    simulate_night,
    transit_factor,
)

from .conftest import SMALL_SPEC


def _raw(truth, frame):
    path = truth.raw_dir / f"{frame}.fits"
    return fits.getdata(path).astype(float), fits.getheader(path)


def test_raw_frames_are_camera_like(small_night):
    truth = load_truth(small_night)
    n_expected = (SMALL_SPEC.n_bias + SMALL_SPEC.n_dark
                  + SMALL_SPEC.n_flat * len(SMALL_SPEC.filters)
                  + sum(c for _, c in SMALL_SPEC.science))
    files = sorted(truth.raw_dir.glob("*.fits"))
    assert len(files) == len(truth.frames) == n_expected
    with fits.open(files[0]) as hdul:
        raw = hdul[0]
        assert raw.header["BITPIX"] == 16 and raw.header["BZERO"] == 32768
        assert raw.data.dtype == np.uint16
        assert raw.data.shape == (SMALL_SPEC.ny, SMALL_SPEC.nx + SMALL_SPEC.overscan_cols)
        for key in ("IMAGETYP", "EXPTIME", "DATE-OBS", "GAIN", "RDNOISE", "BIASSEC", "TRIMSEC",
                    "SITELAT", "SITELONG"):
            assert key in raw.header, key
    assert all(not (f.stat().st_mode & 0o222) for f in files), "raw frames must be read-only"
    science = truth.frames[truth.frames["type"] == "science"]
    assert set(science["filter"]) == {"V", "R"}
    assert set(truth.frames["type"]) == {"bias", "dark", "flat", "science"}


def test_overscan_carries_level_and_row_drift(small_night):
    """Overscan row means = level + drift[y] within read noise / sqrt(n_cols)."""
    truth = load_truth(small_night)
    gain, rn = truth.meta["gain_e_per_adu"], truth.meta["read_noise_e"]
    for i, row in truth.frames.iterrows():
        data, _ = _raw(truth, row["frame"])
        over = data[:, SMALL_SPEC.nx + 4:]
        expected = row["bias_level_adu"] + truth.row_drift_adu[i]
        resid = over.mean(axis=1) - expected
        sigma = np.sqrt((rn / gain) ** 2 + 1 / 12) / np.sqrt(over.shape[1])  # + rounding
        assert abs(resid.mean()) < 5 * sigma / np.sqrt(len(resid))
        assert resid.std() == pytest.approx(sigma, rel=0.15)


def test_bias_frames_equal_pattern_plus_overscan_level(small_night):
    """Mean of (bias - overscan level) over N frames = pattern, noise RN/gain/sqrt(N)."""
    truth = load_truth(small_night)
    bias = truth.frames[truth.frames["type"] == "bias"]
    stack = []
    for i, row in bias.iterrows():
        data, _ = _raw(truth, row["frame"])
        level = row["bias_level_adu"] + truth.row_drift_adu[i][:, None]
        stack.append(data[:, : SMALL_SPEC.nx] - level)
    resid = np.mean(stack, axis=0) - truth.bias_pattern_adu
    expected = np.hypot(truth.meta["read_noise_e"] / truth.meta["gain_e_per_adu"],
                        np.sqrt(1 / 12)) / np.sqrt(len(stack))
    assert abs(resid.mean()) < 5 * expected / np.sqrt(resid.size)
    assert resid.std() == pytest.approx(expected, rel=0.05)


def test_cosmic_ray_pixels_stand_out_in_darks(small_night):
    """Every truth CR pixel of a dark exceeds the pixel's expected level by most of its charge."""
    truth = load_truth(small_night)
    gain = truth.meta["gain_e_per_adu"]
    dark_frames = truth.frames[truth.frames["type"] == "dark"]
    n_checked = 0
    for i, row in dark_frames.iterrows():
        data, _ = _raw(truth, row["frame"])
        expected = (row["bias_level_adu"] + truth.row_drift_adu[i][:, None]
                    + truth.bias_pattern_adu
                    + truth.dark_rate_e_per_s * row["exptime_s"] / gain)
        hits = truth.cosmics[truth.cosmics["frame"] == row["frame"]]
        excess_e = (data[: , : SMALL_SPEC.nx] - expected)[hits["y"], hits["x"]] * gain
        # CR charge >~ 500 e-; Poisson of a hot pixel (<= 3e4 e-) is <= ~170 e-, RN 7.5 e-
        ok = excess_e > 0.5 * hits["electrons"].to_numpy() - 6 * np.sqrt(
            truth.dark_rate_e_per_s[hits["y"], hits["x"]] * row["exptime_s"] + 60)
        assert ok.mean() > 0.99
        assert truth.cosmic_mask(row["frame"]).sum() == len(hits)
        n_checked += len(hits)
    assert n_checked > 10


def test_stars_and_transit_in_science_truth(small_night):
    truth = load_truth(small_night)
    sci = truth.frames[truth.frames["type"] == "science"]
    per_frame = truth.star_frames.groupby("frame").size()
    assert set(per_frame.index) == set(sci["frame"])
    assert (per_frame == len(truth.stars)).all()
    assert truth.stars["is_target"].sum() == 1
    # brightest star is recovered in the raw frame at its truth position (peak within 1 px)
    row = sci.iloc[0]
    data, header = _raw(truth, row["frame"])
    sf = truth.star_frames[truth.star_frames["frame"] == row["frame"]]
    bright = sf.loc[sf["flux_e"].idxmax()]
    y, x = round(bright["y"]), round(bright["x"])
    box = data[y - 3: y + 4, x - 3: x + 4]
    dy, dx = np.unravel_index(np.argmax(box), box.shape)
    assert abs(dx - 3) <= 1 and abs(dy - 3) <= 1
    # flux in a big box minus sky ~ truth flux (within 5 sigma of Poisson + sky noise)
    sub = data[y - 12: y + 13, x - 12: x + 13]
    sky_adu = np.median(data[:, : SMALL_SPEC.nx])
    if (sub < 65535).all():
        flux_e = (sub - sky_adu).sum() * truth.meta["gain_e_per_adu"]
        flat_here = truth.flats[row["filter"]][y, x]
        assert flux_e == pytest.approx(bright["flux_e"] * flat_here, rel=0.05)
    # WCS in the header maps the truth sky position to the truth pixel position
    from astropy.wcs import WCS

    star = truth.stars.set_index("star_id").loc[int(bright["star_id"])]
    px, py = WCS(header).all_world2pix(star["ra_deg"], star["dec_deg"], 0)
    assert px == pytest.approx(bright["x"], abs=1e-6) and py == pytest.approx(bright["y"], abs=1e-6)


def test_saturated_stars_exist_in_demo_defaults(tmp_path):
    spec = NightSpec(nx=256, ny=256, n_bias=1, n_dark=0, n_flat=1, science=(("V", 1),),
                     n_stars=10, seed=3)
    truth = load_truth(simulate_night(out_dir=tmp_path / "n", spec=spec))
    sci = truth.frames[truth.frames["type"] == "science"].iloc[0]
    assert sci["n_saturated"] > 0
    data, _ = _raw(truth, sci["frame"])
    assert (data == 65535).sum() == sci["n_saturated"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    spec = NightSpec(nx=64, ny=64, n_bias=1, n_dark=1, n_flat=1, science=(("V", 1),),
                     n_stars=5, seed=11)
    a = simulate_night(out_dir=tmp_path / "a", spec=spec)
    b = simulate_night(out_dir=tmp_path / "b", spec=spec)
    c = simulate_night(out_dir=tmp_path / "c", spec=NightSpec(**{**spec.__dict__, "seed": 12}))
    for f in sorted((a / "raw").iterdir()):
        assert np.array_equal(fits.getdata(f), fits.getdata(b / "raw" / f.name)), f.name
    f = next((a / "raw").glob("WASP*"))
    assert not np.array_equal(fits.getdata(f), fits.getdata(c / "raw" / f.name))


def test_gaussian_render_conserves_flux():
    img = render_gaussian_stars(shape=(64, 64), x=np.array([31.3]), y=np.array([30.8]),
                                flux=np.array([1000.0]), fwhm=3.0)
    assert img.sum() == pytest.approx(1000.0, rel=1e-6)
    _, xx = np.indices(img.shape)
    assert (img * xx).sum() / img.sum() == pytest.approx(31.3, abs=1e-6)


def test_transit_shape():
    t = np.array([-1.0, 0.0, 0.04, 0.0499, 1.0])
    f = transit_factor(t, t0=0.0, duration_d=0.1, ingress_d=0.02, depth=0.01)
    assert f[0] == 1.0 and f[-1] == 1.0
    assert f[1] == pytest.approx(0.99)
    assert 0.99 < f[3] < 1.0


def test_bad_specs_and_existing_output(tmp_path):
    with pytest.raises(ValueError, match="nx must be >= 64"):
        NightSpec(nx=10)
    with pytest.raises(ValueError, match="science filter 'B' has no flats"):
        NightSpec(science=(("B", 3),))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        simulate_night(out_dir=tmp_path / "x", spec=NightSpec(nx=64, ny=64))


def test_console_command(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--size", "64", "--n-bias", "1", "--n-dark", "0",
                 "--n-flat", "1", "--science", "V:2", "--n-stars", "3"]) == 0
    assert "simulated night written" in capsys.readouterr().out
    truth = load_truth(tmp_path / "cli")
    assert len(truth.frames) == 1 + 0 + 2 + 2
    # a spec it cannot simulate: one usage line naming the problem, exit status 2
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "bad"), "--science", "I:2"])
    assert stop.value.code == 2
    assert "error: science filter 'I' has no flats" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_realworld_night_from_the_command_line(tmp_path):
    """``ccdflow-simulate OUT --realworld N --flip``: 12-bit frames without calibrations,
    local DATE-OBS with its offset and UT-OBS, no WCS, the flip in the truth."""
    from astropy.io import fits

    from ccdflow.simulate import load_truth, main

    assert main([str(tmp_path / "rw"), "--realworld", "6", "--flip"]) == 0
    truth = load_truth(tmp_path / "rw")
    frames = truth.frames
    assert list(frames["type"].unique()) == ["science"] and len(frames) == 6
    assert frames["flipped"].tolist() == [False] * 3 + [True] * 3
    header = fits.getheader(tmp_path / "rw" / "raw" / frames["file"].iloc[0])
    assert header["SATURATE"] == 4095 and header["DATE-OBS"].endswith("-0700")
    assert header["UT-OBS"] == frames["date_obs"].iloc[0].split("T")[1]
    assert "CTYPE1" not in header and header["NAXIS1"] == 650 + 8
    # the site's longitude west-positive, as MicroObservatory writes it
    assert header["LONGITUD"] > 0 and "SITELONG" not in header
    data = fits.getdata(tmp_path / "rw" / "raw" / frames["file"].iloc[0])
    assert data.max() <= 4095
    # ~1,000 hot pixels on 650x500, and the column defects: a hot column, a hot segment
    # (from its trap row to the last row) and a dead column, in the truth and the frames
    defects = json.loads((tmp_path / "rw" / "truth" / "truth.json").read_text())["line_defects"]
    assert [d["kind"] for d in defects] == ["hot", "hot", "dead"]
    hot = truth.dark_rate_e_per_s * 60 > 100
    in_lines = np.zeros(hot.shape, bool)
    for d in defects[:2]:
        in_lines[d["y0"]:d["y1"] + 1, d["x"]] = True
    assert in_lines.sum() > 500 and (hot & in_lines).sum() == in_lines.sum()
    assert 300 < (hot & ~in_lines).sum() < 1100
    dead = defects[2]["x"]
    assert np.median(data[:, dead]) < np.median(data[:, dead + 2]) - 100  # 2 % of the sky
    assert truth.flats["R"][:, dead].max() < 0.05


def test_atomic_directory_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    # both simulators write through ccdflow.io.atomic_directory
    from ccdflow.io import atomic_directory

    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as tmp:
        (tmp / "a.txt").write_text("a")
    assert (tmp_path / "empty" / "a.txt").read_text() == "a"
    assert (tmp_path / "empty").stat().st_mode & 0o777 == 0o755
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_directory(tmp_path / "new") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("writer failed")
    with pytest.raises(OSError):  # a directory with content is never replaced
        with atomic_directory(tmp_path / "empty") as tmp:
            (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["a.txt"]
    with atomic_directory(tmp_path / "empty", replace=True) as tmp:  # a rebuilt product
        (tmp / "c.txt").write_text("c")
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["c.txt"]


def test_defocused_and_trailed_stars(tmp_path):
    """psf_image + render_psf_stars: the flux conserved; without defocus or trail the
    Gaussian renderer's stars (to 0.3 % of the peak: bilinear on a 5× grid); a donut
    darker at its centre than on its ring; a trail whose second moments lie along its
    angle.  ``ccdflow-simulate --defocus R --trail L A`` puts them in the spec."""
    from ccdflow.simulate import main
    from ccdflow.simulate.scene import psf_image, render_gaussian_stars, render_psf_stars

    x, y, f = np.array([20.3]), np.array([19.6]), np.array([1e4])
    psf, k = psf_image(fwhm=2.2)
    plain = render_psf_stars(shape=(40, 40), x=x, y=y, flux=f, psf=psf, oversample=k)
    gauss = render_gaussian_stars(shape=(40, 40), x=x, y=y, flux=f, fwhm=2.2)
    assert plain.sum() == pytest.approx(1e4, rel=1e-9)
    assert np.abs(plain - gauss).max() < 3e-3 * gauss.max()
    psf, k = psf_image(fwhm=2.0, defocus_radius_px=7.0)
    donut = render_psf_stars(shape=(40, 40), x=x, y=y, flux=f, psf=psf, oversample=k)
    assert donut.sum() == pytest.approx(1e4, rel=1e-9)
    assert donut[20, 20] < 0.2 * donut[20, 15:27].max()
    psf, k = psf_image(fwhm=1.5, trail_px=8.0, trail_angle_deg=30.0)
    trail = render_psf_stars(shape=(40, 40), x=x, y=y, flux=f, psf=psf, oversample=k)
    yy, xx = np.mgrid[:40, :40]
    w = trail / trail.sum()
    mx, my = (w * xx).sum(), (w * yy).sum()
    cxx, cyy = (w * (xx - mx) ** 2).sum(), (w * (yy - my) ** 2).sum()
    cxy = (w * (xx - mx) * (yy - my)).sum()
    assert np.hypot(mx - x[0], my - y[0]) < 0.05
    assert np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy)) == pytest.approx(30.0, abs=2.0)
    assert main([str(tmp_path / "d"), "--realworld", "2", "--defocus", "5",
                 "--trail", "3", "45"]) == 0
    spec = json.loads((tmp_path / "d" / "truth" / "truth.json").read_text())["spec"]
    assert spec["defocus_radius_px"] == 5.0 and spec["trail_px"] == [3.0, 45.0]


def test_focus_drift_dithers_field_rotation_and_an_exposure_change(tmp_path):
    """Four things real series bring, in the truth and the frames: the FWHM growing to
    ``fwhm_growth`` × its start (focus drift), random pointing offsets (``dither_px``), an
    alt-az mount's field rotation about the frame centre, and a longer exposure from a
    fraction of the series on.  Nights without them keep their frames bit for bit."""
    from dataclasses import replace

    base = replace(NightSpec.realworld(n_science=9, nx=160, ny=128, n_stars=30, seed=5),
                   cloud_fraction=0.0)
    spec = replace(base, fwhm_growth=2.0, dither_px=10.0, field_rotation_deg=40.0,
                   exptime_change=(0.5, 120.0))
    truth = load_truth(simulate_night(out_dir=tmp_path / "new", spec=spec))
    frames = truth.frames.reset_index(drop=True)
    # the seeing's own wave and jitter are ±8 % and ±0.03 px about the focus trend
    assert frames["fwhm_px"].iloc[-1] / frames["fwhm_px"].iloc[0] == pytest.approx(2.0,
                                                                                   rel=0.15)
    assert frames["exptime_s"].tolist() == [60.0] * 5 + [120.0] * 4
    first = fits.getheader(tmp_path / "new" / "raw" / frames["file"].iloc[-1])
    assert first["EXPTIME"] == 120.0
    # the last frame: rotated by 40° about the centre, then shifted by drift + dither
    stars = truth.star_frames
    a = stars[stars["frame"] == frames["frame"].iloc[0]].set_index("star_id")
    b = stars[stars["frame"] == frames["frame"].iloc[-1]].set_index("star_id")
    za, zb = a["x"] + 1j * a["y"], (b["x"] + 1j * b["y"]).loc[a.index]
    turn = np.angle(np.mean((zb - zb.mean()) / (za - za.mean())), deg=True)
    assert turn == pytest.approx(40.0, abs=0.01)
    offsets = frames["dx_px"].to_numpy() - 60.0 * np.linspace(0, 1, 9)
    assert 3.0 < np.std(offsets) < 25.0  # σ 10 px a frame about the drift
    plain = load_truth(simulate_night(out_dir=tmp_path / "plain", spec=base))
    assert np.allclose(plain.frames["dx_px"], 60.0 * np.linspace(0, 1, 9), atol=1.0)
    assert plain.frames["exptime_s"].eq(60.0).all()
    from ccdflow.simulate import main

    assert main([str(tmp_path / "cli"), "--realworld", "2", "--fwhm-growth", "1.5",
                 "--dither", "3", "--field-rotation", "20", "--exptime-change", "0.5",
                 "30"]) == 0
    written = json.loads((tmp_path / "cli" / "truth" / "truth.json").read_text())["spec"]
    assert (written["fwhm_growth"], written["dither_px"], written["field_rotation_deg"],
            written["exptime_change"]) == (1.5, 3.0, 20.0, [0.5, 30.0])
    with pytest.raises(ValueError, match="exptime_change must be"):
        replace(base, exptime_change=(1.5, 30.0))
    with pytest.raises(ValueError, match="fwhm_growth must be"):
        replace(base, fwhm_growth=0.0)
