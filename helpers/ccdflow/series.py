"""Photometric time series: per-frame sources, the field's source list, per-frame
photometry with times, light curves and differential photometry.

A *series* is one field (OBJECT) in one filter, across all nights.  Its source
list comes from one reference frame (smallest FWHM, or configured): the
detections there, brightest first, plus the named targets.  Each frame is
aligned to the reference by matching its own detections (translation vote,
then an affine fit that takes up small rotations), bright sources are
re-centroided, and every source in the list is measured in every frame: a
source that falls off a frame keeps its row, flagged OFF_FRAME.

Units: fluxes and backgrounds in electrons (``bkg`` per pixel), positions in
0-based pixels, times in days.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .photometry import BAD_FLAGS, PhotFlag, PhotometryError, measure_apertures
from .sources import SourceError, detect_stars, estimate_fwhm, frame_offset, recentroid

log = logging.getLogger(__name__)

__all__ = ["FrameData", "aperture_labels", "build_lightcurves", "build_reference",
           "choose_reference", "differential_photometry", "frame_photometry", "frame_sources",
           "good_mask", "load_frame", "read_photometry", "read_reference", "read_sources",
           "reference_catalog",
           "write_lightcurves", "write_reference", "write_sources"]

SOURCE_COLUMNS = ["source_id", "x", "y", "flux", "peak", "fwhm", "area", "snr",
                  "saturated_or_masked"]


def _wcs(header):
    from astropy.wcs import WCS, FITSFixedWarning

    if "CTYPE1" not in header or "CTYPE2" not in header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    return wcs if wcs.has_celestial else None


# ---------------------------------------------------------------- per-frame sources

def frame_sources(*, data: np.ndarray, mask: np.ndarray, background: np.ndarray,
                  rms: np.ndarray, nsigma: float = 5.0, npixels: int = 5,
                  ) -> tuple[pd.DataFrame, dict]:
    """Detections and seeing of one calibrated frame.

    Parameters
    ----------
    data, mask : ndarray
        Calibrated SCI (e-) and its bit mask (cosmic rays OR-ed in by the caller).
    background, rms : ndarray
        BKG and BKG_RMS of the background stage (e-).

    Returns
    -------
    sources : DataFrame
        :func:`ccdflow.sources.detect_stars` columns.
    meta : dict
        ``n_sources``, ``fwhm_px`` (NaN when no bright isolated star could be
        fitted, e.g. through clouds) and ``note``.
    """
    sources = detect_stars(data=data, background=background, rms=rms, mask=mask,
                           nsigma=nsigma, npixels=npixels)
    meta = {"n_sources": len(sources), "fwhm_px": float("nan"), "note": ""}
    try:
        meta["fwhm_px"] = estimate_fwhm(data=data, background=background, sources=sources)
    except SourceError as exc:
        meta["note"] = str(exc)
        log.warning("FWHM not measured: %s", exc)
    return sources, meta


def write_sources(path: str | Path, sources: pd.DataFrame, meta: Mapping, *,
                  frame: str) -> None:
    """Write a source table as ECSV with ``frame`` and ``meta`` in its header, atomically."""
    from astropy.table import Table

    from .io import atomic_path

    table = Table.from_pandas(sources[SOURCE_COLUMNS].reset_index(drop=True))
    table.meta.update({"frame": frame, **{k: meta[k] for k in sorted(meta)}})
    for name, unit in (("x", "pix"), ("y", "pix"), ("flux", "electron"),
                       ("peak", "electron"), ("fwhm", "pix"), ("area", "pix2")):
        table[name].unit = unit
    with atomic_path(path, suffix=".ecsv") as tmp:
        table.write(tmp, format="ascii.ecsv")


def _column(column) -> np.ndarray:
    """A table column as an array: masked (missing) floats as NaN, strings as ''."""
    if not hasattr(column, "filled"):
        return np.asarray(column)
    if column.dtype.kind in "fc":
        return np.asarray(column.filled(np.nan))
    if column.dtype.kind in "US":
        return np.asarray(column.filled(""))
    return np.asarray(column.filled())


def read_sources(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a table written by :func:`write_sources`: (sources, meta)."""
    from astropy.table import Table

    table = Table.read(path, format="ascii.ecsv")
    meta = dict(table.meta)
    frame = pd.DataFrame({c: _column(table[c]) for c in table.colnames})
    if frame.empty:
        frame = pd.DataFrame(columns=SOURCE_COLUMNS)
    return frame, meta


# ---------------------------------------------------------------- reference and source list

def choose_reference(*, metas: Mapping[str, Mapping], min_sources: int = 5,
                     has_wcs: Mapping[str, bool] | Callable[[str], bool] | None = None,
                     prefer_wcs: bool = False) -> str | None:
    """Frame with the smallest FWHM among frames with ``min_sources`` detections.

    Parameters
    ----------
    metas : mapping
        Per frame name, ``n_sources`` and ``fwhm_px`` (the meta of
        :func:`frame_sources`, or a batch summary row).
    min_sources : int
        Detections a frame needs to qualify.  When no frame has that many
        (a sparse field), the frame with the most detections is taken and
        the choice logged.
    has_wcs, prefer_wcs
        When ``prefer_wcs`` (targets given in RA/Dec), the best frame with a
        WCS is taken (``has_wcs``: a mapping, or a function of the frame name
        asked only down the ranking until one answers yes); without any, the
        best frame all the same, logged (the RA/Dec targets then cannot be
        placed: see :func:`reference_catalog`).

    Returns
    -------
    str or None
        The frame; None when no frame has a single star with a measured FWHM
        (clouds), logged.
    """
    ok = {f: m for f, m in metas.items()
          if int(m["n_sources"]) >= 1 and np.isfinite(float(m["fwhm_px"]))}
    if not ok:
        log.warning("no frame of the series has a detected star with a measured FWHM "
                    "(clouds?); frames: %s", ", ".join(sorted(metas)[:5]))
        return None
    rich = sorted((f for f in ok if int(ok[f]["n_sources"]) >= min_sources),
                  key=lambda f: (float(ok[f]["fwhm_px"]), f))
    sparse = sorted((f for f in ok if int(ok[f]["n_sources"]) < min_sources),
                    key=lambda f: (-int(ok[f]["n_sources"]), float(ok[f]["fwhm_px"]), f))
    ranking = rich + sparse
    if prefer_wcs:
        check = has_wcs if callable(has_wcs) else (lambda f: bool((has_wcs or {}).get(f)))
        with_wcs = next((f for f in ranking if check(f)), None)
        if with_wcs is not None:
            ranking = [with_wcs]
        else:
            log.warning("targets are given in RA/Dec but no frame of the series with a "
                        "measured FWHM has a WCS: they cannot be placed (plate-solve the "
                        "frames or give the targets as x/y)")
    best = ranking[0]
    if best not in rich:
        log.warning("no frame of the series has %d or more detections: reference %s has %d",
                    min_sources, best, int(ok[best]["n_sources"]))
    return best


