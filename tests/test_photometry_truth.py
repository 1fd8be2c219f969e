"""Photometry that loses no measurement (issue 14), scored against the simulator's truth.

Two nights reduced by the workflow: a sparse field (1024², 600 stars from 1e3 to 1.5e6 e-,
hot pixels corrected by a master dark at 0.08 %, ~60 cosmic rays per frame) and a crowded
one (512², 700 stars: 2,700 per Mpx).  And unit tests: repaired fluxes on injected masked
pixels, the masters' error against independently simulated flats, neighbour light against
the truth.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from ccdflow.masks import MaskBit
from ccdflow.photometry import (
    BAD_FLAGS,
    PhotFlag,
    PSFModel,
    measure_apertures,
    read_photometry,
    read_reference,
)
from ccdflow.simulate import NightSpec, load_truth, render_gaussian_stars, simulate_night

from .conftest import run_snakemake

pytestmark = pytest.mark.workflow

SPARSE = NightSpec(nx=1024, ny=1024, n_bias=9, n_dark=5, n_flat=7, filters=("V",),
                   science=(("V", 24),), n_stars=600, hot_pixel_fraction=8e-4,
                   cosmic_rate_per_mpix_s=1.0, gain_e_per_adu=2.0, mag_range=(11.9, 19.5),
                   mag_slope=0.12, seed=14)
CROWDED = replace(SPARSE, nx=512, ny=512, n_stars=700, science=(("V", 12),), seed=15)


def _reduce(tmp_path_factory, spec, name):
    root = tmp_path_factory.mktemp(name)
    simulate_night(out_dir=root / "night", spec=spec)
    run_snakemake(root, "--cores", "2", config={
        "raw_dir": str(root / "night" / "raw"), "results_dir": str(root / "results"),
        "instrument": "demo"})
    truth = load_truth(root / "night")
    catalog, meta = read_reference(root / "results" / "photometry" / "reference" /
                                   "WASP-SIM_V.ecsv")
    at_ref = truth.star_frames[truth.star_frames["frame"] == meta["reference_frame"]]
    dist, k = cKDTree(at_ref[["x", "y"]].to_numpy()).query(catalog[["x_ref", "y_ref"]])
    catalog["star_id"] = np.where(dist < 1.0, at_ref["star_id"].to_numpy()[k], -1)
    rows = pd.concat([read_photometry(p) for p in
                      sorted((root / "results" / "photometry").glob("2*/*/*.csv"))])
    rows = rows.merge(catalog[["source_id", "star_id"]], on="source_id")
    rows = rows[rows["star_id"] >= 0].merge(
        truth.star_frames.rename(columns={"x": "x_true", "y": "y_true"}),
        on=["frame", "star_id"])
    return {"root": root, "truth": truth, "rows": rows, "spec": spec}


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    return _reduce(tmp_path_factory, SPARSE, "sparse")


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    return _reduce(tmp_path_factory, CROWDED, "crowded")


def _true_contamination(truth, frame, radius_fwhm=2.0):
    """Per star of a frame: the light of every other star in its aperture (radius_fwhm ×
    FWHM) over its own, for the true Gaussian PSF (a circle's encircled energy of an offset
    Gaussian, summed numerically on a fine grid)."""
    at = truth.star_frames[truth.star_frames["frame"] == frame]
    fwhm = float(at["fwhm_px"].iloc[0])
    sigma = fwhm / 2.3548
    r = radius_fwhm * fwhm
    xy, flux = at[["x", "y"]].to_numpy(), at["flux_e"].to_numpy()
    g = np.linspace(-r, r, 81)
    gx, gy = np.meshgrid(g, g)
    inside = gx**2 + gy**2 <= r * r
    cell = (g[1] - g[0]) ** 2
    own = (np.exp(-(gx**2 + gy**2) / (2 * sigma**2))[inside]).sum() * cell / (2 * np.pi
                                                                             * sigma**2)
    tree = cKDTree(xy)
    out = np.zeros(len(at))
    for i, j in tree.query_pairs(r + 6 * sigma):
        d = xy[j] - xy[i]
        for a, b, sign in ((i, j, 1), (j, i, -1)):
            dx, dy = sign * d
            share = (np.exp(-((gx - dx) ** 2 + (gy - dy) ** 2) / (2 * sigma**2))[inside]).sum(
            ) * cell / (2 * np.pi * sigma**2)
            out[a] += flux[b] * share / (flux[a] * own)
    return pd.Series(out, index=at["star_id"].to_numpy())


def _frame_scale(t):
    """Per frame, the flux scale k (flat normalisation × aperture loss) from the usable,
    uncontaminated rows (weighted least squares over hundreds of stars)."""
    w = t["flux_e"] ** 2 / (t["flux_err"] ** 2 + t["flux_err_cal"] ** 2)
    num = (w * t["flux"] / t["flux_e"]).groupby(t["frame"]).sum()
    return num / w.groupby(t["frame"]).sum()


def _unresolvable(truth):
    """Per (frame, star): whether another star brighter than 1 % of it lies within one
    FWHM — a companion no image can separate: what is measured is the pair."""
    out = []
    for f, g in truth.star_frames.groupby("frame"):
        xy, flux = g[["x", "y"]].to_numpy(), g["flux_e"].to_numpy()
        fwhm = float(g["fwhm_px"].iloc[0])
        hit = np.zeros(len(g), bool)
        for i, j in cKDTree(xy).query_pairs(fwhm):
            hit[i] |= flux[j] > 0.01 * flux[i]
            hit[j] |= flux[i] > 0.01 * flux[j]
        out.append(pd.Series(hit, index=pd.MultiIndex.from_arrays([[f] * len(g),
                                                                     g["star_id"]])))
    return pd.concat(out)


def _bright_rows(night, aperture="2fwhm"):
    """Rows of stars with S/N > 50 (CCD equation, true flux, this aperture) that neither
    saturate (peak < 80 % of full well) nor sit near the frame edge, nor have a companion
    within one FWHM (:func:`_unresolvable`)."""
    spec, truth = night["spec"], night["truth"]
    t = night["rows"]
    t = t[t["aperture"] == aperture].copy()
    frames = truth.frames.set_index("frame")
    sky = frames.loc[t["frame"], "sky_level_e"].to_numpy()
    sigma = t["fwhm_px"] / 2.3548
    n_ap = np.pi * (2.0 * t["fwhm_px"]) ** 2
    snr = t["flux_e"] / np.sqrt(t["flux_e"] + n_ap * (sky + spec.read_noise_e**2))
    peak = t["flux_e"] / (2 * np.pi * sigma**2) + sky
    margin = (t["x_true"].between(20, spec.nx - 21) & t["y_true"].between(20, spec.ny - 21))
    single = ~_unresolvable(truth).loc[list(zip(t["frame"], t["star_id"], strict=True))
                                       ].to_numpy()
    return t[(snr > 50) & (peak < 0.8 * 65535 * spec.gain_e_per_adu) & margin & single]


@pytest.mark.parametrize("which", ["sparse", "crowded"])
def test_bright_rows_are_usable_and_within_their_errors(which, request):
    """Bright stars (S/N > 50): ≥ 97 % of rows usable (the cosmic rays and bad pixels in
    their apertures repaired, not discarded) and ≤ 0.5 % of the usable rows more than 5σ
    from the truth (σ: flux_err ⊕ flux_err_cal, the error of an absolute flux).  A
    CONTAMINATED row is usable but measures its neighbours' light too (it says how much
    in ``contamination``): it is left out of the accuracy count."""
    night = request.getfixturevalue(which)
    t = _bright_rows(night)
    usable = (t["flags"].to_numpy() & int(BAD_FLAGS)) == 0
    assert len(t) > 300, len(t)
    assert usable.mean() >= 0.97, (which, usable.mean(), len(t))
    clean = t[usable & ((t["flags"].to_numpy() & int(PhotFlag.CONTAMINATED)) == 0)].copy()
    k = _frame_scale(clean)
    clean["pull"] = (clean["flux"] - k.loc[clean["frame"]].to_numpy() * clean["flux_e"]) / (
        np.hypot(clean["flux_err"], clean["flux_err_cal"]))
    outliers = (np.abs(clean["pull"]) > 5).mean()
    print(f"[{which}] bright rows {len(t)}: usable {usable.mean():.4f}, >5σ outliers "
          f"{outliers:.4f}, repaired {((t['flags'] & int(PhotFlag.REPAIRED)) != 0).mean():.4f}")
    assert outliers <= 0.005, (which, outliers, clean.loc[np.abs(clean["pull"]) > 5].head())
    repaired = (t["flags"].to_numpy() & int(PhotFlag.REPAIRED)) != 0
    assert repaired.any(), "the night has cosmic rays and bad pixels on bright stars"


def test_time_series_errors_match_the_scatter_in_each_flux_decade(sparse):
    """flux_err is the time series' error: the frame-to-frame scatter of a constant star,
    pooled per flux decade (mean of Δf² over err_t² + err_t+1², Δ between consecutive
    frames after the per-frame scale), is 0.95–1.05 of it from 2e4 to 1e6 e-.  (Each decade
    pools ≳ 500 differences: a standard error of ≲ 3 % on the ratio.)"""
    t = sparse["rows"]
    t = t[(t["aperture"] == "2fwhm") & (t["star_id"] > 0)
          & ((t["flags"].to_numpy() & int(BAD_FLAGS | PhotFlag.CONTAMINATED)) == 0)].copy()
    k = _frame_scale(t)
    t["f"] = t["flux"] / k.loc[t["frame"]].to_numpy()
    t["e"] = t["flux_err"] / k.loc[t["frame"]].to_numpy()
    t = t.sort_values(["star_id", "mjd_utc"])
    same = t["star_id"].to_numpy()[1:] == t["star_id"].to_numpy()[:-1]
    d = np.diff(t["f"].to_numpy())[same]
    v = (t["e"].to_numpy()[1:] ** 2 + t["e"].to_numpy()[:-1] ** 2)[same]
    level = t["flux_e"].to_numpy()[1:][same]
    figures = {}
    for lo, hi in ((2e4, 1e5), (1e5, 1e6)):
        sel = (level >= lo) & (level < hi)
        assert sel.sum() > 300, (lo, sel.sum())
        figures[lo] = float(np.sqrt(np.mean(d[sel] ** 2 / v[sel])))
    print(f"scatter/flux_err per decade: {figures}")
    for ratio in figures.values():
        assert 0.95 <= ratio <= 1.05, figures


def test_optimal_photometry_gains_on_faint_stars_and_agrees_on_bright_ones(sparse):
    """Naylor optimal photometry: on sky-limited stars (star photons < a tenth of the
    sky's in the 2-FWHM aperture) S/N above the best circular aperture's (median gain
    ≥ 10 %, the README quotes the figure); on bright isolated stars the same flux as the
    largest aperture (median ratio within 0.3 %, their difference within 3σ of the two
    errors in 99 %)."""
    t = sparse["rows"]
    truth = sparse["truth"]
    good = (t["flags"].to_numpy() & int(BAD_FLAGS | PhotFlag.CONTAMINATED | PhotFlag.BLENDED)
            ) == 0
    t = t[good]
    snr = (t["flux"] / t["flux_err"]).groupby([t["frame"], t["source_id"],
                                               t["aperture"]]).first().unstack()
    sky = truth.frames.set_index("frame")["sky_level_e"]
    first = t.drop_duplicates(["frame", "source_id"]).set_index(["frame", "source_id"])
    n_ap = np.pi * (2 * first["fwhm_px"]) ** 2
    faint = first["flux_e"] < 0.1 * n_ap * sky.loc[first.index.get_level_values(0)].to_numpy()
    circular = snr[["1.5fwhm", "2fwhm", "3fwhm"]].max(axis=1)
    gain = (snr["optimal"] / circular).loc[faint[faint].index].dropna()
    print(f"optimal S/N gain on {len(gain)} sky-limited rows: median {np.median(gain):.3f}")
    assert len(gain) > 200
    assert np.median(gain) >= 1.10, np.median(gain)
    bright = t[(t["flux_e"] > 1e5)].pivot_table(index=["frame", "source_id"],
                                                 columns="aperture", values=["flux", "flux_err"])
    ratio = bright["flux"]["optimal"] / bright["flux"]["3fwhm"]
    assert abs(np.nanmedian(ratio) - 1) < 0.003, np.nanmedian(ratio)
    # both estimate the same flux from overlapping pixels: their difference is within the
    # two errors combined (an upper bound of its error)
    pull = (bright["flux"]["optimal"] - bright["flux"]["3fwhm"]) / np.hypot(
        bright["flux_err"]["3fwhm"], bright["flux_err"]["optimal"])
    assert (np.abs(pull.dropna()) <= 3).mean() >= 0.99, np.quantile(np.abs(pull.dropna()), 0.99)


@pytest.mark.parametrize("which", ["sparse", "crowded"])
def test_neighbour_light_is_flagged(which, request):
    """CONTAMINATED against the truth (the light of every other star in the 2-FWHM aperture
    of a Gaussian PSF): recall ≥ 95 % of the star-frames with more than 1 % of neighbour
    light, precision ≥ 90 % of the flagged ones above 1 %.  Stars closer than 1.5 FWHM
    to a brighter one are one detection (not separable by any detector) and are left
    out of both."""
    night = request.getfixturevalue(which)
    truth, t = night["truth"], night["rows"]
    t = t[(t["aperture"] == "2fwhm") & ((t["flags"].to_numpy()
                                         & int(PhotFlag.OFF_FRAME | PhotFlag.NOT_ALIGNED)) == 0)]
    true_c = pd.concat({f: _true_contamination(truth, f) for f in t["frame"].unique()})
    t = t.assign(true_c=true_c.loc[list(zip(t["frame"], t["star_id"], strict=True))].to_numpy())
    # pairs closer than one FWHM are one star to any detector: the pair is measured
    single = ~_unresolvable(truth).loc[list(zip(t["frame"], t["star_id"], strict=True))
                                       ].to_numpy()
    t = t[single & ((t["flags"].to_numpy() & int(PhotFlag.SATURATED)) == 0)]
    flagged = (t["flags"].to_numpy() & int(PhotFlag.CONTAMINATED)) != 0
    real = t["true_c"].to_numpy() > 0.01
    assert real.sum() > 50, real.sum()
    recall = (flagged & real).sum() / real.sum()
    precision = (flagged & real).sum() / max(flagged.sum(), 1)
    print(f"[{which}] contamination > 1 %: {real.sum()} rows, recall {recall:.3f}, precision "
          f"{precision:.3f}")
    assert recall >= 0.95 and precision >= 0.90, (which, recall, precision)


# --------------------------------------------------------------------- unit tests

N, SKY, RN, FWHM = 200, 400.0, 7.0, 3.0


def _stars(rng, n=30, flux=(3e3, 3e5)):
    g = np.arange(25, N - 20, 30, dtype=float)
    x, y = (a.ravel() + rng.uniform(-0.5, 0.5, a.size) for a in np.meshgrid(g, g))
    x, y = x[:n], y[:n]
    f = 10 ** rng.uniform(np.log10(flux[0]), np.log10(flux[1]), x.size)
    return x, y, f


def test_repaired_fluxes_are_unbiased_with_honest_errors(rng):
    """Random masked pixels (cosmic rays, bad pixels: 1-6 per aperture, their values
    destroyed) in the 2-FWHM apertures of isolated stars: the repaired fluxes (the PSF
    model fitted to the other pixels) are unbiased within 0.3σ and their pulls have a
    std of 0.9–1.1, over 40 noise draws × 30 stars."""
    x, y, flux = _stars(rng)
    psf = PSFModel.circular(FWHM)
    truth = SKY + render_gaussian_stars(shape=(N, N), x=x, y=y, flux=flux, fwhm=FWHM)
    radius = 2 * FWHM
    pulls, repaired = [], []
    for _ in range(40):
        image = rng.poisson(truth) + rng.normal(0, RN, truth.shape)
        mask = np.zeros(truth.shape, np.uint16)
        for xc, yc in zip(x, y, strict=True):
            for _ in range(rng.integers(1, 7)):
                r, a = radius * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
                px, py = round(xc + r * np.cos(a)), round(yc + r * np.sin(a))
                mask[py, px] = rng.choice([MaskBit.COSMIC, MaskBit.BAD])
                image[py, px] = rng.choice([0.0, 1e5, np.nan])
        t = measure_apertures(data=image, error=np.sqrt(truth + RN**2), mask=mask, x=x, y=y,
                              radii=[radius], annulus=(4 * FWHM, 7 * FWHM), psf=psf,
                              background_map=np.full(truth.shape, SKY))
        assert ((t["flags"].to_numpy() & int(PhotFlag.REPAIRED)) != 0).all()
        pulls.append((t["flux"] - flux) / t["flux_err"])
        repaired.append(t["repaired_fraction"])
    pulls = np.concatenate(pulls)
    # 1,200 pulls: the mean's standard error is 0.03, so 0.1 is > 3 of them and far inside
    # the 0.3σ the issue allows
    print(f"repaired pulls: mean {pulls.mean():.3f}, std {pulls.std():.3f}")
    assert abs(pulls.mean()) < 0.1, pulls.mean()
    assert 0.9 <= pulls.std() <= 1.1, pulls.std()
    assert 0.005 < np.median(np.concatenate(repaired)) < 0.3


def test_calibration_error_matches_the_scatter_over_independent_flats(rng):
    """flux_err_cal is the masters' noise: the same star and frame calibrated with 60
    master flats of independent noise (1 % per pixel) scatter by it (ratio 0.85-1.15:
    the standard error of a std from 60 values is 9 %), while flux_err does not move."""
    x, y, flux = _stars(rng, n=9, flux=(2e5, 3e5))
    truth = SKY + render_gaussian_stars(shape=(N, N), x=x, y=y, flux=flux, fwhm=FWHM)
    raw = rng.poisson(truth) + rng.normal(0, RN, truth.shape)
    sigma_flat = 0.01
    fluxes, cal, random = [], [], []
    for _ in range(60):
        flat = 1 + rng.normal(0, sigma_flat, truth.shape)
        sci = raw / flat
        err_random = np.sqrt(raw + RN**2) / flat
        err_cal = np.abs(sci) * sigma_flat / flat
        t = measure_apertures(data=sci, error=np.hypot(err_random, err_cal),
                              error_cal=err_cal, mask=np.zeros(truth.shape, np.uint16), x=x,
                              y=y, radii=[2 * FWHM], background="map",
                              background_map=np.full(truth.shape, SKY))
        fluxes.append(t["flux"].to_numpy())
        cal.append(t["flux_err_cal"].to_numpy())
        random.append(t["flux_err"].to_numpy())
    ratio = np.std(fluxes, axis=0, ddof=1) / np.median(cal, axis=0)
    print(f"scatter over flats / flux_err_cal: median {np.median(ratio):.3f}")
    assert 0.85 <= np.median(ratio) <= 1.15, ratio
    assert np.std(random, axis=0).max() / np.median(random) < 0.02


def test_neighbour_light_and_its_subtraction_on_truth(rng):
    """A star with a neighbour 6-10 px away carrying 3-60 % of its flux: the contamination
    estimate follows the truth (within 0.3 percentage points + 10 %), the row is
    CONTAMINATED, and with subtract_neighbours its flux is within its error of the truth
    (pulls 0.8-1.25 over 30 draws × 20 pairs)."""
    gx, gy = np.meshgrid(np.arange(30.0, 171.0, 40.0), np.arange(25.0, 166.0, 35.0))  # 4 × 5
    n_pairs = gx.size
    xs = gx.ravel() + rng.uniform(-0.5, 0.5, n_pairs)
    ys = gy.ravel() + rng.uniform(-0.5, 0.5, n_pairs)
    f1 = 10 ** rng.uniform(4.0, 5.0, n_pairs)
    d = rng.uniform(6, 10, n_pairs)
    a = rng.uniform(0, 2 * np.pi, n_pairs)
    x2, y2 = xs + d * np.cos(a), ys + d * np.sin(a)
    f2 = f1 * rng.uniform(0.03, 0.6, n_pairs) * 10  # the neighbour's own total flux
    x, y = np.concatenate([xs, x2]), np.concatenate([ys, y2])
    from photutils.aperture import CircularAperture, aperture_photometry

    psf = PSFModel.circular(FWHM)
    own = render_gaussian_stars(shape=(N, N), x=xs, y=ys, flux=f1, fwhm=FWHM)
    other = render_gaussian_stars(shape=(N, N), x=x2, y=y2, flux=f2, fwhm=FWHM)
    truth = SKY + own + other
    radius = 2 * FWHM
    # the truth by photutils: each star's and its neighbour's noiseless light in the aperture
    aperture = CircularAperture(np.column_stack([xs, ys]), radius)
    own_ap = np.asarray(aperture_photometry(own, aperture)["aperture_sum"])
    true_c = np.asarray(aperture_photometry(other, aperture)["aperture_sum"]) / own_ap
    pulls, est = [], []
    for _ in range(30):
        image = rng.poisson(truth) + rng.normal(0, RN, truth.shape)
        kw = {"data": image, "error": np.sqrt(truth + RN**2),
              "mask": np.zeros(truth.shape, np.uint16), "x": x, "y": y, "radii": [radius],
              "background": "map", "background_map": np.full(truth.shape, SKY), "psf": psf}
        plain = measure_apertures(**kw)
        est.append(plain["contamination"].to_numpy()[:n_pairs])
        sub = measure_apertures(**kw, subtract_neighbours=True)
        pulls.append((sub["flux"].to_numpy()[:n_pairs] - own_ap)
                     / sub["flux_err"].to_numpy()[:n_pairs])
        flagged = (plain["flags"].to_numpy()[:n_pairs] & int(PhotFlag.CONTAMINATED)) != 0
        assert flagged[true_c > 0.02].all()
    est = np.median(est, axis=0)
    assert np.all(np.abs(est - true_c) <= 0.003 + 0.1 * true_c), np.column_stack([est, true_c])
    pulls = np.concatenate(pulls)
    assert abs(pulls.mean()) < 0.2 and 0.8 <= pulls.std() <= 1.25, (pulls.mean(), pulls.std())
