"""Masters and calibrated science against the simulator's truth.

Tolerances come from the noise model of the simulated camera (gain g, read
noise RN, N frames); each test says how.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from ccdflow.calibrate import (
    calibrate_science,
    central_level,
    make_bad_pixel_mask,
    make_master_bias,
    make_master_dark,
    make_master_flat,
)
from ccdflow.ccd import (
    CalibrationError,
    clipped_stats,
    fit_overscan,
    overscan_level_noise,
    parse_section,
    read_raw_frame,
)
from ccdflow.masks import MaskBit
from ccdflow.products import read_product, write_product
from ccdflow.simulate import render_gaussian_stars

from .conftest import CAL_SPEC


def _clipped_datasets(rng):
    flat = rng.normal(20000.0, 140.0, size=(300, 200))
    flat[rng.random(flat.shape) < 0.02] += rng.uniform(2e3, 5e4, 1)  # stars, rays
    flat[rng.random(flat.shape) < 0.01] = np.nan
    skewed = rng.gamma(2.0, 3.0, size=5001)  # a long tail: several iterations
    small = np.array([1.0, 2.0, 2.0, 3.0, 50.0])
    steps = np.repeat(np.arange(4.0), 7)
    # median 0, std exactly 1: at 3 sigma the values +-3 sit on the bounds, and
    # astropy keeps a value equal to a bound
    on_bounds = np.r_[np.zeros(16), 3.0, -3.0]
    return {"flat": flat, "skewed": skewed, "small": small, "steps": steps,
            "on_bounds": on_bounds}


@pytest.mark.parametrize("name", ["flat", "skewed", "small", "steps", "on_bounds"])
@pytest.mark.parametrize("sigma, maxiters", [(3.0, 5), (2.0, 10), (4.0, 1)])
def test_clipped_stats_equal_astropy(rng, name, sigma, maxiters):
    # the sorted-range path must keep astropy's values: same mean, median and std
    from astropy.stats import sigma_clipped_stats

    data = _clipped_datasets(rng)[name]
    finite = data[np.isfinite(data)]
    ref = sigma_clipped_stats(finite, sigma=sigma, maxiters=maxiters)
    ours = clipped_stats(data, sigma=sigma, maxiters=maxiters)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert np.isnan(clipped_stats(np.full(3, np.nan))).all()  # nothing finite
    before = data.copy()
    clipped_stats(data, sigma=sigma, maxiters=maxiters)
    np.testing.assert_array_equal(data, before)  # input not mutated


def test_central_level_equals_astropy_with_a_mask(rng):
    from astropy.stats import sigma_clipped_stats

    data = _clipped_datasets(rng)["flat"]
    mask = rng.random(data.shape) < 0.05
    region = data[75:225, 50:150]
    bad = mask[75:225, 50:150] | ~np.isfinite(region)
    ref = sigma_clipped_stats(region, mask=bad, sigma=3.0)[1]
    assert central_level(data, mask=mask) == pytest.approx(ref, rel=1e-12)


def test_master_bias_noise_is_read_noise_over_root_n(cal_masters):
    """RMS(master − pattern) in ADU ≈ RN/g/√N.

    Per frame a pixel carries RN/g read noise and the overscan level of its row
    (clipped mean of 28 columns: RN/g/√28, ~1.8 % in quadrature), both averaged
    over N frames; digitisation adds 1/12 ADU². The issue's bound is 15 %.
    """
    truth, bias = cal_masters["truth"], cal_masters["bias"]
    g, rn = truth.meta["gain_e_per_adu"], truth.meta["read_noise_e"]
    n = CAL_SPEC.n_bias
    resid = bias.data / g - truth.bias_pattern_adu
    resid -= resid.mean()  # the master's mean level is the overscan's business
    expected = rn / g / np.sqrt(n)
    assert resid.std() == pytest.approx(expected, rel=0.15)
    # the ERR plane says the same, per pixel
    assert np.sqrt(np.mean((bias.error / g) ** 2)) == pytest.approx(resid.std(), rel=0.10)
    assert bias.header["NCOMBINE"] == n and bias.header["EXPTIME"] == 0.0
    assert bias.extras["NUSED"].max() == n and bias.extras["NUSED"].mean() > 0.99 * n


def test_master_dark_rate_and_hot_pixels(cal_masters):
    truth, dark = cal_masters["truth"], cal_masters["dark"]
    true_rate = truth.dark_rate_e_per_s
    threshold = 1.0  # the default hot_threshold_e_per_s
    hot_true = true_rate > threshold
    flagged = (dark.mask & MaskBit.HOT) != 0
    assert hot_true.sum() > 20
    assert flagged[hot_true].mean() >= 0.95
    assert flagged[~hot_true].sum() <= 0.05 * hot_true.sum()
    # Median rate vs truth. Its error is dominated not by the per-pixel noise
    # (σ_pix·1.25/√Npix) but by each frame's overscan level, common to all its
    # pixels: g·(RN/g)/√(28·ny)/t per dark (÷√N_dark) and per bias (÷√N_bias).
    rn, t = truth.meta["read_noise_e"], CAL_SPEC.dark_exptime_s
    n_over = (CAL_SPEC.overscan_cols - 4) * CAL_SPEC.ny
    level_err = rn / np.sqrt(n_over) / t
    sigma = np.sqrt((1.2533 * np.median(dark.error)) ** 2 / dark.data.size
                    + level_err**2 / CAL_SPEC.n_dark + level_err**2 / CAL_SPEC.n_bias)
    assert abs(np.median(dark.data) - np.median(true_rate)) < 3 * sigma
    # hot pixel rates themselves are right to within their error
    pull = (dark.data - true_rate)[hot_true] / dark.error[hot_true]
    assert np.abs(np.median(pull)) < 0.5


def test_master_flat_matches_truth_donuts_kept_stars_gone(cal_masters):
    """RMS(master/true − 1) ≈ photon noise: √(Σ 1/S_i)/N for N flats of S_i electrons."""
    truth, flat = cal_masters["truth"], cal_masters["flat"]
    true_flat = truth.flats["V"] / central_level(truth.flats["V"])
    ratio = flat.data / true_flat
    flats = truth.frames[(truth.frames["type"] == "flat") & (truth.frames["filter"] == "V")]
    levels = flats["sky_level_e"].to_numpy() * true_flat.mean()
    expected = np.sqrt(np.sum(1 / levels)) / len(levels)
    assert (ratio - 1).std() == pytest.approx(expected, rel=0.20)
    # stars (20 per flat, peaks ~10 % of the level) would leave > 10σ residuals
    assert np.max(np.abs(ratio - 1)) < 6 * expected
    # dust donuts: where the true flat dips > 2 % below its 15-px median, so does the master
    from scipy.ndimage import median_filter

    dip = true_flat / median_filter(true_flat, size=41) < 0.98
    assert dip.sum() > 50
    master_dip = flat.data / median_filter(flat.data, size=41)
    assert np.median(master_dip[dip]) < 0.985
    assert np.median(ratio[dip] - 1) == pytest.approx(0.0, abs=3 * expected)


def test_calibrated_science_errors_are_honest(cal_masters, cal_science_v):
    """(SCI − k·truth)/ERR over unmasked sky pixels has std 0.95–1.05 and mean ≈ 0.

    k is the flat normalisation (master flat = 1 in the centre, truth = 1 at
    the median). Cosmic rays are not masked yet, so their pixels are left out.
    """
    truth = cal_masters["truth"]
    row, product = cal_science_v
    stars = truth.star_frames[truth.star_frames["frame"] == row["frame"]]
    star_img = render_gaussian_stars(shape=product.data.shape, x=stars["x"].to_numpy(),
                                     y=stars["y"].to_numpy(), flux=stars["flux_e"].to_numpy(),
                                     fwhm=row["fwhm_px"])
    k = central_level(truth.flats["V"])
    model = k * (truth.sky(row["frame"]) + star_img)
    from scipy.ndimage import binary_dilation

    cosmic = binary_dilation(truth.cosmic_mask(row["frame"]), iterations=1)
    sky = (product.mask == 0) & ~cosmic & (star_img < 1.0)
    pull = ((product.data - model) / product.error)[sky]
    assert 0.95 <= pull.std() <= 1.05
    assert abs(pull.mean()) < 0.05
    saturated = (product.mask & MaskBit.SATURATED) != 0
    assert saturated.sum() == row["n_saturated"] > 0
    assert product.header["BUNIT"] == "electron" and product.header["GAIN"] == 1.0


def test_product_round_trip_is_ccddata_compatible(cal_masters, tmp_path):
    from astropy.nddata import CCDData, StdDevUncertainty

    m = cal_masters
    row = m["truth"].frames[m["truth"].frames["type"] == "science"].iloc[0]
    product = calibrate_science(path=m["truth"].raw_dir / row["file"], detector=m["detector"],
                                bias=m["bias"], dark=None, flat=None, bad_pixel_mask=m["bpm"],
                                master_names={"bias": "bias.fits"})
    path = tmp_path / "sci.fits"
    write_product(path, product, unit="electron")
    again = read_product(path)
    np.testing.assert_array_equal(again.data, product.data)
    np.testing.assert_array_equal(again.mask, product.mask)
    ccd = CCDData.read(path, hdu="SCI", hdu_uncertainty="ERR", hdu_mask="MASK")
    assert ccd.unit == "electron" and isinstance(ccd.uncertainty, StdDevUncertainty)
    assert ccd.wcs is not None
    for key in ("BIASFILE", "DARKFILE", "FLATFILE", "CCDFVERS", "CCDFPARH", "DATE-RED"):
        assert key in ccd.header, key
    assert ccd.header["DARKFILE"] == "none"
    assert [p.name for p in tmp_path.iterdir()] == ["sci.fits"]


def test_parse_section_and_flips():
    rows, cols, fx, fy = parse_section("[ 17: 528,   1: 520]")
    assert (rows, cols, fx, fy) == (slice(0, 520), slice(16, 528), False, False)
    assert parse_section("[1025:2048,3072:2049]")[2:] == (False, True)
    with pytest.raises(ValueError, match="not an IRAF section"):
        parse_section("1:2,3:4")


def test_fit_overscan_functions(rng):
    rows = np.arange(400)
    level = 1000 + 3 * np.sin(rows / 120.0)
    strip = level[:, None] + rng.normal(0, 5, size=(400, 30))
    strip[rng.random(strip.shape) < 0.01] += 3000  # cosmic rays in the overscan
    for function, tol in (("median", 5 * 1.25 * 5 / np.sqrt(30)), ("mean", 5 * 5 / np.sqrt(30))):
        assert np.abs(fit_overscan(strip, function=function) - level).max() < tol
    fit = fit_overscan(strip, function="legendre", order=5, niterate=3)
    # a fit of order p to N per-row medians (σ_row = 1.25·5/√30) errs by about
    # σ_row·(p+1)/√N at the ends of the range (Legendre variance), less inside
    sigma_row = 1.25 * 5 / np.sqrt(30)
    assert np.abs(fit - level).max() < 3 * sigma_row * 6 / np.sqrt(400)
    with pytest.raises(ValueError, match="overscan function must be"):
        fit_overscan(strip, function="spline3")


def _amp(data, detsec, biassec="[5:6,1:4]", datasec="[1:4,1:4]", gain=2.0):
    header = fits.Header({"DETSEC": detsec, "BIASSEC": biassec, "DATASEC": datasec,
                          "GAIN": gain, "CCDSUM": "1 1"})
    return fits.ImageHDU(data.astype(np.uint16), header=header)


@pytest.mark.parametrize(("function", "n_cols"), [("median", 4), ("median", 25),
                                                  ("mean", 4), ("constant", 4),
                                                  ("legendre", 4)])
def test_overscan_level_noise_matches_monte_carlo(rng, function, n_cols):
    # the level's scatter over 400 strips of 200 rows (σ = 10 ADU and a row pattern the
    # column differences ignore) against the formula: within 10 % (the Monte Carlo's own
    # error is ~1/√(2·400·200) per row level, negligible; the formula's σ from 200·(n−1)
    # differences ~3 %)
    rows = 200
    pattern = 5 * np.sin(np.arange(rows) / 7.0)[:, None]
    levels, predicted = [], []
    for _ in range(400):
        strip = 1000 + pattern + rng.normal(0, 10, (rows, n_cols))
        levels.append(fit_overscan(strip, function=function, order=1) - 1000 - pattern[:, 0])
        predicted.append(overscan_level_noise(strip, function=function, order=1))
    # a line along the rows leaves the same pattern residual in every strip: removed
    levels = np.asarray(levels)
    measured = np.std(levels - levels.mean(axis=0))
    assert measured == pytest.approx(np.median(predicted), rel=0.1), (measured, predicted[0])


def test_per_row_overscan_noise_enters_err_and_header(tmp_path, rng):
    # 4 overscan columns, read noise 10 ADU, gain 2: the per-row median adds
    # 2·10·√0.298 = 10.9 e- per row; ERR² = RN² + level² + signal
    data = rng.normal(500, 10, (64, 68))  # a bias level of 500 ADU only
    path = tmp_path / "frame.fits"
    header = fits.Header({"EXPTIME": 10.0, "BIASSEC": "[65:68,1:64]", "TRIMSEC": "[1:64,1:64]"})
    fits.PrimaryHDU(data.astype(np.float32), header=header).writeto(path)
    det = {"gain_e_per_adu": 2.0, "read_noise_e": 20.0, "saturation_adu": 65535,
           "overscan": {"from": "biassec", "function": "median"}, "trim": {"from": "trimsec"}}
    frame = read_raw_frame(path, detector=det)
    assert frame.overscan_noise_e == pytest.approx(2 * 10 * np.sqrt(0.2982), rel=0.15)
    product = calibrate_science(path=path, detector=det, bias=None, dark=None, flat=None,
                                bad_pixel_mask=None)
    assert product.header["OVSCNOIS"] == pytest.approx(frame.overscan_noise_e, abs=1e-3)
    expected = np.sqrt(20.0**2 + frame.overscan_noise_e**2 + np.clip(product.data, 0, None))
    np.testing.assert_allclose(product.error, expected, rtol=1e-4)
    constant = {**det, "overscan": {"from": "biassec", "function": "constant"}}
    # one level from all 4 × 64 overscan pixels: 2·10/√256 = 1.25 e-
    assert read_raw_frame(path, detector=constant).overscan_noise_e == pytest.approx(1.25,
                                                                                     rel=0.15)


@pytest.mark.parametrize("step", [1, 16])
def test_an_adc_full_scale_below_the_profiles_saturation_is_saturation(tmp_path, rng, caplog,
                                                                       step):
    """12-bit frames (stored as they are, or in the top bits of 16: every value a multiple
    of 16) read with the default saturation of 65,535 ADU: the stars' clipped cores sit
    at the ADC's full scale (4095, or 65520) and would pass as unsaturated; they are
    flagged SATURATED from it, the log says so once, naming the profile key."""
    import logging

    from ccdflow.ccd import raw as ccd_module

    sky = rng.normal(300.0, 18.0, (80, 80))
    stars = render_gaussian_stars(shape=(80, 80), x=np.array([20.3, 55.7]),
                                  y=np.array([30.1, 60.4]), flux=np.array([8e4, 3e3]), fwhm=2.0)
    counts = np.clip(np.round(sky + stars), 0, 4095).astype(np.uint16)
    clipped = counts == 4095
    assert clipped.sum() >= 3 and not clipped[55:66, 50:61].any()  # the faint star is not
    det = {"gain_e_per_adu": 1.0, "read_noise_e": 10.0}  # saturation_adu: default 65535
    ccd_module._CEILING_WARNED.clear()
    frames = []
    with caplog.at_level(logging.WARNING, logger="ccdflow.ccd"):
        for i in range(2):
            path = tmp_path / f"f{i}.fits"
            fits.PrimaryHDU((counts * step).astype(np.uint16),
                            header=fits.Header({"EXPTIME": 60.0})).writeto(path)
            frames.append(read_raw_frame(path, detector=det))
    for frame in frames:
        np.testing.assert_array_equal(frame.saturated, clipped)
        assert frame.saturation_e == pytest.approx(4095.0 * step)
        assert any(n.startswith(f"ADC full scale {4095 * step} ADU") for n in frame.notes)
    said = [r.message for r in caplog.records if "full scale of a 12-bit ADC" in r.message]
    assert len(said) == 1 and "saturation_adu" in said[0]
    assert ("steps of 16" in said[0]) == (step == 16)
    # the profile that says it: no warning, the same mask; a frame that does not reach
    # the full scale (one pixel at 4095 is no ceiling) is left as it is
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ccdflow.ccd"):
        said_so = read_raw_frame(tmp_path / "f0.fits",
                                 detector={**det, "saturation_adu": 4095 * step})
    np.testing.assert_array_equal(said_so.saturated, clipped)
    assert not caplog.records
    faint = np.clip(np.round(sky), 0, 4094).astype(np.uint16)
    faint[0, 0] = 4095
    fits.PrimaryHDU(faint, header=fits.Header({"EXPTIME": 60.0})).writeto(tmp_path / "one.fits")
    assert not read_raw_frame(tmp_path / "one.fits", detector=det).saturated.any()


def test_a_noise_tail_ending_at_a_full_scale_value_is_no_adc_ceiling(tmp_path, rng, caplog):
    """A bias of 1 000 ± 5 ADU (a common pedestal) whose highest pixels read exactly
    1 023 = 2¹⁰ − 1, none above (a demo bias did): its tail thins out towards 1 023 (more
    pixels at 1 022), where a clip would pile up.  No pixel is SATURATED, nothing said;
    the same frame with its tail clipped at 1 023 is a 10-bit ceiling."""
    import logging

    from ccdflow.ccd import raw as raw_module

    values = np.round(rng.normal(1000.0, 5.0, (1024, 1024)))
    values[values > 1023] = 1000.0
    values[:2, :4] = 1023.0  # four pixels at the top ...
    values[2:4, :5] = 1022.0  # ... and more just below it, as the tail gives (~5 and ~2)
    assert values.max() == 1023 and (values == 1023).sum() < (values == 1022).sum()
    det = {"gain_e_per_adu": 1.0, "read_noise_e": 5.0}
    fits.PrimaryHDU(values.astype(np.uint16), header=fits.Header({"EXPTIME": 0.0})).writeto(
        tmp_path / "bias.fits")
    raw_module._CEILING_WARNED.clear()
    with caplog.at_level(logging.WARNING):
        frame = read_raw_frame(tmp_path / "bias.fits", detector=det)
    assert not frame.saturated.any() and not caplog.records
    assert frame.saturation_e == pytest.approx(65535.0)
    clipped = np.minimum(np.round(rng.normal(1000.0, 5.0, (256, 256))) + 20, 1023)
    fits.PrimaryHDU(clipped.astype(np.uint16), header=fits.Header({"EXPTIME": 0.0})).writeto(
        tmp_path / "clipped.fits")
    frame = read_raw_frame(tmp_path / "clipped.fits", detector=det)
    np.testing.assert_array_equal(frame.saturated, clipped == 1023)
    assert frame.saturation_e == pytest.approx(1023.0)


def test_multi_amplifier_mosaic_by_detsec(tmp_path):
    """Two 4x4 amplifiers, the right one read out mirrored; overscan 100 ADU, gain 2."""
    left = np.zeros((4, 6)) + 100
    left[:, :4] += np.arange(16).reshape(4, 4)
    right = np.zeros((4, 6)) + 100
    right[:, :4] += (np.arange(16).reshape(4, 4) + 100)[:, ::-1]
    primary = fits.PrimaryHDU(header=fits.Header({"EXPTIME": 1.0, "RDNOISE": 5.0}))
    path = tmp_path / "mef.fits"
    fits.HDUList([primary, _amp(left, "[1:4,1:4]"), _amp(right, "[8:5,1:4]")]).writeto(path)
    det = {"overscan": {"from": "biassec"}, "trim": {"from": "datasec"},
           "gain_e_per_adu": {"keyword": "GAIN"}, "read_noise_e": {"keyword": "RDNOISE"}}
    frame = read_raw_frame(path, detector=det)
    expected = 2.0 * np.hstack([np.arange(16).reshape(4, 4), np.arange(16).reshape(4, 4) + 100])
    np.testing.assert_allclose(frame.data, expected)
    assert frame.gains == [2.0, 2.0] and not frame.no_data.any()


def test_bad_detector_values_name_the_file(tmp_path):
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(np.zeros((4, 6), np.uint16),
                    header=fits.Header({"EXPTIME": 1.0, "GAIN": 0.0, "RDNOISE": 5})).writeto(path)
    with pytest.raises(CalibrationError, match=r"f\.fits: gain 0\.0 e-/ADU is not positive"):
        read_raw_frame(path, detector={"gain_e_per_adu": {"keyword": "GAIN"}})
    with pytest.raises(CalibrationError, match=r"f\.fits: no usable BIASSEC keyword"):
        read_raw_frame(path, detector={"gain_e_per_adu": 1.0, "overscan": {"from": "biassec"}})
    with pytest.raises(CalibrationError, match="no RDNOISE2 keyword for read noise"):
        read_raw_frame(path, detector={"gain_e_per_adu": 1.0,
                                       "read_noise_e": {"keyword": "RDNOISE2"}})


def _write(path, data, **header):
    fits.PrimaryHDU(data, header=fits.Header({"EXPTIME": 1.0, **header})).writeto(path)
    return path


def test_bad_inputs_give_clear_errors(tmp_path):
    det = {"gain_e_per_adu": 1.0, "read_noise_e": 5.0}
    zeros = [_write(tmp_path / f"z{i}.fits", np.zeros((20, 20), np.float32)) for i in range(3)]
    with pytest.raises(CalibrationError, match=r"z0\.fits: flat level 0 e- .* not positive"):
        make_master_flat(paths=zeros, detector=det, bias=None, dark=None)
    odd = [_write(tmp_path / "a.fits", np.ones((20, 20), np.float32)),
           _write(tmp_path / "b.fits", np.ones((20, 21), np.float32)),
           _write(tmp_path / "c.fits", np.ones((20, 20), np.float32))]
    with pytest.raises(CalibrationError, match=r"different shapes .* a\.fits is 20x20, b\.fits"):
        make_master_bias(paths=odd, detector=det)
    with pytest.raises(CalibrationError, match=r"1 frame\(s\) \(a\.fits\), fewer than the "
                                               r"minimum of 3 \(calibration\.min_frames\.bias"):
        make_master_bias(paths=odd[:1], detector=det)


def test_nans_in_raw_are_flagged_not_propagated_to_masters(tmp_path, rng):
    det = {"gain_e_per_adu": 1.0, "read_noise_e": 5.0}
    paths = []
    for i in range(4):
        data = rng.normal(100, 5, size=(30, 30)).astype(np.float32)
        if i == 0:
            data[3, 4] = np.nan
        paths.append(_write(tmp_path / f"b{i}.fits", data))
    bias = make_master_bias(paths=paths, detector=det)
    assert np.isfinite(bias.data).all() and bias.header["NCOMBINE"] == 4
    sci = _write(tmp_path / "s.fits", np.where(np.eye(30, dtype=bool), np.nan,
                                               rng.normal(500.0, 5.0, (30, 30))
                                               ).astype(np.float32))
    product = calibrate_science(path=sci, detector=det, bias=bias, dark=None, flat=None,
                                bad_pixel_mask=None)
    nonfinite = (product.mask & MaskBit.NONFINITE) != 0
    np.testing.assert_array_equal(nonfinite, np.eye(30, dtype=bool))
    assert np.isfinite(product.data[~nonfinite]).all()


def test_a_constant_science_frame_is_named_not_calibrated(tmp_path, rng):
    # a failed readout (all zeros, or one stuck value with NaN elsewhere) has no read
    # noise: it is refused with its path and value, never turned into a noiseless "sky"
    det = {"gain_e_per_adu": 2.0, "read_noise_e": 5.0}
    zero = _write(tmp_path / "zero.fits", np.zeros((30, 30), np.uint16))
    with pytest.raises(CalibrationError, match=r"zero\.fits: every pixel of the image area "
                                               r"is 0 e- .*a failed readout"):
        calibrate_science(path=zero, detector=det, bias=None, dark=None, flat=None,
                          bad_pixel_mask=None)
    stuck = _write(tmp_path / "stuck.fits", np.where(np.eye(30, dtype=bool), np.nan, 700.0
                                                     ).astype(np.float32))
    with pytest.raises(CalibrationError, match=r"stuck\.fits: .* is 1400 e- after"):
        calibrate_science(path=stuck, detector=det, bias=None, dark=None, flat=None,
                          bad_pixel_mask=None)
    det_sat = {**det, "saturation_adu": 4095}
    white = _write(tmp_path / "white.fits", np.full((30, 30), 4095, np.uint16))
    with pytest.raises(CalibrationError, match=r"white\.fits: every pixel of the image area "
                                               r"is saturated"):
        calibrate_science(path=white, detector=det_sat, bias=None, dark=None, flat=None,
                          bad_pixel_mask=None)
    # one pixel that differs is enough to be a frame
    data = np.full((30, 30), 700.0, np.float32)
    data[4, 5] += 3.0
    product = calibrate_science(path=_write(tmp_path / "ok.fits", data), detector=det,
                                bias=None, dark=None, flat=None, bad_pixel_mask=None)
    assert product.data.shape == (30, 30)


def test_a_cube_of_one_plane_is_an_image_and_a_cube_of_many_is_named(tmp_path, rng):
    # NAXIS3 = 1 (some capture programs): the same product as the 2-D frame
    det = {"gain_e_per_adu": 2.0, "read_noise_e": 5.0}
    data = rng.normal(700.0, 5.0, (20, 24)).astype(np.float32)
    flat = calibrate_science(path=_write(tmp_path / "flat.fits", data), detector=det,
                             bias=None, dark=None, flat=None, bad_pixel_mask=None)
    cube = calibrate_science(path=_write(tmp_path / "plane.fits", data[None]), detector=det,
                             bias=None, dark=None, flat=None, bad_pixel_mask=None)
    np.testing.assert_array_equal(cube.data, flat.data)
    np.testing.assert_array_equal(cube.error, flat.error)
    with pytest.raises(CalibrationError, match=r"cube\.fits: a data cube of 3 planes: one "
                                               r"image per file"):
        calibrate_science(path=_write(tmp_path / "cube.fits", np.stack([data] * 3)),
                          detector=det, bias=None, dark=None, flat=None, bad_pixel_mask=None)


def test_bad_pixel_mask_from_profile_lists(cal_masters):
    det = {"bad_columns": [3], "bad_rows": [2], "bad_pixels": [[5, 6]],
           "bad_regions": ["[10:11,20:21]"]}
    mask = make_bad_pixel_mask(shape=(30, 40), detector=det)
    bad = (mask & MaskBit.BAD) != 0
    assert bad[:, 2].all() and bad[1, :].all() and bad[5, 4] and bad[19:21, 9:11].all()
    assert bad.sum() == 30 + 40 - 1 + 1 + 4
    with pytest.raises(CalibrationError, match=r"bad_columns: column 41 outside 1\.\.40"):
        make_bad_pixel_mask(shape=(30, 40), detector={"bad_columns": [41]})


def test_failed_write_leaves_nothing(tmp_path, monkeypatch, cal_masters):
    product = cal_masters["bias"]

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", boom)
    with pytest.raises(OSError, match="disk full"):
        write_product(tmp_path / "bias.fits", product, unit="electron")
    assert list(tmp_path.iterdir()) == []


def test_masters_do_not_mutate_inputs(cal_masters):
    m = cal_masters
    before = m["bias"].data.copy(), m["bias"].mask.copy()
    make_master_dark(paths=m["files"]("dark"), detector=m["detector"], bias=m["bias"])
    np.testing.assert_array_equal(m["bias"].data, before[0])
    np.testing.assert_array_equal(m["bias"].mask, before[1])


def test_low_flat_pixels_flagged_where_they_are_divided_above_the_floor(cal_masters):
    """LOW_FLAT pixels of the master flat (and only those) get LOW_FLAT in the calibrated
    frame.  Above the floor (issue 14: a corrected value, measured by photometry) the flat
    is divided there and ERR grows as 1/F; below the floor the pixel is not divided and is
    also BAD.  (A bitwise-not of the int mask once made every pixel 'usable' and OR-ed
    LOW_FLAT into whole rows by fancy indexing.)"""
    import copy

    from ccdflow.calibrate import calibrate_science
    from ccdflow.masks import MaskBit

    m = cal_masters
    truth = m["truth"]
    row = truth.frames[(truth.frames["type"] == "science") & (truth.frames["filter"] == "V")
                       ].iloc[0]
    flat = copy.deepcopy(m["flat"])
    low = np.zeros(flat.data.shape, bool)
    low[10:14, 20:30] = True
    dead = np.zeros(flat.data.shape, bool)
    dead[40:42, 20:30] = True
    flat.mask[low | dead] |= np.uint16(MaskBit.LOW_FLAT)
    flat.data[low] = 0.3  # below flat.low, above the floor (0.2): divided
    flat.data[dead] = 0.1  # below the floor: not divided, BAD
    flat.error[low | dead] = 0.0
    with_flat = calibrate_science(path=truth.raw_dir / row["file"], detector=m["detector"],
                                  bias=m["bias"], dark=m["dark"], flat=flat, bad_pixel_mask=None)
    without = calibrate_science(path=truth.raw_dir / row["file"], detector=m["detector"],
                                bias=m["bias"], dark=m["dark"], flat=None, bad_pixel_mask=None)
    flagged = (with_flat.mask & MaskBit.LOW_FLAT) != 0
    expected = low | dead | ((m["flat"].mask & MaskBit.LOW_FLAT) != 0)
    np.testing.assert_array_equal(flagged, expected)
    np.testing.assert_allclose(with_flat.data[low], without.data[low] / 0.3, rtol=1e-6)
    np.testing.assert_allclose(with_flat.error[low], without.error[low] / 0.3, rtol=1e-5)
    assert not ((with_flat.mask[low] & MaskBit.BAD) != 0).any()
    np.testing.assert_array_equal(with_flat.data[dead], without.data[dead])
    assert ((with_flat.mask[dead] & MaskBit.BAD) != 0).all()
    # ERR_CAL is the masters' part of ERR: every pixel's random part stays positive
    assert (with_flat.extras["ERR_CAL"] <= with_flat.error).all()



def test_series_dark_of_the_wrong_shape_names_the_frame(cal_masters):
    # hot-pixel rates made for another detector shape: one line naming the frame; rates
    # are used only without a master dark (a dark's own HOT map wins)
    det = cal_masters["detector"]
    path = cal_masters["files"]("science", "V")[0]
    shape = cal_masters["bias"].data.shape
    hot = np.zeros(shape, np.uint16)
    hot[5, 5] = MaskBit.HOT
    wrong = {"HOTDARK": np.ones((10, 10)), "HOTDARK_ERR": np.zeros((10, 10))}
    with pytest.raises(CalibrationError, match=rf"{path.name}: the hot-pixel rates are 10x10, "
                                               rf"the frame {shape[1]}x{shape[0]}"):
        calibrate_science(path=path, detector=det, bias=cal_masters["bias"], dark=None,
                          flat=None, bad_pixel_mask=hot, hot_dark=wrong)
    rates = {"HOTDARK": np.full(shape, 2.0), "HOTDARK_ERR": np.full(shape, 0.1)}
    with_dark = calibrate_science(path=path, detector=det, bias=cal_masters["bias"],
                                  dark=cal_masters["dark"], flat=None, bad_pixel_mask=hot,
                                  hot_dark=rates)
    assert with_dark.header["HOTCORR"] == 0
    without = calibrate_science(path=path, detector=det, bias=cal_masters["bias"], dark=None,
                                flat=None, bad_pixel_mask=hot, hot_dark=rates)
    plain = calibrate_science(path=path, detector=det, bias=cal_masters["bias"], dark=None,
                              flat=None, bad_pixel_mask=hot)
    t = float(without.header["EXPTIME"])
    assert without.header["HOTCORR"] == 1
    assert plain.data[5, 5] - without.data[5, 5] == pytest.approx(2.0 * t, rel=1e-5)
    assert (plain.data[6, 6] == without.data[6, 6])  # only HOT pixels are corrected
    assert without.extras["ERR_CAL"][5, 5] == pytest.approx(np.hypot(
        plain.extras["ERR_CAL"][5, 5], 0.1 * t), rel=1e-4)


def test_row_strips_and_master_files_give_the_whole_frame_answer(cal_masters, tmp_path,
                                                                  monkeypatch):
    # a 4k² frame is calibrated in strips of 512 rows, its masters read strip by strip
    # from their files (ProductFile) instead of held whole; every formula is per pixel,
    # so strips of 7 rows here must give SCI, ERR, ERR_CAL and MASK bitwise equal to the
    # whole frame's, with the illumination model and with the series' dark (hot pixels)
    from ccdflow.calibrate import science
    from ccdflow.products import ProductFile

    from .conftest import write_masters

    m = cal_masters
    paths = write_masters(m, tmp_path)
    path = m["files"]("science", "V")[0]
    shape = m["bias"].data.shape
    hot = m["bpm"].copy()
    hot[10:20, 30] |= np.uint16(MaskBit.HOT)
    rates = {"HOTDARK": np.full(shape, 0.5), "HOTDARK_ERR": np.full(shape, 0.05)}
    configs = {"masters + illumination": dict(dark="dark", illumination="flat"),
               "series dark": dict(dark=None, hot_dark=rates)}
    for name, config in configs.items():
        def run(masters, config=config):
            kw = {k: v for k, v in config.items() if k not in ("dark", "illumination")}
            return calibrate_science(
                path=path, detector=m["detector"], bias=masters["bias"],
                dark=masters[config["dark"]] if config["dark"] else None,
                flat=masters["flat"], bad_pixel_mask=hot,
                illumination=masters.get(config.get("illumination")), **kw)

        whole = run(m)
        monkeypatch.setattr(science, "STRIP_PIXELS", 7 * shape[1])
        files = {k: ProductFile(paths[k]) for k in ("bias", "dark", "flat")}
        try:
            strips = run(files)
        finally:
            for f in files.values():
                f.close()
        monkeypatch.undo()
        for a, b in ((whole.data, strips.data), (whole.error, strips.error),
                     (whole.mask, strips.mask), (whole.extras["ERR_CAL"],
                                                 strips.extras["ERR_CAL"])):
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)
        for key in ("NHOTPIX", "HOTCORR"):
            assert whole.header[key] == strips.header[key], (name, key)
    assert strips.header["HOTCORR"] > 0


def test_product_file_reads_rows_as_read_product(cal_masters, tmp_path):
    from ccdflow.products import ProductFile

    from .conftest import write_masters

    paths = write_masters(cal_masters, tmp_path)
    whole = read_product(paths["flat"])
    with ProductFile(paths["flat"]) as f:
        assert f.shape == whole.data.shape and f.header["CCDFSTEP"] == whole.header["CCDFSTEP"]
        part = f.rows(5, 17)
    for a, b in ((part.data, whole.data[5:17]), (part.error, whole.error[5:17]),
                 (part.mask, whole.mask[5:17])):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"bpm.fits is not a ccdflow product \(missing "
                                         r"extension 'ERR'\)"):
        ProductFile(paths["bpm"])


def test_bad_pixel_mask_from_files_is_the_masters_mask_and_the_frames_job_makes_it(
        cal_masters, tmp_path, rng):
    """The bad-pixel mask made from the masters' MASK planes alone (what rule
    bad_pixel_mask writes) equals the one made from the whole masters, with a hot-pixel
    map's bits and HOTDARK images; a frames job makes that mask for its frames (under
    the bpm product's path, without reading or writing it)."""
    from ccdflow.calibrate import bad_pixel_mask_from_files
    from ccdflow.chain import _read_masters
    from ccdflow.products import write_mask

    from .conftest import write_masters

    m = cal_masters
    paths = write_masters(m, tmp_path)
    reference = m["files"]("flat", "V")[0]  # a raw frame of the night: its geometry
    masters = [paths[k] for k in ("bias", "dark", "flat")]
    mask, images = bad_pixel_mask_from_files(reference=reference, detector=m["detector"],
                                             masters=masters)
    assert images == {} and mask.any()  # the demo masters flag pixels: not a vacuous match
    np.testing.assert_array_equal(mask, m["bpm"])
    # a hot-pixel map (a night without darks): its bits OR-ed in, its rates returned
    hot = np.zeros_like(m["bpm"])
    hot[rng.integers(0, hot.shape[0], 20), rng.integers(0, hot.shape[1], 20)] = MaskBit.HOT
    rates = {"HOTDARK": rng.random(hot.shape), "HOTDARK_ERR": rng.random(hot.shape)}
    write_mask(tmp_path / "hotpix.fits", hot, inputs=[], step="test", images=rates)
    sources = {"reference": str(reference), "masters": {k: str(paths[k]) for k in
                                                         ("bias", "dark", "flat")},
               "hot_pixels": str(tmp_path / "hotpix.fits"), "origin": None}
    with_hot, images = bad_pixel_mask_from_files(
        reference=reference, detector=m["detector"], masters=masters,
        hot_pixels=sources["hot_pixels"])
    np.testing.assert_array_equal(with_hot, m["bpm"] | hot)
    for name, values in rates.items():  # stored as float32
        np.testing.assert_array_equal(images[name], values.astype(np.float32))
    item = {"frame": "f", "raw": str(reference), "bpm": str(tmp_path / "bpm_V.fits"),
            "bpm_sources": sources}
    made = _read_masters([item], detector=m["detector"])
    np.testing.assert_array_equal(made[item["bpm"]][0], with_hot)
    assert made[item["bpm"]][1].keys() == images.keys()
    assert not (tmp_path / "bpm_V.fits").exists()


