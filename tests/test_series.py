"""Photometry stage end to end on a simulated time series, against the truth.

One 512² night (30 V frames, 400 stars, a 1 % transit on the target) goes
through the whole workflow once; the tests read its per-frame photometry,
light curves and differential photometry and compare them with the truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from photutils.aperture import CircularAperture, aperture_photometry
from scipy.spatial import cKDTree

from ccdflow.masks import MaskBit
from ccdflow.photometry import (
    PhotFlag,
    PhotometryError,
    build_lightcurves,
    choose_reference,
    differential_photometry,
    frame_photometry,
    good_mask,
    read_photometry,
    read_reference,
    reference_catalog,
    write_lightcurves,
)
from ccdflow.photometry.apertures import row_correlation
from ccdflow.simulate import NightSpec, load_truth, simulate_night

from .conftest import product, run_snakemake

pytestmark = pytest.mark.workflow

SPEC = NightSpec(nx=512, ny=512, n_bias=5, n_dark=3, n_flat=5, filters=("V",),
                 science=(("V", 30),), n_stars=400, seed=11)
TARGET = {"name": "WASP-SIM", "ra": 157.5, "dec": 20.1}
NIGHT = "2026-03-14"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The night reduced by the workflow; (root, truth, reference catalog, rows, meta)."""
    root = tmp_path_factory.mktemp("series")
    simulate_night(out_dir=root / "night", spec=SPEC)
    run_snakemake(root, "--cores", "2", config={
        "raw_dir": str(root / "night" / "raw"), "results_dir": str(root / "results"),
        "instrument": "demo", "photometry": {"targets": [TARGET]}})
    truth = load_truth(root / "night")
    catalog, meta = read_reference(root / "results" / "photometry" / "reference" /
                                   "WASP-SIM_V.ecsv")
    # match the source list to the truth at the reference frame's positions
    at_ref = truth.star_frames[truth.star_frames["frame"] == meta["reference_frame"]]
    dist, k = cKDTree(at_ref[["x", "y"]].to_numpy()).query(catalog[["x_ref", "y_ref"]])
    catalog["star_id"] = np.where(dist < 1.0, at_ref["star_id"].to_numpy()[k], -1)
    rows = pd.concat([read_photometry(p) for p in
                      sorted((root / "results" / "photometry" / NIGHT).glob("*/*.csv"))])
    rows = rows.merge(catalog[["source_id", "star_id"]], on="source_id")
    rows = rows.merge(truth.star_frames.rename(columns={"x": "x_true", "y": "y_true"}),
                      on=["frame", "star_id"], how="left")
    return root, truth, catalog, rows, meta


def _isolated(truth, frame, *, radius, ratio):
    """Star ids with no other star brighter than ``ratio`` × their flux within ``radius``."""
    at = truth.star_frames[truth.star_frames["frame"] == frame]
    xy, flux = at[["x", "y"]].to_numpy(), at["flux_e"].to_numpy()
    tree = cKDTree(xy)
    keep = [not any(flux[j] > ratio * flux[i] for j in tree.query_ball_point(xy[i], radius)
                    if j != i) for i in range(len(xy))]
    return set(at["star_id"].to_numpy()[keep])


def _constant_stars(rows, truth, *, aperture):
    """Usable rows of one aperture for isolated matched stars other than the target,
    with the frame's flux scale k (flat normalisation × aperture loss) fitted on all
    of them.

    Isolated: no neighbour above 1 % of the star's flux within the aperture radius
    + 2 FWHM in the frame of widest seeing (beyond 2 FWHM = 4.7σ a Gaussian's wing
    holds < 1e-4 of its light).  Closer neighbours put light in the aperture that
    varies with the seeing: a real error the photometry cannot know about
    (BLENDED only flags centres inside the aperture)."""
    t = rows[rows["aperture"] == aperture]
    fwhm_max = float(t["fwhm"].max())
    radius = (float(aperture.removesuffix("fwhm")) + 2) * fwhm_max
    isolated = _isolated(truth, t["frame"].iloc[0], radius=radius, ratio=0.01)
    ok = (t["star_id"] > 0) & good_mask(t["flags"]) & t["star_id"].isin(isolated)
    t = t[ok].copy()
    # k per frame by weighted least squares over ≳100 stars: its own error
    # (≲0.05 %) is far below any single star's
    w = t["flux_e"] ** 2 / t["flux_err"] ** 2
    t["_num"], t["_den"] = w * t["flux"] / t["flux_e"], w
    k = t.groupby("frame")[["_num", "_den"]].transform("sum")
    t["k"] = k["_num"] / k["_den"]
    return t


