"""Background maps against the simulator's truth; iterative masking against a single pass."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from ccdflow.background import BackgroundError, estimate_background, manual_mask
from ccdflow.calibrate import central_level
from ccdflow.masks import MaskBit
from ccdflow.simulate import render_gaussian_stars


@pytest.fixture(scope="module")
def calibrated(cal_masters, cal_science_v):
    truth = cal_masters["truth"]
    row, product = cal_science_v
    k = central_level(truth.flats["V"])  # flux scale set by the flat normalisation
    true_flat = truth.flats["V"] / k
    sky = k * truth.sky(row["frame"])
    # true per-pixel sky noise of the calibrated frame: Poisson of the collected sky
    # and dark charge plus read noise, divided by the flat
    rn = truth.meta["read_noise_e"]
    collected = sky * true_flat + truth.dark_rate_e_per_s * row["exptime_s"]
    sigma = np.sqrt(collected + rn**2) / true_flat
    stars = truth.star_frames[truth.star_frames["frame"] == row["frame"]]
    return {"product": product, "sky": sky, "sigma": sigma, "stars": stars, "row": row}


def test_background_matches_true_sky(calibrated):
    """RMS(BKG − sky) ≤ 0.1 σ_pixel; BKG_RMS within 10 % of the true per-pixel noise.

    This 320×300 frame holds only 10×9 boxes of 32 px, so the grid is not median
    filtered: a 3×3 filter flattens the moonlight gradient in the edge boxes
    (measured 0.15 σ with filter 3 against 0.08 σ with filter 1 here; on the
    1024² demo the defaults give 0.07 σ, see the next test). Each box averages
    ~1000 sky pixels (σ/30).
    """
    p = calibrated["product"]
    result = estimate_background(data=p.data, mask=p.mask != 0, box_size=32, filter_size=1,
                                 saturated=(p.mask & MaskBit.SATURATED) != 0)
    sigma = np.median(calibrated["sigma"])
    resid = result.background - calibrated["sky"]
    assert np.sqrt(np.mean(resid**2)) <= 0.1 * sigma
    sky_pixels = p.mask == 0
    ratio = np.median(result.rms[sky_pixels] / calibrated["sigma"][sky_pixels])
    assert ratio == pytest.approx(1.0, abs=0.10)
    # no bias near bright stars: within 10 px of stars above 1e5 e-
    yy, xx = np.indices(p.data.shape)
    near = np.zeros(p.data.shape, bool)
    for _, s in calibrated["stars"][calibrated["stars"]["flux_e"] > 1e5].iterrows():
        near |= (xx - s["x"]) ** 2 + (yy - s["y"]) ** 2 <= 100
    assert near.sum() > 100
    assert abs(resid[near].mean()) <= 0.2 * sigma
    assert result.iterations >= 1 and 0 < result.mask_fractions[-1] < 0.5


def test_default_settings_on_a_demo_sized_frame(rng):
    """Defaults (box 64, 3×3 filter) on a 1024² frame like the demo's: moonlight
    gradient of ±8 %, 260 stars, sky 1000 e-, RN 7.5 e-: RMS(BKG − sky) ≤ 0.1 σ."""
    n, sky, rn = 1024, 1000.0, 7.5
    yy, xx = np.indices((n, n))
    true_sky = sky * (1 + 0.08 * (2 * xx / (n - 1) - 1) - 0.04 * (2 * yy / (n - 1) - 1))
    k = 260
    mag = rng.uniform(13, 19.5, k)
    stars = render_gaussian_stars(shape=(n, n), x=rng.uniform(0, n, k), y=rng.uniform(0, n, k),
                                  flux=60 * 10 ** (-0.4 * (mag - 22.5)), fwhm=3.0)
    image = rng.poisson(true_sky + stars) + rng.normal(0, rn, (n, n))
    result = estimate_background(data=image)
    sigma = np.sqrt(sky + rn**2)
    assert np.sqrt(np.mean((result.background - true_sky) ** 2)) <= 0.1 * sigma
    assert np.median(result.rms) == pytest.approx(sigma, rel=0.10)


@pytest.mark.parametrize("backend, single_bias", [("sep", 0.05), ("photutils", 0.1)])
def test_iterative_masking_beats_single_pass_in_a_crowded_field(rng, backend, single_bias):
    """1500 stars on 512² (≈ 6 000 per Mpx): star wings lift a single-pass map (by
    0.14 σ with photutils' median, 0.06 σ with SEP's clipped mode, measured); masking
    sources iteratively brings the bias under 0.05 σ with either backend (−0.017 σ SEP,
    −0.008 σ photutils) and both mask the same ~49 % of the frame."""
    n, sky, rn = 512, 1000.0, 7.5
    _, xx = np.indices((n, n))
    true_sky = sky * (1 + 0.05 * (xx / n - 0.5))
    k = 1500
    stars = render_gaussian_stars(shape=(n, n), x=rng.uniform(0, n, k), y=rng.uniform(0, n, k),
                                  flux=10 ** rng.uniform(3, 5.5, k), fwhm=3.0)
    image = rng.poisson(true_sky + stars) + rng.normal(0, rn, (n, n))
    sigma = np.sqrt(sky + rn**2)
    single = estimate_background(data=image, box_size=32, iterate=False, backend=backend)
    iterative = estimate_background(data=image, box_size=32, iterate=True, backend=backend)
    bias_single = np.mean(single.background - true_sky) / sigma
    bias_iter = np.mean(iterative.background - true_sky) / sigma
    assert bias_single > single_bias
    assert abs(bias_iter) < 0.05
    assert iterative.mask_fractions[0] == 0 and iterative.mask_fractions[-1] > 0.3


def test_scalar_mode_and_inputs_not_mutated(calibrated):
    p = calibrated["product"]
    before = p.data.copy()
    result = estimate_background(data=p.data, mask=p.mask != 0, mode="scalar")
    np.testing.assert_array_equal(p.data, before)
    assert np.ptp(result.background) == 0
    assert result.sky_median == pytest.approx(np.median(calibrated["sky"]), rel=0.02)


def test_manual_mask_in_ra_dec_lands_on_the_right_pixels():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [51.0, 41.0]  # 1-based: pixel (50, 40) 0-based
    wcs.wcs.cd = [[-0.5 / 3600, 0], [0, 0.5 / 3600]]  # 0.5 arcsec/px
    mask = manual_mask(shape=(80, 100), circles=[{"ra": 150.0, "dec": 2.0,
                                                  "radius_arcsec": 5.1}], wcs=wcs)
    ys, xs = np.nonzero(mask)
    assert xs.mean() == pytest.approx(50.0, abs=1e-6) and ys.mean() == pytest.approx(40.0,
                                                                                   abs=1e-6)
    assert mask.sum() == pytest.approx(np.pi * 10.2**2, rel=0.05)  # 5.1" = 10.2 px radius
    pixel = manual_mask(shape=(80, 100), circles=[{"x": 50, "y": 40, "radius_px": 10.2}])
    np.testing.assert_array_equal(mask, pixel)


def test_bad_inputs(rng):
    image = rng.normal(100, 5, (100, 120))
    with pytest.raises(BackgroundError, match="every pixel is masked"):
        estimate_background(data=image, mask=np.ones(image.shape, bool))
    with pytest.raises(BackgroundError, match=r"box_size 256 is larger than the frame "
                                               r"\(120x100\).*mode 'scalar'"):
        estimate_background(data=image, box_size=256)
    with pytest.raises(BackgroundError, match="given in RA/Dec but the frame has no"):
        manual_mask(shape=image.shape, circles=[{"ra": 1, "dec": 2, "radius_arcsec": 3}])
    # a calibrated frame masked everywhere (dome light, shutter stuck open) says by what
    from astropy.io import fits

    from ccdflow.background import background_for_product
    from ccdflow.masks import MaskBit
    from ccdflow.products import Product

    flags = np.full(image.shape, int(MaskBit.SATURATED), np.uint16)
    flags[:5, :] |= np.uint16(MaskBit.HOT)
    saturated = Product(data=image, error=np.ones_like(image), mask=flags,
                        header=fits.Header())
    with pytest.raises(BackgroundError, match=r"every pixel is masked \(SATURATED 100\.0 %, "
                                               r"HOT 5\.0 %\): no sky"):
        background_for_product(product=saturated)
    holed = image.copy()
    holed[10:40, 20:60] = np.nan  # NaN region: masked, map stays finite
    result = estimate_background(data=holed, box_size=20)
    assert np.isfinite(result.background).all()
    assert result.background.mean() == pytest.approx(100, abs=1)


def test_hot_pixels_are_masked_but_not_grown(rng):
    """Issue 12: a camera without darks, ~1,000 hot pixels on 512².  Each is masked at
    its own pixel, not grown like a star, so the source mask stays near the stars' share
    (measured 1.9 % of the frame; 7.9 % when every spike is grown by its radius clipped to
    min_radius_px = 2), and the sky is unbiased (0.009 σ here)."""
    from ccdflow import background as bg

    size, sky, noise = 512, 200.0, 10.0
    data = rng.normal(sky, noise, (size, size))
    data += render_gaussian_stars(shape=data.shape, x=rng.uniform(10, size - 10, 40),
                                  y=rng.uniform(10, size - 10, 40),
                                  flux=10 ** rng.uniform(3.5, 5, 40), fwhm=2.0)
    hx, hy = rng.integers(0, size, 1000), rng.integers(0, size, 1000)
    data[hy, hx] += 10 ** rng.uniform(2.5, 4, 1000)
    result = estimate_background(data=data, box_size=64, npixels=1)
    assert result.mask_fractions[-1] < 0.03, result.mask_fractions
    assert abs(np.median(result.background) - sky) < 0.1 * noise
    # the same frame with spikes grown as sources (the former behaviour) masks far more
    keep = bg.SPIKE_PEAK_FRACTION
    try:
        bg.SPIKE_PEAK_FRACTION = 1.1  # no segment is a spike
        grown = estimate_background(data=data, box_size=64, npixels=1)
    finally:
        bg.SPIKE_PEAK_FRACTION = keep
    assert grown.mask_fractions[-1] > 2 * result.mask_fractions[-1]


def test_segments_on_the_overwritten_residual_are_the_same(calibrated):
    # the background's iterations let SEP work on their own residual (zeroed at bad
    # pixels in place, one frame-sized plane less): same labels as the copying call,
    # whose input is left alone; an RMS map with holes (0, NaN) takes the copying path
    from ccdflow.segmentation import detect_segments

    p = calibrated["product"]
    bad = p.mask != 0
    result = estimate_background(data=p.data, mask=bad)
    residual = (p.data - result.background).astype(np.float32)
    kept = residual.copy()
    for rms in (result.rms, np.where(np.arange(result.rms.size).reshape(result.rms.shape) % 97
                                     == 0, 0.0, result.rms).astype(np.float32)):
        copying = detect_segments(values=residual, rms=rms, nsigma=3.0, npixels=5, mask=bad)
        np.testing.assert_array_equal(residual, kept)
        work = residual.copy()
        in_place = detect_segments(values=work, rms=rms, nsigma=3.0, npixels=5, mask=bad,
                                   overwrite_values=True)
        np.testing.assert_array_equal(in_place, copying)
        assert copying.max() > 20 and (work[bad] == 0).all()  # a field of stars


def test_sky_figures_are_the_maps_medians_computed_once(rng):
    # the batch summary and the map's header both read sky_median and sky_rms: one
    # full-frame median each per frame (cached), equal to numpy's
    from ccdflow.background import BackgroundResult

    bkg = rng.normal(100.0, 2.0, (64, 48)).astype(np.float32)
    rms = rng.normal(5.0, 0.1, (64, 48)).astype(np.float32)
    result = BackgroundResult(background=bkg, rms=rms, source_mask=np.zeros(bkg.shape, bool),
                              iterations=1)
    assert result.sky_median == float(np.median(bkg))
    assert result.sky_rms == float(np.median(rms))
    assert {"sky_median", "sky_rms"} <= set(vars(result))  # cached on the instance
