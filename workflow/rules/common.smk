# Shared set-up: validate the config and the instrument profile, locate the raw
# frames, and give the input functions every stage uses.
import functools
import os
from pathlib import Path

import ccdflow
from ccdflow.errors import CalibrationError
from ccdflow.config import (
    ConfigError,
    check_photometry,
    cuts_subframes,
    has_zero_level,
    load_profile,
    validate,
)
from ccdflow.groups import parse_shape
from ccdflow.inventory import InventoryError, find_raw_files
from ccdflow.batch import (
    PRODUCT_SUFFIX,
    assign_batches,
    job_memory_mb,
    missing_products,
    product_path,
    series_by_binning,
)
from ccdflow.plan import (
    enclosing_groups,
    group_geometry,
    plan_from_inventory,
    safe_name,
)
from ccdflow.runlock import cancel_pending_timers, claim_run
from snakemake.logging import logger

ROOT = Path(workflow.basedir)
SCHEMAS = ROOT / "workflow" / "schemas"
SOFTWARE = f"ccdflow {ccdflow.__version__}"


def _fail(message):
    """Stop before any job with a one-line message."""
    raise WorkflowError(message)


try:
    _validated = validate(config, schema=SCHEMAS / "config.schema.yaml")
    config.clear()
    config.update(_validated)
    if config["photometry"]["enabled"]:
        check_photometry(config["photometry"])
    PROFILE = load_profile(
        config["instrument"],
        profiles_dir=ROOT / "config" / "instruments",
        schema=SCHEMAS / "instrument.schema.yaml",
    )
except ConfigError as exc:
    _fail(str(exc))

if workflow.is_main_process and not workflow.dryrun:
    # a run killed with SIGKILL leaves Snakemake's lock: clear it when its process is gone
    _lock_note = claim_run(workdir=".")
    if _lock_note:
        logger.warning(f"ccdflow: {_lock_note}")

RESULTS = Path(config["results_dir"])
RAW_DIR = Path(config["raw_dir"])
DEMO_DIR = Path(config["demo"]["dir"])
IS_DEMO = RAW_DIR.resolve() == (DEMO_DIR / "raw").resolve()
LOGS = RESULTS / "logs"
MASTERS = RESULTS / "masters"
CAL = config["calibration"]
STEPS = [
    k
    for k in ("bias", "dark", "flat")
    if k not in set(CAL["skip"]) | set(PROFILE["calibration"]["skip"])
]
SUBTRACT_DARK = PROFILE["calibration"]["subtract_dark"]
# a subframe without calibrations of its own: full-frame masters cut at its origin
CUT_SUBFRAMES = cuts_subframes(PROFILE["detector"])
# no dark applied at all: hot pixels come from the night's own science frames
HOTPIX_ON = config["hot_pixels"]["enabled"] and "dark" not in STEPS
ILLUM = PROFILE["calibration"]["illumination"]

if config["frames"] and not Path(config["frames"]).is_file():
    _fail(f"config key 'frames': frames table {config['frames']} does not exist")

if IS_DEMO:
    RAW_FILES = []  # the whole directory is the output of rule demo_simulate
else:
    try:
        _raw_files = find_raw_files(
            raw_dir=RAW_DIR, extensions=config["inventory"]["extensions"]
        )
    except InventoryError as exc:
        _fail(f"config key 'raw_dir': {exc}")
    if not _raw_files:
        _fail(
            f"config key 'raw_dir': {RAW_DIR} holds no FITS files "
            f"({', '.join(config['inventory']['extensions'])}, optionally .fz/.gz/.bz2)"
        )
    RAW_FILES = [str(RAW_DIR / f) for f in _raw_files]


wildcard_constraints:
    night=r"\d{4}-\d{2}-\d{2}",
    group=r"[A-Za-z0-9._-]+",
    filt=r"[A-Za-z0-9._+-]+",
    series=r"[A-Za-z0-9._+-]+",
    batch=r"[A-Za-z0-9._+-]+-\d{3}",