def test_source_list_complete_and_positions_within_a_tenth_of_a_pixel(run):
    _, truth, catalog, rows, meta = run
    # completeness: every unsaturated star with expected S/N > 20 on the reference
    # (S/N from the CCD equation in a 1.5-FWHM aperture) is in the list
    at_ref = truth.star_frames[truth.star_frames["frame"] == meta["reference_frame"]]
    sky = truth.frames.set_index("frame").loc[meta["reference_frame"], "sky_level_e"]
    n_ap = np.pi * (1.5 * meta["fwhm_px"]) ** 2
    snr = at_ref["flux_e"] / np.sqrt(at_ref["flux_e"] + n_ap * (sky + SPEC.read_noise_e ** 2))
    peak = at_ref["flux_e"] / (2 * np.pi * (meta["fwhm_px"] / 2.3548) ** 2)
    inside = at_ref["x"].between(3, SPEC.nx - 4) & at_ref["y"].between(3, SPEC.ny - 4)
    # resolvable: no other star above a tenth of its flux within 2 FWHM (closer pairs
    # are one blob at any threshold; 8 of the 400 stars here)
    xy = at_ref[["x", "y"]].to_numpy()
    flux = at_ref["flux_e"].to_numpy()
    resolvable = np.array([
        not any(flux[j] > 0.1 * flux[i] for j in cKDTree(xy).query_ball_point(xy[i],
                                                                            2 * meta["fwhm_px"])
                if j != i) for i in range(len(xy))])
    expected = at_ref[(snr > 20) & (peak + sky < 0.8 * 65535 * SPEC.gain_e_per_adu) & inside
                      & resolvable]
    found = expected["star_id"].isin(catalog["star_id"])
    assert found.mean() >= 0.99, expected[~found]
    # positions in every frame (re-centroided above S/N 20) of isolated stars: a
    # centroid's error is ~FWHM/(2.35·S/N) per axis (0.05 px at S/N 20, FWHM 2.3 px),
    # so the median must be < 0.1 px from S/N 20 and 99 % of them from S/N 100
    isolated = _isolated(truth, meta["reference_frame"], radius=12.0, ratio=0.01)
    t = rows[good_mask(rows["flags"]) & rows["star_id"].isin(isolated)
             & (rows["aperture"] == "1.5fwhm")].merge(catalog[["source_id", "snr_ref"]])
    offset = np.hypot(t["x"] - t["x_true"], t["y"] - t["y_true"])
    assert (t["snr_ref"] >= 20).sum() > 30 * 50
    assert np.median(offset[t["snr_ref"] >= 20]) < 0.1
    assert np.quantile(offset[t["snr_ref"] >= 100], 0.99) < 0.1


def test_constant_star_errors_are_honest(run):
    """std((flux − k·truth)/flux_err) within 0.9–1.1 in every aperture.

    Only the per-frame scale k is fitted (one number per frame from ≳100
    stars); the pulls test flux_err, background term included.
    """
    for aperture in ("1.5fwhm", "2fwhm", "3fwhm"):
        g = _constant_stars(run[3], run[1], aperture=aperture)
        pulls = (g["flux"] - g["k"] * g["flux_e"]) / g["flux_err"]
        assert len(pulls) > 1000  # the std of a std from 1 000 pulls is 2.2 %
        assert 0.9 <= pulls.std() <= 1.1, (aperture, pulls.std())


def test_relative_scatter_at_the_ccd_equation_limit(run):
    """Each constant star's scatter over 30 frames vs photon + sky + dark + read noise.

    Predicted variance per frame (raw electrons; the flat divides signal and
    noise alike): F + N_ap·(sky + dark·t + RN²)·(1 + π/2·N_ap/N_sky).  One
    star's std from ~28 frames is uncertain by ~13 %; the median of the ratio
    over ≳80 stars by ~1.5 %, so 10 % is a real test.
    """
    _, truth, _, rows, _ = run
    t = _constant_stars(rows, truth, aperture="1.5fwhm")
    sky = np.array([truth.sky(f)[round(y), round(x)]
                    for f, x, y in zip(t["frame"], t["x_true"], t["y_true"], strict=True)])
    dark = SPEC.dark_rate_e_per_s * SPEC.science_exptime_s
    t["pred_var"] = t["flux_e"] + t["n_ap"] * (sky + dark + SPEC.read_noise_e ** 2) * (
        1 + np.pi / 2 * t["n_ap"] / t["n_sky"])
    ratios = []
    for _, g in t.groupby("star_id"):
        if len(g) >= 25:
            measured = (g["flux"] / g["k"] / g["flux_e"]).std(ddof=1)
            ratios.append(measured / (np.sqrt(g["pred_var"].mean()) / g["flux_e"].mean()))
    assert len(ratios) > 80
    assert 0.9 <= np.median(ratios) <= 1.1, np.median(ratios)


def test_transit_depth_recovered_within_one_sigma(run):
    root, truth, catalog, _, _ = run
    directory = root / "results" / "lightcurves" / "WASP-SIM_V"
    light = pd.read_csv(directory / "differential_WASP-SIM.csv", comment="#")
    assert catalog.loc[catalog["name"] == "WASP-SIM", "star_id"].item() == 0
    tr = truth.meta["transit"]
    dt = np.abs(light["mjd_utc"] - tr["t0_mjd"])
    half = tr["duration_d"] / 2
    full = light[light["usable"] & (dt < half - tr["ingress_d"])]
    out = light[light["usable"] & (dt > half)]
    assert len(full) >= 3 and len(out) >= 5

    def wmean(g):
        w = 1 / g["rel_flux_err"] ** 2
        return (w * g["rel_flux"]).sum() / w.sum(), 1 / np.sqrt(w.sum())

    (f_in, e_in), (f_out, e_out) = wmean(full), wmean(out)
    depth = 1 - f_in / f_out
    sigma = np.hypot(e_in / f_out, f_in * e_out / f_out ** 2)
    assert abs(depth - tr["depth"]) < sigma, (depth, sigma)
    # the errors are honest: out-of-transit points scatter as their error bars say
    pulls = (out["rel_flux"] - f_out) / out["rel_flux_err"]
    assert 0.6 < pulls.std(ddof=1) < 1.5  # 1σ band of a std from ~15 points: ±19 %
    choice = pd.read_csv(directory / "comparisons_WASP-SIM.csv", comment="#")
    used = choice[choice["weight"] > 0]
    assert len(used) >= 3 and used["weight"].sum() == pytest.approx(1.0)
    assert (catalog.set_index("source_id").loc[used["source_id"], "star_id"] > 0).all()


