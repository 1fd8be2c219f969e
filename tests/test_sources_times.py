"""Detection, centroids, offsets and times against the simulator's truth and astropy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ccdflow.background import estimate_background
from ccdflow.calibrate import central_level
from ccdflow.photometry import SourceError, detect_stars, estimate_fwhm, frame_offset, recentroid
from ccdflow.times import TimeError, barycentric_times, mid_exposure


@pytest.fixture(scope="module")
def detected(cal_masters, cal_science_v):
    row, p = cal_science_v
    bkg = estimate_background(data=p.data, mask=p.mask != 0, box_size=32, filter_size=1)
    stars = detect_stars(data=p.data, background=bkg.background, rms=bkg.rms, mask=p.mask)
    return row, p, bkg, stars


def test_completeness_positions_and_fwhm(cal_masters, detected):
    """All unsaturated truth stars with S/N > 20 are found; re-centroided positions
    scatter by the centroid noise, ≈ FWHM/2.355/(S/N) per axis ≤ 0.064 px at S/N 20,
    so the per-axis RMS error must stay under 0.1 px; FWHM within 3 % of truth."""
    truth = cal_masters["truth"]
    row, p, bkg, stars = detected
    k = central_level(truth.flats["V"])
    tf = truth.star_frames[truth.star_frames["frame"] == row["frame"]]
    n_pix = np.pi * row["fwhm_px"] ** 2  # an aperture of radius FWHM
    sky = float(np.median(bkg.background))
    snr = tf["flux_e"] * k / np.sqrt(tf["flux_e"] * k + n_pix * (sky + 7.5**2))
    ny, nx = p.data.shape
    inside = (tf["x"] > 5) & (tf["x"] < nx - 6) & (tf["y"] > 5) & (tf["y"] < ny - 6)
    # a star within 2 FWHM of a brighter one is a blend detection cannot split
    # (the one miss here: 7 600 e- at 1.7 FWHM from a 34 000 e- star)
    dist_nn, j_nn = cKDTree(tf[["x", "y"]].to_numpy()).query(tf[["x", "y"]].to_numpy(), k=2)
    brighter_close = (dist_nn[:, 1] < 2 * row["fwhm_px"]) & (
        tf["flux_e"].to_numpy()[j_nn[:, 1]] > tf["flux_e"].to_numpy())
    bright = tf[(snr > 20) & inside & (tf["flux_e"] * k < 1.5e6) & ~brighter_close]
    assert len(bright) > 15
    dist, idx = cKDTree(stars[["x", "y"]].to_numpy()).query(bright[["x", "y"]].to_numpy())
    assert (dist < 1.0).mean() >= 0.99
    fwhm = estimate_fwhm(data=p.data, background=bkg.background, sources=stars)
    assert fwhm == pytest.approx(row["fwhm_px"], rel=0.03)
    start_x, start_y = stars["x"].to_numpy()[idx], stars["y"].to_numpy()[idx]
    cx, cy = recentroid(data=p.data, background=bkg.background, x=start_x, y=start_y,
                        fwhm=fwhm, mask=p.mask)
    err = np.concatenate([cx - bright["x"].to_numpy(), cy - bright["y"].to_numpy()])
    assert np.sqrt(np.mean(err**2)) < 0.1
    # beside the library's 2-D Gaussian fit (photutils centroid_2dg) on the same stars:
    # as close to the truth, and the two agree to well under the error of either
    from photutils.centroids import centroid_2dg, centroid_sources

    gx, gy = centroid_sources(p.data - bkg.background, start_x, start_y,
                              box_size=int(2 * fwhm) + 3 | 1, mask=p.mask != 0,
                              centroid_func=centroid_2dg)
    err_2dg = np.concatenate([gx - bright["x"].to_numpy(), gy - bright["y"].to_numpy()])
    assert np.sqrt(np.mean(err**2)) <= 1.2 * np.sqrt(np.mean(err_2dg**2))
    assert np.median(np.hypot(cx - gx, cy - gy)) < 0.05
    assert list(stars["source_id"]) == list(range(1, len(stars) + 1))
    assert (np.diff(stars["flux"]) <= 0).all(), "numbered by decreasing flux"


def test_offsets_between_frames_match_the_drift(cal_masters, detected):
    from ccdflow.calibrate import calibrate_science

    m = cal_masters
    truth = m["truth"]
    row0, _, _, stars0 = detected
    row1 = truth.frames[(truth.frames["type"] == "science") & (truth.frames["filter"] == "V")
                        ].iloc[1]
    p1 = calibrate_science(path=truth.raw_dir / row1["file"], detector=m["detector"],
                           bias=m["bias"], dark=m["dark"], flat=m["flat"], bad_pixel_mask=m["bpm"])
    b1 = estimate_background(data=p1.data, mask=p1.mask != 0, box_size=32, filter_size=1)
    stars1 = detect_stars(data=p1.data, background=b1.background, rms=b1.rms, mask=p1.mask)
    dx, dy, n = frame_offset(reference=stars0, sources=stars1)
    assert n >= 5
    assert dx == pytest.approx(row1["dx_px"] - row0["dx_px"], abs=0.1)
    assert dy == pytest.approx(row1["dy_px"] - row0["dy_px"], abs=0.1)
    with pytest.raises(SourceError, match="too few sources to align"):
        frame_offset(reference=stars0, sources=stars1.head(2))


def test_no_stars_in_a_cloudy_frame(rng):
    data = rng.normal(100.0, 5.0, (100, 100))
    stars = detect_stars(data=data, background=np.full(data.shape, 100.0),
                         rms=np.full(data.shape, 5.0), nsigma=6.0)
    assert stars.empty and "source_id" in stars.columns


def test_mid_exposure_and_barycentric_times():
    from astropy import units as u
    from astropy.coordinates import EarthLocation, SkyCoord
    from astropy.time import Time

    header = {"DATE-OBS": "2026-03-15T03:00:00.000", "EXPTIME": 60.0}
    mid = mid_exposure(header=header)
    assert mid.isot == "2026-03-15T03:00:30.000"
    site = {"latitude_deg": 31.9583, "longitude_deg": -111.5967, "height_m": 2096.0}
    table = barycentric_times(times=Time([mid]), ra_deg=157.5, dec_deg=20.1, site=site)
    # independent: astropy's own barycentric correction for the same place and target
    loc = EarthLocation(lat=31.9583 * u.deg, lon=-111.5967 * u.deg, height=2096 * u.m)
    t = Time(mid, location=loc)
    ltt = t.light_travel_time(SkyCoord(157.5 * u.deg, 20.1 * u.deg), kind="barycentric")
    assert table["bjd_tdb"].iloc[0] == pytest.approx((t.tdb + ltt).jd, abs=1e-9)
    assert table["bmjd_tdb"].iloc[0] == pytest.approx(table["bjd_tdb"].iloc[0] - 2400000.5)
    # the barycentric correction is at most ~8.3 min and TDB − UTC ≈ 69 s in 2026
    assert abs(table["bjd_tdb"].iloc[0] - mid.jd) * 86400 < 8.4 * 60 + 70
    assert 1.0 <= table["airmass"].iloc[0] < 3.0
    with pytest.raises(TimeError, match="frame: no exposure time"):
        mid_exposure(header={"DATE-OBS": "2026-03-15T03:00:00"})
    with pytest.raises(TimeError, match="no start time"):
        mid_exposure(header={"EXPTIME": 1.0})
    with pytest.raises(TimeError, match="site lacks height_m"):
        barycentric_times(times=Time([mid]), ra_deg=1.0, dec_deg=2.0,
                          site={"latitude_deg": 1.0, "longitude_deg": 2.0})