def plan_options():
    """The calibration plan's settings: the DAG's (state()) and the inventory job's."""
    return {
        "min_frames": CAL["min_frames"],
        "bias_from_shortest_dark": PROFILE["calibration"]["bias_from_shortest_dark"],
        "max_age_days": CAL["max_calibration_age_days"],
        "steps": STEPS,
        "cut_subframes": CUT_SUBFRAMES,
    }


@functools.lru_cache(maxsize=4)
def _state(path, mtime_ns):
    inventory, sets, plan = plan_from_inventory(path, **plan_options())
    return inventory, sets, plan.set_index("frame", drop=False)


def _inventory_key():
    path = checkpoints.inventory_scan.get().output.table
    return str(path), os.stat(path).st_mtime_ns


def state():
    """(inventory, calibration sets, plan) once the inventory checkpoint has run."""
    return _state(*_inventory_key())


@functools.lru_cache(maxsize=4)
def _geometry(path, mtime_ns):
    return group_geometry(_state(path, mtime_ns)[0])


def geometry():
    """Per calibration group, its geometry on the detector (ccdflow.plan.group_geometry),
    computed once per inventory (the cut and bad-pixel-mask jobs each ask for it)."""
    return _geometry(*_inventory_key())


def master_path(kind, night, group, filt=""):
    """Master of a type (bias, dark; flat, bpm, specflat, arc, warp, specbpm per filter)."""
    per_filter = ("flat", "bpm", "specflat", "arc", "warp", "specbpm")
    name = f"{kind}_{safe_name(filt)}.fits" if kind in per_filter else f"{kind}.fits"
    return MASTERS / night / group / name


def _nearest_master(kind, wildcards, of_kind, filt="", required=True):
    """Master of `kind` for the calibration set (`of_kind`, night, group) of a master rule.

    None when there is none within the age limit and it is not `required`.
    """
    _, sets, _ = state()
    row = sets.select(kind=of_kind, night=wildcards.night, group=wildcards.group, filter=filt)
    if row.empty:
        raise CalibrationError(
            f"no {of_kind} set for night {wildcards.night}, group {wildcards.group}"
        )
    best = sets.nearest(
        kind=kind,
        group=wildcards.group,
        mjd=float(row.iloc[0]["mjd"]),
        night=wildcards.night,
        max_age_days=CAL["max_calibration_age_days"],
    )
    if best is None:
        if not required:
            return None
        raise CalibrationError(
            f"master {of_kind} {wildcards.night} {wildcards.group}: no {kind} frames within "
            f"{CAL['max_calibration_age_days']} d (or add '{kind}' to calibration.skip)"
        )
    return str(master_path(kind, best["night"], wildcards.group))


def get_master_raw(kind):
    def inner(wildcards):
        _, sets, _ = state()
        filt = getattr(wildcards, "filt", "")
        files = sets.files(kind=kind, night=wildcards.night, group=wildcards.group, filter=filt)
        return [str(RAW_DIR / f) for f in files]

    return inner


def master_threads(kind):
    """Threads of a master's combination (the row blocks are read, corrected and
    combined in parallel), for a core that would otherwise idle: the dark runs alone
    (after the bias, before the flats) and gets two; a flat gets two when it is its night
    and group's only one, one when flats of several filters run side by side (two
    threads combine a 1k² flat only 1.3x faster); the bias gets one, beside the detector
    report and the calibration plan that start with it.  Measured on the demo's 1k²
    masters: dark 0.74 -> 0.43 s, V flat 1.66 -> 1.37 s.  Snakemake gives no job more
    threads than --cores.  Any master of over 400 MB of raw frames gets two (sized from
    the raw frames: they exist; a master input may not yet, in a dry run)."""

    def inner(wildcards, input):
        size_mb = sum(os.path.getsize(f) for f in input.raw if os.path.exists(f)) / 1e6
        if kind == "dark" or size_mb > 400:
            return 2
        if kind in ("flat", "specflat"):
            t = state()[1].table
            flats = t[(t["kind"] == kind) & (t["night"] == wildcards.night)
                      & (t["group"] == wildcards.group)]
            return 2 if len(flats) == 1 else 1
        return 1

    return inner


def get_dark_inputs(wildcards):
    return {"bias": _nearest_master("bias", wildcards, "dark")} if "bias" in STEPS else {}