def test_one_frame_equals_a_direct_photutils_call(run):
    """The pipeline adds no hidden maths: for a row with nothing repaired, flux = Σ_ap(SCI) −
    bkg·area, flux_err² = Σ_ap(ERR² − ERR_CAL²) + (area·bkg_err)² + OVSCNOIS²·Σ_rows(a_r² −
    a_r) (the overscan level's correlation along rows) and flux_err_cal² = Σ_ap ERR_CAL²,
    photutils' exact overlaps (SEP's agree to ~1e-9 of the summed pixels)."""
    root, _, _, rows, _ = run
    frame = sorted(rows["frame"].unique())[7]
    t = rows[(rows["frame"] == frame) & ((rows["flags"] & int(PhotFlag.OFF_FRAME)) == 0)
             & ((rows["flags"] & int(PhotFlag.REPAIRED)) == 0) & rows["radius"].notna()]
    with fits.open(product(root / "results", "calibrated", frame)) as hdul:
        data, error = hdul["SCI"].data.astype(float), hdul["ERR"].data.astype(float)
        error_cal = hdul["ERR_CAL"].data.astype(float)
        row_noise = float(hdul[0].header["OVSCNOIS"])
        # pixels the dark and flat corrected (HOT, LOW_FLAT) are measured (issue 14)
        mask = (hdul["MASK"].data & ~np.uint16(MaskBit.HOT | MaskBit.LOW_FLAT)) != 0
    mask |= fits.getdata(product(root / "results", "cosmics", frame), "CRMASK") != 0
    random = np.sqrt(error**2 - error_cal**2)
    for radius, g in t.groupby("radius"):
        ap = CircularAperture(g[["x", "y"]].to_numpy(), radius)
        direct = aperture_photometry(data, ap, error=random, mask=mask)
        cal = aperture_photometry(data, ap, error=error_cal, mask=mask)
        total = aperture_photometry(np.abs(data), ap, mask=mask)["aperture_sum"]
        area = ap.area_overlap(data, mask=mask)
        np.testing.assert_allclose(g["flux"], direct["aperture_sum"] - g["bkg"] * area,
                                   rtol=0, atol=1e-8 * float(np.max(total)))
        rows_term = row_noise**2 * row_correlation(g["y"].to_numpy(), radius)
        np.testing.assert_allclose(
            g["flux_err"] ** 2, direct["aperture_sum_err"] ** 2 + (area * g["bkg_err"]) ** 2
            + rows_term, rtol=1e-7)
        np.testing.assert_allclose(g["flux_err_cal"], cal["aperture_sum_err"], rtol=1e-6)
    assert len(t) > 300


def test_light_curve_files_and_times(run):
    root, truth, catalog, rows, _ = run
    lc = root / "results" / "lightcurves"
    long = pd.read_csv(lc / "WASP-SIM_V.csv", comment="#")
    # frames × sources × (3 apertures + optimal photometry)
    assert len(long) == 30 * len(catalog) * 4
    assert set(long["aperture"]) == {"1.5fwhm", "2fwhm", "3fwhm", "optimal"}
    text = (lc / "WASP-SIM_V.csv").read_text()
    assert "flux [electron]" in text and "bjd_tdb [d (BJD_TDB, mid-exposure)]" in text
    one = pd.read_csv(lc / "WASP-SIM_V" / "source_5.csv", comment="#")
    assert list(one.columns[:8]) == ["BMJD", "flux", "flux_err", "flux_err_cal", "bkg",
                                     "bkg_err", "bkg_rms", "flags"]
    assert len(one) == 30 and one["BMJD"].is_monotonic_increasing
    # times: mid-exposure UTC from the truth; BJD − JD(UTC) within the ±8.4 min light
    # travel time plus TT−UTC (69.2 s)
    science = truth.frames.set_index("frame")
    first = rows.drop_duplicates("frame").set_index("frame")
    mid = science.loc[first.index, "mjd_mid"]
    np.testing.assert_allclose(first["mjd_utc"], mid, atol=1e-6)
    delta = (first["bmjd_tdb"] - first["mjd_utc"]) * 86400
    assert (np.abs(delta - 69.184) < 8.4 * 60).all()
    assert (first["airmass"] >= 1).all()


def test_reference_choice_and_targets_without_a_wcs(caplog):
    metas = {"a": {"n_sources": 40, "fwhm_px": 3.1}, "b": {"n_sources": 35, "fwhm_px": 2.7},
             "cloudy": {"n_sources": 1, "fwhm_px": float("nan")}}
    assert choose_reference(metas=metas) == "b"
    # a frame thinned by cloud (6 stars where the others have 10) is no reference for its
    # sharp stars: a sparse night's flip could not be matched across from it
    thin = {f"f{i}": {"n_sources": 10, "fwhm_px": 4.5 + 0.01 * i} for i in range(20)}
    assert choose_reference(metas={**thin, "thin": {"n_sources": 6, "fwhm_px": 4.2}}) == "f0"
    assert choose_reference(metas=metas, has_wcs={"a": True}, prefer_wcs=True) == "a"
    # no WCS anywhere: the best frame all the same (the RA/Dec targets get NO_POSITION)
    assert choose_reference(metas=metas, has_wcs={}, prefer_wcs=True) == "b"
    # a sparse field: the frame with the most detections, said in the log
    sparse = {"s1": {"n_sources": 3, "fwhm_px": 4.0}, "s2": {"n_sources": 2, "fwhm_px": 3.0}}
    with caplog.at_level("WARNING"):
        assert choose_reference(metas={**sparse, "cloudy": metas["cloudy"]}) == "s1"
        assert choose_reference(metas={"cloudy": metas["cloudy"]}) is None
    assert "reference s1 has 3" in caplog.text and "clouds?" in caplog.text
    caplog.clear()
    sources = pd.DataFrame({"source_id": [1, 2], "x": [10.0, 40.0], "y": [12.0, 30.0],
                            "flux": [5e4, 2e4], "snr": [200.0, 90.0]})
    with caplog.at_level("WARNING"):
        cat = reference_catalog(sources=sources, header=fits.Header(), shape=(64, 64),
                                targets=[{"name": "T", "ra": 10.0, "dec": 5.0}], frame="f1")
    assert "target 'T' is given in RA/Dec but the reference frame f1 has no WCS" in caplog.text
    assert cat.loc[0, "name"] == "T" and np.isnan(cat.loc[0, ["x_ref", "y_ref"]]).all()
    assert list(cat["source_id"]) == [1, 2, 3]  # the detections follow
    cat = reference_catalog(sources=sources, header=fits.Header(), shape=(64, 64),
                            targets=[{"name": "T", "x": 40.5, "y": 30.2},
                                     {"name": "Far", "x": 300.0, "y": 30.0}])
    assert list(cat["name"]) == ["T", "Far", ""]
    assert cat.loc[0, "x_ref"] == 40.0 and cat.loc[0, "flux_ref"] == 2e4  # took the detection
    assert list(cat["source_id"]) == [1, 2, 3] and np.isnan(cat.loc[1, "flux_ref"])


