"""Satellite and aircraft trails (ccdflow.streaks): found, walked across the stars they
cross, masked; nothing else taken for one."""

from __future__ import annotations

import numpy as np
import pytest

from ccdflow.segmentation import detect_segments
from ccdflow.simulate.scene import psf_image, render_gaussian_stars, render_psf_stars
from ccdflow.streaks import find_streaks

SKY, NOISE, SIZE = 200.0, 15.0, 400


def _frame(rng, *, fwhm=2.5, n_stars=120, psf=None):
    xs, ys = rng.uniform(10, SIZE - 10, n_stars), rng.uniform(10, SIZE - 10, n_stars)
    flux = 10 ** rng.uniform(3.3, 5.3, n_stars)
    if psf is None:
        stars = render_gaussian_stars(shape=(SIZE, SIZE), x=xs, y=ys, flux=flux, fwhm=fwhm)
    else:
        stars = render_psf_stars(shape=(SIZE, SIZE), x=xs, y=ys, flux=flux, psf=psf[0],
                                 oversample=psf[1])
    return rng.normal(SKY, NOISE, (SIZE, SIZE)) + stars, np.column_stack([xs, ys]), flux


def _trail(*, x0, y0, angle_deg, peak, sigma=1.0, t_range=(-1e9, 1e9)):
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(float)
    a = np.radians(angle_deg)
    t = (xx - x0) * np.cos(a) + (yy - y0) * np.sin(a)
    d = -(xx - x0) * np.sin(a) + (yy - y0) * np.cos(a)
    inside = (t >= t_range[0]) & (t <= t_range[1])
    return np.where(inside, peak * np.exp(-0.5 * (d / sigma) ** 2), 0.0), d, t


def _find(img, fwhm):
    bkg, rms = np.full(img.shape, SKY), np.full(img.shape, NOISE)
    labels = detect_segments(values=img - bkg, rms=rms, nsigma=1.5, npixels=5)
    return find_streaks(data=img, background=bkg, rms=rms, labels=labels, fwhm_px=fwhm)


def test_a_trail_through_a_bright_star_is_masked_along_its_whole_length(rng):
    """A trail of peak 150 e- (10σ, σ 1 px) across the frame through a bright star: one
    trail, at its angle; every pixel where the trail stands above 3σ of the noise is
    masked (the stars it crosses too, where the deblender cut it); the band is a few
    pixels wide, so stars 8 px and more from it stay unmasked."""
    img, stars, flux = _frame(rng)
    bright = int(np.argmax(np.where((stars[:, 0] > 100) & (stars[:, 0] < 300)
                                    & (stars[:, 1] > 100) & (stars[:, 1] < 300), flux, 0)))
    trail, d, _ = _trail(x0=stars[bright, 0], y0=stars[bright, 1], angle_deg=33.0, peak=150.0)
    before = img + trail
    copy = before.copy()
    mask, found = _find(before, 2.5)
    np.testing.assert_array_equal(before, copy)  # input not mutated
    assert len(found) == 1 and found[0]["angle_deg"] == pytest.approx(33.0, abs=1.0)
    strong = trail > 3 * NOISE
    assert mask[strong].mean() >= 0.99, mask[strong].mean()
    sx, sy = np.rint(stars).astype(int).T
    assert mask[sy[bright], sx[bright]]
    assert mask[np.abs(d) > 6].sum() == 0 and mask.sum() < 10 * np.hypot(SIZE, SIZE)
    far = np.abs(-(stars[:, 0] - stars[bright, 0]) * np.sin(np.radians(33))
                 + (stars[:, 1] - stars[bright, 1]) * np.cos(np.radians(33))) > 8
    assert not mask[sy[far], sx[far]].any()


def test_a_trail_that_ends_is_not_extended_beyond_its_end(rng):
    """An aircraft's or a meteor's trail from mid-frame (150 px long): masked along its
    length and no further than two walking chunks (2 FWHM each) past its end."""
    img, _, _ = _frame(rng, n_stars=40)
    trail, d, t = _trail(x0=200.0, y0=200.0, angle_deg=-70.0, peak=120.0, t_range=(-75, 75))
    mask, found = _find(img + trail, 2.5)
    assert len(found) == 1
    assert mask[trail > 3 * NOISE].mean() >= 0.99
    band = np.abs(d) < 3
    assert not (mask & band & (np.abs(t) > 75 + 2 * 2 * 2.5 + 4)).any()


@pytest.mark.parametrize("stars", ["round", "trailed", "defocused"])
def test_no_trail_where_there_is_none(rng, stars):
    """Stars round, trailed 5 px, defocused donuts, and cosmic-ray tracks of up to 25 px:
    none of them a trail."""
    psf = {"round": None, "trailed": psf_image(fwhm=2.0, trail_px=5.0, trail_angle_deg=20.0),
           "defocused": psf_image(fwhm=2.5, defocus_radius_px=6.0)}[stars]
    fwhm = {"round": 2.5, "trailed": 3.2, "defocused": 10.3}[stars]
    img, _, _ = _frame(rng, psf=psf)
    for _ in range(10):  # cosmic-ray tracks, 5-25 px, 1 px wide
        x, y = rng.integers(30, SIZE - 30, 2).tolist()
        n = int(rng.integers(5, 26))
        img[y, x:x + n] += 800.0
    mask, found = _find(img, fwhm)
    assert found == [] and not mask.any()


def test_the_seeing_must_be_known():
    img = np.zeros((50, 50))
    with pytest.raises(ValueError, match="fwhm_px"):
        find_streaks(data=img, background=img, rms=img + 1, labels=np.zeros((50, 50), int),
                     fwhm_px=float("nan"))


def test_blended_stars_in_a_row_are_not_a_trail():
    """A crowded field (6 000 stars per Mpx at FWHM 4.5 px: a cluster in poor seeing)
    whose blended footprints happen to run in a long thin chain, peaked across: before
    the uniformity test this frame had a 180-px "trail" (width 20 px) masked; along
    its length its chunks' S/N ran 35 to 220, where a trail's stay within ~10 %."""
    rng = np.random.default_rng(1)
    size = 512
    n = int(6000 * size * size / 2**20)
    img = rng.normal(200, 15, (size, size)) + render_gaussian_stars(
        shape=(size, size), x=rng.uniform(0, size, n), y=rng.uniform(0, size, n),
        flux=10 ** rng.uniform(2.8, 5.3, n), fwhm=4.5)
    bkg, rms = np.full(img.shape, 200.0), np.full(img.shape, 15.0)
    labels = detect_segments(values=img - bkg, rms=rms, nsigma=1.5, npixels=5)
    mask, found = find_streaks(data=img, background=bkg, rms=rms, labels=labels, fwhm_px=4.5)
    assert found == [] and not mask.any()