def get_lamp_inputs(of_kind):
    """Bias (and dark) of a flat, spectroscopic flat or arc set."""

    def inner(wildcards):
        out = {}
        if "bias" in STEPS:
            out["bias"] = _nearest_master("bias", wildcards, of_kind, wildcards.filt)
        if "dark" in STEPS and SUBTRACT_DARK:
            # lamp exposures are short: a missing dark is not fatal
            dark = _nearest_master("dark", wildcards, of_kind, wildcards.filt, required=False)
            if dark is not None:
                out["dark"] = dark
        return out

    return inner


get_flat_inputs = get_lamp_inputs("flat")


def _plan_masters(row):
    """All masters the plan names for a science frame (the dark also for hot pixels;
    a spectroscopic frame's flat is its spectroscopic flat)."""
    out = {}
    for kind in ("bias", "dark", "flat"):
        if row[f"{kind}_night"]:
            made = "specflat" if kind == "flat" and row["mode"] == "spectroscopy" else kind
            path = master_path(made, row[f"{kind}_night"], row["group"], row["filter"])
            if row[f"{kind}_group"] != row["group"]:  # cut from a full frame's master
                path = path.parent / "subframe" / path.name
            out[kind] = str(path)
    return out


def _cut_source(wildcards):
    """(plan row, type) of a subframe master `name` cut for night and group."""
    _, _, plan = state()
    rows = plan[plan["group"] == wildcards.group]
    for kind in ("bias", "dark", "flat"):
        cut = rows[
            (rows[f"{kind}_night"] == wildcards.night)
            & (rows[f"{kind}_group"] != rows["group"])
        ]
        for _, row in cut.iterrows():
            name = master_path(kind, wildcards.night, row["group"], row["filter"]).stem
            if name == wildcards.name:
                return row, kind
    raise CalibrationError(
        f"no science frame of group {wildcards.group} uses a {wildcards.name} master cut "
        f"from night {wildcards.night}"
    )


def get_cut_master(wildcards):
    """The full-frame master a subframe's master is cut from."""
    row, kind = _cut_source(wildcards)
    return str(master_path(kind, wildcards.night, row[f"{kind}_group"], row["filter"]))


def get_cut_geometry(wildcards):
    """Where the subframe lies in the full frame's raw pixels, and both raw shapes."""
    row, kind = _cut_source(wildcards)
    groups = geometry()
    parent, sub = groups[row[f"{kind}_group"]], groups[row["group"]]
    return {
        "origin_xy": [int(row[f"{kind}_x0"]), int(row[f"{kind}_y0"])],
        "raw_shape": list(parent[3:]),
        "subframe_shape": list(sub[3:]),
    }


def _subframe_origin(group):
    """A subframe group's origin on the detector (x, y; the profile's bad columns, rows
    and pixels are full-frame positions), None for a full frame."""
    groups = geometry()
    if group not in groups:
        return None
    _, x0, y0, _, _ = groups[group]
    if x0 or y0 or enclosing_groups(groups, group):
        return [x0, y0]
    return None


def get_subframe_origin(wildcards):
    return _subframe_origin(wildcards.group)


def _applied_masters(row):
    """The masters applied to the pixels: the dark only when the profile subtracts it."""
    masters = _plan_masters(row)
    if not SUBTRACT_DARK:
        masters.pop("dark", None)
    return masters


def _plan_rows(night, group, filt, mode="imaging"):
    """Plan rows of one night, calibration group, filter (any spelling) and mode."""
    _, _, plan = state()
    return plan[
        (plan["night"] == night)
        & (plan["group"] == group)
        & (plan["filter"].map(safe_name) == safe_name(filt))
        & (plan["mode"] == mode)
    ]


@functools.lru_cache(maxsize=4096)  # one per night, group and filter of a season
def _bpm_sources(night, group, filt, inventory_key):
    """What the bad-pixel mask of a night, calibration group and filter is made of:
    a raw reference frame (its geometry), the masters the plan names for the first of
    those frames (bias, dark, flat: their MASK planes), the night's hot-pixel map when
    enabled, the subframe origin.  Rule bad_pixel_mask writes it; the frames jobs make the
    same from the same files (ccdflow.chain)."""
    row = _plan_rows(night, group, filt).iloc[0]
    return {
        "reference": str(RAW_DIR / row["file"]),
        "masters": _plan_masters(row),
        "hot_pixels": str(MASTERS / night / group / "hotpix.fits") if HOTPIX_ON else None,
        "origin": _subframe_origin(group),
    }