def test_differential_rejects_a_variable_and_propagates_errors(rng):
    """Target + 8 constant comparisons + 1 variable (5 % sinusoid); 2 % transparency
    changes common to all.  The variable is rejected, the weights sum to one, and
    rel_flux scatters as rel_flux_err says."""
    n_frames, ids = 200, list(range(1, 11))
    level = dict(zip(ids, [1e5, 8e4, 1.2e5, 6e4, 1.5e5, 9e4, 7e4, 1.1e5, 5e4, 1e5],
                     strict=True))
    transparency = 1 + 0.02 * rng.standard_normal(n_frames)
    flux, err = {}, {}
    for sid in ids:
        true = level[sid] * transparency
        if sid == 10:
            true = true * (1 + 0.05 * np.sin(np.arange(n_frames) / 7))
        err[sid] = np.sqrt(true + 2000)
        flux[sid] = true + err[sid] * rng.standard_normal(n_frames)
    flux, err = pd.DataFrame(flux), pd.DataFrame(err)
    good = pd.DataFrame(True, index=flux.index, columns=flux.columns)
    good.iloc[3, 2] = False  # one flagged comparison measurement
    inputs = (flux.copy(), err.copy(), good.copy())
    light, choice = differential_photometry(flux=flux, flux_err=err, good=good, target=1,
                                            max_count=10, min_count=2)
    status = choice.set_index("source_id")["status"]
    assert status[10].startswith("variable")
    assert choice["weight"].sum() == pytest.approx(1.0) and choice.loc[
        choice["source_id"] == 10, "weight"].item() == 0
    assert light.loc[3, "n_comparisons"] == 7 and (light["n_comparisons"] <= 8).all()
    pulls = (light["rel_flux"] - 1) / light["rel_flux_err"]
    assert 0.85 < pulls.std() < 1.15  # 200 points: the std of the std is 5 %
    for before, after in zip(inputs, (flux, err, good), strict=True):
        pd.testing.assert_frame_equal(before, after)
    _, choice = differential_photometry(flux=flux, flux_err=err, good=good, target=1,
                                        comparisons=[2, 3])
    assert set(choice.loc[choice["weight"] > 0, "source_id"]) == {2, 3}
    with pytest.raises(PhotometryError, match=r"comparison source\(s\) \[99\]"):
        differential_photometry(flux=flux, flux_err=err, good=good, target=1,
                                comparisons=[99])


def test_times_come_from_the_inventory_not_a_date_only_header():
    """A header whose DATE-OBS holds only the date (time in UT, as some cameras write)
    would put mid-exposure at midnight; the inventory's start (read with the profile's
    date_obs/time_obs keywords) gives the right one."""
    from ccdflow.simulate import render_gaussian_stars

    image = 100.0 + render_gaussian_stars(shape=(64, 64), x=np.array([30.0]),
                                          y=np.array([32.0]), flux=np.array([5e4]), fwhm=3.0)
    zeros = np.zeros((64, 64))
    header = fits.Header({"DATE-OBS": "2024-05-13", "UT": "04:00:00", "EXPTIME": 60.0})
    catalog = pd.DataFrame({"source_id": [1], "name": [""], "x_ref": [30.0], "y_ref": [32.0],
                            "flux_ref": [5e4], "snr_ref": [200.0], "ra_deg": [np.nan],
                            "dec_deg": [np.nan]})
    sources = pd.DataFrame({"source_id": [1], "x": [30.0], "y": [32.0], "flux": [5e4]})
    common = dict(data=image, error=np.full((64, 64), 10.0), mask=zeros.astype(np.uint16),
                  header=header, background=zeros + 100.0, background_rms=zeros + 10.0,
                  sources=sources, meta={"fwhm_px": 3.0}, catalog=catalog,
                  reference_meta={"fwhm_px": 3.0}, radii_fwhm=[1.5],
                  annulus={"inner": 4.0, "outer": 7.0, "unit": "fwhm"})
    start = 60443.0 + 4 / 24  # 2024-05-13T04:00:00 UTC
    table, _ = frame_photometry(**common, start_mjd_utc=start, exptime_s=60.0)
    assert table["mjd_utc"].iloc[0] == pytest.approx(start + 30 / 86400, abs=1e-9)
    assert table["exptime_s"].iloc[0] == 60.0
    naive, _ = frame_photometry(**common)  # header only: midnight + 30 s
    assert naive["mjd_utc"].iloc[0] == pytest.approx(60443.0 + 30 / 86400, abs=1e-9)


def _source_table(xy, flux):
    n = len(xy)
    return pd.DataFrame({"source_id": np.arange(1, n + 1), "x": xy[:, 0], "y": xy[:, 1],
                         "flux": flux, "peak": flux / 10, "fwhm": 2.0, "area": 20.0,
                         "snr": 100.0, "saturated_or_masked": False, "sharpness": 0.6,
                         "roundness1": 0.0, "roundness2": 0.0})