def test_a_colour_mosaic_becomes_superpixels(tmp_path, rng):
    """A one-shot colour frame (BAYERPAT): each 2x2 block summed (R+G+G+B, electrons),
    a superpixel flagged when any of its pixels is, the read noise doubled, an odd last
    column dropped, the WCS scaled so that every superpixel sees the sky its four pixels
    saw; `detector.bayer.mode: mosaic` keeps the mosaic."""
    from astropy.wcs import WCS

    from ccdflow.calibrate import make_bad_pixel_mask, trimmed_geometry

    data = rng.integers(1000, 3000, (64, 81)).astype(np.uint16)
    data[10, 21] = 65535
    # a plate solution as astrometry.net writes it: a CD matrix and SIP distortion
    # (astropy's own wcs[::2, ::2] ignores the step when there is a CD matrix)
    header = fits.Header({"EXPTIME": 30.0, "BAYERPAT": "RGGB", "CCDSUM": "1 1",
                          "CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP",
                          "CRVAL1": 150.0, "CRVAL2": 20.0, "CRPIX1": 40.0, "CRPIX2": 30.0,
                          "CD1_1": -1e-4, "CD1_2": 2e-6, "CD2_1": 1e-6, "CD2_2": 1e-4,
                          "A_ORDER": 2, "B_ORDER": 2, "A_2_0": 3e-5, "A_1_1": -2e-5,
                          "B_0_2": 4e-5, "B_1_1": 2e-5})
    path = tmp_path / "osc.fits"
    fits.PrimaryHDU(data, header=header).writeto(path)
    det = {"gain_e_per_adu": 2.0, "read_noise_e": 5.0, "saturation_adu": 65535}
    frame = read_raw_frame(path, detector=det)
    e = data[:, :80].astype(float) * 2.0
    np.testing.assert_allclose(frame.data, e[0::2, 0::2] + e[0::2, 1::2] + e[1::2, 0::2]
                               + e[1::2, 1::2], rtol=1e-6)
    assert frame.data.shape == (32, 40) and frame.superpixel == 2
    assert frame.read_noise_e == 10.0 and frame.saturated.sum() == 1 and frame.saturated[5, 10]
    assert frame.header["CCDFBIN"] == 2 and frame.header["CCDSUM"] == "2 2"
    assert "2x2 superpixels R+G+G+B, odd last row/column dropped" in frame.notes[-1]
    full, binned = WCS(header), WCS(frame.header)
    assert "CD1_1" not in frame.header  # the scaled PC/CDELT alone
    for i, j in ((0, 0), (13, 7), (39, 31)):  # superpixel (i, j) spans pixels 2i, 2i+1
        np.testing.assert_allclose(binned.pixel_to_world_values(i, j),
                                   full.pixel_to_world_values(2 * i + 0.5, 2 * j + 0.5),
                                   atol=1e-9)
    mosaic = read_raw_frame(path, detector={**det, "bayer": {"mode": "mosaic"}})
    assert mosaic.data.shape == (64, 81) and mosaic.superpixel == 1
    # a frame whose header does not say it (a bias of the same camera): the profile's
    # detector.bayer.pattern makes it superpixels too, so its master fits the lights
    del header["BAYERPAT"]
    fits.PrimaryHDU(data, header=header).writeto(tmp_path / "bias.fits")
    assert read_raw_frame(tmp_path / "bias.fits", detector=det).superpixel == 1
    told = read_raw_frame(tmp_path / "bias.fits",
                          detector={**det, "bayer": {"mode": "superpixel", "pattern": "RGGB"}})
    assert told.superpixel == 2 and told.data.shape == (32, 40)
    # the profile's bad pixels are the camera's full-frame ones
    shape, factor = trimmed_geometry(path, detector=det)
    bpm = make_bad_pixel_mask(shape=shape, detector={"bad_columns": [5], "bad_rows": [64],
                                                     "bad_pixels": [[80, 1]],
                                                     "bad_regions": ["[3:6,9:12]"]},
                              superpixel=factor)
    assert factor == 2 and bpm[:, 2].all() and bpm[31, :].all() and bpm[0, 39]
    assert bpm[4:6, 1:3].all() and not bpm[6, 1] and not bpm[4, 3]
    # ... and so are the background's manual masks: full-frame (20, 30), r 6 -> (9.75,
    # 14.75), r 3
    from ccdflow.background import manual_mask

    circle = manual_mask(shape=(32, 40), circles=[{"x": 20, "y": 30, "radius_px": 6}],
                         superpixel=2)
    yy, xx = np.indices((32, 40))
    np.testing.assert_array_equal(circle, (xx - 9.75) ** 2 + (yy - 14.75) ** 2 <= 9.0)