def bpm_sources(night, group, filt):
    return _bpm_sources(night, group, filt, _inventory_key())


def get_bpm_inputs(wildcards):
    made = bpm_sources(wildcards.night, wildcards.group, wildcards.filt)
    out = {"reference": made["reference"], **made["masters"]}
    if made["hot_pixels"]:
        out["hot_pixels"] = made["hot_pixels"]
    return out


def get_spectra_bpm_inputs(wildcards):
    """Masters of a spectroscopic setup (no series hot-pixel map: sky lines stay put)."""
    rows = _plan_rows(wildcards.night, wildcards.group, wildcards.filt, mode="spectroscopy")
    row = rows.iloc[0]
    return {"reference": str(RAW_DIR / row["file"]), **_plan_masters(row)}


def _imaging_rows(wildcards):
    """Plan rows of the imaging science frames of a night and calibration group (every
    filter), in time order."""
    _, _, plan = state()
    rows = plan[
        (plan["night"] == wildcards.night)
        & (plan["group"] == wildcards.group)
        & (plan["mode"] == "imaging")
    ]
    return rows.sort_values(["mjd_obs", "file"])


def get_hotpix_raw(wildcards):
    """Raw science frames of a night and calibration group (every filter), in time order."""
    return [str(RAW_DIR / f) for f in _imaging_rows(wildcards)["file"]]


def get_hotpix_inputs(wildcards):
    """The night's raw science frames, and the master bias they are calibrated with (the
    map is made from bias-subtracted frames: a column whose bias stands out is not a
    defect)."""
    rows = _imaging_rows(wildcards)
    bias = _plan_masters(rows.iloc[0]).get("bias") if len(rows) else None
    return {"raw": [str(RAW_DIR / f) for f in rows["file"]], **({"bias": bias} if bias else {})}


def illumination_frames(night, group, filt):
    """Science frames for the illumination model (none when disabled or too few)."""
    if not ILLUM["enabled"]:
        return []
    rows = _plan_rows(night, group, filt)
    return list(rows["file"]) if len(rows) >= ILLUM["min_frames"] else []


def get_illumination_inputs(wildcards):
    rows = _plan_rows(wildcards.night, wildcards.group, wildcards.filt)
    files = illumination_frames(wildcards.night, wildcards.group, wildcards.filt)
    return {"raw": [str(RAW_DIR / f) for f in files], **_applied_masters(rows.iloc[0])}


def _has_gain_pairs(night, group):
    """Whether a night and group has two biases and a flat set (the photon-transfer pairs)."""
    t = state()[1].table
    grp = t[(t["night"] == night) & (t["group"] == group)]
    biases = grp[grp["kind"] == "bias"]
    flats = grp[(grp["kind"] == "flat") & (grp["n_frames"] >= 2)]
    return not biases.empty and int(biases.iloc[0]["n_frames"]) >= 2 and not flats.empty


def get_detector_reports():
    """A gain check per night and group: from bias and flat pairs, else (nights without
    them, when an overscan gives the zero level) from consecutive imaging science frames."""
    _, sets, plan = state()
    imaging = plan[plan["mode"] == "imaging"].groupby(["night", "group"]).size()
    series_ok = has_zero_level(PROFILE["detector"])
    groups = set(zip(sets.table["night"], sets.table["group"])) | set(imaging.index)
    return [RESULTS / "reports" / night / group / "detector.csv"
            for night, group in sorted(groups)
            if _has_gain_pairs(night, group)
            or (series_ok and imaging.get((night, group), 0) >= 2)]


def get_bad_pixel_masks():
    """The bad-pixel mask of every night, calibration group and filter of imaging science
    frames, made by rule bad_pixel_mask (asked for by the run, not by the frames jobs)."""
    rows = frame_table().drop_duplicates(["night", "group", "filter"])
    return [master_path("bpm", n, g, f)
            for n, g, f in zip(rows["night"], rows["group"], rows["filter"])]


