"""Light curves of a series: per-source curves, each target's differential light curve
(:mod:`~ccdflow.photometry.ensemble`) in every aperture, the aperture chosen, the files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .apertures import BAD_FLAGS, COMPARISON_BAD_FLAGS, PhotFlag, PhotometryError
from .ensemble import _robust_std, differential_photometry
from .frameio import unit_comments

log = logging.getLogger(__name__)


__all__ = ["build_lightcurves", "good_mask", "write_lightcurves"]


#: ``lightcurve_aperture`` value choosing, per target, the aperture whose differential
#: light curve has the lowest point-to-point scatter (as EXOTIC chooses its aperture)
BEST = "best"


#: the target's per-frame quantities a differential light curve carries for detrending
#: (AstroImageJ's X(IJ), Y(IJ), Width, Sky/Pixel; EXOTIC's airmass is there already), and
#: the frame's rotation from the reference: a meridian flip's step, an alt-az field's turn
DETREND_COLUMNS = ("x", "y", "fwhm", "bkg", "rotation_deg")


def _column(rows: pd.DataFrame, name: str) -> np.ndarray:
    """A column of per-frame rows, NaN when tables of an older version lack it."""
    return rows[name].to_numpy() if name in rows else np.full(len(rows), np.nan)


def good_mask(flags: pd.Series | np.ndarray) -> np.ndarray:
    """True where a row's flags allow it in light curves (none of BAD_FLAGS)."""
    return (np.asarray(flags, np.int64) & int(BAD_FLAGS)) == 0


