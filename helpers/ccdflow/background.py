"""2-D sky background with iterative source masking.

The loop: fit the background with the current mask, detect sources above
``nsigma`` × the background RMS, grow each source by a radius scaled to its
size (more for saturated ones), refit, and stop when the mask changes by less
than ``tolerance`` of the pixels or after ``max_iterations``.  The mask
fraction of every round is logged and returned, and the last round's
segmentation is the frame's detection (the sources stage measures it rather
than detecting again, :mod:`ccdflow.segmentation`).

Two backends fit the map and detect:

* ``sep`` (default): SEP's ``Background`` (SExtractor's mesh: a clipped mode
  per box, boxes with fewer than half their pixels unmasked interpolated, a
  median filter over boxes, bicubic spline) and ``extract``; ~12 ms + ~25 ms
  per round on a 1k² frame;
* ``photutils``: ``Background2D`` with the estimator of ``estimator`` and
  ``detect_sources`` + ``deblend_sources``, the reference (~0.3 s + ~1 s per
  round); tests/test_background.py puts the two beside each other and the truth.

Pitfall measured by the team (NOTES.md): with ~17 % of pixels masked,
``exclude_percentile=10`` (photutils' default) rejects most boxes and biased
the map by −12 ADU; the default here is 50.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.stats import SigmaClip, sigma_clipped_stats
from scipy import ndimage

log = logging.getLogger(__name__)

__all__ = ["BackgroundError", "BackgroundResult", "background_for_product", "estimate_background",
           "manual_mask", "write_background"]

BACKENDS = ("sep", "photutils")

ESTIMATORS = ("median", "mean", "sextractor", "mmm")


class BackgroundError(ValueError):
    """The background cannot be estimated; the message says why."""


@dataclass
class BackgroundResult:
    """Background map, its per-pixel RMS, the source mask used and diagnostics."""

    background: np.ndarray  #: float32, same units as the data
    rms: np.ndarray  #: float32, per-pixel noise of the background-subtracted data
    source_mask: np.ndarray  #: bool, True = masked as a source (detected or manual)
    iterations: int
    mask_fractions: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: int32 segmentation of the last detection round (None without iterations)
    labels: np.ndarray | None = None
    #: the stars' FWHM (px) from the first round's segment moments (NaN without
    #: iterations or bright segments): undersampled frames detect with fewer pixels, and
    #: the cosmic rays spare their stars (:func:`ccdflow.cosmics.effective_objlim`)
    seeing_px: float = float("nan")

    # computed once per result (a full-frame median, ~11 ms at 1k², was taken twice per
    # frame: the batch summary and the map's header); the maps are not changed after
    @functools.cached_property
    def sky_median(self) -> float:
        return float(np.median(self.background))

    @functools.cached_property
    def sky_rms(self) -> float:
        return float(np.median(self.rms))


def _seeing_and_npixels(found: np.ndarray, *, residual: np.ndarray, rms: np.ndarray,
                        bad: np.ndarray, seg_bad: np.ndarray, npixels: int, nsigma: float,
                        backend: str, deblend: bool) -> tuple[float, int, np.ndarray]:
    """The segments' seeing (:func:`ccdflow.segmentation.moment_fwhm`, segments touching
    ``bad`` left out), and ``npixels`` with the segmentation ``found``, or, when that
    seeing is undersampled, the fewer pixels a star then covers
    (:func:`ccdflow.segmentation.star_npixels`) and the segmentation with them (masked
    at ``seg_bad``): faint stars of FWHM 1.2 px have only 2-4 pixels above 3σ."""
    from .segmentation import detect_segments, moment_fwhm, segment_table, star_npixels

    fwhm = moment_fwhm(segment_table(labels=found, values=residual, rms=rms, mask=bad))
    fewer = star_npixels(npixels=npixels, fwhm_px=fwhm)
    if fewer >= npixels:
        return fwhm, npixels, found
    log.info("background: stars of FWHM %.2f px (undersampled): sources of %d pixels instead "
             "of %d", fwhm, fewer, npixels)
    return fwhm, fewer, detect_segments(values=residual, rms=rms, nsigma=nsigma,
                                        npixels=fewer, mask=seg_bad, backend=backend,
                                        deblend=deblend, overwrite_values=True)


def _estimator(name: str):
    from photutils.background import (
        MeanBackground,
        MedianBackground,
        MMMBackground,
        SExtractorBackground,
    )

    classes = {"median": MedianBackground, "mean": MeanBackground,
               "sextractor": SExtractorBackground, "mmm": MMMBackground}
    if name not in classes:
        raise BackgroundError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {name!r}")
    return classes[name]()


def manual_mask(*, shape: tuple[int, int], circles: Sequence[Mapping], wcs=None,
                superpixel: int = 1) -> np.ndarray:
    """Boolean mask of user circles: ``{x, y, radius_px}`` (0-based pixels of the camera's
    full frame: on a frame of ``superpixel`` × ``superpixel`` superpixels they are
    scaled to it) or ``{ra, dec, radius_arcsec}`` (degrees; needs ``wcs``)."""
    mask = np.zeros(shape, bool)
    yy, xx = np.indices(shape)
    for i, c in enumerate(circles):
        if "ra" in c or "dec" in c:
            if wcs is None or not wcs.has_celestial:
                raise BackgroundError(f"manual mask {i} is given in RA/Dec but the frame has "
                                      "no celestial WCS")
            from astropy import units as u
            from astropy.coordinates import SkyCoord
            from astropy.wcs.utils import proj_plane_pixel_scales

            x, y = wcs.celestial.world_to_pixel(SkyCoord(c["ra"] * u.deg, c["dec"] * u.deg))
            scale_arcsec = float(np.mean(proj_plane_pixel_scales(wcs.celestial))) * 3600.0
            radius = float(c["radius_arcsec"]) / scale_arcsec
        else:
            from .ccd import full_frame_to_superpixels

            x, y = (float(full_frame_to_superpixels(c[k], superpixel)) for k in ("x", "y"))
            radius = float(c["radius_px"]) / superpixel
        if radius <= 0:
            raise BackgroundError(f"manual mask {i}: radius must be > 0")
        mask |= (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    return mask


#: a segment with more than this fraction of its flux in one pixel is a spike (hot
#: pixel, cosmic-ray residue), masked at its own pixels but not grown; see
#: :func:`ccdflow.photometry.shape_rejections` (a star of FWHM ≥ 1.5 px: ≤ 0.39)
SPIKE_PEAK_FRACTION = 0.7


def _grow_sources(labels: np.ndarray, *, saturated: np.ndarray, factor: float,
                  min_radius: float, max_radius: float, saturated_factor: float,
                  values: np.ndarray | None = None) -> np.ndarray:
    """Dilate each source by ``factor`` × its equivalent radius (clipped), more if saturated.

    Each source is grown inside its own bounding box padded by its radius
    (``find_objects``), so the cost follows the sources' size, not the frame's.
    With ``values`` (the frame above the background), spikes are not grown: a
    thousand hot pixels of a camera without darks would otherwise mask a third
    of the sky.
    """
    n_max = int(labels.max()) if labels.size else 0
    inside = labels > 0
    lab = labels[inside]
    # areas from the source pixels only (bincount of the whole int32 frame would make an
    # int64 copy of it: 128 MB at 4k²); label 0's area is never used
    areas = np.bincount(lab, minlength=n_max + 1)
    radius = factor * np.sqrt(areas / np.pi)
    sat_labels = np.unique(labels[saturated & inside])
    radius[sat_labels] *= saturated_factor
    radius = np.clip(radius, min_radius, max_radius)
    if values is not None and n_max:
        vals = values[inside]
        peak = np.full(n_max + 1, -np.inf)
        np.maximum.at(peak, lab, vals)
        total = np.bincount(lab, weights=vals, minlength=n_max + 1)
        spike = peak > SPIKE_PEAK_FRACTION * total
        spike[0] = False
        spike[sat_labels] = False
        radius[spike] = 0.0
    grown = inside
    del lab
    ny, nx = labels.shape
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        r = float(radius[label])
        if r <= 0:  # a spike: its own pixels only (already in `grown`)
            continue
        pad = int(np.ceil(r))
        ys = slice(max(box[0].start - pad, 0), min(box[0].stop + pad, ny))
        xs = slice(max(box[1].start - pad, 0), min(box[1].stop + pad, nx))
        seed = labels[ys, xs] == label
        grown[ys, xs] |= ndimage.distance_transform_edt(~seed) <= r
    return grown


def estimate_background(*, data: np.ndarray, mask: np.ndarray | None = None,
                        saturated: np.ndarray | None = None, mode: str = "map",
                        backend: str = "sep", box_size: int = 64, filter_size: int = 3,
                        estimator: str = "median", sigma: float = 3.0, maxiters: int = 10,
                        exclude_percentile: float = 50.0, iterate: bool = True,
                        nsigma: float = 3.0, npixels: int = 5, deblend: bool = True,
                        max_iterations: int = 5, tolerance: float = 0.001,
                        dilate_factor: float = 1.0, min_radius_px: float = 2.0,
                        max_radius_px: float = 40.0, saturated_factor: float = 2.0,
                        max_mask_fraction: float = 0.8, max_growth: float = 0.1,
                        crowded_fraction: float = 0.3,
                        extra_mask: np.ndarray | None = None) -> BackgroundResult:
    """Sky background and RMS of one frame, masking sources iteratively.

    Parameters
    ----------
    data : ndarray
        Calibrated frame (e.g. electrons); not modified.
    mask : ndarray of bool, optional
        Bad pixels (True) never used: the frame's MASK plane != 0.
    saturated : ndarray of bool, optional
        Saturated pixels (stars' cores; also in ``mask``, so never sky): the source
        detection sees their values, so a core belongs to its star's segment instead of
        leaving a hole that splits the star, and their sources get ``saturated_factor``
        × the dilation.
    mode : {'map', 'scalar'}
        ``map``: a mesh of ``box_size`` boxes, median-filtered over
        ``filter_size`` boxes and interpolated; ``scalar``: one sigma-clipped
        median and standard deviation (small frames).
    backend : {'sep', 'photutils'}
        Map and detection by SEP or by photutils (module docstring).
        ``estimator``, ``sigma``, ``maxiters`` and ``exclude_percentile`` apply
        to photutils' ``Background2D``; SEP uses SExtractor's clipped mode and
        interpolates boxes with fewer than half their pixels unmasked.
    iterate : bool
        Mask sources and refit (else a single pass with only ``mask``).
    nsigma, npixels, deblend : float, int, bool
        Detection: ``npixels`` connected pixels above background + nsigma × RMS,
        deblended (:func:`ccdflow.segmentation.detect_segments`).
    max_iterations, tolerance : int, float
        Stop when the mask changes by less than ``tolerance`` of the pixels.
    dilate_factor, min_radius_px, max_radius_px, saturated_factor : float
        Growth radius of each source: ``dilate_factor`` × its equivalent radius
        √(area/π), clipped, × ``saturated_factor`` if it holds saturated pixels.
    max_mask_fraction, max_growth : float
        A round is not taken when its source mask would cover more than
        ``max_mask_fraction`` of the frame, or (after the first round) grow by
        more than ``max_growth`` of it: in crowded fields the mask otherwise
        runs away (measured 46 % → 67 % → 82 % → 90 % on M13, the "sky" left
        drifting low), while a converging crowded field grows by < 5 %.
    crowded_fraction : float
        With the ``sep`` backend, a map fitted with more than this fraction of the
        frame masked is fitted by photutils instead: SEP interpolates boxes less
        than half unmasked in a way that keeps a globular cluster's core light
        (M13: 35σ above the far field against 22σ with photutils' inverse-distance
        fill of the nearest good boxes).
    extra_mask : ndarray of bool, optional
        Manual masks (:func:`manual_mask`), always masked.

    Returns
    -------
    BackgroundResult
        ``labels`` is the segmentation of the last accepted detection round.

    Notes
    -----
    Fallback: when a grown source mask leaves no box with enough pixels
    (crowded fields), the iteration stops with the previous mask and says so
    in ``notes`` (and the log).

    ``rms`` estimates the per-pixel noise of the sky (the clipped standard
    deviation of each box), i.e. √(sky + RN²) in electrons for a calibrated
    frame, not the error of the map.
    """
    from .segmentation import detect_segments

    data = np.asarray(data)
    if data.ndim != 2:
        raise BackgroundError(f"data must be 2-D, got shape {data.shape}")
    if mode not in ("map", "scalar"):
        raise BackgroundError(f"mode must be 'map' or 'scalar', got {mode!r}")
    if backend not in BACKENDS:
        raise BackgroundError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    bad = ~np.isfinite(data)
    if mask is not None:
        bad = bad | np.asarray(mask, bool)
    if bad.all():
        raise BackgroundError("every pixel is masked or not finite: no sky to measure")
    ny, nx = data.shape
    if mode == "map" and (box_size > ny or box_size > nx):
        raise BackgroundError(f"box_size {box_size} is larger than the frame ({nx}x{ny}); "
                              "use a smaller box or mode 'scalar'")
    if box_size < 4 or filter_size < 1 or filter_size % 2 == 0:
        raise BackgroundError(f"box_size must be >= 4 and filter_size odd >= 1, got "
                              f"{box_size}, {filter_size}")
    saturated = np.zeros(data.shape, bool) if saturated is None else np.asarray(saturated, bool)
    saturated = saturated & np.isfinite(data)
    extra = np.zeros(data.shape, bool) if extra_mask is None else np.asarray(extra_mask, bool)
    clean = np.array(data, np.float32)  # masked pixels are never used for the sky ...
    clean[bad & ~saturated] = 0.0  # ... but saturated ones keep their light in their source
    seg_bad = (bad & ~saturated) | extra  # a saturated core is part of its star's segment

    def fit(source_mask):
        used = bad | source_mask
        if used.all():
            raise BackgroundError("sources and bad pixels cover the whole frame")
        if mode == "scalar":
            _, med, std = sigma_clipped_stats(clean, mask=used, sigma=sigma, maxiters=maxiters)
            return np.full(data.shape, med, np.float32), np.full(data.shape, std, np.float32)
        if backend == "sep" and used.mean() <= crowded_fraction:
            return _fit_sep(clean, used, box_size=box_size, filter_size=filter_size)
        return _fit_photutils(clean, used, box_size=box_size, filter_size=filter_size,
                              estimator=estimator, sigma=sigma, maxiters=maxiters,
                              exclude_percentile=exclude_percentile)

    source_mask = extra.copy()
    background, rms = fit(source_mask)
    fractions = [float(source_mask.mean())]
    notes = []
    iterations = 0
    labels = None
    seeing = float("nan")
    if iterate:
        for iterations in range(1, max_iterations + 1):
            residual = clean - background
            # SEP works on the residual itself, zeroed at bad pixels (which no source
            # holds, so _grow_sources' peaks and sums are the same)
            found = detect_segments(values=residual, rms=rms, nsigma=nsigma,
                                    npixels=npixels, mask=seg_bad, backend=backend,
                                    deblend=deblend, overwrite_values=True)
            if iterations == 1:  # undersampled stars: fewer pixels make a source
                seeing, npixels, found = _seeing_and_npixels(
                    found, residual=residual, rms=rms, bad=bad | extra, seg_bad=seg_bad,
                    npixels=npixels, nsigma=nsigma, backend=backend, deblend=deblend)
            new = _grow_sources(found, saturated=saturated, factor=dilate_factor,
                                min_radius=min_radius_px, max_radius=max_radius_px,
                                saturated_factor=saturated_factor, values=residual) | extra
            del residual
            changed = float(np.mean(new != source_mask))
            growth = new.mean() - source_mask.mean()
            if changed < tolerance and iterations > 1:
                # converged: the map fitted with the previous mask stands, and this
                # round's detection (against it) is the frame's
                iterations -= 1
                labels = found
                log.info("background: mask converged (%.3f%% changed)", 100 * changed)
                break
            if new.mean() > max_mask_fraction or (iterations > 1 and growth > max_growth):
                notes.append(f"iteration {iterations}: sources would cover {100 * new.mean():.0f}%"
                             f" (+{100 * growth:.0f}%); kept iteration {iterations - 1}")
                log.warning(notes[-1])
                iterations -= 1
                labels = found if labels is None else labels
                break
            try:
                background, rms = fit(new)
            except BackgroundError as exc:  # crowded: the grown mask left no usable box
                notes.append(f"iteration {iterations}: {100 * new.mean():.0f}% masked left no "
                             f"usable box; kept iteration {iterations - 1}")
                log.warning("%s (%s)", notes[-1], exc)
                iterations -= 1
                labels = found if labels is None else labels
                break
            source_mask = new
            labels = found
            fractions.append(float(source_mask.mean()))
            log.info("background iteration %d: %.2f%% of pixels masked as sources, "
                     "%.3f%% changed", iterations, 100 * fractions[-1], 100 * changed)
            if changed < tolerance:
                break
        else:
            notes.append(f"source mask still changing after {max_iterations} iterations")
    return BackgroundResult(background=np.asarray(background, np.float32),
                            rms=np.asarray(rms, np.float32), source_mask=source_mask,
                            iterations=iterations, mask_fractions=fractions, notes=notes,
                            labels=labels, seeing_px=seeing)


def _fit_sep(clean: np.ndarray, used: np.ndarray, *, box_size: int,
             filter_size: int) -> tuple[np.ndarray, np.ndarray]:
    """SEP's background mesh: map and RMS at full resolution."""
    import sep

    if (~used).sum() < box_size * box_size / 2:
        raise BackgroundError("fewer unmasked pixels than half a box")
    bkg = sep.Background(np.ascontiguousarray(clean, np.float32),
                         mask=np.ascontiguousarray(used), bw=box_size, bh=box_size,
                         fw=filter_size, fh=filter_size)
    back, rms = bkg.back(dtype=np.float32), bkg.rms(dtype=np.float32)
    if not (np.isfinite(back).all() and np.isfinite(rms).all()) or not (rms > 0).any():
        raise BackgroundError("SEP found no box with enough unmasked pixels")
    return back, rms


def _fit_photutils(clean: np.ndarray, used: np.ndarray, *, box_size: int, filter_size: int,
                   estimator: str, sigma: float, maxiters: int,
                   exclude_percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """photutils ``Background2D``: map and RMS at full resolution (cubic-spline zoom)."""
    from photutils.background import Background2D, StdBackgroundRMS

    clip = SigmaClip(sigma=sigma, maxiters=maxiters)
    try:
        bkg = Background2D(clean, box_size, mask=used, filter_size=filter_size,
                           sigma_clip=clip, bkg_estimator=_estimator(estimator),
                           bkg_rms_estimator=StdBackgroundRMS(sigma_clip=clip),
                           exclude_percentile=exclude_percentile)
        return bkg.background.astype(np.float32), bkg.background_rms.astype(np.float32)
    except ValueError as exc:
        raise BackgroundError(f"Background2D failed: {exc}") from None


def background_for_product(*, product, manual_circles: Sequence[Mapping] = (),
                           **options) -> BackgroundResult:
    """:func:`estimate_background` on a calibrated product: its MASK plane excludes bad
    pixels, saturated pixels widen their sources' masks, and ``manual_circles`` use
    the product's WCS for RA/Dec circles.  ``options`` are those of
    :func:`estimate_background`."""
    from .masks import describe_mask, saturated_only

    mask = product.mask != 0
    if mask.all():
        raise BackgroundError(f"every pixel is masked ({describe_mask(product.mask)}): "
                              "no sky to measure")
    saturated = saturated_only(product.mask)  # a star's core (not a hot pixel, ...)
    extra = None
    if manual_circles:
        import warnings

        from astropy.wcs import WCS, FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(product.header) if "CTYPE1" in product.header else None
        extra = manual_mask(shape=product.data.shape, circles=manual_circles, wcs=wcs,
                            superpixel=int(product.header.get("CCDFBIN", 1)))
    return estimate_background(data=product.data, mask=mask, saturated=saturated,
                               extra_mask=extra, **options)


def write_background(path, result: BackgroundResult, *, inputs, params: Mapping) -> None:
    """Write BKG, BKG_RMS (float32) and SRCMASK (uint8) with provenance, atomically."""
    from astropy.io import fits

    from .io import atomic_path
    from .products import provenance_header

    header = provenance_header(step="estimate_background", inputs=inputs, params=params)
    header["SKYMED"] = (round(result.sky_median, 3), "median of the background map")
    header["SKYRMS"] = (round(result.sky_rms, 3), "median per-pixel sky noise")
    header["MASKFRAC"] = (round(result.mask_fractions[-1], 5), "fraction masked as sources")
    header["BKGITER"] = (result.iterations, "source-masking iterations")
    for i, note in enumerate(result.notes, start=1):
        header[f"BKGNOTE{i}"] = note[:68]
    hdus = [fits.PrimaryHDU(header=header),
            fits.ImageHDU(result.background, name="BKG"),
            fits.ImageHDU(result.rms, name="BKG_RMS"),
            fits.ImageHDU(result.source_mask.astype(np.uint8), name="SRCMASK")]
    hdus[1].header["BUNIT"] = hdus[2].header["BUNIT"] = "electron"
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp)
