"""Which raw frames make which master, and which masters calibrate which science frame.

A *calibration set* is the frames of one type (and filter, for flats and arcs)
in one calibration group and night.  Flats taken in spectroscopic mode form
``specflat`` sets (normalised along the dispersion, never used for imaging, and
the only flats a spectroscopic frame uses); arcs (``arc``) give a spectroscopic
frame its warp model.  A science frame uses the set of its own group
and night; when that night has none, the set of the nearest night (by mean
observation time) within ``max_age_days``; when there is none, planning fails
with a message naming the frames and the missing type, unless that step is
skipped.  With ``bias_from_shortest_dark`` (cameras without bias frames) the
shortest darks of a night are its bias set and the longer ones its dark set.

A subframe (a region of interest read out for speed) is a group of its own.  When it
has no bias, dark or flat set of its own, the set of a group of the same instrument,
binning, readout and amplifiers whose frames enclose it (a full frame) is used, its
master cut at the subframe's origin (``<type>_group`` in the plan; with
``cut_subframes``, which the workflow sets for profiles without overscan or trim
sections: a cut of a trimmed master would not be the subframe's pixels).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import CalibrationError
from .groups import parse_shape

log = logging.getLogger(__name__)

__all__ = ["CalibrationSets", "calibration_sets", "enclosing_groups", "group_geometry",
           "plan_calibrations", "safe_name"]

KINDS = ("bias", "dark", "flat")
#: set types keyed by filter (or grating) as well as night and group
FILTERED = ("flat", "specflat", "arc")


def safe_name(text: str) -> str:
    """Name usable in paths and wildcards (``[A-Za-z0-9._+-]``); '' becomes 'none'."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(text).strip()) or "none"


@dataclass
class CalibrationSets:
    """Usable calibration sets and the ones dropped for having too few frames."""

    table: pd.DataFrame  #: kind, night, group, filter, n_frames, mjd, exptime_s, files
    dropped: list[str] = field(default_factory=list)

    def files(self, *, kind: str, night: str, group: str, filter: str = "") -> list[str]:
        rows = self.select(kind=kind, night=night, group=group, filter=filter)
        if rows.empty:
            raise CalibrationError(f"no {kind} set for night {night}, group {group}"
                                   + (f", filter {filter}" if filter else ""))
        return list(rows.iloc[0]["files"])

    def select(self, *, kind: str, night: str, group: str, filter: str = "") -> pd.DataFrame:
        """Rows of the set of one type, night, group (and filter, for flats)."""
        t = self.table
        sel = (t["kind"] == kind) & (t["night"] == night) & (t["group"] == group)
        if kind in FILTERED:
            sel &= t["filter_slug"] == safe_name(filter)
        return t[sel]

    def nearest(self, *, kind: str, group: str, mjd: float, night: str, filter: str = "",
                max_age_days: float) -> pd.Series | None:
        """Set of the same night, else the nearest in time within ``max_age_days``.

        The candidates of each (type, group, filter) are found once and kept: a plan
        asks this for every science frame and type (30,000 calls for 10,000 frames).
        """
        key = (kind, group, safe_name(filter) if kind in FILTERED else "")
        cache = self.__dict__.setdefault("_candidates", {})
        if key not in cache:
            t = self.table
            sel = (t["kind"] == kind) & (t["group"] == group)
            if kind in FILTERED:
                sel &= t["filter_slug"] == key[2]
            rows = t[sel]
            cache[key] = ([row for _, row in rows.iterrows()],
                          rows["night"].to_numpy(str) if len(rows) else np.zeros(0, str),
                          rows["mjd"].to_numpy(float))
        rows, nights, mjds = cache[key]
        if not rows:
            return None
        same = np.flatnonzero(nights == night)
        if same.size:
            return rows[same[0]]
        age = np.abs(mjds - mjd)
        best = int(np.argmin(age))
        return rows[best] if age[best] <= max_age_days else None