def build_lightcurves(*, tables: Sequence[pd.DataFrame], catalog: pd.DataFrame,
                      aperture: str | None = None, comparisons: Mapping | None = None,
                      listed_ids: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Light curves of a series from its per-frame photometry tables.

    Parameters
    ----------
    tables : sequence of DataFrame
        :func:`frame_photometry` tables, one per frame.
    catalog : DataFrame
        The series' source list; named rows are the targets.
    aperture : str, optional
        Aperture label of the per-source and differential light curves
        (default: the first aperture of the tables); ``'best'``: per target, the
        aperture (circular or optimal) whose differential light curve has the lowest
        robust point-to-point scatter (as EXOTIC chooses; the scatter of every
        aperture in the notes), per-source light curves in the first.
    comparisons : mapping, optional
        ``ids`` (per target name, a list of source ids) and the keyword
        arguments of :func:`differential_photometry`.
    listed_ids : mapping, optional
        Per target name, comparison source ids resolved from the user's pixel
        positions (:func:`~ccdflow.photometry.resolve_comparisons`, kept in the
        reference meta); ``comparisons['ids']`` wins for a target in both.

    Returns
    -------
    dict
        ``long`` (all rows, time-ordered), ``aperture``, ``per_source``
        ({source_id: DataFrame with BMJD, flux, flux_err, bkg, bkg_err,
        flags, …}), ``differential`` ({target name: (light curve, choice)}),
        ``target_apertures`` ({target name: aperture label}) and ``notes``
        ({target name: the aperture chosen, or why its light curve is empty}).
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
    best = aperture == BEST
    aperture = labels[0] if (best or not aperture) else aperture
    if aperture not in labels:
        raise PhotometryError(f"lightcurve_aperture {aperture!r} is not one of {labels} "
                              f"or {BEST!r}")
    one = long[long["aperture"] == aperture]
    per_source = _per_source(one)
    options = dict(comparisons or {})
    options.pop("positions", None)  # resolved to ids with the source list (reference meta)
    listed = {**(listed_ids or {}), **(options.pop("ids", {}) or {})}
    # 'best' chooses among every aperture, optimal included: on six simulated 12-bit
    # nights (FWHM 1.8 px, 3 seeds × flip/no flip) the optimal differential light curve
    # scattered 17-22 % less than the best circular one, its point-to-point differences
    # 0.94-1.11 (mean 1.02) of their errors, the 1.5-FWHM aperture's 0.96-1.07 (1.02)
    by_label = {label: _Pivot.of(long[long["aperture"] == label])
                for label in (labels if best else [aperture])}
    differential, notes, chosen = {}, {}, {}
    for _, target in catalog[catalog["name"] != ""].iterrows():
        name, sid = target["name"], int(target["source_id"])
        curves = {label: _differential(pivot, sid=sid, name=name, label=label,
                                       comparisons=listed.get(name), options=options)
                  for label, pivot in by_label.items()}
        scatter = {k: _p2p(c[0]) for k, c in curves.items()}
        label = _lowest_scatter(curves, scatter=scatter) if best else aperture
        light, choice, note = curves[label]
        if best:
            listed_scatter = ", ".join(f"{k} {scatter[k]:.5f} ({int(c[0]['usable'].sum())} "
                                       "usable)" for k, c in curves.items())
            note = "; ".join(filter(None, [note, f"aperture {label}: lowest point-to-point "
                                                 "scatter of rel_flux among the apertures "
                                                 "usable in as many frames, but one or 1 %, "
                                                 "whose errors describe their scatter "
                                                 f"({listed_scatter})"]))
            log.info("differential light curve of %s: %s", name, note)
        note = "; ".join(filter(None, [note, _coverage(light, name=name), _flip_note(light),
                                       _error_check(light, name=name, scatter=scatter[label])]))
        if note:
            notes[name] = note
        chosen[name] = label
        differential[name] = (light, choice)
    return {"long": long, "aperture": aperture, "per_source": per_source,
            "differential": differential, "notes": notes, "target_apertures": chosen}


def _p2p(light: pd.DataFrame) -> float:
    """Robust point-to-point scatter of a differential light curve's usable rel_flux
    (√2-normalised; a transit or a trend barely enters it)."""
    ok = light["usable"].to_numpy(bool) & np.isfinite(light["rel_flux"].to_numpy(float))
    values = light["rel_flux"].to_numpy(float)[ok]
    if values.size < 5:
        return float("inf")
    return _robust_std(np.diff(values)) / math.sqrt(2)


#: a differential light curve whose point-to-point scatter is outside this range of its
#: median ``rel_flux_err`` gets a warning: its errors do not describe it (the p2p estimate
#: of 50 points is good to ~10 %, so this is no statistical fluctuation)
ERROR_RATIO_RANGE = (0.5, 2.0)


def _error_check(light: pd.DataFrame, *, name: str, scatter: float) -> str:
    """'point-to-point scatter S = R × the median rel_flux_err' for a light curve's note
    (``scatter``: its :func:`_p2p`), with a warning (logged too) when R is outside
    :data:`ERROR_RATIO_RANGE`."""
    ratio = _error_ratio(light, scatter)
    if not np.isfinite(ratio):
        return ""
    text = f"point-to-point scatter {scatter:.5f} = {ratio:.2f} × the median rel_flux_err"
    low, high = ERROR_RATIO_RANGE
    if ratio > high:
        text += (" (WARNING: more scatter than the errors hold: noise outside the error "
                 "model, e.g. flat-field structure, clouds, a variable comparison star)")
    elif ratio < low:
        text += (" (WARNING: the errors overstate the scatter, e.g. a PSF model error from "
                 "misplaced positions; a fit's uncertainties would be too large)")
    if not low <= ratio <= high:
        log.warning("differential light curve of %s: %s", name, text)
    return text


#: 'best' aperture: an aperture competes on scatter when it is usable in all but this
#: fraction (or one) of the frames the best-covered aperture is usable in (the optimal
#: aperture has no row on a frame without a PSF model: a quieter light curve with gaps
#: does not beat a complete one, but one lost frame does not cost a 2.6× quieter one)
MAX_FRAMES_LOST = 0.01


def _lowest_scatter(curves: Mapping[str, tuple], *,
                    scatter: Mapping[str, float] | None = None) -> str:
    """The label whose light curve scatters least among those usable in all but
    max(1, :data:`MAX_FRAMES_LOST` ×) of the frames the best-covered one is and whose
    errors describe their scatter (:data:`ERROR_RATIO_RANGE`; when none does, among all
    of them), the first on ties and failures.  ``scatter``: each curve's :func:`_p2p`,
    when the caller has it."""
    if scatter is None:
        scatter = {label: _p2p(c[0]) for label, c in curves.items()}
    usable = {label: int(c[0]["usable"].to_numpy(bool).sum()) for label, c in curves.items()}
    most = max(usable.values())
    eligible = [k for k in curves if usable[k] >= most - max(1.0, MAX_FRAMES_LOST * most)]
    honest = [k for k in eligible if _errors_describe(curves[k][0], scatter[k])]
    return min(honest or eligible, key=lambda k: (scatter[k], list(curves).index(k)))


def _errors_describe(light: pd.DataFrame, scatter: float) -> bool:
    """Whether ``scatter`` is within :data:`ERROR_RATIO_RANGE` of the light curve's median
    ``rel_flux_err`` (True when it has no errors to judge)."""
    ratio = _error_ratio(light, scatter)
    return not np.isfinite(ratio) or ERROR_RATIO_RANGE[0] <= ratio <= ERROR_RATIO_RANGE[1]


def _error_ratio(light: pd.DataFrame, scatter: float) -> float:
    """``scatter`` over the median ``rel_flux_err`` of the usable rows (NaN: fewer than 5
    rows with errors, or no scatter)."""
    if "rel_flux_err" not in light:
        return float("nan")
    ok = light["usable"].to_numpy(bool) & np.isfinite(light["rel_flux_err"].to_numpy(float))
    errors = light["rel_flux_err"].to_numpy(float)[ok]
    if errors.size < 5 or not np.isfinite(scatter) or not np.median(errors) > 0:
        return float("nan")
    return scatter / float(np.median(errors))


@dataclass
class _Pivot:
    """One aperture's rows as frames × sources: flux, errors, usability, times."""

    frames: pd.DataFrame  #: per frame: mjd_utc, bjd_tdb, bmjd_tdb, airmass
    flux: pd.DataFrame
    flux_err: pd.DataFrame
    flags: pd.DataFrame
    good: pd.DataFrame  #: no BAD_FLAGS
    comparison_good: pd.DataFrame  #: no COMPARISON_BAD_FLAGS
    covariates: dict  #: {column: frames × sources} for detrending

    @classmethod
    def of(cls, one: pd.DataFrame) -> _Pivot:
        frames = one.drop_duplicates("frame")[["frame", "mjd_utc", "bjd_tdb", "bmjd_tdb",
                                               "airmass"]].set_index("frame")
        pivot = {c: one.pivot(index="frame", columns="source_id", values=c).loc[frames.index]
                 for c in ("flux", "flux_err", "flags")}
        flag_values = pivot["flags"].fillna(int(PhotFlag.OFF_FRAME)).to_numpy().astype(np.int64)
        index, columns = pivot["flags"].index, pivot["flags"].columns
        good = pd.DataFrame((flag_values & int(BAD_FLAGS)) == 0, index=index, columns=columns)
        comparison_good = pd.DataFrame((flag_values & int(COMPARISON_BAD_FLAGS)) == 0,
                                       index=index, columns=columns)
        covariates = {c: one.pivot(index="frame", columns="source_id", values=c)
                      .loc[frames.index] for c in DETREND_COLUMNS if c in one}
        return cls(frames, pivot["flux"], pivot["flux_err"], pivot["flags"], good,
                   comparison_good, covariates)


def _differential(pivot: _Pivot, *, sid: int, name: str, label: str, comparisons,
                  options) -> tuple:
    """One target's differential light curve in one aperture: (light curve, choice,
    note); a target that cannot be measured keeps its rows with rel_flux NaN."""
    note = ""
    try:
        light, choice = differential_photometry(
            flux=pivot.flux, flux_err=pivot.flux_err, good=pivot.good,
            comparison_good=pivot.comparison_good, target=sid, comparisons=comparisons,
            **options)
    except PhotometryError as exc:  # e.g. a target off every frame: rows kept, no ratio
        why = _unusable_summary(pivot.flags[sid]) if not pivot.good[sid].any() else ""
        log.warning("differential light curve of %s in aperture %s not computed: %s%s", name,
                    label, exc, why)
        note = f"differential photometry not computed: {exc}{why}"
        nan = np.full(len(pivot.frames), np.nan)
        light = pd.DataFrame({
            "flux": pivot.flux[sid].to_numpy(), "flux_err": pivot.flux_err[sid].to_numpy(),
            "ensemble": nan, "ensemble_err": nan, "rel_flux": nan, "rel_flux_err": nan,
            "n_comparisons": 0, "usable": False}, index=pivot.frames.index)
        choice = pd.DataFrame(columns=["source_id", "median_flux", "scatter", "expected",
                                       "weight", "status"])
    light = pivot.frames.join(light)
    light.insert(0, "source_id", sid)
    light["flags"] = pivot.flags[sid].to_numpy()
    for column, values in pivot.covariates.items():  # the target's, for detrending
        light[column] = values[sid].to_numpy()
    return light.reset_index(), choice, note


def meridian_flips(light: pd.DataFrame) -> list[tuple[str, str, float]]:
    """Each meridian flip of a light curve: the last frame before it, the first after it
    and the MJD (UTC) half-way between them, where the frames' ``rotation_deg`` (their
    turn from the reference) crosses ±90°; unaligned frames (NaN) are skipped."""
    if "rotation_deg" not in light:
        return []
    rows = light[np.isfinite(light["rotation_deg"])].sort_values("mjd_utc")
    turned = np.abs(rows["rotation_deg"].to_numpy()) > 90
    t, frames = rows["mjd_utc"].to_numpy(float), rows["frame"].to_numpy()
    return [(str(frames[i]), str(frames[i + 1]), float((t[i] + t[i + 1]) / 2))
            for i in np.flatnonzero(turned[1:] != turned[:-1])]


def _flip_note(light: pd.DataFrame) -> str:
    """'meridian flip between frames A and B (MJD ...)' for a light curve's note."""
    return "; ".join(f"meridian flip between frames {a} and {b} (MJD {when:.5f}): detrend "
                     "for a step there (rotation_deg)" for a, b, when in meridian_flips(light))


#: a target's light curve unusable in more than this fraction of its frames is a warning
#: (a saturated target after a longer exposure, a star near the edge as the field drifts)
MAX_UNUSABLE_QUIET = 0.1


def _coverage(light: pd.DataFrame, *, name: str) -> str:
    """'usable in K of N frames (SATURATED in 20 of 50 frames, ...)' for a light curve's
    note when rows are unusable: the target's flags, then the frames it is good in
    but no comparison star is; logged, as a warning above :data:`MAX_UNUSABLE_QUIET`."""
    usable = light["usable"].to_numpy(bool)
    n, k = len(usable), int(usable.sum())
    if k in (0, n):  # none usable: the note says why the ratio was not computed
        return ""
    flags = light["flags"]
    why = _unusable_summary(flags)  # a row with one of BAD_FLAGS is never usable
    own_good = good_mask(flags.fillna(int(PhotFlag.OFF_FRAME)).astype(np.int64))
    lonely = int((own_good & ~usable).sum())
    if lonely:
        why = (why[:-1] + ", " if why else " (") + f"no usable comparison in {lonely})"
    text = f"usable in {k} of {n} frames{why}"
    (log.warning if n - k > MAX_UNUSABLE_QUIET * n else log.info)(
        "differential light curve of %s: %s", name, text)
    return text


def _unusable_summary(flags: pd.Series) -> str:
    """Why rows are unusable, e.g. ' (SATURATED in 78 of 90 frames, MASKED in 12)': each
    flag of BAD_FLAGS with the number of frames it is set in."""
    values = flags.fillna(int(PhotFlag.OFF_FRAME)).to_numpy().astype(np.int64)
    counts = [(int(((values & int(flag)) != 0).sum()), flag.name) for flag in PhotFlag
              if flag & BAD_FLAGS]
    parts = [f"{name} in {n}" for n, name in sorted(counts, reverse=True) if n]
    if not parts:
        return ""
    parts[0] += f" of {len(values)} frames"
    return " (" + ", ".join(parts) + ")"


def _per_source(one: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Every source's light curve in one aperture."""
    per_source = {}
    for sid, rows in one.groupby("source_id", sort=True):
        per_source[int(sid)] = pd.DataFrame({
            "BMJD": rows["bmjd_tdb"].to_numpy(), "flux": rows["flux"].to_numpy(),
            "flux_err": rows["flux_err"].to_numpy(),
            "flux_err_cal": _column(rows, "flux_err_cal"), "bkg": rows["bkg"].to_numpy(),
            "bkg_err": rows["bkg_err"].to_numpy(), "bkg_rms": _column(rows, "bkg_rms"),
            "flags": rows["flags"].to_numpy(), "frame": rows["frame"].to_numpy(),
            "mjd_utc": rows["mjd_utc"].to_numpy(), "airmass": rows["airmass"].to_numpy(),
            "x": rows["x"].to_numpy(), "y": rows["y"].to_numpy(),
            "fwhm": rows["fwhm"].to_numpy(),
            "repaired_fraction": _column(rows, "repaired_fraction"),
            "contamination": _column(rows, "contamination")})
    return per_source


def write_lightcurves(result: Mapping, *, table: str | Path, directory: str | Path,
                      header: Sequence[str] = ()) -> None:
    """Write the long table, and in ``directory`` the per-source files
    (``source_{id}.csv``) and per target ``differential_{name}.csv`` and
    ``comparisons_{name}.csv``.  The directory is built beside and renamed
    into place, so a failure leaves none."""
    from ..io import atomic_directory, write_table

    with atomic_directory(directory, replace=True) as tmp:
        aperture = result["aperture"]
        for sid, rows in result["per_source"].items():
            write_table(rows, tmp / f"source_{sid}.csv", comments=[
                *header, f"source {sid}, aperture {aperture}",
                "BMJD = BJD_TDB - 2400000.5 at mid-exposure [d]; flux, flux_err (this "
                "frame's random noise: the time series' error), flux_err_cal (the masters' "
                "noise, common to the frames) [electron]; bkg (sky level), bkg_err (its "
                "error), bkg_rms (per-pixel sky noise) [electron / pix]",
                *unit_comments([])[1:]])
        for name, (light, choice) in result["differential"].items():
            used = choice[choice["weight"] > 0]
            label = result.get("target_apertures", {}).get(name, aperture)
            write_table(light, tmp / f"differential_{name}.csv", comments=[
                *header, f"target {name} (source {int(light['source_id'].iloc[0])}), "
                f"aperture {label}", *([result["notes"][name]] if name in result.get(
                    "notes", {}) else []),
                "comparisons (source_id:weight): " + " ".join(
                    f"{int(r.source_id)}:{r.weight:.4f}" for r in used.itertuples()),
                "ensemble = sum w_i f_i/median(f_i) / sum w_i over usable comparisons; "
                "rel_flux = flux / ensemble, normalised to median 1 over usable frames",
                "flux, flux_err [electron]; ensemble dimensionless; times [d]; x, y "
                "[pix, 0-based], fwhm [pix], bkg [electron / pix]: the target's, for "
                "detrending; rotation_deg [deg]: the frame's from the reference (±180 "
                "after a meridian flip, AstroImageJ's Meridian_Flip)"])
            write_table(choice, tmp / f"comparisons_{name}.csv",
                        comments=[*header, f"comparison choice for target {name}, aperture "
                                  f"{label}; scatter and expected are relative (robust std)"])
    long = result["long"]
    write_table(long, table,
                comments=[*header, *unit_comments(list(long.columns))])
