"""Light curves of a series and differential photometry against an ensemble.
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
from .frameio import unit_comments

log = logging.getLogger(__name__)


__all__ = ["build_lightcurves", "differential_photometry", "good_mask", "write_lightcurves"]


def _robust_std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size < 3:
        return float("inf")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


#: when too few comparison candidates are usable in ``min_good_fraction`` of the frames,
#: those usable in this fraction are taken (a differential light curve comes out whenever
#: two or more other stars are measured in 80 % of the frames)
FALLBACK_GOOD_FRACTION = 0.8

#: ``lightcurve_aperture`` value choosing, per target, the aperture whose differential
#: light curve has the lowest point-to-point scatter (as EXOTIC chooses its aperture)
BEST = "best"


#: the target's per-frame quantities a differential light curve carries for detrending
#: (AstroImageJ's X(IJ), Y(IJ), Width, Sky/Pixel; EXOTIC's airmass is there already)
DETREND_COLUMNS = ("x", "y", "fwhm", "bkg")


def differential_photometry(*, flux: pd.DataFrame, flux_err: pd.DataFrame, good: pd.DataFrame,
                            target: int, comparisons: Sequence[int] | None = None,
                            max_count: int = 10, min_count: int = 2,
                            flux_ratio: tuple[float, float] = (0.2, 5.0),
                            min_good_fraction: float = 0.9, max_excess_scatter: float = 2.0,
                            comparison_good: pd.DataFrame | None = None,
                            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Target flux relative to a weighted comparison ensemble.

    Parameters
    ----------
    flux, flux_err, good : DataFrame
        Frames (rows, in time order) × source ids (columns): flux (e-), its
        error, and whether the measurement is usable (no BAD_FLAGS).
    target : int
        Source id of the target.
    comparison_good : DataFrame, optional
        Whether a measurement may serve as a comparison (default ``good``); the
        light curves pass ``good`` without CONTAMINATED rows, so that no
        comparison carries a neighbour's light.
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
    Candidates are unflagged in ``min_good_fraction`` of the frames (in
    :data:`FALLBACK_GOOD_FRACTION` when fewer than ``min_count`` are, logged)
    and within ``flux_ratio`` of the target's median flux (widened to the
    nearest in brightness when fewer than ``min_count``).  Each candidate's light curve
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
    valid = np.isfinite(f) & np.isfinite(e) & (f > 0)
    g_target = g & valid
    g = (comparison_good.to_numpy(bool) if comparison_good is not None else g) & valid
    col = {sid: i for i, sid in enumerate(ids)}
    t = col[target]
    med = np.array([np.nanmedian(np.where(g[:, i], f[:, i], np.nan)) if g[:, i].any() else np.nan
                    for i in range(len(ids))])
    if comparisons:
        missing = [c for c in comparisons if c not in col]
        if missing:
            raise PhotometryError(f"comparison source(s) {missing} are not in the source list")
        chosen = [col[c] for c in comparisons if c != target]
        status = dict.fromkeys(chosen, "listed")
    else:
        target_level = (float(np.median(f[g_target[:, t], t])) if g_target[:, t].any()
                        else np.nan)  # no usable target: _candidates says so
        chosen, status = _candidates(g=g, med=med, target=target, t=t,
                                     target_level=target_level, max_count=max_count,
                                     min_count=min_count, flux_ratio=flux_ratio,
                                     min_good_fraction=min_good_fraction)
    if len(chosen) < 1:
        frac = g.mean(axis=0)
        best = sorted((frac[i], ids[i]) for i in range(len(ids)) if i != t)[::-1][:5]
        raise PhotometryError(
            f"no usable comparison star for target {target}: {len(ids) - 1} other source(s), "
            f"none usable in {100 * min(min_good_fraction, FALLBACK_GOOD_FRACTION):.0f} % of "
            "the frames (best: " + ", ".join(f"source {int(s)} {100 * v:.0f} %"
                                               for v, s in best) + ")")
    members = list(chosen)
    if not comparisons:
        members = _prune(members, f=f, e=e, g=g, med=med, status=status, min_count=min_count,
                         max_count=max_count, max_excess_scatter=max_excess_scatter)
    sc = _scatter_of(members, f=f, e=e, g=g, med=med)
    weights = np.array([1.0 / max(sc[i][0], 1e-12) ** 2 if np.isfinite(sc[i][0]) else 1.0
                        for i in members])
    if len(members) == 1 or not np.isfinite(weights).all():
        weights = np.ones(len(members))
    weights = weights / weights.sum()
    for i in members:
        status.setdefault(i, "used")
    light = _ensemble_ratio(f=f, e=e, g=g, med=med, t=t, members=members, weights=weights,
                            target_usable=g_target[:, t], index=flux.index)
    weight_of = dict(zip(members, weights, strict=True))
    choice = pd.DataFrame([{
        "source_id": int(ids[i]), "median_flux": med[i],
        "scatter": sc.get(i, (np.nan, np.nan))[0],
        "expected": sc.get(i, (np.nan, np.nan))[1],
        "weight": weight_of.get(i, 0.0), "status": status[i]}
        for i in sorted(status, key=lambda i: (i not in weight_of, ids[i]))])
    return light, choice


def _candidates(*, g, med, target, t, target_level, max_count, min_count, flux_ratio,
                min_good_fraction) -> tuple[list[int], dict[int, str]]:
    """Automatic comparison candidates (column indices) and why each other star is not."""
    n = g.shape[1]
    frac = g.mean(axis=0)
    usable = [i for i in range(n) if i != t and frac[i] >= min_good_fraction
              and np.isfinite(med[i])]
    if not np.isfinite(target_level):
        raise PhotometryError(f"target {target} has no usable measurement")
    if len(usable) < min_count and min_good_fraction > FALLBACK_GOOD_FRACTION:
        relaxed = [i for i in range(n) if i != t and np.isfinite(med[i])
                   and frac[i] >= FALLBACK_GOOD_FRACTION]
        if len(relaxed) > len(usable):
            log.warning("target %s: %d comparison candidate(s) usable in %.0f %% of the "
                        "frames; taking the %d usable in %.0f %%", target, len(usable),
                        100 * min_good_fraction, len(relaxed), 100 * FALLBACK_GOOD_FRACTION)
            usable = relaxed
    ratio = {i: med[i] / target_level for i in usable}
    chosen = [i for i in usable if flux_ratio[0] <= ratio[i] <= flux_ratio[1]]
    if len(chosen) < min_count:
        chosen = sorted(usable, key=lambda i: abs(math.log(ratio[i])) if ratio[i] > 0
                        else math.inf)[:max(min_count, 3 * max_count)]
    chosen = sorted(chosen, key=lambda i: abs(math.log(ratio[i])))[:3 * max_count]
    status = {i: ("flagged in too many frames" if frac[i] < min_good_fraction
                  else "brightness unlike the target")
              for i in range(n) if i != t and i not in chosen}
    return chosen, status


def _scatter_of(members, *, f, e, g, med) -> dict[int, tuple[float, float]]:
    """Each member's robust scatter against the ensemble of the others, and the scatter
    its errors (and the others' ensemble error) predict."""
    out = {}
    for i in members:
        others = [j for j in members if j != i] or [i]
        norm = np.where(g[:, others], f[:, others] / med[others], np.nan)
        n_valid = np.isfinite(norm).sum(axis=1)
        # frames where no other member is usable have no ensemble (NaN, no warning)
        ens = np.where(n_valid > 0, np.nansum(norm, axis=1) / np.maximum(n_valid, 1), np.nan)
        ens_var = np.nansum(np.where(g[:, others], (e[:, others] / med[others]) ** 2, 0),
                            axis=1) / np.maximum(g[:, others].sum(axis=1), 1) ** 2
        rel = np.where(g[:, i], f[:, i] / med[i], np.nan) / ens
        expected = np.nanmedian(np.sqrt(np.where(g[:, i], (e[:, i] / f[:, i]) ** 2, np.nan)
                                        + ens_var / ens**2))
        out[i] = (_robust_std(rel / np.nanmedian(rel)), float(expected))
    return out


def _prune(members, *, f, e, g, med, status, min_count, max_count,
           max_excess_scatter) -> list[int]:
    """Drop the worst variable (scatter over expected above ``max_excess_scatter``) until
    none is left or ``min_count`` remain, then keep the ``max_count`` lowest-scatter
    stars; ``status`` says why each dropped star went."""
    members = list(members)
    while len(members) > min_count:
        sc = _scatter_of(members, f=f, e=e, g=g, med=med)
        excess = {i: s / x if x > 0 else math.inf for i, (s, x) in sc.items()}
        worst = max(excess, key=excess.get)
        if excess[worst] <= max_excess_scatter:
            break
        status[worst] = f"variable: scatter {excess[worst]:.1f}x expected"
        members.remove(worst)
    sc = _scatter_of(members, f=f, e=e, g=g, med=med)
    members = sorted(members, key=lambda i: sc[i][0])
    for i in members[max_count:]:
        status[i] = "not among the lowest-scatter stars"
    return members[:max_count]


def _ensemble_ratio(*, f, e, g, med, t, members, weights, target_usable, index) -> pd.DataFrame:
    """The target over the weighted ensemble per frame, normalised to median 1."""
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
    usable_t = target_usable & (wsum > 0)
    scale = np.nanmedian(np.where(usable_t, rel, np.nan)) if usable_t.any() else np.nan
    return pd.DataFrame({
        "flux": f[:, t], "flux_err": e[:, t], "ensemble": np.where(wsum > 0, ens, np.nan),
        "ensemble_err": np.where(wsum > 0, ens_err, np.nan),
        "rel_flux": np.where(wsum > 0, rel / scale, np.nan),
        "rel_flux_err": np.where(wsum > 0, rel_err / scale, np.nan),
        "n_comparisons": gm.sum(axis=1), "usable": usable_t}, index=index)


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
        note = "; ".join(filter(None, [note, _error_check(light, name=name,
                                                          scatter=scatter[label])]))
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
                "detrending"])
            write_table(choice, tmp / f"comparisons_{name}.csv",
                        comments=[*header, f"comparison choice for target {name}, aperture "
                                  f"{label}; scatter and expected are relative (robust std)"])
    long = result["long"]
    write_table(long, table,
                comments=[*header, *unit_comments(list(long.columns))])
