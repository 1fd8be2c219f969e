"""Per-frame photometry of a series' source list: alignment, apertures, times.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import SourceError
from .align import Alignment, _guard_centroids, align_frame
from .apertures import PhotFlag, PhotometryError, measure_apertures
from .centroids import refine_centres
from .frametimes import frame_times
from .outliers import MODEL_OUTLIER_NSIGMA
from .targets import _wcs, sky_coord

log = logging.getLogger(__name__)


__all__ = ["PHOTOMETRY_COLUMNS", "align_to_reference", "aperture_labels", "frame_photometry"]


#: columns of a per-frame photometry table, in order
PHOTOMETRY_COLUMNS = ["frame", "source_id", "name", "aperture", "radius", "x", "y", "ra_deg",
                      "dec_deg", "flux", "flux_err", "flux_err_cal", "bkg", "bkg_err", "bkg_rms",
                      "n_ap", "n_sky", "masked_fraction", "repaired_fraction", "contamination",
                      "flags", "fwhm", "psf_sigma_major", "psf_sigma_minor", "psf_theta",
                      "mjd_utc", "bjd_tdb", "bmjd_tdb", "airmass", "exptime_s", "dx", "dy",
                      "rotation_deg"]

#: label of the optimal-photometry rows
OPTIMAL = "optimal"


def aperture_labels(*, radii_px: Sequence[float], radii_fwhm: Sequence[float],
                    optimal: bool = False) -> list[str]:
    """Labels of the apertures, in order: ``'8px'``, ``'1.5fwhm'``, then ``'optimal'``."""
    return ([f"{r:g}px" for r in radii_px] + [f"{k:g}fwhm" for k in radii_fwhm]
            + ([OPTIMAL] if optimal else []))


#: a neighbour within 4 FWHM spoils a PSF star when it has this fraction of its flux
#: (fainter ones add < 0.3 % beyond the 2-FWHM stamp)
PSF_NEIGHBOUR_FRACTION = 0.05


#: of a PSF star's 4-FWHM box, the masked fraction allowed outside its core (1 FWHM, which
#: must be clean): the fit leaves masked pixels out, and at FWHM 4.5 a 0.3 % density of
#: hot pixels left two boxes in three with one, half a night's frames without a PSF
PSF_MAX_MASKED_FRACTION = 0.05


def frame_psf(*, data: np.ndarray, background: np.ndarray, mask: np.ndarray, x: np.ndarray,
              y: np.ndarray, snr: np.ndarray, fwhm: float, kind: str = "gaussian",
              max_stars: int = 15, flux: np.ndarray | None = None):
    """The frame's PSF from the brightest isolated sources of the list (S/N ≥ 30 on the
    reference, no other source within 4 FWHM, no masked pixel within 1 FWHM and at most
    :data:`PSF_MAX_MASKED_FRACTION` of the pixels within 2 FWHM: the fit leaves them out).

    With ``flux`` (the list's reference fluxes) a neighbour counts only when it has
    :data:`PSF_NEIGHBOUR_FRACTION` of the star's flux (or an unknown one): the faint
    detections an undersampled frame adds do not leave it without PSF stars.

    Returns the :class:`~ccdflow.photometry.psf.PSFModel`, or None (with the reason)
    when no star qualifies or the fits fail.
    """
    from ..spatial import PointTree
    from .psf import fit_psf

    ny, nx = data.shape
    finite = np.isfinite(x) & np.isfinite(y)
    pos = np.column_stack([np.where(finite, x, -1e6), np.where(finite, y, -1e6)])
    crowded = np.zeros(len(pos), bool)
    if len(pos) > 1:
        level = np.full(len(pos), np.inf) if flux is None else np.asarray(flux, float)
        i, j = PointTree(pos).query_pairs(4 * fwhm, output_type="ndarray").T
        with np.errstate(invalid="ignore"):  # an unknown (NaN) flux counts as bright
            np.logical_or.at(crowded, i, ~(level[j] < PSF_NEIGHBOUR_FRACTION * level[i]))
            np.logical_or.at(crowded, j, ~(level[i] < PSF_NEIGHBOUR_FRACTION * level[j]))
    edge = 2 * fwhm + 4
    ok = (finite & (np.nan_to_num(snr) >= 30) & ~crowded & (x > edge)
          & (x < nx - 1 - edge) & (y > edge) & (y < ny - 1 - edge))
    bad = np.asarray(mask) != 0
    if ok.any():
        r = math.ceil(2 * fwhm)
        d = np.arange(-r, r + 1)
        cx = np.floor(x[ok] + 0.5).astype(int)
        cy = np.floor(y[ok] + 0.5).astype(int)
        box = bad[cy[:, None, None] + d[None, :, None], cx[:, None, None] + d[None, None, :]]
        core = np.hypot(d[:, None], d[None, :]) <= fwhm
        clean = (~box[:, core].any(axis=1)
                 & (box.mean(axis=(1, 2)) <= PSF_MAX_MASKED_FRACTION))
        ok[np.flatnonzero(ok)[~clean]] = False
    pick = np.flatnonzero(ok)
    pick = pick[np.argsort(-np.nan_to_num(snr[pick]))][:max_stars]
    if len(pick) < 3:
        return None, f"PSF not fitted: {len(pick)} isolated unmasked star(s) above S/N 30"
    try:
        model, _ = fit_psf(data=np.asarray(data, float) - background, x=x[pick], y=y[pick],
                           kind=kind, fwhm_guess=fwhm, mask=bad)
    except SourceError as exc:
        return None, f"PSF not fitted: {exc}"
    return model, (f"PSF ({kind}, {model.n_stars} stars): sigma {model.sigma_major:.3f} x "
                   f"{model.sigma_minor:.3f} px, theta {model.theta_deg:.1f} deg, "
                   f"FWHM {model.fwhm:.3f} px")


def align_to_reference(*, sources: pd.DataFrame, catalog: pd.DataFrame, fwhm_px: float,
                       guess: np.ndarray | None = None,
                       max_shift_px: float = 50.0) -> Alignment:
    """The transform from the series' reference frame onto this frame's detections.

    The catalog's detected sources (``x_ref, y_ref, flux_ref``) against this
    frame's (``x, y, flux``), matched within ``max(1.5, fwhm_px)`` px; see
    :func:`~ccdflow.photometry.align_frame` (``guess`` for chained tracking).
    """
    detected = catalog[np.isfinite(catalog["flux_ref"])]
    ref_det = pd.DataFrame({"x": detected["x_ref"], "y": detected["y_ref"],
                            "flux": detected["flux_ref"]})
    tolerance = max(1.5, fwhm_px) if np.isfinite(fwhm_px) else 2.0
    return align_frame(reference=ref_det, sources=sources, guess=guess,
                       tolerance_px=tolerance, max_shift_px=max_shift_px)


def _reference_centre(reference_meta: Mapping, shape: tuple[int, int]) -> tuple[float, float]:
    ny, nx = (reference_meta.get("shape") or shape)[:2]
    return (float(nx) - 1) / 2, (float(ny) - 1) / 2


def _unaligned_positions(catalog: pd.DataFrame, get_wcs) -> tuple[np.ndarray, str]:
    """Where to measure on a frame that could not be aligned: its WCS (``get_wcs()``),
    else the reference."""
    wcs = get_wcs() if len(catalog) and np.isfinite(catalog["ra_deg"]).all() else None
    if wcs is not None:
        xs, ys = wcs.world_to_pixel(sky_coord(catalog["ra_deg"].to_numpy(),
                                              catalog["dec_deg"].to_numpy()))
        return np.column_stack([xs, ys]), "from this frame's WCS"
    return catalog[["x_ref", "y_ref"]].to_numpy(float).copy(), "of the reference frame"


def frame_photometry(*, data: np.ndarray, error: np.ndarray, mask: np.ndarray, header,
                     background: np.ndarray, background_rms: np.ndarray | None,
                     sources: pd.DataFrame, meta: Mapping, catalog: pd.DataFrame,
                     reference_meta: Mapping, radii_px: Sequence[float] = (),
                     radii_fwhm: Sequence[float] = (1.5, 2.0, 3.0),
                     annulus: Mapping | None = None,
                     sky: str = "annulus-median", sky_sigma: float = 3.0,
                     min_sky_pixels: int = 20, map_box_px: int = 64, max_shift_px: float = 50.0,
                     recentroid_min_snr: float = 20.0, site: Mapping | None = None,
                     source_mask: np.ndarray | None = None, sky_exclude_sources: bool = True,
                     start_mjd_utc: float | None = None, exptime_s: float | None = None,
                     alignment: Alignment | SourceError | None = None,
                     min_radius_px: float = 2.0, error_cal: np.ndarray | None = None,
                     psf_model: str = "gaussian", optimal: bool = True,
                     max_repaired_fraction: float = 0.3, max_contamination: float = 0.01,
                     subtract_neighbours: bool = False,
                     frame: str = "frame") -> tuple[pd.DataFrame, list[str]]:
    """Every source of the series' list measured in one frame, with times.

    Parameters
    ----------
    data, error, mask, header
        Calibrated frame (e-); ``mask`` with cosmic rays OR-ed in.
    background, background_rms
        BKG, BKG_RMS of the background stage (float32 as stored is fine; BKG_RMS is
        used by ``sky='map'`` only and may be None otherwise).
    sources, meta
        This frame's detections and seeing (:func:`frame_sources`).
    catalog, reference_meta
        The series' source list (:func:`reference_catalog`) and the reference
        frame's meta (its FWHM sizes apertures when this frame's is unknown).
    radii_px, radii_fwhm
        Aperture radii in pixels and in units of this frame's FWHM.
    annulus
        ``inner``, ``outer`` and ``unit`` ('fwhm' or 'px'); default 4–7 FWHM.
    sky
        'annulus-median', 'annulus-mean', 'annulus-mode' or 'map'.
    map_box_px
        Box size of the background map: its error per pixel is taken as
        ``BKG_RMS·√(π/2)/box`` (the median of box² pixels).
    site
        Observatory (profile); else the header's SITELAT/SITELONG.
    source_mask : ndarray of bool, optional
        The background stage's SRCMASK (detected sources, grown).
    sky_exclude_sources : bool
        Leave ``source_mask`` pixels out of the sky annuli, so that neighbours
        do not raise the local sky (see
        :func:`ccdflow.photometry.measure_apertures`, ``sky_mask``).
    start_mjd_utc, exptime_s : float, optional
        Start of the exposure (MJD, UTC) and its length, as the inventory read
        them with the profile's keywords (``date_obs``/``time_obs``/``mjd_obs``,
        ``exptime``); mid-exposure is start + exptime/2.  Without them the
        header's DATE-OBS (or DATE-BEG) and EXPTIME (or EXPOSURE) are used.
    min_radius_px : float
        Floor of every aperture radius (and of the FWHM scaling the annulus, as
        ``1.5 × FWHM``): an undersampled star (FWHM < 2 px) is not measured in a
        1-px aperture whose flux depends on where the star falls in its pixel.
        Raised radii are noted.
    error_cal : ndarray, optional
        ERR_CAL of the calibrated frame (the masters' noise); see
        :func:`ccdflow.photometry.measure_apertures` for ``flux_err_cal``.
    psf_model : {'gaussian', 'moffat'}
        The frame's PSF (:func:`frame_psf`), for repair, neighbour light and
        optimal photometry.
    optimal : bool
        Add Naylor (1998) optimal photometry (aperture ``optimal``).
    max_repaired_fraction, max_contamination, subtract_neighbours
        See :func:`ccdflow.photometry.measure_apertures`.
    alignment : Alignment or SourceError, optional
        The transform from the reference (:func:`align_to_reference`, e.g.
        chained from the previous frame), or the error of the caller's attempt
        (not tried again); default: found here.  A frame that
        cannot be aligned is measured at the positions its WCS gives, else the
        reference's, flagged NOT_ALIGNED.

    Returns
    -------
    table : DataFrame
        One row per source and aperture: ``frame, source_id, name, aperture,
        radius, x, y, ra_deg, dec_deg, flux, flux_err, bkg, bkg_err, n_ap,
        n_sky, masked_fraction, flags, fwhm, mjd_utc, bjd_tdb, bmjd_tdb,
        airmass, exptime_s, dx, dy, rotation_deg`` (the frame's turn from the
        reference: ±180 after a meridian flip, the field rotation of an alt-az mount).
    notes : list of str
        How the frame was aligned and timed (written as comments).
    """
    if not radii_px and not radii_fwhm:
        raise PhotometryError("no aperture: give photometry.radii_px and/or radii_fwhm")
    notes = []
    labels = aperture_labels(radii_px=radii_px, radii_fwhm=radii_fwhm)
    if catalog.empty:
        notes.append(f"empty source list: {reference_meta.get('note') or 'no sources'}")
        return pd.DataFrame(columns=PHOTOMETRY_COLUMNS), notes
    sizes = _aperture_sizes(meta=meta, reference_meta=reference_meta, radii_px=radii_px,
                            radii_fwhm=radii_fwhm, annulus=annulus, sky=sky,
                            min_radius_px=min_radius_px, notes=notes, frame=frame)
    if sizes is None:
        return pd.DataFrame(columns=PHOTOMETRY_COLUMNS), notes
    fwhm, radii, (r_in, r_out) = sizes
    # the frame's WCS is built only if asked for (an unaligned frame, a field without a
    # named target): 2.5 ms a frame, and ~0.1 s of importing astropy.wcs in the job
    get_wcs = functools.cache(lambda: _wcs(header))
    x, y, flags, (dx, dy, turn) = _positions(
        data=data, mask=mask, background=background, sources=sources, catalog=catalog,
        reference_meta=reference_meta, get_wcs=get_wcs, fwhm=fwhm, alignment=alignment,
        max_shift_px=max_shift_px, recentroid_min_snr=recentroid_min_snr, notes=notes,
        frame=frame)
    map_err = None
    if sky == "map":
        if background_rms is None:
            raise PhotometryError("sky='map' needs background_rms (BKG_RMS)")
        # in float64 (BKG_RMS is float32 as stored; a float32 product would round twice)
        map_err = (np.asarray(background_rms, np.float64) * math.sqrt(math.pi / 2)
                   / map_box_px)
    psf, psf_note = frame_psf(data=data, background=background, mask=mask, x=x, y=y,
                              snr=catalog["snr_ref"].to_numpy(float), fwhm=fwhm, kind=psf_model,
                              flux=catalog["flux_ref"].to_numpy(float))
    notes.append(psf_note)
    # HOT pixels hold corrected values where a dark, or the series' own dark rates
    # (HOTCORR), were subtracted; otherwise they are filled
    dark_subtracted = (str(header.get("DARKFILE", "none")).strip().lower() not in ("none", "")
                       or int(header.get("HOTCORR", 0) or 0) > 0)
    use_optimal = optimal and psf is not None
    if optimal and psf is None:
        notes.append("no optimal photometry on this frame (no PSF)")
    table = measure_apertures(data=data, error=error, mask=mask, x=x, y=y, radii=radii,
                              annulus=(r_in, r_out), background=sky, background_map=background,
                              background_map_error=map_err, sigma=sky_sigma,
                              min_sky_pixels=min_sky_pixels,
                              sky_mask=source_mask if sky_exclude_sources else None,
                              source_ids=catalog["source_id"].to_numpy(), error_cal=error_cal,
                              psf=psf, dark_subtracted=dark_subtracted,
                              max_repaired_fraction=max_repaired_fraction,
                              max_contamination=max_contamination,
                              subtract_neighbours=subtract_neighbours, optimal=use_optimal,
                              row_noise_e=float(header.get("OVSCNOIS", 0.0) or 0.0))
    attrs = dict(table.attrs)
    table = _label_rows(table, catalog=catalog, labels=labels, radii=radii, optimal=optimal,
                        use_optimal=use_optimal, flags=flags, fwhm=fwhm, psf=psf, frame=frame)
    times = frame_times(header=header, catalog=catalog, wcs=get_wcs, site=site,
                         start_mjd_utc=start_mjd_utc, exptime_s=exptime_s, notes=notes,
                         frame=frame)
    _note_model(attrs, use_optimal=use_optimal, notes=notes)
    for key, value in times.items():
        table[key] = value
    table["exptime_s"] = (float(exptime_s) if exptime_s is not None else
                          float(header.get("EXPTIME", header.get("EXPOSURE", float("nan")))))
    table["dx"], table["dy"], table["rotation_deg"] = dx, dy, turn
    return table[PHOTOMETRY_COLUMNS], notes


def _aperture_sizes(*, meta, reference_meta, radii_px, radii_fwhm, annulus, sky, min_radius_px,
                    notes, frame) -> tuple[float, list[float], tuple[float, float]] | None:
    """This frame's FWHM (else the reference's), aperture radii (floored at
    ``min_radius_px``) and annulus radii in px; None when no FWHM can size them."""
    fwhm = float(meta.get("fwhm_px", float("nan")))
    if not np.isfinite(fwhm):
        fwhm = float(reference_meta["fwhm_px"])
        notes.append(f"FWHM not measured here; apertures sized with the reference FWHM {fwhm:.2f}")
    if not np.isfinite(fwhm) and (radii_fwhm or annulus is None or annulus["unit"] == "fwhm"):
        notes.append("no FWHM measured on this frame or the reference: apertures in units of "
                     "the FWHM cannot be sized, no photometry (radii_px with an annulus in px "
                     "would measure the targets)")
        log.warning("%s: %s", frame, notes[-1])
        return None
    radii = [float(r) for r in radii_px] + [k * fwhm for k in radii_fwhm]
    if min(radii) < min_radius_px:  # an undersampled PSF: a 1-px aperture is all pixel phase
        notes.append(f"aperture radii {', '.join(f'{r:.2f}' for r in radii)} px raised to at "
                     f"least {min_radius_px:g} px (FWHM {fwhm:.2f} px)")
        log.info("%s: %s", frame, notes[-1])
        radii = [max(r, float(min_radius_px)) for r in radii]
    annulus = annulus or {"inner": 4.0, "outer": 7.0, "unit": "fwhm"}
    scale = max(fwhm, min_radius_px / 1.5) if annulus["unit"] == "fwhm" else 1.0
    r_in, r_out = annulus["inner"] * scale, annulus["outer"] * scale
    if sky != "map" and r_in < max(radii):
        raise PhotometryError(f"annulus inner radius {r_in:.1f} px is inside the largest "
                              f"aperture {max(radii):.1f} px: raise photometry.annulus.inner")
    return fwhm, radii, (r_in, r_out)


def _positions(*, data, mask, background, sources, catalog, reference_meta, get_wcs, fwhm,
               alignment, max_shift_px, recentroid_min_snr, notes, frame):
    """The list's positions on this frame (aligned, bright stars re-centroided), the
    rows' position flags, and the shift (dx, dy) of the reference's centre and the
    rotation (degrees, counter-clockwise) from the reference."""
    ref_xy = catalog[["x_ref", "y_ref"]].to_numpy(float)
    flags = np.zeros(len(catalog), np.int64)
    flags[~np.isfinite(ref_xy).all(axis=1)] |= PhotFlag.NO_POSITION
    if "no_star" in catalog:
        flags[catalog["no_star"].fillna(False).to_numpy(bool)] |= PhotFlag.NO_STAR
    try:
        if isinstance(alignment, SourceError):  # the caller's attempt failed: say why
            raise alignment
        if alignment is None:
            alignment = align_to_reference(sources=sources, catalog=catalog, fwhm_px=fwhm,
                                           max_shift_px=max_shift_px)
        xy = alignment.apply(ref_xy)
        centre = _reference_centre(reference_meta, data.shape)
        dx, dy = (alignment.apply(np.asarray([centre])) - np.asarray(centre))[0]
        notes.append(alignment.describe(centre))
    except SourceError as exc:
        flags |= PhotFlag.NOT_ALIGNED
        xy, where = _unaligned_positions(catalog, get_wcs)
        notes.append(f"not aligned ({exc}); positions {where}")
        log.warning("%s: %s", frame, notes[-1])
        return xy[:, 0], xy[:, 1], flags, (float("nan"),) * 3
    x, y = xy[:, 0], xy[:, 1]
    bright = np.array(catalog["snr_ref"].fillna(0) >= recentroid_min_snr, dtype=bool)
    if bright.any():
        # windowed centroids; PSF-fitted centres for stars with masked pixels near
        # them (a cosmic ray, a bad column; L.A.Cosmic sometimes takes a bright core)
        cx, cy = refine_centres(data=data, background=background, x=x[bright], y=y[bright],
                                fwhm=fwhm, mask=mask)
        cx, cy = _guard_centroids(x[bright], y[bright], cx, cy,
                                  snr=catalog["snr_ref"].to_numpy(float)[bright], fwhm=fwhm)
        x, y = x.copy(), y.copy()
        x[bright], y[bright] = cx, cy
    return x, y, flags, (dx, dy, alignment.rotation_deg)


def _note_model(attrs: Mapping, *, use_optimal: bool, notes: list[str]) -> None:
    """Say what the source model found (hidden stars, optimal profile correction)."""
    hidden = attrs.get("hidden_neighbours", 0)
    if hidden:
        notes.append(f"{hidden} star(s) missing from the source list found in the residual of "
                     "its PSF model: their light counts as neighbour light")
    outliers = attrs.get("model_outliers", 0)
    if outliers:
        notes.append(f"{outliers} pixel(s) on stars more than {MODEL_OUTLIER_NSIGMA:g}σ above "
                     "the PSF model (cosmic rays the mask missed): filled from the model")
    if attrs.get("psf_model_error"):
        notes.append(f"PSF model error {100 * attrs['psf_model_error']:.1f} % of the modelled "
                     "light per pixel (in the variance of filled pixels), "
                     f"{100 * attrs.get('psf_model_error_random', 0.0):.1f} % differing from "
                     "star to star (in the optimal flux's variance)")
    correction = attrs.get("optimal_correction")
    if use_optimal and correction is not None:
        notes.append(f"optimal photometry: profile correction {correction:.4f} (largest "
                     "aperture over optimal flux, median of isolated bright stars)")


def _label_rows(table, *, catalog, labels, radii, optimal, use_optimal, flags, fwhm, psf,
                frame) -> pd.DataFrame:
    """The catalog's names, coordinates and flags, aperture labels and PSF on the rows;
    a frame without a PSF keeps its optimal rows (flux NaN, NO_PSF)."""
    n = len(catalog)
    if optimal and not use_optimal:  # rows kept, flux NaN: every frame has the same rows
        block = table.iloc[int(np.argmax(radii)) * n:(int(np.argmax(radii)) + 1) * n].copy()
        for column in ("radius", "flux", "flux_err", "flux_err_cal", "repaired_fraction"):
            block[column] = np.nan
        block["flags"] = block["flags"].to_numpy() | int(PhotFlag.NO_PSF)
        table = pd.concat([table, block], ignore_index=True)
    blocks = len(radii) + (1 if optimal else 0)
    table.insert(0, "frame", frame)
    table.insert(2, "name", np.tile(catalog["name"].to_numpy(), blocks))
    table.insert(3, "aperture", np.repeat(labels + ([OPTIMAL] if optimal else []), n))
    table["flags"] = table["flags"].to_numpy() | np.tile(flags, blocks)
    table["ra_deg"] = np.tile(catalog["ra_deg"].to_numpy(), blocks)
    table["dec_deg"] = np.tile(catalog["dec_deg"].to_numpy(), blocks)
    table["fwhm"] = fwhm
    for column, value in (("psf_sigma_major", "sigma_major"), ("psf_sigma_minor", "sigma_minor"),
                          ("psf_theta", "theta_deg")):
        table[column] = getattr(psf, value) if psf is not None else float("nan")
    return table