def calibration_sets(inventory: pd.DataFrame, *, min_frames: Mapping[str, int],
                     bias_from_shortest_dark: bool = False) -> CalibrationSets:
    """Group the inventory's bias, dark, flat and arc frames into calibration sets.

    Flats of spectroscopic mode are ``specflat`` sets.  Sets with fewer than
    ``min_frames[kind]`` frames (specflat: the flats' minimum) are dropped (logged, and
    listed in ``dropped``): a science frame then falls back to another night.
    """
    frames = inventory[inventory["type"].isin((*KINDS, "arc"))].copy()
    if "mode" in frames:
        spec_flat = (frames["type"] == "flat") & (frames["mode"] == "spectroscopy")
        frames.loc[spec_flat, "type"] = "specflat"
    if bias_from_shortest_dark:
        darks = frames["type"] == "dark"
        shortest = frames[darks].groupby(["night", "group"])["exptime_s"].transform("min")
        is_bias = darks & (frames["exptime_s"] == shortest.reindex(frames.index))
        frames.loc[is_bias.fillna(False), "type"] = "bias"
    frames["filter"] = frames["filter"].where(frames["type"].isin(FILTERED), "")
    rows, dropped = [], []
    for (kind, night, group, filt), grp in frames.groupby(["type", "night", "group", "filter"],
                                                          sort=True):
        grp = grp.sort_values("file")
        label = f"{kind} {night} {group}" + (f" {filt}" if filt else "")
        need = int(min_frames.get("flat" if kind == "specflat" else kind, 1))
        if len(grp) < need:
            dropped.append(f"{label}: {len(grp)} frame(s) ({', '.join(grp['file'])}), "
                           f"minimum {need}")
            log.warning("calibration set %s dropped: %d frame(s), minimum %d", label, len(grp),
                        need)
            continue
        rows.append({"kind": kind, "night": night, "group": group, "filter": filt,
                     "filter_slug": safe_name(filt), "n_frames": len(grp),
                     "mjd": float(grp["mjd_obs"].mean()),
                     "exptime_s": float(grp["exptime_s"].min()), "files": list(grp["file"])})
    table = pd.DataFrame(rows, columns=["kind", "night", "group", "filter", "filter_slug",
                                        "n_frames", "mjd", "exptime_s", "files"])
    return CalibrationSets(table=table, dropped=dropped)


def _other_groups(sets: CalibrationSets, kind: str, filt: str, groups: set[str]) -> str:
    """' (of group A; there are bias sets of group(s) B: ...)' when sets of ``kind`` exist
    only in other calibration groups (a subframe, another binning or readout mode), or
    ' (there are flat sets in filter 'R': ...)' when a filtered kind exists in the
    group under a name equal to the frames' but for case and punctuation."""
    t = sets.table[sets.table["kind"] == kind]
    if kind in FILTERED:  # 'R' and 'r' are different filters, but maybe not here
        loose = re.sub(r"[^a-z0-9]", "", str(filt).lower())
        mine = t[t["group"].isin(groups) & (t["filter_slug"] != safe_name(filt))]
        near = sorted({f for f in mine["filter"]
                       if re.sub(r"[^a-z0-9]", "", str(f).lower()) == loose})
        if near:
            return (f" (there are {kind} sets in filter {', '.join(map(repr, near))}: if "
                    "that is the same filter, map one name to the other with the profile's "
                    "filter_aliases)")
        t = t[t["filter_slug"] == safe_name(filt)]
    t = t[~t["group"].isin(groups)]
    others = sorted(set(t["group"]))
    if not others:
        return ""
    return (f" (of group {', '.join(sorted(groups))}; there are {kind} sets of group(s) "
            f"{', '.join(others[:3])}: a group is instrument, binning, shape and readout, so "
            "another binning or readout needs calibration frames of its own; a subframe is "
            "cut from a full-frame master only when the profile has no overscan or trim "
            "section)")


#: the group's geometry the subframe search compares: what must be equal, then the
#: frames' origin and shape on the detector
_Geometry = tuple[tuple[str, str, str, int], int, int, int, int]


def group_geometry(inventory: pd.DataFrame) -> dict[str, _Geometry]:
    """Per calibration group: ((instrument, binning, readout, amplifiers), x0, y0, ny, nx)."""
    out = {}
    frames = inventory[inventory["group"].astype(str) != ""]
    for group, rows in frames.groupby("group"):
        row = rows.iloc[0]
        shape = parse_shape(row["shape"])
        if shape is None:
            continue
        ny, nx = shape
        same = (str(row["instrument"]), str(row["binning"]), str(row["readout"]),
                int(row["n_ext"]) if pd.notna(row["n_ext"]) else 1)
        out[group] = (same, int(row.get("subframe_x0", 0) or 0),
                      int(row.get("subframe_y0", 0) or 0), ny, nx)
    return out