def get_detector_inputs(wildcards):
    if not _has_gain_pairs(wildcards.night, wildcards.group):
        return {"bias": [], "flats": [], "series": get_hotpix_raw(wildcards)}
    inventory, sets, _ = state()
    bias = sets.files(kind="bias", night=wildcards.night, group=wildcards.group)[:2]
    t = sets.table
    flats = t[(t["kind"] == "flat") & (t["night"] == wildcards.night)
              & (t["group"] == wildcards.group)]
    files = [f for fl in flats["files"] for f in fl]
    return {"bias": [str(RAW_DIR / f) for f in bias], "flats": [str(RAW_DIR / f) for f in files],
            "series": []}


COSMICS_ON = config["cosmics"]["enabled"] and PROFILE["cosmics"]["enabled"]
# options of the cosmic-ray stage (None: no such stage)
COSMICS_OPTIONS = (
    {k: v for k, v in config["cosmics"].items() if k != "enabled"} if COSMICS_ON else None
)
# the stages of the per-frame chain (rule frames_reduce), in order
CHAIN_STAGES = ["calibrated", "background", *(["cosmics"] if COSMICS_ON else []), "sources"]


PHOT = config["photometry"]


def _megapixels(shape):
    """Megapixels of an inventory shape 'NAXIS2xNAXIS1' (None when unknown)."""
    size = parse_shape(shape)
    return None if size is None else size[0] * size[1] / 1e6


def series_name(field, filt):
    """A series: '{field}_{filter}' (field 'field' when OBJECT is empty)."""
    return f"{safe_name(field or 'field')}_{safe_name(filt)}"


@functools.lru_cache(maxsize=8)
def _frames(path, mtime_ns, mode):
    """Per science frame of one observing mode: plan row, field (OBJECT), series, batch."""
    inventory, _, plan = _state(path, mtime_ns)
    by_frame = inventory.set_index("frame")
    table = plan[plan["mode"] == mode].reset_index(drop=True)
    table["field"] = [str(by_frame["object"].get(f, "") or "") for f in table["frame"]]
    table["megapixels"] = [_megapixels(by_frame["shape"].get(f, "")) for f in table["frame"]]
    table["binning"] = [str(by_frame["binning"].get(f, "")) for f in table["frame"]]
    table["series"] = [series_name(o, fl) for o, fl in zip(table["field"], table["filter"])]
    table["series"] = series_by_binning(table)
    table = assign_batches(table, setting=config["frames_per_job"])
    return table.set_index("frame", drop=False)


def frame_table(mode="imaging"):
    """Per science frame of a mode: plan columns, field, series '{field}_{filter}', batch.

    Imaging frames (the default) take the imaging chain; spectroscopic ones the
    long-slit branch (spectra.smk)."""
    path = checkpoints.inventory_scan.get().output.table
    return _frames(str(path), os.stat(path).st_mtime_ns, mode)


def batch_dir(stage, night=None, batch=None):
    """Directory of one batch's products of a per-frame stage (wildcards by default)."""
    return RESULTS / stage / (night or "{night}") / (batch or "{batch}")


def _batch_rows(wildcards, mode="imaging"):
    frames = frame_table(mode)
    rows = frames[(frames["night"] == wildcards.night) & (frames["batch"] == wildcards.batch)]
    if rows.empty:
        raise WorkflowError(f"no frames in batch {wildcards.night}/{wildcards.batch}")
    return rows


def get_batch_frame_names(wildcards):
    return list(_batch_rows(wildcards)["frame"])