def _target_pixels(target: Mapping, wcs, where: str) -> tuple[float, float]:
    """Pixel position of a target on the reference frame; NaN when it is given in
    RA/Dec and the frame has no WCS (logged; its rows are flagged NO_POSITION)."""
    if "x" in target:
        return float(target["x"]), float(target["y"])
    if wcs is None:
        log.warning("target %r is given in RA/Dec but the reference frame %s has no WCS: "
                    "its rows are flagged NO_POSITION (plate-solve the frames or give x/y)",
                    target["name"], where)
        return float("nan"), float("nan")
    coord = sky_coord(target["ra"], target["dec"])
    x, y = wcs.world_to_pixel(coord)
    return float(x), float(y)


def sky_coord(ra, dec):
    """SkyCoord from degrees (numbers) or sexagesimal strings (RA in hours)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    if isinstance(ra, str) or isinstance(dec, str):
        return SkyCoord(str(ra), str(dec), unit=(u.hourangle, u.deg), frame="icrs")
    return SkyCoord(np.asarray(ra, float) * u.deg, np.asarray(dec, float) * u.deg, frame="icrs")


def reference_catalog(*, sources: pd.DataFrame, header, shape: tuple[int, int],
                      targets: Sequence[Mapping] = (), max_sources: int = 2000,
                      match_radius_px: float = 3.0, frame: str = "reference") -> pd.DataFrame:
    """The series' source list: named targets first (ids 1…T), then detections.

    A target within ``match_radius_px`` of a detection replaces it (the
    detection's flux and S/N are kept); a target outside the frame is kept
    and logged (its rows will be flagged OFF_FRAME), and so is a target in
    RA/Dec on a frame without a WCS (position NaN, rows flagged NO_POSITION).

    Returns
    -------
    DataFrame
        ``source_id, name, x_ref, y_ref, ra_deg, dec_deg, flux_ref, snr_ref``
        (RA/Dec NaN without a WCS).
    """
    from scipy.spatial import cKDTree

    wcs = _wcs(header)
    det = sources.nlargest(max_sources, "flux") if len(sources) else sources
    det = det.sort_values("source_id")
    used = np.zeros(len(det), bool)
    rows = []
    tree = cKDTree(det[["x", "y"]].to_numpy(float)) if len(det) else None
    ny, nx = shape
    for target in targets:
        x, y = _target_pixels(target, wcs, frame)
        flux, snr = float("nan"), float("nan")
        placed = math.isfinite(x) and math.isfinite(y)
        if tree is not None and placed:
            dist, k = tree.query([x, y])
            if dist <= match_radius_px and not used[k]:
                used[k] = True
                flux, snr = float(det["flux"].iloc[k]), float(det["snr"].iloc[k])
                x, y = float(det["x"].iloc[k]), float(det["y"].iloc[k])
        if placed and not (-0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5):
            log.warning("target %s falls outside the reference frame %s at x=%.1f y=%.1f: "
                        "its rows are flagged OFF_FRAME", target["name"], frame, x, y)
        rows.append({"name": target["name"], "x_ref": x, "y_ref": y, "flux_ref": flux,
                     "snr_ref": snr})
    rest = det[~used]
    table = pd.DataFrame({
        "name": [r["name"] for r in rows] + [""] * len(rest),
        **{col: np.concatenate([np.array([r[col] for r in rows], float),
                                rest[src].to_numpy(float)])
           for col, src in (("x_ref", "x"), ("y_ref", "y"), ("flux_ref", "flux"),
                            ("snr_ref", "snr"))}})
    table.insert(0, "source_id", np.arange(1, len(table) + 1))
    table["ra_deg"] = table["dec_deg"] = np.nan
    if wcs is not None and len(table):
        sky = wcs.pixel_to_world(table["x_ref"].to_numpy(), table["y_ref"].to_numpy())
        table["ra_deg"], table["dec_deg"] = sky.ra.deg, sky.dec.deg
    return table


# ---------------------------------------------------------------- per-frame photometry

#: columns of a per-frame photometry table, in order
PHOTOMETRY_COLUMNS = ["frame", "source_id", "name", "aperture", "radius", "x", "y", "ra_deg",
                      "dec_deg", "flux", "flux_err", "bkg", "bkg_err", "n_ap", "n_sky",
                      "masked_fraction", "flags", "fwhm", "mjd_utc", "bjd_tdb", "bmjd_tdb",
                      "airmass", "exptime_s", "dx", "dy"]

def aperture_labels(*, radii_px: Sequence[float], radii_fwhm: Sequence[float]) -> list[str]:
    """Labels of the apertures, in order: ``'8px'``, ``'1.5fwhm'``."""
    return [f"{r:g}px" for r in radii_px] + [f"{k:g}fwhm" for k in radii_fwhm]


def _affine_positions(ref_xy: np.ndarray, det_xy: np.ndarray, shift: tuple[float, float],
                      tolerance: float) -> tuple[np.ndarray, int]:
    """Reference positions mapped into the frame: translation, refined by an affine fit
    to the matched pairs when there are at least 6."""
    from scipy.spatial import cKDTree

    moved = ref_xy + np.asarray(shift)
    finite = np.isfinite(moved).all(axis=1)  # targets without a position stay NaN
    dist = np.full(len(moved), np.inf)
    k = np.zeros(len(moved), int)
    if finite.any() and len(det_xy):
        dist[finite], k[finite] = cKDTree(det_xy).query(moved[finite],
                                                        distance_upper_bound=tolerance)
    hit = np.isfinite(dist)
    if hit.sum() < 6:
        return moved, int(hit.sum())
    design = np.column_stack([ref_xy[hit], np.ones(hit.sum())])
    coef, *_ = np.linalg.lstsq(design, det_xy[k[hit]], rcond=None)
    return np.column_stack([ref_xy, np.ones(len(ref_xy))]) @ coef, int(hit.sum())


def _guard_centroids(x0: np.ndarray, y0: np.ndarray, cx: np.ndarray, cy: np.ndarray, *,
                     snr: np.ndarray, fwhm: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the aligned positions where re-centroiding cannot be trusted.

    The alignment already places each star to a fraction of a pixel; a centroid
    that moves further than ``max(1, 0.3·FWHM)`` px was pulled by something else,
    and two sources that end within ``0.5·FWHM`` of each other (a faint one
    dragged onto a bright neighbour) keep only the brighter's centroid.
    """
    from scipy.spatial import cKDTree

    cx, cy = cx.copy(), cy.copy()
    far = np.hypot(cx - x0, cy - y0) > max(1.0, 0.3 * fwhm)
    cx[far], cy[far] = x0[far], y0[far]
    if len(cx) > 1:
        for i, j in cKDTree(np.column_stack([cx, cy])).query_pairs(0.5 * fwhm):
            if np.hypot(x0[i] - x0[j], y0[i] - y0[j]) > 0.5 * fwhm:
                k = i if snr[i] < snr[j] else j
                cx[k], cy[k] = x0[k], y0[k]
    return cx, cy


def _site(header, site: Mapping | None) -> tuple[dict | None, str]:
    """Observatory from the profile, else SITELAT/SITELONG[/SITEELEV] of the header."""
    if site and site.get("latitude_deg") is not None and site.get("longitude_deg") is not None:
        return {"latitude_deg": site["latitude_deg"], "longitude_deg": site["longitude_deg"],
                "height_m": site.get("height_m") or 0.0}, f"profile site {site.get('name', '')}"
    from astropy.coordinates import Angle

    def angle(keys):
        for k in keys:
            if k in header and str(header[k]).strip():
                value = header[k]
                return float(value) if not isinstance(value, str) else Angle(
                    value, unit="deg").deg
        return None

    lat = angle(("SITELAT", "LAT-OBS", "LATITUDE", "OBSLAT"))
    lon = angle(("SITELONG", "LONG-OBS", "LONGITUD", "OBSLONG"))
    if lat is None or lon is None:
        return None, "no site: BJD toward the geocentre, airmass from the header"
    height = header.get("SITEELEV", header.get("ALT-OBS"))
    note = "header SITELAT/SITELONG" + ("" if height is not None else ", elevation 0 m")
    return {"latitude_deg": lat, "longitude_deg": lon, "height_m": float(height or 0.0)}, note


def _pointing(header, catalog: pd.DataFrame, wcs) -> tuple[float, float, str] | None:
    """Coordinates for the barycentric correction: first target, WCS centre, header RA/DEC."""
    named = catalog[(catalog["name"] != "") & np.isfinite(catalog["ra_deg"])]
    if len(named):
        return float(named["ra_deg"].iloc[0]), float(named["dec_deg"].iloc[0]), \
            f"target {named['name'].iloc[0]}"
    if wcs is not None and np.isfinite(catalog["ra_deg"]).any():
        return float(np.nanmedian(catalog["ra_deg"])), float(np.nanmedian(catalog["dec_deg"])), \
            "source-list centre (WCS)"
    for ra_key, dec_key in (("RA", "DEC"), ("OBJCTRA", "OBJCTDEC")):
        if ra_key in header and dec_key in header:
            ra, dec = header[ra_key], header[dec_key]
            coord = sky_coord(ra if isinstance(ra, str) else float(ra),
                              dec if isinstance(dec, str) else float(dec))
            return float(coord.ra.deg), float(coord.dec.deg), f"header {ra_key}/{dec_key}"
    return None


def frame_photometry(*, data: np.ndarray, error: np.ndarray, mask: np.ndarray, header,
                     background: np.ndarray, background_rms: np.ndarray,
                     sources: pd.DataFrame, meta: Mapping, catalog: pd.DataFrame,
                     reference_meta: Mapping, radii_px: Sequence[float] = (),
                     radii_fwhm: Sequence[float] = (1.5, 2.0, 3.0),
                     annulus: Mapping | None = None,
                     sky: str = "annulus-median", sky_sigma: float = 3.0,
                     min_sky_pixels: int = 20, map_box_px: int = 64, max_shift_px: float = 50.0,
                     recentroid_min_snr: float = 20.0, site: Mapping | None = None,
                     source_mask: np.ndarray | None = None, sky_exclude_sources: bool = True,
                     start_mjd_utc: float | None = None, exptime_s: float | None = None,
                     frame: str = "frame") -> tuple[pd.DataFrame, list[str]]:
    """Every source of the series' list measured in one frame, with times.

    Parameters
    ----------
    data, error, mask, header
        Calibrated frame (e-); ``mask`` with cosmic rays OR-ed in.
    background, background_rms
        BKG, BKG_RMS of the background stage.
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

    Returns
    -------
    table : DataFrame
        One row per source and aperture: ``frame, source_id, name, aperture,
        radius, x, y, ra_deg, dec_deg, flux, flux_err, bkg, bkg_err, n_ap,
        n_sky, masked_fraction, flags, fwhm, mjd_utc, bjd_tdb, bmjd_tdb,
        airmass, exptime_s, dx, dy``.
    notes : list of str
        How the frame was aligned and timed (written as comments).
    """
    from .times import barycentric_times, mid_exposure

    if not radii_px and not radii_fwhm:
        raise PhotometryError("no aperture: give photometry.radii_px and/or radii_fwhm")
    notes = []
    labels = aperture_labels(radii_px=radii_px, radii_fwhm=radii_fwhm)
    if catalog.empty:
        notes.append(f"empty source list: {reference_meta.get('note') or 'no sources'}")
        return pd.DataFrame(columns=PHOTOMETRY_COLUMNS), notes
    fwhm = float(meta.get("fwhm_px", float("nan")))
    if not np.isfinite(fwhm):
        fwhm = float(reference_meta["fwhm_px"])
        notes.append(f"FWHM not measured here; apertures sized with the reference FWHM {fwhm:.2f}")
    if not np.isfinite(fwhm) and (radii_fwhm or annulus is None or annulus["unit"] == "fwhm"):
        notes.append("no FWHM measured on this frame or the reference: apertures in units of "
                     "the FWHM cannot be sized, no photometry (radii_px with an annulus in px "
                     "would measure the targets)")
        log.warning("%s: %s", frame, notes[-1])
        return pd.DataFrame(columns=PHOTOMETRY_COLUMNS), notes
    radii = [float(r) for r in radii_px] + [k * fwhm for k in radii_fwhm]
    annulus = annulus or {"inner": 4.0, "outer": 7.0, "unit": "fwhm"}
    scale = fwhm if annulus["unit"] == "fwhm" else 1.0
    r_in, r_out = annulus["inner"] * scale, annulus["outer"] * scale
    if sky != "map" and r_in < max(radii):
        raise PhotometryError(f"annulus inner radius {r_in:.1f} px is inside the largest "
                              f"aperture {max(radii):.1f} px: raise photometry.annulus.inner")

    # alignment: translation vote on the brightest detections, then affine
    ref_xy = catalog[["x_ref", "y_ref"]].to_numpy(float)
    flags = np.zeros(len(catalog), np.int64)
    flags[~np.isfinite(ref_xy).all(axis=1)] |= PhotFlag.NO_POSITION
    wcs = _wcs(header)
    detected = catalog[np.isfinite(catalog["flux_ref"])]
    ref_det = pd.DataFrame({"x": detected["x_ref"], "y": detected["y_ref"],
                            "flux": detected["flux_ref"]})
    try:
        dx, dy, _ = frame_offset(reference=ref_det, sources=sources, max_shift=max_shift_px)
        xy, n_match = _affine_positions(ref_xy, sources[["x", "y"]].to_numpy(float),
                                        (dx, dy), tolerance=max(1.5, fwhm))
        notes.append(f"aligned: shift ({dx:+.2f}, {dy:+.2f}) px, {n_match} matched sources")
    except SourceError as exc:
        flags |= PhotFlag.NOT_ALIGNED
        if wcs is not None and len(catalog) and np.isfinite(catalog["ra_deg"]).all():
            xs, ys = wcs.world_to_pixel(sky_coord(catalog["ra_deg"].to_numpy(),
                                                  catalog["dec_deg"].to_numpy()))
            xy = np.column_stack([xs, ys])
            notes.append(f"not aligned ({exc}); positions from this frame's WCS")
        else:
            xy = ref_xy.copy()
            notes.append(f"not aligned ({exc}); positions of the reference frame")
        log.warning("%s: %s", frame, notes[-1])
        dx = dy = float("nan")
    x, y = xy[:, 0], xy[:, 1]
    if not (flags & PhotFlag.NOT_ALIGNED).any():
        bright = np.asarray(catalog["snr_ref"].fillna(0) >= recentroid_min_snr)
        if bright.any():
            cx, cy = recentroid(data=data, background=background, x=x[bright], y=y[bright],
                                fwhm=fwhm, mask=mask)
            cx, cy = _guard_centroids(x[bright], y[bright], cx, cy,
                                      snr=catalog["snr_ref"].to_numpy(float)[bright], fwhm=fwhm)
            x, y = x.copy(), y.copy()
            x[bright], y[bright] = cx, cy

    map_err = background_rms * math.sqrt(math.pi / 2) / map_box_px if sky == "map" else None
    table = measure_apertures(data=data, error=error, mask=mask, x=x, y=y, radii=radii,
                              annulus=(r_in, r_out), background=sky, background_map=background,
                              background_map_error=map_err, sigma=sky_sigma,
                              min_sky_pixels=min_sky_pixels,
                              sky_mask=source_mask if sky_exclude_sources else None,
                              source_ids=catalog["source_id"].to_numpy())
    n = len(catalog)
    table.insert(0, "frame", frame)
    table.insert(2, "name", np.tile(catalog["name"].to_numpy(), len(radii)))
    table.insert(3, "aperture", np.repeat(labels, n))
    table["flags"] = table["flags"].to_numpy() | np.tile(flags, len(radii))
    table["ra_deg"] = np.tile(catalog["ra_deg"].to_numpy(), len(radii))
    table["dec_deg"] = np.tile(catalog["dec_deg"].to_numpy(), len(radii))
    table["fwhm"] = fwhm

    # times toward the first target (else the field centre)
    if start_mjd_utc is not None and exptime_s is not None and np.isfinite(
            [start_mjd_utc, exptime_s]).all():
        from astropy import units as u
        from astropy.time import Time

        mid = Time(float(start_mjd_utc), format="mjd", scale="utc") + float(exptime_s) / 2 * u.s
    else:
        mid = mid_exposure(header=header, where=frame)
    where, site_note = _site(header, site)
    pointing = _pointing(header, catalog, wcs)
    times = {"mjd_utc": float(mid.utc.mjd), "bjd_tdb": float("nan"), "bmjd_tdb": float("nan"),
             "airmass": float(header["AIRMASS"]) if "AIRMASS" in header else float("nan")}
    if pointing is None:
        notes.append("no coordinates for BJD (no target, WCS or RA/DEC): bjd_tdb left empty")
    else:
        ra, dec, what = pointing
        if where is not None:
            times.update(barycentric_times(times=mid, ra_deg=ra, dec_deg=dec,
                                           site=where).iloc[0].to_dict())
        else:
            from astropy import units as u
            from astropy.coordinates import EarthLocation, SkyCoord

            geocentre = EarthLocation.from_geocentric(0, 0, 0, unit=u.m)  # error ≤ 21 ms
            bjd = (mid.tdb + mid.light_travel_time(SkyCoord(ra * u.deg, dec * u.deg),
                                                   location=geocentre)).jd
            times.update(bjd_tdb=float(bjd), bmjd_tdb=float(bjd) - 2400000.5)
        notes.append(f"times: mid-exposure; BJD toward {what} (RA {ra:.5f}, Dec {dec:.5f}); "
                     f"{site_note}")
    for key, value in times.items():
        table[key] = value
    table["exptime_s"] = (float(exptime_s) if exptime_s is not None else
                          float(header.get("EXPTIME", header.get("EXPOSURE", float("nan")))))
    table["dx"], table["dy"] = dx, dy
    return table[PHOTOMETRY_COLUMNS], notes


# ---------------------------------------------------------------- differential photometry

def _robust_std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size < 3:
        return float("inf")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def differential_photometry(*, flux: pd.DataFrame, flux_err: pd.DataFrame, good: pd.DataFrame,
                            target: int, comparisons: Sequence[int] | None = None,
                            max_count: int = 10, min_count: int = 2,
                            flux_ratio: tuple[float, float] = (0.2, 5.0),
                            min_good_fraction: float = 0.9, max_excess_scatter: float = 2.0,
                            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Target flux relative to a weighted comparison ensemble.

    Parameters
    ----------
    flux, flux_err, good : DataFrame
        Frames (rows, in time order) × source ids (columns): flux (e-), its
        error, and whether the measurement is usable (no BAD_FLAGS).
    target : int
        Source id of the target.
    comparisons : sequence of int, optional
        Use these; otherwise chosen automatically (see Notes).

    Returns
    -------
    light_curve : DataFrame
        Per frame: ``flux, flux_err, ensemble, ensemble_err, rel_flux,
        rel_flux_err, n_comparisons`` (rel_flux normalised to median 1).
    choice : DataFrame
        Every candidate: ``source_id, median_flux, scatter, expected, weight,
        status`` ('used', 'listed', or why it was rejected).

    Notes
    -----
    Candidates are unflagged in ``min_good_fraction`` of the frames and within
    ``flux_ratio`` of the target's median flux (widened to the nearest in
    brightness when fewer than ``min_count``).  Each candidate's light curve
    is divided by the ensemble of the others; its robust scatter ``s`` over
    the expected ``e`` (median relative error ⊕ the others' ensemble error)
    measures variability.  The worst candidate with ``s/e >
    max_excess_scatter`` is dropped and the rest re-evaluated, until none is
    left or ``min_count`` remain; the ``max_count`` lowest-scatter stars are
    used with weights ``w_i ∝ 1/s_i²``.

    Ensemble (frame t, comparisons usable at t, m_i their median flux)::

        E_t = Σ w_i f_it/m_i / Σ w_i,   Var(E_t) = Σ w_i² (σ_it/m_i)² / (Σ w_i)²
        rel_t = f_Tt / E_t,  (σ_rel/rel)² = (σ_T/f_T)² + Var(E_t)/E_t²

    then ``rel_flux = rel / median(rel)`` over usable frames.
    """
    if target not in flux.columns:
        raise PhotometryError(f"target source {target} is not in the table")
    f, e, g = flux.to_numpy(float), flux_err.to_numpy(float), good.to_numpy(bool)
    ids = np.asarray(flux.columns)
    g = g & np.isfinite(f) & np.isfinite(e) & (f > 0)
    col = {sid: i for i, sid in enumerate(ids)}
    t = col[target]
    target_level = np.nanmedian(np.where(g[:, t], f[:, t], np.nan))
    med = np.array([np.nanmedian(np.where(g[:, i], f[:, i], np.nan)) if g[:, i].any() else np.nan
                    for i in range(len(ids))])
    frac = g.mean(axis=0)
    status = {}
    if comparisons:
        missing = [c for c in comparisons if c not in col]
        if missing:
            raise PhotometryError(f"comparison source(s) {missing} are not in the source list")
        chosen = [col[c] for c in comparisons if c != target]
        for i in chosen:
            status[i] = "listed"
    else:
        usable = [i for i in range(len(ids)) if i != t and frac[i] >= min_good_fraction
                  and np.isfinite(med[i])]
        if not np.isfinite(target_level):
            raise PhotometryError(f"target {target} has no usable measurement")
        ratio = {i: med[i] / target_level for i in usable}
        chosen = [i for i in usable if flux_ratio[0] <= ratio[i] <= flux_ratio[1]]
        if len(chosen) < min_count:
            chosen = sorted(usable, key=lambda i: abs(math.log(ratio[i])) if ratio[i] > 0
                            else math.inf)[:max(min_count, 3 * max_count)]
        chosen = sorted(chosen, key=lambda i: abs(math.log(ratio[i])))[:3 * max_count]
        for i in range(len(ids)):
            if i != t and i not in chosen:
                status[i] = ("flagged in too many frames" if frac[i] < min_good_fraction
                             else "brightness unlike the target")
    if len(chosen) < 1:
        raise PhotometryError(f"no usable comparison star for target {target}")

    def scatter_of(members):
        out = {}
        for i in members:
            others = [j for j in members if j != i] or [i]
            norm = np.where(g[:, others], f[:, others] / med[others], np.nan)
            n_valid = np.isfinite(norm).sum(axis=1)
            # frames where no other member is usable have no ensemble (NaN, no warning)
            ens = np.where(n_valid > 0, np.nansum(norm, axis=1) / np.maximum(n_valid, 1),
                           np.nan)
            ens_var = np.nansum(np.where(g[:, others], (e[:, others] / med[others]) ** 2, 0),
                                axis=1) / np.maximum(g[:, others].sum(axis=1), 1) ** 2
            rel = np.where(g[:, i], f[:, i] / med[i], np.nan) / ens
            expected = np.nanmedian(np.sqrt(np.where(g[:, i], (e[:, i] / f[:, i]) ** 2, np.nan)
                                            + ens_var / ens**2))
            out[i] = (_robust_std(rel / np.nanmedian(rel)), float(expected))
        return out

    members = list(chosen)
    if not comparisons:
        while len(members) > min_count:
            sc = scatter_of(members)
            excess = {i: s / x if x > 0 else math.inf for i, (s, x) in sc.items()}
            worst = max(excess, key=excess.get)
            if excess[worst] <= max_excess_scatter:
                break
            status[worst] = f"variable: scatter {excess[worst]:.1f}x expected"
            members.remove(worst)
        sc = scatter_of(members)
        members = sorted(members, key=lambda i: sc[i][0])
        for i in members[max_count:]:
            status[i] = "not among the lowest-scatter stars"
        members = members[:max_count]
    sc = scatter_of(members)
    weights = np.array([1.0 / max(sc[i][0], 1e-12) ** 2 if np.isfinite(sc[i][0]) else 1.0
                        for i in members])
    if len(members) == 1 or not np.isfinite(weights).all():
        weights = np.ones(len(members))
    weights = weights / weights.sum()
    for i in members:
        status.setdefault(i, "used")

    gm = g[:, members]
    w = np.where(gm, weights, 0.0)
    wsum = w.sum(axis=1)
    norm = np.where(gm, f[:, members] / med[members], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ens = (w * norm).sum(axis=1) / wsum
        ens_err = np.sqrt((w**2 * np.where(gm, e[:, members] / med[members], 0.0) ** 2)
                          .sum(axis=1)) / wsum
        rel = f[:, t] / ens
        rel_err = np.abs(rel) * np.sqrt((e[:, t] / f[:, t]) ** 2 + (ens_err / ens) ** 2)
    usable_t = g[:, t] & (wsum > 0)
    scale = np.nanmedian(np.where(usable_t, rel, np.nan)) if usable_t.any() else np.nan
    light = pd.DataFrame({
        "flux": f[:, t], "flux_err": e[:, t], "ensemble": np.where(wsum > 0, ens, np.nan),
        "ensemble_err": np.where(wsum > 0, ens_err, np.nan),
        "rel_flux": np.where(wsum > 0, rel / scale, np.nan),
        "rel_flux_err": np.where(wsum > 0, rel_err / scale, np.nan),
        "n_comparisons": gm.sum(axis=1), "usable": usable_t}, index=flux.index)
    weight_of = dict(zip(members, weights, strict=True))
    all_sc = {**scatter_of(members)}
    choice = pd.DataFrame([{
        "source_id": int(ids[i]), "median_flux": med[i],
        "scatter": all_sc.get(i, (np.nan, np.nan))[0],
        "expected": all_sc.get(i, (np.nan, np.nan))[1],
        "weight": weight_of.get(i, 0.0), "status": status[i]}
        for i in sorted(status, key=lambda i: (i not in weight_of, ids[i]))])
    return light, choice


def good_mask(flags: pd.Series | np.ndarray) -> np.ndarray:
    """True where a row's flags allow it in light curves (none of BAD_FLAGS)."""
    return (np.asarray(flags, np.int64) & int(BAD_FLAGS)) == 0


# ---------------------------------------------------------------- light curves

LONG_UNITS = {
    "x": "pix (0-based)", "y": "pix (0-based)", "radius": "pix", "ra_deg": "deg (ICRS)",
    "dec_deg": "deg (ICRS)", "flux": "electron", "flux_err": "electron",
    "bkg": "electron / pix", "bkg_err": "electron / pix", "n_ap": "pix (unmasked)",
    "n_sky": "pix", "fwhm": "pix", "mjd_utc": "d (mid-exposure, UTC)",
    "bjd_tdb": "d (BJD_TDB, mid-exposure)", "bmjd_tdb": "d (BJD_TDB - 2400000.5)",
    "exptime_s": "s", "dx": "pix", "dy": "pix",
}


def build_lightcurves(*, tables: Sequence[pd.DataFrame], catalog: pd.DataFrame,
                      aperture: str | None = None, comparisons: Mapping | None = None,
                      ) -> dict:
    """Light curves of a series from its per-frame photometry tables.

    Parameters
    ----------
    tables : sequence of DataFrame
        :func:`frame_photometry` tables, one per frame.
    catalog : DataFrame
        The series' source list; named rows are the targets.
    aperture : str, optional
        Aperture label of the per-source and differential light curves
        (default: the first aperture of the tables).
    comparisons : mapping, optional
        ``ids`` (per target name, a list of source ids) and the keyword
        arguments of :func:`differential_photometry`.

    Returns
    -------
    dict
        ``long`` (all rows, time-ordered), ``aperture``, ``per_source``
        ({source_id: DataFrame with BMJD, flux, flux_err, bkg, bkg_err,
        flags, …}), ``differential`` ({target name: (light curve, choice)}) and
        ``notes`` ({target name: why its differential light curve is empty}).
    """
    if not tables:
        log.warning("no frame of the series was measured: empty light curves")
        return {"long": pd.DataFrame(columns=["frame", "mjd_utc", "aperture", "source_id"]),
                "aperture": aperture or "", "per_source": {}, "differential": {}, "notes": {}}
    long = pd.concat([t for t in tables if len(t)] or [tables[0]], ignore_index=True)
    long = long.sort_values(["mjd_utc", "frame", "aperture", "source_id"], kind="stable")
    if long.empty:
        log.warning("no photometry rows in any frame of the series: empty light curves")
        return {"long": long, "aperture": aperture or "", "per_source": {}, "differential": {},
                "notes": {}}
    labels = list(dict.fromkeys(next(t for t in tables if len(t))["aperture"]))
    aperture = aperture or labels[0]
    if aperture not in labels:
        raise PhotometryError(f"lightcurve_aperture {aperture!r} is not one of {labels}")
    one = long[long["aperture"] == aperture]
    per_source = {}
    for sid, rows in one.groupby("source_id", sort=True):
        per_source[int(sid)] = pd.DataFrame({
            "BMJD": rows["bmjd_tdb"].to_numpy(), "flux": rows["flux"].to_numpy(),
            "flux_err": rows["flux_err"].to_numpy(), "bkg": rows["bkg"].to_numpy(),
            "bkg_err": rows["bkg_err"].to_numpy(), "flags": rows["flags"].to_numpy(),
            "frame": rows["frame"].to_numpy(), "mjd_utc": rows["mjd_utc"].to_numpy(),
            "airmass": rows["airmass"].to_numpy(), "x": rows["x"].to_numpy(),
            "y": rows["y"].to_numpy(), "fwhm": rows["fwhm"].to_numpy()})
    options = dict(comparisons or {})
    listed = options.pop("ids", {}) or {}
    differential = {}
    frames = one.drop_duplicates("frame")[["frame", "mjd_utc", "bjd_tdb", "bmjd_tdb",
                                           "airmass"]].set_index("frame")
    pivot = {c: one.pivot(index="frame", columns="source_id", values=c).loc[frames.index]
             for c in ("flux", "flux_err", "flags")}
    good = pd.DataFrame(good_mask(pivot["flags"].fillna(int(PhotFlag.OFF_FRAME)).to_numpy()
                                  .ravel()).reshape(pivot["flags"].shape),
                        index=pivot["flags"].index, columns=pivot["flags"].columns)
    notes = {}
    for _, target in catalog[catalog["name"] != ""].iterrows():
        sid = int(target["source_id"])
        try:
            light, choice = differential_photometry(
                flux=pivot["flux"], flux_err=pivot["flux_err"], good=good, target=sid,
                comparisons=listed.get(target["name"]), **options)
        except PhotometryError as exc:  # e.g. a target off every frame: rows kept, no ratio
            log.warning("differential light curve of %s not computed: %s", target["name"], exc)
            notes[target["name"]] = f"differential photometry not computed: {exc}"
            nan = np.full(len(frames), np.nan)
            light = pd.DataFrame({
                "flux": pivot["flux"][sid].to_numpy(),
                "flux_err": pivot["flux_err"][sid].to_numpy(),
                "ensemble": nan, "ensemble_err": nan, "rel_flux": nan, "rel_flux_err": nan,
                "n_comparisons": 0, "usable": False}, index=frames.index)
            choice = pd.DataFrame(columns=["source_id", "median_flux", "scatter", "expected",
                                           "weight", "status"])
        light = frames.join(light)
        light.insert(0, "source_id", int(target["source_id"]))
        light["flags"] = pivot["flags"][int(target["source_id"])].to_numpy()
        differential[target["name"]] = (light.reset_index(), choice)
    return {"long": long, "aperture": aperture, "per_source": per_source,
            "differential": differential, "notes": notes}


# ---------------------------------------------------------------- file level (workflow)

@dataclass
class FrameData:
    """A calibrated frame with its background and the cosmic rays OR-ed into its mask."""

    data: np.ndarray
    error: np.ndarray
    mask: np.ndarray
    header: object
    background: np.ndarray
    rms: np.ndarray
    source_mask: np.ndarray  #: bool, SRCMASK of the background stage


def load_frame(*, calibrated: str | Path, background: str | Path,
               cosmics: str | Path | None = None) -> FrameData:
    """Read the products of one frame; cosmic-ray pixels get MaskBit.COSMIC."""
    from astropy.io import fits

    from .masks import MaskBit
    from .products import read_product

    product = read_product(calibrated)
    with fits.open(background, memmap=False) as hdul:
        bkg = hdul["BKG"].data.astype(np.float64)
        rms = hdul["BKG_RMS"].data.astype(np.float64)
        sources = hdul["SRCMASK"].data != 0
    mask = product.mask.copy()
    if cosmics is not None:
        cr = fits.getdata(cosmics, "CRMASK").astype(bool)
        mask[cr] |= np.uint16(MaskBit.COSMIC)
    return FrameData(data=product.data.astype(np.float64), error=product.error.astype(np.float64),
                     mask=mask, header=product.header, background=bkg, rms=rms,
                     source_mask=sources)


def build_reference(*, sources: Mapping[str, str | Path], calibrated: Mapping[str, str | Path],
                    targets: Sequence[Mapping] = (), reference_frame: str | None = None,
                    metas: Mapping[str, Mapping] | None = None,
                    min_sources: int = 5, max_sources: int = 2000,
                    match_radius_px: float = 3.0) -> tuple[pd.DataFrame, dict]:
    """Choose the reference frame of a series and build its source list.

    Parameters
    ----------
    sources, calibrated : mapping
        Per frame name, the source table and the calibrated product.
    reference_frame : str, optional
        Frame to use; default :func:`choose_reference`.
    metas : mapping, optional
        Per frame ``n_sources`` and ``fwhm_px`` (the sources' batch summaries,
        :func:`ccdflow.batch.read_frame_metas`): then only the chosen frame's
        table and the headers down the ranking are read (a 2,000-frame series
        took 12 s reading every table); default: read every source table.

    Returns
    -------
    catalog : DataFrame
        :func:`reference_catalog`.
    meta : dict
        ``reference_frame``, ``fwhm_px``, ``n_sources``, ``shape``.
    """
    from astropy.io import fits

    if metas is None:
        metas = {f: read_sources(p)[1] for f, p in sources.items()}
    missing = sorted(set(sources) - set(metas))
    if missing:  # the sources stage (or one before it) could not make these frames
        log.warning("%d frame(s) without detections left out of the reference choice: %s",
                    len(missing), ", ".join(missing[:10]) + (" …" if len(missing) > 10 else ""))
        sources = {f: p for f, p in sources.items() if f in metas}
    if not sources:
        note = "no frame of the series was reduced to a source list: no photometry"
        log.warning(note)
        empty = reference_catalog(sources=pd.DataFrame(columns=["source_id", "x", "y", "flux",
                                                                 "snr"]),
                                  header={}, shape=(0, 0))
        return empty, {"reference_frame": "", "fwhm_px": float("nan"), "n_sources": len(empty),
                       "shape": [0, 0], "note": note}
    if reference_frame is None:
        reference_frame = choose_reference(
            metas={f: metas[f] for f in sources}, min_sources=min_sources,
            has_wcs=lambda f: _wcs(fits.getheader(calibrated[f], 0)) is not None,
            prefer_wcs=any("x" not in t for t in targets))
    elif reference_frame not in sources:
        raise PhotometryError(f"photometry.reference_frame {reference_frame!r} is not a frame "
                              f"of this series ({', '.join(sorted(sources)[:5])} …)")
    note = ""
    if reference_frame is None:  # no star anywhere: the targets alone, on the first frame
        reference_frame = sorted(sources)[0]
        note = ("no frame of the series has a detected star with a measured FWHM (clouds?): "
                "no source list, no photometry")
    det, meta = read_sources(sources[reference_frame])
    if note:
        det = det.iloc[0:0]
    with fits.open(calibrated[reference_frame], memmap=False) as hdul:
        shape = hdul["SCI"].data.shape
        header = hdul[0].header
    catalog = reference_catalog(sources=det, header=header, shape=shape,
                                targets=targets, max_sources=max_sources,
                                match_radius_px=match_radius_px, frame=reference_frame)
    return catalog, {"reference_frame": reference_frame,
                     "fwhm_px": float("nan") if note else float(meta["fwhm_px"]),
                     "n_sources": len(catalog), "shape": list(shape), "note": note}


def write_reference(path: str | Path, catalog: pd.DataFrame, meta: Mapping) -> None:
    """Write the source list as ECSV with the reference meta, atomically."""
    from astropy.table import Table

    from .io import atomic_path

    table = Table.from_pandas(catalog)
    table.meta.update(dict(meta))
    for name, unit in (("x_ref", "pix"), ("y_ref", "pix"), ("ra_deg", "deg"),
                       ("dec_deg", "deg"), ("flux_ref", "electron")):
        table[name].unit = unit
    with atomic_path(path, suffix=".ecsv") as tmp:
        table.write(tmp, format="ascii.ecsv")


def read_reference(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a source list written by :func:`write_reference`: (catalog, meta)."""
    from astropy.table import Table

    table = Table.read(path, format="ascii.ecsv")
    catalog = pd.DataFrame({c: _column(table[c]) for c in table.colnames})
    catalog["name"] = catalog["name"].astype(str)
    return catalog, dict(table.meta)


def unit_comments(columns: Sequence[str]) -> list[str]:
    """Comment lines documenting the units of ``columns``."""
    lines = ["units: " + ", ".join(f"{c} [{LONG_UNITS[c]}]" for c in columns
                                   if c in LONG_UNITS)]
    lines.append("flags: " + ", ".join(f"{int(f)}={f.name}" for f in PhotFlag)
                 + "; rows with any of " + "|".join(f.name for f in PhotFlag
                                                    if f & BAD_FLAGS) + " are not usable")
    return lines


def write_lightcurves(result: Mapping, *, table: str | Path, directory: str | Path,
                      header: Sequence[str] = ()) -> None:
    """Write the long table, and in ``directory`` the per-source files
    (``source_{id}.csv``) and per target ``differential_{name}.csv`` and
    ``comparisons_{name}.csv``.  The directory is built beside and renamed
    into place, so a failure leaves none."""
    import shutil
    import tempfile

    from .io import write_table

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        aperture = result["aperture"]
        for sid, rows in result["per_source"].items():
            write_table(rows, tmp / f"source_{sid}.csv", comments=[
                *header, f"source {sid}, aperture {aperture}",
                "BMJD = BJD_TDB - 2400000.5 at mid-exposure [d]; flux, flux_err [electron]; "
                "bkg, bkg_err [electron / pix]", *unit_comments([])[1:]])
        for name, (light, choice) in result["differential"].items():
            used = choice[choice["weight"] > 0]
            write_table(light, tmp / f"differential_{name}.csv", comments=[
                *header, f"target {name} (source {int(light['source_id'].iloc[0])}), "
                f"aperture {aperture}", *([result["notes"][name]] if name in result.get(
                    "notes", {}) else []),
                "comparisons (source_id:weight): " + " ".join(
                    f"{int(r.source_id)}:{r.weight:.4f}" for r in used.itertuples()),
                "ensemble = sum w_i f_i/median(f_i) / sum w_i over usable comparisons; "
                "rel_flux = flux / ensemble, normalised to median 1 over usable frames",
                "flux, flux_err [electron]; ensemble dimensionless; times [d]"])
            write_table(choice, tmp / f"comparisons_{name}.csv",
                        comments=[*header, f"comparison choice for target {name}, aperture "
                                  f"{aperture}; scatter and expected are relative (robust std)"])
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    long = result["long"]
    write_table(long, table,
                comments=[*header, *unit_comments(list(long.columns))])


def read_photometry(path: str | Path) -> pd.DataFrame:
    """Read a per-frame photometry CSV (comment lines skipped, empty names kept as '')."""
    table = pd.read_csv(path, comment="#", dtype={"name": str})  # all-empty: not float
    table["name"] = table["name"].fillna("").astype(str)
    return table
