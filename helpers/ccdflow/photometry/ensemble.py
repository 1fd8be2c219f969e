"""Differential photometry: a target's flux over a weighted ensemble of comparison stars,
chosen automatically (usable often enough, of similar brightness, not variable) or
listed, with the ensemble's error carried into the relative flux's."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .apertures import PhotometryError

log = logging.getLogger(__name__)

__all__ = ["FALLBACK_GOOD_FRACTION", "differential_photometry"]


def _robust_std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size < 3:
        return float("inf")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


#: when too few comparison candidates are usable in ``min_good_fraction`` of the frames,
#: those usable in this fraction are taken (a differential light curve comes out whenever
#: two or more other stars are measured in 80 % of the frames)
FALLBACK_GOOD_FRACTION = 0.8

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