def stale_if_incomplete(*stages, mode="imaging"):
    """Input function giving no input: it checks this job's own batch directories.

    A finished batch directory missing some of its frames' products (deleted by
    hand) would look up to date to Snakemake, which sees the directory as one
    file. Its ``.snakemake_timestamp`` is set to the epoch instead, so it is older
    than its inputs and the batch is remade (with the default mtime trigger).
    """

    def check(wildcards):
        for stage in stages:
            directory = batch_dir(stage, wildcards.night, wildcards.batch)
            if not directory.is_dir():
                continue
            stamp = directory / ".snakemake_timestamp"
            missing = missing_products(
                directory,
                frames=list(_batch_rows(wildcards, mode)["frame"]),
                suffix=PRODUCT_SUFFIX[stage],
            )
            if not missing:
                continue
            if stamp.exists() and stamp.stat().st_mtime > 0:
                logger.warning(
                    f"ccdflow: {directory} lacks {', '.join(missing)}: "
                    "the batch is marked stale and will be remade"
                )
                os.utime(stamp, (0, 0))
            elif not stamp.exists() and directory.stat().st_mtime > 0:
                # a job killed while it wrote the batch: no timestamp, no summary
                logger.warning(
                    f"ccdflow: {directory} was left incomplete by a killed job: "
                    "the batch will be remade"
                )
                os.utime(directory, (0, 0))
        return []

    return check


def get_batch_times(wildcards):
    """Per frame of the batch: (start MJD UTC, exposure s) as the inventory read them."""
    inventory = state()[0].set_index("frame")
    return {
        f: (float(inventory.loc[f, "mjd_obs"]), float(inventory.loc[f, "exptime_s"]))
        for f in _batch_rows(wildcards)["frame"]
    }


def get_batch_runtime(minutes_per_frame, mode="imaging"):
    """Runtime (min) of a batch job: 5 min + minutes_per_frame per frame."""

    def runtime(wildcards):
        return int(5 + minutes_per_frame * len(_batch_rows(wildcards, mode)))

    return runtime


def get_batch_mem_mb(stage):
    """Memory (MB) of a batch job: grows with the batch's largest frame
    (ccdflow.batch.job_memory_mb), at least 2000 MB."""

    def mem_mb(wildcards):
        known = [m for m in _batch_rows(wildcards)["megapixels"] if m is not None and m == m]
        return job_memory_mb(stage=stage, megapixels=max(known) if known else None)

    return mem_mb


def _frame_masters(row):
    """Masters applied to one frame (bias, dark, flat, illumination), the path of its
    bad-pixel mask (``bpm``, its provenance) and what that mask is made of
    (``bpm_sources``: the frames job makes it, not a job of its own before it)."""
    masters = _applied_masters(row)
    where = MASTERS / row["night"] / row["group"]
    masters["bpm"] = str(master_path("bpm", row["night"], row["group"], row["filter"]))
    masters["bpm_sources"] = bpm_sources(row["night"], row["group"], row["filter"])
    if illumination_frames(row["night"], row["group"], row["filter"]):
        masters["illumination"] = str(where / f"illum_{safe_name(row['filter'])}.fits")
    return masters


def get_calibrate_frames(wildcards):
    """Per frame of the batch: name, raw path and the masters that apply."""
    return [
        {"frame": row["frame"], "raw": str(RAW_DIR / row["file"]), **_frame_masters(row)}
        for _, row in _batch_rows(wildcards).iterrows()
    ]


def get_calibrate_inputs(wildcards):
    """Raw frames, the masters applied and the files their bad-pixel masks are made of
    (the mask itself, rule bad_pixel_mask's product, is not waited for)."""
    frames = get_calibrate_frames(wildcards)
    masters = {f[k] for f in frames for k in ("bias", "dark", "flat", "illumination") if k in f}
    for made in {id(f["bpm_sources"]): f["bpm_sources"] for f in frames}.values():
        masters |= {made["reference"], *made["masters"].values()}
        masters |= {made["hot_pixels"]} if made["hot_pixels"] else set()
    return {"raw": [f["raw"] for f in frames], "masters": sorted(masters)}


def get_image_products(wildcards):
    """Calibrated, background and (when enabled) cosmic-ray directories of the batch."""
    out = {
        "calibrated": batch_dir("calibrated", wildcards.night, wildcards.batch),
        "background": batch_dir("background", wildcards.night, wildcards.batch),
    }
    if COSMICS_ON:
        out["cosmics"] = batch_dir("cosmics", wildcards.night, wildcards.batch)
    return out


def series_frames(series):
    return frame_table().query("series == @series")


