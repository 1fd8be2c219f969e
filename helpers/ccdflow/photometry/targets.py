"""The series' reference frame and source list: named targets first, then detections.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .apertures import PhotometryError
from .detect import read_sources

log = logging.getLogger(__name__)


__all__ = [
    "build_reference",
    "choose_reference",
    "place_pixel_targets",
    "read_reference",
    "reference_catalog",
    "sky_coord",
    "write_reference",
]


def _wcs(header):
    from astropy.wcs import WCS, FITSFixedWarning

    if "CTYPE1" not in header or "CTYPE2" not in header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header).celestial
    return wcs if wcs.has_celestial else None


#: a reference frame needs this fraction of the detections of the series' well-detected
#: frames (their 90th percentile): a frame thinned by cloud has sharp stars too, and a
#: sparse field's cloudy frame chosen for its FWHM (6 stars where others had 10) left a
#: flip impossible to match across
REFERENCE_DETECTION_FRACTION = 0.8


def choose_reference(*, metas: Mapping[str, Mapping], min_sources: int = 5,
                     has_wcs: Mapping[str, bool] | Callable[[str], bool] | None = None,
                     prefer_wcs: bool = False) -> str | None:
    """Frame with the smallest FWHM among frames with ``min_sources`` detections and
    :data:`REFERENCE_DETECTION_FRACTION` of the series' usual count (its 90th percentile).

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
    counts = np.array([int(m["n_sources"]) for m in ok.values()])
    least = max(min_sources, math.ceil(REFERENCE_DETECTION_FRACTION
                                       * float(np.percentile(counts, 90))))
    rich = sorted((f for f in ok if int(ok[f]["n_sources"]) >= least),
                  key=lambda f: (float(ok[f]["fwhm_px"]), f))
    sparse = sorted((f for f in ok if int(ok[f]["n_sources"]) < least),
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
    from ..spatial import PointTree

    wcs = _wcs(header)
    det = sources.nlargest(max_sources, "flux") if len(sources) else sources
    det = det.sort_values("source_id")
    used = np.zeros(len(det), bool)
    rows = []
    tree = PointTree(det[["x", "y"]].to_numpy(float)) if len(det) else None
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
                     "snr_ref": snr, "no_star": bool(target.get("no_star", False))})
    rest = det[~used]
    table = pd.DataFrame({
        "name": [r["name"] for r in rows] + [""] * len(rest),
        **{col: np.concatenate([np.array([r[col] for r in rows], float),
                                rest[src].to_numpy(float)])
           for col, src in (("x_ref", "x"), ("y_ref", "y"), ("flux_ref", "flux"),
                            ("snr_ref", "snr"))}})
    table["no_star"] = np.concatenate([np.array([r["no_star"] for r in rows], bool),
                                       np.zeros(len(rest), bool)])
    table.insert(0, "source_id", np.arange(1, len(table) + 1))
    table["ra_deg"] = table["dec_deg"] = np.nan
    if wcs is not None and len(table):
        sky = wcs.pixel_to_world(table["x_ref"].to_numpy(), table["y_ref"].to_numpy())
        table["ra_deg"], table["dec_deg"] = sky.ra.deg, sky.dec.deg
    return table


def _snap(det: pd.DataFrame, x: float, y: float, radius: float) -> tuple[float, float, float]:
    """The detection nearest (x, y) within ``radius``: its centroid and distance (NaN: none)."""
    if not len(det):
        return x, y, float("nan")
    dist = np.hypot(det["x"].to_numpy(float) - x, det["y"].to_numpy(float) - y)
    k = int(np.nanargmin(dist))
    if not dist[k] <= radius:
        return x, y, float("nan")
    return float(det["x"].iloc[k]), float(det["y"].iloc[k]), float(dist[k])


#: frames nearest in time tried as a stepping stone when a target's frame does not align
#: with the reference directly
MAX_STEPPING_STONES = 10


def _to_reference(frame: str, det: pd.DataFrame, name: str, *,
                  sources: Mapping[str, str | Path], reference_frame: str,
                  reference_sources: pd.DataFrame, tolerance_px: float) -> np.ndarray:
    """The 3×3 transform from ``frame``'s pixels to the reference's: aligned directly,
    or, when that fails (few stars on a cloudy or undersampled frame, a flip between the
    two), through the frame nearest in time to ``frame`` (of the
    :data:`MAX_STEPPING_STONES` nearest) that aligns with both."""
    from ..errors import SourceError
    from .align import align_frame

    try:
        direct = align_frame(reference=reference_sources, sources=det, tolerance_px=tolerance_px)
    except SourceError as exc:
        failure = exc
    else:
        log.info("frame %s to the reference %s: %s", frame, reference_frame,
                 direct.describe((0.0, 0.0)))
        return np.linalg.inv(direct.matrix)
    order = list(sources)
    here = order.index(frame)
    stones = sorted((f for f in order if f not in (frame, reference_frame)),
                    key=lambda f: (abs(order.index(f) - here), order.index(f)))
    for stone in stones[:MAX_STEPPING_STONES]:
        between = read_sources(sources[stone])[0]
        try:
            stone_to_frame = align_frame(reference=between, sources=det,
                                         tolerance_px=tolerance_px)
            reference_to_stone = align_frame(reference=reference_sources, sources=between,
                                             tolerance_px=tolerance_px)
        except SourceError:
            continue
        log.info("target %s: frame %s does not align with the reference %s (%s); through "
                 "frame %s: %s; then %s", name, frame, reference_frame, failure, stone,
                 stone_to_frame.describe((0.0, 0.0)), reference_to_stone.describe((0.0, 0.0)))
        return np.linalg.inv(stone_to_frame.matrix @ reference_to_stone.matrix)
    raise PhotometryError(
        f"target {name}: frame {frame} cannot be aligned with the reference "
        f"{reference_frame} ({failure}), nor through any of the "
        f"{min(len(stones), MAX_STEPPING_STONES)} frames nearest in time to it; give the "
        "position on another frame (target 'frame')")