def enclosing_groups(geometry: Mapping[str, _Geometry], group: str) -> list[tuple[str, int, int]]:
    """Groups whose frames hold every pixel of ``group``'s (same instrument, binning,
    readout and amplifiers), smallest first, each with ``group``'s origin in its frames
    (x, y; 0-based pixels)."""
    if group not in geometry:
        return []
    same, x0, y0, ny, nx = geometry[group]
    found = []
    for other, (o_same, ox, oy, ony, onx) in geometry.items():
        if other == group or o_same != same:
            continue
        if ox <= x0 and oy <= y0 and x0 + nx <= ox + onx and y0 + ny <= oy + ony:
            found.append((ony * onx, other, x0 - ox, y0 - oy))
    return [(other, dx, dy) for _, other, dx, dy in sorted(found)]


def plan_calibrations(inventory: pd.DataFrame, *, sets: CalibrationSets, max_age_days: float,
                      steps: Iterable[str] = KINDS, cut_subframes: bool = False,
                      ) -> pd.DataFrame:
    """Masters for every science frame (one row each), or a CalibrationError.

    Science frames without an observation time or exposure time (see the
    inventory's ``reason``) cannot be calibrated or timed: they are left out
    with a warning naming the file, and the rest of the night is planned.

    Parameters
    ----------
    inventory : DataFrame
        From :func:`ccdflow.inventory.build_inventory`.
    sets : CalibrationSets
    max_age_days : float
        Largest time between a science frame and the mean time of a set taken
        from another night.
    steps : iterable of str
        The calibration types to apply (the others are skipped by config).
    cut_subframes : bool
        A subframe group without a bias, dark or flat set of its own takes the set of
        the smallest group enclosing it (:func:`enclosing_groups`), its master to be
        cut at the subframe's origin.

    Returns
    -------
    DataFrame
        frame, file, night, group, filter, mjd_obs, mode (imaging or spectroscopy),
        and per type (bias, dark, flat, arc) ``<type>_night`` (empty when skipped;
        arc: spectroscopic frames only, the flat of a spectroscopic frame is a
        specflat set), ``<type>_age_d`` (days; 0 for the same night),
        ``<type>_group`` (the set's group: the frame's own, or the group a subframe's
        master is cut from), ``<type>_x0``, ``<type>_y0`` (the subframe's origin in
        that group's frames; 0 for its own group), plus ``note`` naming masters taken
        from another night or cut from another group.
    """
    steps = set(steps)
    science = inventory[inventory["type"] == "science"].sort_values(["mjd_obs", "file"])
    unusable = science["mjd_obs"].isna() | (science["night"] == "") | science["exptime_s"].isna()
    for _, sci in science[unusable].iterrows():
        log.warning("%s: science frame left out of the reduction (%s)", sci["file"],
                    sci["reason"] or "no observation time or exposure time")
    science = science[~unusable]
    geometry = group_geometry(inventory) if cut_subframes else {}
    rows, missing, missing_kinds, missing_groups = [], {}, set(), {}
    for _, sci in science.iterrows():
        mode = str(sci.get("mode", "imaging") or "imaging")
        row = {"frame": sci["frame"], "file": sci["file"], "night": sci["night"],
               "group": sci["group"], "filter": sci["filter"], "mjd_obs": sci["mjd_obs"],
               "mode": mode}
        notes = []
        for kind in (*KINDS, "arc"):
            row[f"{kind}_night"], row[f"{kind}_age_d"] = "", float("nan")
            row[f"{kind}_group"], row[f"{kind}_x0"], row[f"{kind}_y0"] = sci["group"], 0, 0
            wanted = mode == "spectroscopy" if kind == "arc" else kind in steps
            if not wanted:
                continue
            set_kind = "specflat" if kind == "flat" and mode == "spectroscopy" else kind
            best = sets.nearest(kind=set_kind, group=sci["group"], mjd=sci["mjd_obs"],
                                night=sci["night"], filter=sci["filter"],
                                max_age_days=max_age_days)
            if best is None and set_kind in KINDS:
                for parent, dx, dy in enclosing_groups(geometry, sci["group"]):
                    best = sets.nearest(kind=set_kind, group=parent, mjd=sci["mjd_obs"],
                                        night=sci["night"], filter=sci["filter"],
                                        max_age_days=max_age_days)
                    if best is not None:
                        row[f"{kind}_group"], row[f"{kind}_x0"], row[f"{kind}_y0"] = \
                            parent, dx, dy
                        notes.append(f"{kind} cut from group {parent} at x {dx}, y {dy}")
                        break
            if best is None:
                what = ("spectroscopic flat" if set_kind == "specflat" else kind) + (
                    f" in filter {sci['filter'] or 'none'}" if set_kind in FILTERED else "")
                missing.setdefault(what, []).append(sci["file"])
                missing_kinds.add(set_kind)
                missing_groups.setdefault(what, (set_kind, sci["filter"], set()))[2].add(
                    sci["group"])
                continue
            row[f"{kind}_night"] = best["night"]
            row[f"{kind}_age_d"] = round(abs(float(best["mjd"]) - float(sci["mjd_obs"])), 4)
            if best["night"] != sci["night"]:
                notes.append(f"{kind} from night {best['night']}")
        row["note"] = "; ".join(notes)
        rows.append(row)
    if missing:
        parts = [f"no {what} within {max_age_days} d for {len(files)} frame(s): "
                 f"{', '.join(files[:5])}{' …' if len(files) > 5 else ''}"
                 + _other_groups(sets, *missing_groups[what])
                 for what, files in missing.items()]
        short = [d for d in sets.dropped if d.split()[0] in missing_kinds]  # '{kind} ...'
        if short:  # the frames exist but are too few: say so, not only "no bias"
            parts.append("set(s) with fewer frames than calibration.min_frames, not used: "
                         + "; ".join(short))
        raise CalibrationError("calibration plan: " + "; ".join(parts) +
                               " (add calibrations, raise calibration.max_calibration_age_days,"
                               " or list the type in calibration.skip; a spectroscopic frame"
                               " always needs an arc)")
    columns = ["frame", "file", "night", "group", "filter", "mjd_obs", "mode"] + [
        f"{k}_{c}" for k in (*KINDS, "arc") for c in ("night", "age_d", "group", "x0", "y0")
    ] + ["note"]
    return pd.DataFrame(rows, columns=columns)


