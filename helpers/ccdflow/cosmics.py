"""Cosmic-ray masks (L.A.Cosmic, van Dokkum 2001) on calibrated frames in electrons.

Settings measured by the team (NOTES.md): passing the real read noise, the
saturation level, the background map (``inbkg``) and the variance (``invar``)
matters, and ``sepmed=False`` cut false flags on star cores from ~200 to ~30
per 2k² frame.  Two methods give that mask:

* ``lacosmic`` (default): :func:`ccdflow.lacosmic.lacosmic_mask`, astroscrappy's
  algorithm with ``sepmed=False`` evaluated only where a cosmic ray can be — the
  same pixels (tests/test_cosmics.py) in ~1/10 of astroscrappy's time with
  ``sepmed=True``;
* ``astroscrappy``: ``astroscrappy.detect_cosmics`` itself (any ``sepmed``), the
  reference.

Undersampled stars: L.A.Cosmic tells a star from a cosmic ray by its fine-structure
contrast (``objlim``), and the core of a star of FWHM 1.2 px is as sharp as a cosmic
ray to that test at ``objlim`` 5 (on a simulated 12-bit night, 99 of 249 stars above
1,500 e- lost their cores to the mask).  :func:`effective_objlim` raises ``objlim``
for such a frame to ``star_margin`` × the contrast a noise-free star of the frame's
FWHM reaches (:func:`star_contrast`), so stars are spared and cosmic rays on the sky,
which have no fine structure around them, are flagged as before.

Saturated pixels: astroscrappy masks every pixel at ``satlevel`` whose 5×5 median
exceeds ``satlevel / 10`` (a saturated star's core), and a caller's mask of
SATURATED pixels is dilated 3×3 with the rest of ``inmask``.  On a 12-bit camera
most bright cosmic rays saturate, so both hid them: on simulated 12-bit nights 86 %
of the cosmic-ray pixels above 5σ were found, and 77 of the 97 missed were saturated
cores or their neighbours.  Given a MaskBit plane, :func:`detect_cosmic_rays` examines
SATURATED pixels like any other, except the cores of saturated stars
(:func:`saturated_star_cores`: astroscrappy's test measured above the sky, or light
all around the saturated pixels), which it masks with astroscrappy's 5×5-twice
dilation for both methods (``satlevel`` is then not passed on).

Frame edges: astroscrappy's median filters copy their input within their half width
of the frame's edge (and its dilations leave the 1-px border out), so a cosmic ray
within ~3 px of an edge is never flagged: on the 28-frame demo night 30 of the 35
cosmic-ray pixels above 5σ that were missed lay within 3 px of an edge.  Both
methods run on the planes reflected by :data:`EDGE_PAD` pixels about the frame's
edges (``numpy.pad``'s ``'reflect'``, the edge pixel not repeated) and the mask is
cut back to the frame: an edge pixel is judged with the neighbourhood a reflection
gives it (tests/test_cosmics.py compares astroscrappy run on the padded planes).
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["CosmicsError", "detect_cosmic_rays", "effective_objlim", "saturated_star_cores",
           "star_contrast", "write_cosmics"]


class CosmicsError(ValueError):
    """Cosmic-ray detection cannot run; the message says why."""


#: pixels by which the planes are reflected about the frame's edges before L.A.Cosmic
#: runs (module docstring): more than the reach of astroscrappy's edge rules (the 7×7
#: median of 3×3 medians, 3 px, and the dilations' 1-px border)
EDGE_PAD = 8


def _reflect_edges(plane: np.ndarray, pad: int) -> np.ndarray:
    """Fill the outer ``pad`` rows and columns of ``plane`` with the reflection of its
    interior about the interior's edge pixels, in place: ``plane`` becomes
    ``numpy.pad(interior, pad, mode="reflect")`` (the edge pixel not repeated) without a
    second plane.  Needs ``pad`` < each side of the interior."""
    if pad == 0:
        return plane
    ny, nx = plane.shape
    if min(ny, nx) - 2 * pad <= pad:
        raise CosmicsError(f"a reflection of {pad} px needs more than {pad} px inside, "
                           f"got a plane of {ny - 2 * pad}×{nx - 2 * pad}")
    inner = slice(pad, nx - pad)
    plane[:pad, inner] = plane[2 * pad:pad:-1, inner]
    plane[ny - pad:, inner] = plane[ny - pad - 2:ny - 2 * pad - 2:-1, inner]
    plane[:, :pad] = plane[:, 2 * pad:pad:-1]
    plane[:, nx - pad:] = plane[:, nx - pad - 2:nx - 2 * pad - 2:-1]
    return plane


#: FWHM grid step (px) of :func:`star_contrast`: a FWHM is rounded down to it (a smaller
#: FWHM has the larger contrast, so the rounding errs towards sparing stars)
CONTRAST_STEP_PX = 0.05


@functools.lru_cache(maxsize=128)
def _contrast_on_grid(step_index: int) -> float:
    from scipy import ndimage
    from scipy.special import ndtr

    from .lacosmic import _laplace_rebin

    sigma = step_index * CONTRAST_STEP_PX / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    n, c = 21, 10
    edges = np.arange(n + 1) - c - 0.5
    worst = 0.0
    for dx in np.linspace(0.0, 0.5, 6):  # the star's centre within its pixel (symmetric)
        for dy in np.linspace(0.0, 0.5, 6):
            ex, ey = np.diff(ndtr((edges - dx) / sigma)), np.diff(ndtr((edges - dy) / sigma))
            star = (np.outer(ey, ex) * 1e5).astype(np.float32)
            s = _laplace_rebin(star) / np.float32(2.0)  # unit noise: the ratio is scale-free
            sp = s - ndimage.median_filter(s, 5, mode="nearest")
            m3 = ndimage.median_filter(star, 3, mode="nearest")
            f = np.maximum(m3 - ndimage.median_filter(m3, 7, mode="nearest"), 0.01)
            core = (slice(c - 1, c + 2), slice(c - 1, c + 2))
            seeds = sp[core] > 0.05 * sp.max()
            worst = max(worst, float((sp[core] / f[core])[seeds].max()))
    return worst


def star_contrast(fwhm_px: float) -> float:
    """The largest fine-structure contrast (sp / f, the number L.A.Cosmic compares with
    ``objlim``) that the core pixels of a noise-free, pixel-integrated Gaussian star of
    ``fwhm_px`` reach, over the star's position within its pixel.

    The ratio does not depend on the star's flux or the noise (both terms scale
    alike): 26 at FWHM 1.0 px, 9.1 at 1.2, 4.4 at 1.4, 1.7 at 1.8, 1.2 at 2.0, 0.6 at
    2.5.  Computed once per FWHM step of :data:`CONTRAST_STEP_PX` (rounded down).
    """
    if not np.isfinite(fwhm_px) or fwhm_px <= 0:
        raise CosmicsError(f"fwhm_px must be a positive number, got {fwhm_px}")
    step = int(np.clip(math.floor(fwhm_px / CONTRAST_STEP_PX + 1e-9), 10, 100))
    return _contrast_on_grid(step)


def effective_objlim(*, objlim: float, fwhm_px: float | None, star_margin: float) -> float:
    """``objlim``, raised to ``star_margin`` × :func:`star_contrast` of the frame's
    FWHM where that is higher (undersampled stars); ``objlim`` itself without a FWHM
    (NaN or None) or with ``star_margin`` 0.  A margin of 2 leaves the noise of a
    faint star's core room: at FWHM 1.2 px, ``objlim`` 10 (1.1×) still flagged 13 of
    249 stars' cores, 20 (2.2×) one, with the same 71 of 74 cosmic-ray pixels found.
    """
    if star_margin < 0:
        raise CosmicsError(f"star_margin must be >= 0, got {star_margin}")
    if not star_margin or fwhm_px is None or not np.isfinite(fwhm_px) or fwhm_px <= 0:
        return float(objlim)
    return float(max(objlim, star_margin * star_contrast(fwhm_px)))


#: ``objlim`` (astroscrappy's default) and ``star_margin`` when not given
DEFAULT_OBJLIM = 5.0
DEFAULT_STAR_MARGIN = 2.0

#: astroscrappy's saturated-star test: 5×5 median above this fraction of the saturation
#: level (here both measured above the sky)
SAT_STAR_MEDIAN_FRACTION = 0.1
#: a pixel bordering a saturated region is lit when it stands this many ERR above the sky
SAT_STAR_RING_SIGMA = 3.0
#: light surrounds a saturated region when at least this many bordering pixels are lit ...
SAT_STAR_MIN_LIT = 4
#: ... in no one axis: the axial alignment |mean(exp(2iθ))| of their directions θ seen
#: from its centroid is at most this (1: all along one line, like a track's two ends)
SAT_STAR_MAX_ALIGNMENT = 0.6


def saturated_star_cores(*, data: np.ndarray, error: np.ndarray, saturated: np.ndarray,
                         background: np.ndarray | None, saturation_e: float,
                         bad: np.ndarray | None = None) -> np.ndarray:
    """The saturated pixels that belong to stars (or other extended light), not to
    cosmic rays.

    Each 8-connected region of ``saturated`` is a star's core when either

    * astroscrappy's test passes above the sky: the 5×5 median around one of its pixels,
      less the sky, exceeds ``SAT_STAR_MEDIAN_FRACTION`` × (``saturation_e`` − sky)
      (astroscrappy compares the median with ``satlevel / 10``, which the sky itself
      nearly reaches on a 12-bit camera), or
    * light surrounds it: at least ``SAT_STAR_MIN_LIT`` of the unmasked pixels bordering
      it stand ``SAT_STAR_RING_SIGMA`` × ERR above the sky, and their directions from its
      centroid do not lie along one line (axial alignment ≤ ``SAT_STAR_MAX_ALIGNMENT``).
      An undersampled star fails the median test (most of its 5×5 box is sky) but lights
      all around its core; a cosmic-ray track lights its ends and the pixels along it.

    Measured: on synthetic frames (saturated stars 2-20× over at FWHM 1.0-3.0 px,
    straight and kinked tracks of 1-3 pixels, 50 frames) 747 of 747 saturated stars and
    none of 1,993 tracks pass; on three simulated 12-bit nights (FWHM 1.2 and 1.8 px,
    54 frames, truth known) 681 of 682 saturated stars and 1 of 60 saturated cosmic rays.
    Regions that pass neither test are left to L.A.Cosmic, whose ``objlim`` (raised for
    undersampled frames, :func:`effective_objlim`) spares star cores.

    Parameters
    ----------
    data, error : ndarray
        SCI and ERR in electrons.
    saturated : ndarray of bool
        Pixels at saturation (MaskBit.SATURATED).
    background : ndarray, optional
        Sky map in electrons (0 when not given).
    saturation_e : float
        Saturation level in electrons.
    bad : ndarray of bool, optional
        Pixels whose values mean nothing (left out of the ring).

    Returns
    -------
    ndarray of bool
        True at the saturated pixels of star cores (not dilated).
    """
    from scipy import ndimage

    saturated = np.asarray(saturated, bool)
    cores = np.zeros(saturated.shape, bool)
    labels, n = ndimage.label(saturated, structure=np.ones((3, 3), bool))
    if not n:
        return cores
    ny, nx = saturated.shape
    sky = (np.zeros(saturated.shape, np.float32) if background is None
           else np.asarray(background, np.float32))
    rows, cols = np.nonzero(saturated)
    d = np.arange(-2, 3)
    rr = np.clip(rows[:, None, None] + d[None, :, None], 0, ny - 1)
    cc = np.clip(cols[:, None, None] + d[None, None, :], 0, nx - 1)
    median = np.median(np.asarray(data, np.float32)[rr, cc].reshape(len(rows), 25), axis=1)
    level = sky[rows, cols]
    by_median = np.zeros(n + 1, bool)
    by_median[labels[rows, cols][median - level > SAT_STAR_MEDIAN_FRACTION
                                 * (float(saturation_e) - level)]] = True
    usable = ~saturated if bad is None else ~saturated & ~np.asarray(bad, bool)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if by_median[index]:
            cores[box] |= labels[box] == index
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        region = labels[grown] == index
        ring = ndimage.binary_dilation(region, np.ones((3, 3), bool)) & usable[grown]
        if not ring.any():  # nothing around it to judge by: kept out, as astroscrappy would
            cores[grown] |= region
            continue
        if _light_surrounds(region, ring & (np.asarray(data[grown]) - sky[grown] > (
                SAT_STAR_RING_SIGMA * np.asarray(error[grown])))):
            cores[grown] |= region
    return cores


def _light_surrounds(region: np.ndarray, lit: np.ndarray) -> bool:
    """Whether ≥ ``SAT_STAR_MIN_LIT`` ``lit`` pixels surround ``region``, not along one
    line through its centroid."""
    ys, xs = np.nonzero(lit)
    if len(ys) < SAT_STAR_MIN_LIT:
        return False
    cy, cx = np.argwhere(region).mean(axis=0)
    alignment = abs(np.exp(2j * np.arctan2(ys - cy, xs - cx)).mean())
    return bool(alignment <= SAT_STAR_MAX_ALIGNMENT)


def detect_cosmic_rays(*, data: np.ndarray, error: np.ndarray, mask: np.ndarray | None,
                       background: np.ndarray | None, read_noise_e: float,
                       saturation_e: float, sigclip: float = 4.5, sigfrac: float = 0.3,
                       objlim: float = DEFAULT_OBJLIM, niter: int = 4, sepmed: bool = False,
                       psffwhm: float = 2.5, method: str = "lacosmic",
                       fwhm_px: float | None = None,
                       star_margin: float = DEFAULT_STAR_MARGIN) -> np.ndarray:
    """Boolean cosmic-ray mask of a calibrated frame.

    Parameters
    ----------
    data, error : ndarray
        SCI and ERR planes in electrons (gain 1); not modified.
    mask : ndarray of bool or of MaskBit integers, optional
        Boolean: pixels not to examine (bad, saturated, no data).  A MaskBit plane:
        pixels with any bit but SATURATED are not examined; SATURATED ones are,
        except the cores of saturated stars (:func:`saturated_star_cores`), so that
        a cosmic ray that saturated is found (module docstring).
    background : ndarray, optional
        Sky map in electrons, passed as ``inbkg``.
    read_noise_e, saturation_e : float
        Detector read noise and saturation level, both in electrons.  Pixels at or
        above ``saturation_e`` outside ``mask`` count as saturated too.
    sigclip, sigfrac, objlim, niter, sepmed, psffwhm
        astroscrappy ``detect_cosmics`` options (``psffwhm`` is unused by its
        default ``fsmode='median'``).
    method : {'lacosmic', 'astroscrappy'}
        See the module docstring; ``lacosmic`` needs ``sepmed=False``.
    fwhm_px, star_margin : float, optional
        The frame's seeing and the margin of :func:`effective_objlim`: ``objlim``
        is raised where stars of this FWHM would pass for cosmic rays.

    Returns
    -------
    ndarray of bool
        True where a cosmic ray was found (never where ``mask`` is True).

    Notes
    -----
    ``invar`` is ERR², the full per-pixel variance (read noise, Poisson of sky
    and sources, calibration terms), so the Laplacian significance uses the
    same noise model as the rest of the pipeline.
    """
    if method not in ("lacosmic", "astroscrappy"):
        raise CosmicsError(f"method must be 'lacosmic' or 'astroscrappy', got {method!r}")
    if method == "lacosmic" and sepmed:
        raise CosmicsError("method 'lacosmic' is astroscrappy's sepmed=False; use method "
                           "'astroscrappy' for sepmed=True")
    data = np.asarray(data, np.float32)
    error = np.asarray(error, np.float32)
    if data.shape != error.shape:
        raise CosmicsError(f"data {data.shape} and error {error.shape} differ in shape")
    if not read_noise_e > 0:
        raise CosmicsError(f"read_noise_e must be > 0, got {read_noise_e}")
    bad = ~np.isfinite(data) | ~np.isfinite(error) | (error <= 0)
    saturated = np.zeros(data.shape, bool)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            raise CosmicsError(f"mask {mask.shape} and data {data.shape} differ in shape")
        if mask.dtype == bool:
            bad |= mask
        else:
            from .masks import saturated_only

            saturated = saturated_only(mask)
            bad |= (mask != 0) & ~saturated
    if bad.all():
        raise CosmicsError("every pixel is masked: nothing to search")
    with np.errstate(invalid="ignore"):
        saturated |= data >= np.float32(saturation_e)
    saturated &= ~bad
    if saturated.any():  # astroscrappy's saturated-star mask, made here for both methods
        from astroscrappy.utils import dilate5

        cores = saturated_star_cores(data=data, error=error, saturated=saturated,
                                     background=background, saturation_e=saturation_e, bad=bad)
        log.info("cosmic rays: %d saturated pixels, %d of them in star cores (masked); the "
                 "rest examined", saturated.sum(), cores.sum())
        if cores.any():
            bad |= np.asarray(dilate5(cores.view(np.uint8), 2), bool)
    used = effective_objlim(objlim=objlim, fwhm_px=fwhm_px, star_margin=star_margin)
    if used > objlim:
        log.info("cosmic rays: objlim %.3g instead of %.3g: the cores of stars of FWHM %.2f px "
                 "reach a fine-structure contrast of %.3g (undersampled)", used, objlim,
                 fwhm_px, star_contrast(fwhm_px))
    objlim = used
    from .lacosmic import padded_plane

    # the planes reflected about the frame's edges (module docstring), made padded for
    # lacosmic's own windows too: they are not copied again
    ny, nx = data.shape
    pad = min(EDGE_PAD, min(ny, nx) - 1)
    shape = (ny + 2 * pad, nx + 2 * pad)
    frame = (slice(pad, pad + ny), slice(pad, pad + nx))

    def plane(fill):
        return (padded_plane(shape, fill) if method == "lacosmic"
                else np.empty(shape, np.float32))

    clean = plane(0.0)
    np.copyto(clean[frame], data)
    clean[frame][bad] = 0.0
    _reflect_edges(clean, pad)
    # ERR² in float32 (the float32 square of a float32 is the float64 one rounded)
    var = plane(np.inf)
    np.square(error, out=var[frame])
    var[frame][bad] = np.median(error[~bad], overwrite_input=True) ** 2  # finite
    _reflect_edges(var, pad)
    del error  # the caller may have handed over its only reference (ccdflow.chain)
    bkg = None
    if background is not None:
        bkg = np.empty(shape, np.float32)
        np.copyto(bkg[frame], background)
        bkg[frame][bad] = 0.0
        _reflect_edges(bkg, pad)
    inmask = np.pad(bad, pad, mode="reflect")
    if method == "lacosmic":
        from .lacosmic import lacosmic_mask

        crmask = lacosmic_mask(data=clean, inmask=inmask, inbkg=bkg, invar=var,
                               sigclip=sigclip, sigfrac=sigfrac, objlim=objlim,
                               readnoise=float(read_noise_e), satlevel=np.inf,
                               niter=niter, overwrite_input=True)  # clean, var: ours
    else:
        import astroscrappy

        crmask, _ = astroscrappy.detect_cosmics(
            clean, inmask=inmask, inbkg=bkg, invar=var, sigclip=sigclip,
            sigfrac=sigfrac, objlim=objlim, gain=1.0, readnoise=float(read_noise_e),
            satlevel=np.inf, niter=niter, sepmed=sepmed, cleantype="meanmask",
            psffwhm=psffwhm, verbose=False)
    crmask = np.asarray(crmask, bool)[frame] & ~bad
    log.info("cosmic rays: %d pixels flagged (%.4f%%)", crmask.sum(), 100 * crmask.mean())
    return crmask


def write_cosmics(path, crmask: np.ndarray, *, inputs, params, fwhm_px: float | None = None,
                  objlim: float | None = None, streaks: np.ndarray | None = None,
                  n_streaks: int = 0) -> None:
    """Write the cosmic-ray mask (uint8 CRMASK: 1 = cosmic ray, count NCOSMIC; 2 = a
    satellite or aircraft trail's pixel from :func:`ccdflow.streaks.find_streaks`,
    NSTREAK trails of STRKPIX pixels) with provenance, atomically; with the seeing
    (CRFWHM) and the ``objlim`` used (CROBJLIM) when given."""
    from astropy.io import fits

    from .io import atomic_path
    from .products import provenance_header

    header = provenance_header(step="detect_cosmics", inputs=inputs, params=params)
    header["NCOSMIC"] = (int(crmask.sum()), "pixels flagged as cosmic rays")
    if fwhm_px is not None and np.isfinite(fwhm_px):
        header["CRFWHM"] = (round(float(fwhm_px), 3), "[pix] seeing from segment moments")
    if objlim is not None:
        header["CROBJLIM"] = (round(float(objlim), 3), "L.A.Cosmic objlim used (star_margin)")
    values = crmask.astype(np.uint8)
    if streaks is not None:
        values |= np.asarray(streaks, bool).astype(np.uint8) << 1
        header["NSTREAK"] = (int(n_streaks), "satellite/aircraft trails found")
        header["STRKPIX"] = (int(np.count_nonzero(streaks)), "pixels of those trails (2)")
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(header=header),
                      fits.ImageHDU(values, name="CRMASK")]).writeto(tmp)