def place_pixel_targets(*, targets: Sequence[Mapping], sources: Mapping[str, str | Path],
                        reference_frame: str, reference_sources: pd.DataFrame,
                        snap_radius_px: float = 5.0, tolerance_px: float = 2.0,
                        ) -> list[dict]:
    """Targets given in pixels on a named frame, placed on the reference frame.

    A target ``{name, x, y, frame}`` is read on ``frame`` (default: the series'
    first frame in time, the first key of ``sources``: where AstroImageJ and
    EXOTIC users read positions), snapped to the centroid of the detection
    within ``snap_radius_px`` (offset logged), and carried to the reference
    through the transform between the two frames
    (:func:`~ccdflow.photometry.align_frame`; when the two do not align, through the
    frame nearest in time that aligns with both).  With no detection within the
    radius it keeps the given position, is logged, and gets ``no_star`` (its
    rows are flagged NO_STAR): never silently measured on sky.  RA/Dec targets
    pass unchanged.

    Raises
    ------
    PhotometryError
        ``frame`` is not a frame of the series, or it cannot be aligned with the
        reference, directly or through a frame near it in time; the message names
        the target and the frame.
    """
    first = next(iter(sources), None)
    frames: dict[str, tuple[pd.DataFrame, np.ndarray | None]] = {}

    def on_frame(frame: str, name: str) -> tuple[pd.DataFrame, np.ndarray | None]:
        """A frame's detections and its frame → reference transform (read, aligned once)."""
        if frame not in frames:
            if frame == reference_frame:
                frames[frame] = (reference_sources, None)
            else:
                det = read_sources(sources[frame])[0]
                frames[frame] = (det, _to_reference(
                    frame, det, name, sources=sources, reference_frame=reference_frame,
                    reference_sources=reference_sources, tolerance_px=tolerance_px))
        return frames[frame]

    placed = []
    for target in targets:
        if "x" not in target:
            placed.append(dict(target))
            continue
        name, frame = target["name"], target.get("frame") or first
        if frame not in sources:
            raise PhotometryError(
                f"target {name}: frame {frame!r} is not a frame of this series (frames: "
                f"{', '.join(list(sources)[:5])}{' …' if len(sources) > 5 else ''})")
        det, inverse = on_frame(frame, name)
        x, y, dist = _snap(det, float(target["x"]), float(target["y"]), snap_radius_px)
        if np.isfinite(dist):
            log.info("target %s snapped to the star at (%.2f, %.2f) on frame %s, %.2f px from "
                     "the given (%.2f, %.2f)", name, x, y, frame, dist, target["x"], target["y"])
        else:
            log.warning("target %s: no star within %.1f px of (%.2f, %.2f) on frame %s: measured "
                        "at that position, its rows flagged NO_STAR", name, snap_radius_px,
                        x, y, frame)
        if inverse is not None:
            x, y = (inverse[:2, :2] @ np.array([x, y]) + inverse[:2, 2]).tolist()
            log.info("target %s: (%.2f, %.2f) on the reference %s", name, x, y,
                     reference_frame)
        placed.append({**target, "x": x, "y": y, "no_star": not np.isfinite(dist)})
    return placed