def test_pixel_targets_on_the_first_frame_snap_and_follow_the_alignment(rng, tmp_path, caplog):
    """Issue 12: x, y read off the series' first frame (as in AstroImageJ/EXOTIC), 2 px
    off the star, while the reference is another frame flipped by 180° and shifted:
    the target snaps to the star and lands on it in the reference (to the centroid noise);
    a position with no star is kept, logged and flagged NO_STAR; an unknown frame name
    is an error naming it."""
    from ccdflow.photometry import place_pixel_targets, write_sources

    ref_xy = rng.uniform(20, 480, (80, 2))
    flux = 10 ** rng.uniform(3, 5, 80)
    c = 249.5  # first frame: the reference rotated 180° about the centre, shifted (30, -12)
    first_xy = 2 * c - ref_xy + np.array([30.0, -12.0]) + rng.normal(0, 0.02, ref_xy.shape)
    paths = {}
    for name, xy in (("f0", first_xy), ("ref", ref_xy)):
        paths[name] = tmp_path / f"{name}.ecsv"
        write_sources(paths[name], _source_table(xy, flux), {"fwhm_px": 2.0}, frame=name)
    star = 7
    given = first_xy[star] + np.array([1.5, -1.3])  # read off by eye, 2 px from the centroid
    targets = [{"name": "T", "x": float(given[0]), "y": float(given[1])},
               {"name": "EMPTY", "x": 2 * c - 250.0 + 30, "y": 2 * c - 250.0 - 12,
                "frame": "f0"},
               {"name": "SKY", "ra": 10.0, "dec": 5.0}]
    empty_ref = np.array([250.0, 250.0])
    assert np.hypot(*(ref_xy - empty_ref).T).min() > 6 or pytest.skip("a star fell there")
    caplog.set_level("INFO")
    placed = place_pixel_targets(targets=targets, sources=paths, reference_frame="ref",
                                 reference_sources=_source_table(ref_xy, flux))
    assert np.hypot(placed[0]["x"] - ref_xy[star, 0], placed[0]["y"] - ref_xy[star, 1]) < 0.05
    assert not placed[0]["no_star"] and "target T snapped to the star" in caplog.text
    assert placed[1]["no_star"] and "target EMPTY: no star within 5.0 px" in caplog.text
    assert np.hypot(placed[1]["x"] - 250.0, placed[1]["y"] - 250.0) < 0.05
    assert placed[2] == targets[2]
    with pytest.raises(PhotometryError, match=r"target T: frame 'nosuch' is not a frame of "
                                              r"this series \(frames: f0, ref\)"):
        place_pixel_targets(targets=[{"name": "T", "x": 1.0, "y": 2.0, "frame": "nosuch"}],
                            sources=paths, reference_frame="ref",
                            reference_sources=_source_table(ref_xy, flux))


def test_pixel_target_on_a_frame_that_does_not_align_with_the_reference(rng, tmp_path,
                                                                        caplog):
    """The target's frame shares no star with the reference (a cloud over half the field
    on one, a flip and a drift on the other): it is carried through the frame nearest to
    it in time that aligns with both, and lands on its star in the reference's pixels
    (to the centroid noise, 0.02 px); with no such frame the error names the target, its
    frame and how many frames were tried."""
    from ccdflow.photometry import place_pixel_targets, write_sources

    xy = rng.uniform(20, 480, (160, 2))
    flux = 10 ** rng.uniform(3, 5, 160)
    left, right = xy[:, 0] < 240, xy[:, 0] > 260
    c = 249.5
    frames = {  # f0: the left half, shifted; f1: everything; ref: the right half, flipped
        "f0": (xy[left] + [4.0, -3.0], flux[left]),
        "f1": (xy, flux),
        "ref": (2 * c - xy[right] + [6.0, 2.0], flux[right]),
    }
    paths = {}
    for name, (pos, f) in frames.items():
        pos = pos + rng.normal(0, 0.02, pos.shape)
        paths[name] = tmp_path / f"{name}.ecsv"
        write_sources(paths[name], _source_table(pos, f), {"fwhm_px": 2.0}, frame=name)
    star = int(np.flatnonzero(left)[3])
    target = {"name": "T", "x": float(xy[star, 0] + 4.0 + 0.8), "y": float(xy[star, 1] - 3.0)}
    ref_sources = _source_table(*frames["ref"])
    caplog.set_level("INFO")
    placed = place_pixel_targets(targets=[target], sources=paths, reference_frame="ref",
                                 reference_sources=ref_sources)
    expected = 2 * c - xy[star] + [6.0, 2.0]
    assert np.hypot(placed[0]["x"] - expected[0], placed[0]["y"] - expected[1]) < 0.1
    assert "frame f0 does not align with the reference ref" in caplog.text
    assert "through frame f1" in caplog.text
    del paths["f1"]
    with pytest.raises(PhotometryError, match=r"target T: frame f0 cannot be aligned with the "
                                              r"reference ref \(.*\), nor through any of the 0 "
                                              r"frames nearest in time"):
        place_pixel_targets(targets=[target], sources=paths, reference_frame="ref",
                            reference_sources=ref_sources)


def test_comparisons_fall_back_to_stars_measured_in_80_percent_of_frames(rng, caplog):
    """Issue 12: clouds and drift leave every comparison flagged in 15 % of the frames
    (below min_good_fraction 0.9): a differential light curve still comes out, from the
    stars usable in ≥ 80 %, and the log says so; with every star flagged in half the frames
    the error names the best candidates' fractions."""
    n_frames, ids = 100, [1, 2, 3, 4]
    flux = pd.DataFrame({sid: 5e4 * (1 + 0.01 * rng.standard_normal(n_frames)) for sid in ids})
    err = pd.DataFrame({sid: np.full(n_frames, 500.0) for sid in ids})
    good = pd.DataFrame(True, index=flux.index, columns=flux.columns)
    for sid in (2, 3, 4):
        good.loc[rng.choice(n_frames, 15, replace=False), sid] = False
    caplog.set_level("WARNING")
    light, choice = differential_photometry(flux=flux, flux_err=err, good=good, target=1)
    assert (choice["weight"] > 0).sum() == 3 and light["usable"].mean() > 0.5
    assert "taking the 3 usable in 80 %" in caplog.text
    half = good.copy()
    for sid in (2, 3, 4):
        half.loc[rng.choice(n_frames, 50, replace=False), sid] = False
    with pytest.raises(PhotometryError, match=r"no usable comparison star for target 1: 3 "
                                              r"other source\(s\), none usable in 80 % of the "
                                              r"frames \(best: source \d \d+ %"):
        differential_photometry(flux=flux, flux_err=err, good=half, target=1)