def series_rejected(series):
    """{frame: reason} of the files the inventory rejected whose header still places them
    in a series (a truncated frame of that field and filter)."""
    inventory = state()[0]
    rows = inventory[(inventory["type"] == "rejected") & (inventory["mode"] == "imaging")
                     & (inventory["filter"] != "")]
    return {
        f: f"rejected by the inventory: {reason}"
        for f, o, fl, reason in zip(rows["frame"], rows["object"], rows["filter"], rows["reason"])
        if series_name(o, fl) == series
    }


def series_batches(series, stage):
    rows = series_frames(series).drop_duplicates(["night", "batch"])
    return [batch_dir(stage, n, b) for n, b in zip(rows["night"], rows["batch"])]


def series_frame_paths(series, stage):
    """{frame: product path} of every frame of a series."""
    rows = series_frames(series)
    return {
        f: str(product_path(batch_dir(stage, n, b), f, stage))
        for f, n, b in zip(rows["frame"], rows["night"], rows["batch"])
    }


#: (target, series) pairs already warned about (input functions run more than once)
_SAID = set()


def series_targets(wildcards):
    """Targets of a series: those of its field (or of every field); a pixel target read on
    a named frame belongs to that frame's series only, and a frame name no series has
    stops the run before any calibration, naming it."""
    rows = series_frames(wildcards.series)
    fields = set(rows["field"])
    fields |= {safe_name(f) for f in fields}
    # a series split off by binning: a position read on another series' frame is not
    # in its pixels (a star near it would be the wrong star)
    split = any(
        s != series_name(o, fl) for s, o, fl in zip(rows["series"], rows["field"], rows["filter"])
    )
    out = []
    for target in PHOT["targets"]:
        if target.get("field") not in (None, *fields):
            continue
        if split and "x" in target and "frame" not in target:
            if (target["name"], wildcards.series) not in _SAID:
                _SAID.add((target["name"], wildcards.series))
                logger.warning(
                    f"ccdflow: target {target['name']} (x, y without a frame) is not placed "
                    f"in series {wildcards.series}, whose frames have another binning: give "
                    "it with a frame of that series"
                )
            continue
        if "frame" in target and target["frame"] not in set(rows["frame"]):
            everywhere = frame_table()["frame"]
            if target["frame"] not in set(everywhere):
                _fail(
                    f"config photometry.targets: target {target['name']}: frame "
                    f"{target['frame']!r} is not a science frame of this run (frames: "
                    f"{', '.join(list(everywhere)[:5])} …)"
                )
            continue
        out.append(target)
    return out


def get_reference_inputs(wildcards):
    return {
        "sources": series_batches(wildcards.series, "sources"),
        "calibrated": series_batches(wildcards.series, "calibrated"),
    }


def get_photometry_inputs(wildcards):
    series = _batch_rows(wildcards)["series"].iloc[0]
    return {
        **get_image_products(wildcards),
        "sources": batch_dir("sources", wildcards.night, wildcards.batch),
        "reference": RESULTS / "photometry" / "reference" / f"{series}.ecsv",
    }


def get_lightcurve_inputs(wildcards):
    return series_batches(wildcards.series, "photometry")


def night_frames(night):
    rows = frame_table().query("night == @night").reset_index(drop=True)
    return rows.sort_values(["mjd_obs", "frame"], kind="stable")


def get_qc_masters(wildcards):
    """Label -> master of every master that calibrated a frame of the night."""
    out = {}
    for _, row in night_frames(wildcards.night).iterrows():
        for kind, path in _plan_masters(row).items():
            label = kind if kind != "flat" else f"flat {row['filter']}"
            made = row[f"{kind}_night"]
            label += f" (night {made})" if made != wildcards.night else ""
            out.setdefault(label, path)
    return dict(sorted(out.items()))


def get_qc_sample(wildcards):
    """Candidates for the background figure, in time order: frame, calibrated product and
    background map (the figure shows the first whose products exist)."""
    return [
        {
            "frame": row["frame"],
            "calibrated": str(product_path(batch_dir("calibrated", row["night"], row["batch"]),
                                           row["frame"], "calibrated")),
            "background": str(product_path(batch_dir("background", row["night"], row["batch"]),
                                           row["frame"], "background")),
        }
        for _, row in night_frames(wildcards.night).iterrows()
    ]


