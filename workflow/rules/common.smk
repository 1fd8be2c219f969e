# Shared set-up: validate the config and the instrument profile, locate the raw
# frames, and give the input functions every stage uses.
from pathlib import Path

import pandas as pd

import ccdflow
from ccdflow.config import ConfigError, load_profile, validate
from ccdflow.inventory import InventoryError, find_raw_files

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
    PROFILE = load_profile(
        config["instrument"],
        profiles_dir=ROOT / "config" / "instruments",
        schema=SCHEMAS / "instrument.schema.yaml",
    )
except ConfigError as exc:
    _fail(str(exc))

RESULTS = Path(config["results_dir"])
RAW_DIR = Path(config["raw_dir"])
DEMO_DIR = Path(config["demo"]["dir"])
IS_DEMO = RAW_DIR.resolve() == (DEMO_DIR / "raw").resolve()
LOGS = RESULTS / "logs"

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
    frame=r"[A-Za-z0-9._+-]+",
    night=r"\d{4}-\d{2}-\d{2}",


def get_inventory(wildcards=None):
    """The inventory table (after the checkpoint has run)."""
    path = checkpoints.inventory_scan.get().output.table
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def get_final_outputs(wildcards):
    return [RESULTS / "inventory.csv"]