_CFA_ADU = {"R": 1000, "G": 2000, "B": 3000}


def _cfa_frame(pattern, *, x_off=0, y_off=0, shape=(64, 82)):
    """A raw colour frame whose every pixel reads its colour's level (_CFA_ADU):
    the pattern read row by row from the first stored pixel, shifted by the offsets."""
    rows, cols = np.indices(shape)
    letters = np.array(list(pattern)).reshape(2, 2)[(rows + y_off) % 2, (cols + x_off) % 2]
    levels = np.vectorize(_CFA_ADU.get)(letters)
    return levels.astype(np.uint16), letters


@pytest.mark.parametrize("pattern, offsets, trim", [
    ("RGGB", None, None),
    ("BGGR", None, None),
    ("GRBG", ("XBAYROFF", "YBAYROFF", 1, 0), None),  # MaxIm's origin keywords
    ("GBRG", ("BAYOFFX", "BAYOFFY", 1, 1), None),  # N.I.N.A.'s
    ("RGGB", None, "[2:81,2:63]"),  # a trim from an odd column and row
])
@pytest.mark.parametrize("mode, colour, n", [("green", "G", 2), ("red", "R", 1),
                                             ("blue", "B", 1)])
def test_a_colour_mosaic_gives_one_colour_plane(tmp_path, pattern, offsets, trim, mode,
                                                colour, n):
    """detector.bayer.mode green/red/blue: each 2x2 superpixel holds only its block's
    pixels of that colour (2 G, 1 R, 1 B), wherever the pattern starts: every pixel of
    the raw frame reads its colour's level, so a superpixel of any other pixel would
    read another sum.  Read noise √n, saturation n × the pixel's, flags from the
    pixels used only, CFAPLANE in the header."""
    x_off, y_off = (offsets[2], offsets[3]) if offsets else (0, 0)
    data, letters = _cfa_frame(pattern, x_off=x_off, y_off=y_off)
    header = fits.Header({"EXPTIME": 30.0, "BAYERPAT": pattern})
    if offsets:
        header[offsets[0]], header[offsets[1]] = x_off, y_off
    # one saturated pixel of the plane and one of another colour
    other = next(c for c in "RGB" if c != colour)
    plane_px = tuple(int(v[0]) for v in np.nonzero(letters[10:12, 20:22] == colour))
    other_px = tuple(int(v[0]) for v in np.nonzero(letters[30:32, 40:42] == other))
    data[10 + plane_px[0], 20 + plane_px[1]] = 65535
    data[30 + other_px[0], 40 + other_px[1]] = 65535
    path = tmp_path / "osc.fits"
    fits.PrimaryHDU(data, header=header).writeto(path)
    det = {"gain_e_per_adu": 2.0, "read_noise_e": 5.0, "saturation_adu": 65535,
           "bayer": {"mode": mode}}
    if trim:
        det["trim"] = {"from": "section", "section": trim}
    frame = read_raw_frame(path, detector=det)
    expected = n * _CFA_ADU[colour] * 2.0
    ok = ~frame.saturated
    np.testing.assert_array_equal(frame.data[ok], np.float32(expected))
    assert frame.read_noise_e == pytest.approx(5.0 * np.sqrt(n))
    assert frame.header["CFAPLANE"] == "+".join([colour] * n)
    assert f"the {colour} plane" in frame.notes[-1] and frame.superpixel == 2
    if trim is None:  # the saturated pixels' superpixels: only the plane's one flagged
        assert frame.saturated.sum() == 1 and frame.saturated[5, 10]
        assert frame.data.shape == (32, 41)