def plan_from_inventory(path: str | Path, *, min_frames: Mapping[str, int],
                        bias_from_shortest_dark: bool, max_age_days: float,
                        steps: Iterable[str], cut_subframes: bool,
                        ) -> tuple[pd.DataFrame, CalibrationSets, pd.DataFrame]:
    """``(inventory, sets, plan)`` from an ``inventory.csv``: the table as
    :func:`~ccdflow.inventory.read_inventory` reads it back, its
    :func:`calibration_sets` and :func:`plan_calibrations` (one row per science
    frame).  The workflow plans its DAG with this and the inventory job writes the
    plan with it, so the file is the plan the masters follow."""
    from .inventory import read_inventory

    inventory = read_inventory(path)
    sets = calibration_sets(inventory, min_frames=min_frames,
                            bias_from_shortest_dark=bias_from_shortest_dark)
    plan = plan_calibrations(inventory, sets=sets, max_age_days=max_age_days, steps=steps,
                             cut_subframes=cut_subframes)
    return inventory, sets, plan


def write_calibration_plan(inventory: str | Path, out: str | Path, **options) -> None:
    """Write the plan of :func:`plan_from_inventory` (``options``) to ``out`` (CSV).

    When no plan can be made (a :class:`CalibrationError`: a type missing within the age
    limit), ``out`` gets the error as a comment line and no rows, and this returns: the
    inventory job that calls it keeps its ``inventory.csv`` (a failed job's outputs are
    deleted), and the workflow raises the same error, naming the frames and the type,
    when it plans its jobs from that inventory, before any master job.
    """
    from .io import write_table

    try:
        plan, comments = plan_from_inventory(inventory, **options)[2], []
    except CalibrationError as exc:
        log.error("%s", exc)
        plan, comments = pd.DataFrame(columns=["frame", "note"]), [f"no plan: {exc}"]
    write_table(plan, out, comments=comments)