def get_qc_summaries(wildcards):
    """Stage -> batch directories of the night whose summaries the figures read."""
    batches = night_frames(wildcards.night).drop_duplicates("batch")["batch"]
    stages = ["background"] + (["cosmics"] if COSMICS_ON else [])
    stages += ["sources", "photometry"] if PHOT["enabled"] else []
    return {s: [str(batch_dir(s, wildcards.night, b)) for b in batches] for s in stages}


def get_qc_sample_batches(wildcards):
    """Calibrated and background batch directories of the night (the background figure's
    candidates)."""
    batches = night_frames(wildcards.night).drop_duplicates("batch")["batch"]
    return [str(batch_dir(s, wildcards.night, b)) for s in ("calibrated", "background")
            for b in batches]


def get_qc_summary_batches(wildcards):
    return [d for dirs in get_qc_summaries(wildcards).values() for d in dirs]


def get_final_outputs(wildcards):
    frames = frame_table()
    batches = frames.drop_duplicates(["night", "batch"])
    stages = [*CHAIN_STAGES, *(["photometry"] if PHOT["enabled"] else [])]
    series = sorted(set(frames["series"])) if PHOT["enabled"] else []
    return [
        *get_spectra_outputs(),
        RESULTS / "inventory.csv",
        RESULTS / "calibration_plan.csv",
        *[batch_dir(s, n, b) for s in stages for n, b in zip(batches.night, batches.batch)],
        *get_detector_reports(),
        *get_bad_pixel_masks(),
        *[RESULTS / "lightcurves" / f"{s}.csv" for s in series],
        *[RESULTS / "qc" / n / f"{fig}.png" for n in sorted(set(frames["night"]))
          for fig in ("masters", "background", "conditions")],
        *[RESULTS / "qc" / "lightcurves" / f"{s}.png" for s in series],
    ]


def get_detector_flat_filters(wildcards):
    inventory = state()[0].set_index("file")
    return {f: inventory.loc[Path(f).relative_to(RAW_DIR).as_posix(), "filter"]
            for f in get_detector_inputs(wildcards)["flats"]}


# ---- long-slit spectroscopy (spectra.smk) ----

SPEC = config["spectroscopy"]
DISPERSION_AXIS = (
    PROFILE["spectroscopy"]["dispersion_axis"]
    if SPEC["dispersion_axis"] == "profile"
    else SPEC["dispersion_axis"]
)
SPEC_COSMICS = COSMICS_OPTIONS if SPEC["cosmics"] else None


def _spectra_masters(row):
    """Masters of one spectroscopic frame: bias, dark, its spectroscopic flat, bpm, warp."""
    masters = _applied_masters(row)
    masters["bpm"] = str(master_path("specbpm", row["night"], row["group"], row["filter"]))
    masters["warp"] = str(master_path("warp", row["arc_night"], row["group"], row["filter"]))
    return masters


def get_spectra_frames(wildcards):
    """Per spectroscopic frame of the batch: name, raw path and its masters."""
    return [
        {"frame": row["frame"], "raw": str(RAW_DIR / row["file"]), **_spectra_masters(row)}
        for _, row in _batch_rows(wildcards, "spectroscopy").iterrows()
    ]


def get_spectra_inputs(wildcards):
    frames = get_spectra_frames(wildcards)
    masters = sorted({v for f in frames for k, v in f.items() if k not in ("frame", "raw")})
    return {"raw": [f["raw"] for f in frames], "masters": masters}


def get_spectra_outputs():
    """Spectra batch directories, their QC figures and the warp models' figures."""
    frames = frame_table("spectroscopy")
    if frames.empty:
        return []
    batches = frames.drop_duplicates(["night", "batch"])
    warps = frames.drop_duplicates(["arc_night", "group", "filter"])
    out = [batch_dir("spectra", n, b) for n, b in zip(batches.night, batches.batch)]
    if SPEC["qc_figures"]:
        out += [RESULTS / "qc" / "spectra" / n / b for n, b in zip(batches.night, batches.batch)]
    out += [
        RESULTS / "qc" / n / f"warp_{g}_{safe_name(f)}.png"
        for n, g, f in zip(warps.arc_night, warps.group, warps["filter"])
    ]
    return out