def test_a_pattern_at_the_wrong_phase_is_said(tmp_path, caplog):
    """The header says RGGB but the array is GRBG (a capture program that flipped the
    rows, say): the 'G' pair is then R and B, whose levels differ (1000 vs 3000 ADU)
    while the other diagonal agrees; the log and the frame's notes say so and name the
    setting.  The right pattern says nothing; nor does a bias (too faint to tell)."""
    data, _ = _cfa_frame("GRBG")
    det = {"gain_e_per_adu": 2.0, "read_noise_e": 5.0, "saturation_adu": 65535,
           "bayer": {"mode": "green"}}
    large, _ = _cfa_frame("GRBG", shape=(1024, 1026))  # sampled every 4th block
    for told, doubt, pixels in (("RGGB", True, data), ("GRBG", False, data),
                                ("RGGB", True, large)):
        path = tmp_path / f"osc_{told}_{pixels.shape[0]}.fits"
        fits.PrimaryHDU(pixels, header=fits.Header({"EXPTIME": 30.0, "BAYERPAT": told})
                        ).writeto(path)
        caplog.clear()
        frame = read_raw_frame(path, detector=det)
        said = "the two G positions' medians differ by 100 %, the other diagonal's by 0 %"
        assert (said in caplog.text) is doubt and ("CHECK THE PATTERN" in frame.notes[-1]) is doubt
        if doubt:
            assert "set detector.bayer.pattern" in caplog.text
    bias = (data // 100).astype(np.uint16)  # 10-30 ADU: 20-60 e-
    fits.PrimaryHDU(bias, header=fits.Header({"EXPTIME": 0.0, "BAYERPAT": "RGGB"})
                    ).writeto(tmp_path / "bias.fits")
    caplog.clear()
    read_raw_frame(tmp_path / "bias.fits", detector=det)
    assert "G positions" not in caplog.text


def test_one_colour_plane_holds_that_colours_light(rng):
    """Injection-recovery on truth: a star through an RGGB filter array (the
    simulator's responses R 0.55, G 1, B 0.35) keeps half its G light in the green
    plane (two pixels of four) and a quarter of its R or B light in the red or blue
    one.  Noise-free, so the only error is the sampling of a 3.6-px Gaussian on a
    2-px grid (measured 1.1e-5); a plane taken at the wrong phase would be off by a
    third or more (R+B for G: 0.45 of it)."""
    from ccdflow.ccd import RawFrame, bayer_cells, superpixel_frame

    shape = (64, 64)
    star = render_gaussian_stars(shape=shape, x=np.array([31.3]), y=np.array([32.6]),
                                 flux=np.array([1e6]), fwhm=3.6)
    response = {"R": 0.55, "G": 1.0, "B": 0.35}
    letters = np.array(list("RGGB")).reshape(2, 2)[np.indices(shape)[0] % 2,
                                                    np.indices(shape)[1] % 2]
    image = (star * np.vectorize(response.get)(letters)).astype(np.float32)
    frame = RawFrame(data=image, saturated=np.zeros(shape, bool),
                     nonfinite=np.zeros(shape, bool), no_data=np.zeros(shape, bool),
                     header=fits.Header(), exptime_s=1.0, read_noise_e=1.0,
                     saturation_e=1e9)
    cells = bayer_cells({"BAYERPAT": "RGGB"}, {})
    for colour, share in (("G", 0.5), ("R", 0.25), ("B", 0.25)):
        plane = superpixel_frame(frame, pattern="RGGB", channel=colour, cells=cells)
        assert plane.data.sum() == pytest.approx(share * response[colour] * 1e6, rel=1e-4)


def test_a_colour_pattern_that_is_not_one_is_named(tmp_path):
    from ccdflow.ccd import bayer_cells

    with pytest.raises(CalibrationError, match=r"osc.fits: colour pattern 'RRGB' is not one "
                                               r"R, two G and one B"):
        bayer_cells({"BAYERPAT": "RRGB"}, {}, where=str(tmp_path / "osc.fits"))
    with pytest.raises(CalibrationError, match=r"set detector\.bayer\.pattern"):
        bayer_cells({}, {})
    # the profile's pattern wins over a header that has it wrong
    cells = bayer_cells({"BAYERPAT": "RGGB"}, {"bayer": {"pattern": "GRBG"}})
    assert cells.tolist() == [["G", "R"], ["B", "G"]]


@pytest.mark.parametrize("size", [3, 5, 7])
@pytest.mark.parametrize("noise", [0.005, 0.05, 0.3])
def test_local_median_outliers_equal_scipys_median_filter(rng, size, noise):
    """The flat's outlier mask, beside scipy's median_filter on the same float32 flat:
    equal pixel for pixel, from a quiet flat (few candidates) to one so noisy that most
    pixels need their box median (edges extended as scipy's 'nearest')."""
    from scipy.ndimage import median_filter

    from ccdflow.localmedian import local_median_outliers

    flat = (1 + rng.normal(0, noise, (203, 317))).astype(np.float32)
    flat[rng.integers(0, 203, 300), rng.integers(0, 317, 300)] *= np.float32(0.6)  # specks
    flat[:, 40] = np.float32(1.3)  # a hot column, and a dead corner at the edge
    flat[:3, :3] = np.float32(0.0)
    before = flat.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        scipy_mask = np.abs(flat / median_filter(flat, size=size, mode="nearest") - 1.0) > 0.1
    ours = local_median_outliers(flat, size=size, fraction=0.1)
    np.testing.assert_array_equal(ours, scipy_mask)
    np.testing.assert_array_equal(flat, before)
    assert scipy_mask.sum() >= 300 * (noise < 0.1)  # the test has outliers to find


def test_local_median_outliers_refuses_what_it_cannot_do():
    from ccdflow.localmedian import local_median_outliers

    with pytest.raises(ValueError, match="size must be a positive odd integer, got 4"):
        local_median_outliers(np.ones((9, 9)), size=4, fraction=0.1)
    with pytest.raises(ValueError, match="non-finite"):
        local_median_outliers(np.full((9, 9), np.nan), fraction=0.1)
    with pytest.raises(ValueError, match="fraction must be > 0"):
        local_median_outliers(np.ones((9, 9)), fraction=0)