def test_comparison_stars_given_in_pixels_become_source_ids(rng, tmp_path, caplog):
    """EXOTIC-style comparison positions read on the first frame (shifted from the
    reference by (25, -8) px) resolve to the source ids of those stars in the list; one
    on empty sky is left out and logged."""
    from ccdflow.photometry import reference_catalog, resolve_comparisons, write_sources

    ref_xy = rng.uniform(20, 480, (60, 2))
    flux = 10 ** rng.uniform(3, 5, 60)
    first_xy = ref_xy + np.array([25.0, -8.0])
    paths = {}
    for name, xy in (("f0", first_xy), ("ref", ref_xy)):
        paths[name] = tmp_path / f"{name}.ecsv"
        write_sources(paths[name], _source_table(xy, flux), {"fwhm_px": 2.0}, frame=name)
    det = _source_table(ref_xy, flux)
    catalog = reference_catalog(sources=det, header={}, shape=(500, 500))
    picks = [3, 11]
    positions = {"T": [{"x": float(first_xy[k, 0] + 1.0), "y": float(first_xy[k, 1])}
                       for k in picks] + [{"x": 600.0, "y": 600.0}]}
    caplog.set_level("INFO")
    ids = resolve_comparisons(positions=positions, catalog=catalog, sources=paths,
                              reference_frame="ref", reference_sources=det)
    expected = [int(catalog.loc[np.hypot(catalog["x_ref"] - ref_xy[k, 0],
                                         catalog["y_ref"] - ref_xy[k, 1]).idxmin(),
                                "source_id"]) for k in picks]
    assert ids == {"T": expected}
    assert "comparison (600.0, 600.0) of target T: no source of the list there" in caplog.text


def test_apertures_of_an_undersampled_star_have_a_floor():
    """Issue 12: FWHM 1.1 px: 1.5 FWHM would be a 1.65-px aperture, whose flux depends on
    the star's pixel phase; the radius is raised to min_radius_px (2 px) and noted, and the
    annulus scales with max(FWHM, 2/1.5)."""
    from ccdflow.simulate import render_gaussian_stars

    image = 100.0 + render_gaussian_stars(shape=(64, 64), x=np.array([30.3]),
                                          y=np.array([32.6]), flux=np.array([5e4]), fwhm=1.1)
    zeros = np.zeros((64, 64))
    catalog = pd.DataFrame({"source_id": [1], "name": [""], "x_ref": [30.3], "y_ref": [32.6],
                            "flux_ref": [5e4], "snr_ref": [10.0], "ra_deg": [np.nan],
                            "dec_deg": [np.nan]})
    sources = pd.DataFrame({"source_id": [1], "x": [30.3], "y": [32.6], "flux": [5e4]})
    table, notes = frame_photometry(
        data=image, error=np.full((64, 64), 10.0), mask=zeros.astype(np.uint16),
        header=fits.Header({"DATE-OBS": "2024-05-13T04:00:00", "EXPTIME": 60.0}),
        background=zeros + 100.0, background_rms=zeros + 10.0, sources=sources,
        meta={"fwhm_px": 1.1}, catalog=catalog, reference_meta={"fwhm_px": 1.1},
        radii_fwhm=[1.5, 3.0], annulus={"inner": 4.0, "outer": 7.0, "unit": "fwhm"})
    circular = table[table["aperture"] != "optimal"]
    assert circular["radius"].tolist() == [2.0, pytest.approx(3.3)]
    assert any("raised to at least 2 px (FWHM 1.10 px)" in n for n in notes)
    # a Gaussian of FWHM 1.1 px holds 1 - 2^(-(2r/FWHM)^2) = 99.99 % within r = 2 px
    assert table["flux"].iloc[0] == pytest.approx(5e4, rel=0.01)


def test_an_unaligned_frame_is_measured_at_its_wcs_positions():
    """A frame that could not be aligned is measured where its own WCS puts the list's
    stars (the WCS is built only then), else at the reference's positions; both said."""
    from ccdflow.errors import SourceError
    from ccdflow.simulate import render_gaussian_stars

    image = 100.0 + render_gaussian_stars(shape=(64, 64), x=np.array([30.0]),
                                          y=np.array([40.0]), flux=np.array([5e4]), fwhm=3.0)
    zeros = np.zeros((64, 64))
    # the star sits at (30, 40) on this frame; the reference had it at (20, 20)
    wcs = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 31.0, "CRPIX2": 41.0,
           "CRVAL1": 150.0, "CRVAL2": 20.0, "CDELT1": -1e-4, "CDELT2": 1e-4}
    catalog = pd.DataFrame({"source_id": [1], "name": ["T"], "x_ref": [20.0], "y_ref": [20.0],
                            "flux_ref": [5e4], "snr_ref": [100.0], "ra_deg": [150.0],
                            "dec_deg": [20.0]})
    sources = pd.DataFrame({"source_id": [1], "x": [30.0], "y": [40.0], "flux": [5e4]})
    common = dict(data=image, error=np.full((64, 64), 10.0), mask=zeros.astype(np.uint16),
                  background=zeros + 100.0, background_rms=zeros + 10.0, sources=sources,
                  meta={"fwhm_px": 3.0}, catalog=catalog, reference_meta={"fwhm_px": 3.0},
                  radii_px=[5.0], alignment=SourceError("too few stars"), optimal=False)
    header = {"DATE-OBS": "2024-05-13T04:00:00", "EXPTIME": 60.0}
    for extra, where, xy in ((wcs, "from this frame's WCS", (30.0, 40.0)),
                             ({}, "of the reference frame", (20.0, 20.0))):
        table, notes = frame_photometry(header=fits.Header({**header, **extra}), **common)
        assert any(f"positions {where}" in n for n in notes)
        assert (table["x"].iloc[0], table["y"].iloc[0]) == pytest.approx(xy, abs=1e-6)
        assert table["flags"].iloc[0] & int(PhotFlag.NOT_ALIGNED)