def resolve_comparisons(*, positions: Mapping[str, Sequence[Mapping]], catalog: pd.DataFrame,
                        sources: Mapping[str, str | Path], reference_frame: str,
                        reference_sources: pd.DataFrame, snap_radius_px: float = 5.0,
                        match_radius_px: float = 3.0, tolerance_px: float = 2.0,
                        ) -> dict[str, list[int]]:
    """Comparison stars given in pixels (EXOTIC's "Comparison Star(s) X & Y Pixel") as
    source ids of the series' list.

    Each ``{x, y[, frame]}`` is placed like a pixel target (:func:`place_pixel_targets`:
    read on its frame, default the first, snapped, carried to the reference) and takes
    the id of the list's detection within ``match_radius_px``; one with no star there is
    left out and logged.  Returns ``{target name: [ids]}``.
    """
    field = catalog[catalog["name"] == ""]
    wanted = [(target, star) for target, stars in positions.items() for star in stars]
    placed = iter(place_pixel_targets(  # one call: each frame read and aligned once
        targets=[{"name": f"{target}-comparison-{k + 1}", **dict(star)}
                 for k, (target, star) in enumerate(wanted)],
        sources=sources, reference_frame=reference_frame, reference_sources=reference_sources,
        snap_radius_px=snap_radius_px, tolerance_px=tolerance_px))
    out: dict[str, list[int]] = {}
    for target, stars in positions.items():
        ids = []
        for star, where in zip(stars, placed, strict=False):
            dist = np.hypot(field["x_ref"] - where["x"], field["y_ref"] - where["y"])
            if len(field) and dist.min() <= match_radius_px and not where["no_star"]:
                ids.append(int(field["source_id"].iloc[int(np.argmin(dist.to_numpy()))]))
            else:
                log.warning("comparison (%.1f, %.1f) of target %s: no source of the list "
                            "there; left out", star["x"], star["y"], target)
        out[target] = ids
        log.info("comparisons of %s from pixel positions: source ids %s", target, ids)
    return out


def _full_frame_to_superpixels(items: Sequence[Mapping], factor: int) -> list[dict]:
    """Pixel positions (0-based, of the camera's full frame) on frames of ``factor`` ×
    ``factor`` superpixels (:func:`ccdflow.ccd.full_frame_to_superpixels`)."""
    from ..ccd import full_frame_to_superpixels

    out = []
    for item in items:
        if "x" in item:
            item = {**item, **{k: float(full_frame_to_superpixels(item[k], factor))
                               for k in ("x", "y")}}
            log.info("%s: full-frame (x, y) taken to the %dx%d superpixels: (%.2f, %.2f)",
                     item.get("name", "comparison"), factor, factor, item["x"], item["y"])
        out.append(dict(item))
    return out


def build_reference(*, sources: Mapping[str, str | Path], calibrated: Mapping[str, str | Path],
                    targets: Sequence[Mapping] = (), reference_frame: str | None = None,
                    metas: Mapping[str, Mapping] | None = None,
                    min_sources: int = 5, max_sources: int = 2000,
                    match_radius_px: float = 3.0, snap_radius_px: float = 5.0,
                    comparison_positions: Mapping[str, Sequence[Mapping]] | None = None,
                    ) -> tuple[pd.DataFrame, dict]:
    """Choose the reference frame of a series and build its source list.

    Parameters
    ----------
    sources, calibrated : mapping
        Per frame name (in time order), the source table and the calibrated product.
    targets : sequence of mapping
        ``{name, ra, dec}`` or ``{name, x, y[, frame]}``; pixel targets are
        placed with :func:`place_pixel_targets` (``snap_radius_px``).
    comparison_positions : mapping, optional
        Per target name, comparison stars in pixels (:func:`resolve_comparisons`);
        their ids go to the meta's ``comparison_ids``.
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
    superpixel = int(header.get("CCDFBIN", 1))
    if superpixel != 1:  # the config's positions are the camera's full-frame pixels
        targets = _full_frame_to_superpixels(targets, superpixel)
        comparison_positions = {t: _full_frame_to_superpixels(stars, superpixel)
                                for t, stars in (comparison_positions or {}).items()}
    if not note:
        fwhm = float(meta["fwhm_px"])
        targets = place_pixel_targets(
            targets=targets, sources=sources, reference_frame=reference_frame,
            reference_sources=det, snap_radius_px=snap_radius_px,
            tolerance_px=max(1.5, fwhm) if np.isfinite(fwhm) else 2.0)
    catalog = reference_catalog(sources=det, header=header, shape=shape,
                                targets=targets, max_sources=max_sources,
                                match_radius_px=match_radius_px, frame=reference_frame)
    listed = {}
    if comparison_positions and not note:
        listed = resolve_comparisons(
            positions=comparison_positions, catalog=catalog, sources=sources,
            reference_frame=reference_frame, reference_sources=det,
            snap_radius_px=snap_radius_px, match_radius_px=match_radius_px,
            tolerance_px=max(1.5, fwhm) if np.isfinite(fwhm) else 2.0)
    return catalog, {"reference_frame": reference_frame,
                     "fwhm_px": float("nan") if note else float(meta["fwhm_px"]),
                     "n_sources": len(catalog), "shape": list(shape), "note": note,
                     "comparison_ids": listed}


def write_reference(path: str | Path, catalog: pd.DataFrame, meta: Mapping) -> None:
    """Write the source list as ECSV with the reference meta, atomically."""
    from ..ecsv import write_ecsv
    from ..io import atomic_path

    with atomic_path(path, suffix=".ecsv") as tmp:
        write_ecsv(tmp, catalog, meta=meta,
                   units={"x_ref": "pix", "y_ref": "pix", "ra_deg": "deg", "dec_deg": "deg",
                          "flux_ref": "electron"})


def read_reference(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a source list written by :func:`write_reference`: (catalog, meta)."""
    from ..ecsv import read_ecsv

    catalog, meta = read_ecsv(path)
    catalog["name"] = catalog["name"].astype(str)
    return catalog, meta