def _tables_two_apertures(rng, n_frames=60, n_stars=6, scatter=None):
    """Per-frame photometry tables of a target (source 0) and comparisons, each star's
    flux scattering by ``scatter[label]`` (relative) in each aperture, errors to match."""
    scatter = scatter or {"wide": 0.03, "tight": 0.01}
    tables = []
    for k in range(n_frames):
        rows = []
        for label, s in scatter.items():
            flux = 1e4 * (1 + s * rng.standard_normal(n_stars))
            rows.append(pd.DataFrame({
                "frame": f"f{k:03d}", "mjd_utc": 60000 + k / 100, "bjd_tdb": np.nan,
                "bmjd_tdb": np.nan, "airmass": 1.2, "aperture": label,
                "source_id": np.arange(n_stars), "flux": flux, "flux_err": s * 1e4,
                "bkg": 100.0, "bkg_err": 1.0, "flags": 0, "x": 10.0, "y": 10.0,
                "fwhm": 3.0}))
        tables.append(pd.concat(rows, ignore_index=True))
    catalog = pd.DataFrame({"source_id": np.arange(n_stars),
                            "name": ["T"] + [""] * (n_stars - 1)})
    return tables, catalog


def test_a_failed_aperture_is_named_and_the_best_of_the_others_taken(rng, caplog):
    # every comparison flagged (BLENDED|SATURATED) in 'wide' only, as in a crowded field's
    # largest aperture: the warning names that aperture, and 'best' takes 'tight'
    tables, catalog = _tables_two_apertures(rng, scatter={"wide": 0.01, "tight": 0.01})
    for table in tables:
        table.loc[(table["aperture"] == "wide") & (table["source_id"] > 0), "flags"] = 2
    with caplog.at_level("WARNING", logger="ccdflow.photometry.lightcurves"):
        best = build_lightcurves(tables=tables, catalog=catalog, aperture="best")
    assert "differential light curve of T in aperture wide not computed: no usable " \
           "comparison star" in caplog.text
    assert "aperture tight" not in caplog.text
    assert best["target_apertures"] == {"T": "tight"}
    assert "wide inf" in best["notes"]["T"]


def test_best_aperture_is_the_quietest_per_target(rng, tmp_path):
    # scatter 3 % in 'wide', 1 % in 'tight': 'best' takes 'tight' (the p2p estimates of 59
    # differences differ by 3x, far beyond their ~10 % errors) and says so in the file;
    # a named aperture is used as named; an unknown one names the choices
    tables, catalog = _tables_two_apertures(rng)
    best = build_lightcurves(tables=tables, catalog=catalog, aperture="best")
    assert best["target_apertures"] == {"T": "tight"}
    assert "aperture tight: lowest point-to-point scatter" in best["notes"]["T"]
    light, _ = best["differential"]["T"]
    assert 0.007 < np.std(np.diff(light["rel_flux"])) / np.sqrt(2) < 0.02
    # the target's detrending covariates travel with its light curve
    assert {"airmass", "x", "y", "fwhm", "bkg"} <= set(light.columns)
    named = build_lightcurves(tables=tables, catalog=catalog, aperture="wide")
    assert named["target_apertures"] == {"T": "wide"}
    write_lightcurves(best, table=tmp_path / "long.csv", directory=tmp_path / "lc")
    assert "aperture tight" in (tmp_path / "lc" / "differential_T.csv").read_text()
    # readable by the other users of a shared cluster (mkdtemp's 0700 is not kept), and a
    # rebuild replaces the directory, stale files and all
    assert (tmp_path / "lc").stat().st_mode & 0o777 == 0o755
    (tmp_path / "lc" / "stale.csv").write_text("old")
    write_lightcurves(named, table=tmp_path / "long.csv", directory=tmp_path / "lc")
    assert "aperture wide" in (tmp_path / "lc" / "differential_T.csv").read_text()
    assert not (tmp_path / "lc" / "stale.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(PhotometryError, match=r"lightcurve_aperture 'nosuch' is not one of "
                                              r"\['wide', 'tight'\] or 'best'"):
        build_lightcurves(tables=tables, catalog=catalog, aperture="nosuch")


def test_errors_that_do_not_describe_the_scatter_are_said(rng, caplog):
    # the note of every differential light curve says its point-to-point scatter over its
    # median error (~1 when the errors are right: flux_err matches the 1 % scatter here,
    # and the differential curve's ratio comes out 0.9-1.1); errors 10× too large (the
    # optimal photometry of an undersampled night with misplaced positions, stop 26) or
    # 10× too small are warned about
    for factor, warned in ((1.0, False), (10.0, True), (0.1, True)):
        tables, catalog = _tables_two_apertures(rng, scatter={"tight": 0.01})
        for table in tables:
            table["flux_err"] = table["flux_err"] * factor
        caplog.clear()
        with caplog.at_level("WARNING", logger="ccdflow.photometry.lightcurves"):
            out = build_lightcurves(tables=tables, catalog=catalog, aperture="tight")
        note = out["notes"]["T"]
        ratio = float(note.split(" = ")[1].split(" ×")[0])
        assert ratio == pytest.approx(1.0 / factor, rel=0.25), note
        assert ("WARNING" in note) == warned and ("rel_flux_err" in caplog.text) == warned


def test_frames_a_target_is_unusable_in_are_counted_by_reason(rng, caplog):
    # the observer lengthened the exposures for the last 20 of 60 frames and the target
    # saturated in 18 of them; in 2 more every comparison is flagged: the note and the
    # log say how many frames are usable and why the others are not (a warning above 10 %)
    tables, catalog = _tables_two_apertures(rng, scatter={"tight": 0.01})
    for k, table in enumerate(tables):
        if 40 <= k < 58:
            table.loc[table["source_id"] == 0, "flags"] = int(PhotFlag.SATURATED)
        elif k >= 58:
            table.loc[table["source_id"] > 0, "flags"] = int(PhotFlag.MASKED)
    with caplog.at_level("INFO", logger="ccdflow.photometry.lightcurves"):
        out = build_lightcurves(tables=tables, catalog=catalog, aperture="tight")
    text = "usable in 40 of 60 frames (SATURATED in 18 of 60 frames, no usable comparison in 2)"
    assert text in out["notes"]["T"]
    assert [r.levelname for r in caplog.records if text in r.message] == ["WARNING"]
    # one frame of 60 lost is said, quietly; a light curve usable throughout says nothing
    tables, catalog = _tables_two_apertures(rng, scatter={"tight": 0.01})
    tables[5].loc[tables[5]["source_id"] == 0, "flags"] = int(PhotFlag.MASKED)
    caplog.clear()
    with caplog.at_level("INFO", logger="ccdflow.photometry.lightcurves"):
        out = build_lightcurves(tables=tables, catalog=catalog, aperture="tight")
    assert "usable in 59 of 60 frames (MASKED in 1 of 60 frames)" in out["notes"]["T"]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    tables, catalog = _tables_two_apertures(rng, scatter={"tight": 0.01})
    assert "usable in" not in build_lightcurves(tables=tables, catalog=catalog,
                                                aperture="tight")["notes"]["T"]


def test_best_aperture_does_not_trade_frames_for_scatter(rng):
    """'best': the quietest light curve among the apertures usable in as many frames as
    the best-covered one but one (or 1 %).  A light curve 2.6× quieter that lost one frame
    of 90 is chosen; one that lost 4 of 24 (the optimal aperture on frames without a PSF
    model) is not, however quiet."""
    from ccdflow.photometry.lightcurves import _lowest_scatter

    def curve(n, lost, sigma):
        usable = np.ones(n, bool)
        usable[rng.choice(n, lost, replace=False)] = False
        return (pd.DataFrame({"rel_flux": 1 + sigma * rng.standard_normal(n),
                              "usable": usable}), None, "")

    assert _lowest_scatter({"2fwhm": curve(90, 0, 0.055),
                            "optimal": curve(90, 1, 0.021)}) == "optimal"
    assert _lowest_scatter({"1.5fwhm": curve(24, 0, 0.038),
                            "optimal": curve(24, 4, 0.034)}) == "1.5fwhm"
    assert _lowest_scatter({"1.5fwhm": curve(24, 1, 0.038),
                            "optimal": curve(24, 2, 0.020)}) == "optimal"


def test_best_aperture_has_errors_that_describe_it(rng):
    """'best' passes over a quieter light curve whose errors are 4.5× its scatter (the
    optimal aperture of an undersampled night with misplaced positions gave 0.22× before
    stop 26's PRF centres) for one whose errors hold its scatter; when no aperture's
    errors do, the quietest is taken as before (and its note warns)."""
    from ccdflow.photometry.lightcurves import _lowest_scatter

    def curve(sigma, error):
        n = 90
        return (pd.DataFrame({"rel_flux": 1 + sigma * rng.standard_normal(n),
                              "rel_flux_err": np.full(n, error), "usable": np.ones(n, bool)}),
                None, "")

    honest, inflated = curve(0.018, 0.018), curve(0.013, 0.058)
    assert _lowest_scatter({"1.5fwhm": honest, "optimal": inflated}) == "1.5fwhm"
    assert _lowest_scatter({"1.5fwhm": curve(0.018, 0.09), "optimal": inflated}) == "optimal"
    assert _lowest_scatter({"1.5fwhm": honest, "optimal": curve(0.013, 0.013)}) == "optimal"


@pytest.mark.parametrize("named_target", [True, False])
def test_lightcurve_figure_from_memory_equals_the_one_from_the_files(rng, tmp_path,
                                                                     named_target):
    # the light-curve job draws its figure from the light curves it holds instead of
    # reading back what it wrote: the same PNG, byte for byte, as drawn from the files
    # (with a target: target and comparisons panels; without: the brightest sources)
    from ccdflow.photometry import write_lightcurves
    from ccdflow.qc import plot_lightcurve_result, plot_lightcurves

    tables, catalog = _tables_two_apertures(rng, n_frames=20)
    if not named_target:
        catalog["name"] = ""
    result = build_lightcurves(tables=tables, catalog=catalog, aperture="tight")
    assert bool(result["differential"]) == named_target
    write_lightcurves(result, table=tmp_path / "lc.csv", directory=tmp_path / "lc",
                      header=["test"])
    plot_lightcurves(table=tmp_path / "lc.csv", directory=tmp_path / "lc",
                     out=tmp_path / "files.png", title="T")
    plot_lightcurve_result(result=result, out=tmp_path / "memory.png", title="T")
    drawn = (tmp_path / "files.png").read_bytes()
    assert drawn[:8] == b"\x89PNG\r\n\x1a\n" and len(drawn) > 10_000
    assert (tmp_path / "memory.png").read_bytes() == drawn
