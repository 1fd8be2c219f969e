"""Configuration and instrument-profile loading, validated by JSON schemas.

Errors are raised as :class:`ConfigError` with one line that names the key,
the value and what was expected, so a mistyped option stops a run before any
job starts.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["BAYER_CHANNELS", "ConfigError", "bayer_channel", "check_photometry", "has_overscan",
           "has_zero_level", "load_profile", "load_yaml", "resolve_profile_path",
           "superpixel_mosaics", "validate"]


class ConfigError(ValueError):
    """A configuration or profile value is wrong; the message names it."""


@functools.cache
def _default_filling():
    """A Draft 2020-12 validator that fills in the schema's defaults (jsonschema is
    imported here: jobs that only ask :func:`has_overscan` do not pay for it)."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, naming the file in any error (libyaml's safe loader where PyYAML
    has it: the same documents ~10× faster; the schemas took 0.06 s of every Snakemake
    start with the pure-Python one)."""
    import yaml

    path = Path(path)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(path.read_text(), Loader=loader)  # a safe loader either way
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from exc


def validate(instance: Mapping, *, schema: Mapping | str | Path, what: str = "config") -> dict:
    """Return a validated deep copy of ``instance`` with the schema's defaults filled in.

    Parameters
    ----------
    instance : mapping
        The configuration; not modified.
    schema : mapping or path
        JSON schema (a dict, or a YAML/JSON file).
    what : str
        How to name the instance in error messages (``config``, ``profile nickel``).

    Raises
    ------
    ConfigError
        One line: ``config key 'a.b': <problem>``.
    """
    if not isinstance(schema, Mapping):
        schema = load_yaml(schema)
    if not isinstance(instance, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(instance).__name__}")
    data = copy.deepcopy(dict(instance))
    from jsonschema.exceptions import best_match

    error = best_match(_default_filling()(schema).iter_errors(data))
    if error is not None:
        path = [str(p) for p in error.absolute_path]
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            extra = sorted(set(error.instance) - known)
            where = ".".join([*path, extra[0]]) if extra else ".".join(path)
            raise ConfigError(f"{what}: unknown key '{where}' (allowed here: "
                              f"{', '.join(sorted(known))})")
        key = ".".join(path) or "(top level)"
        raise ConfigError(f"{what} key '{key}': {error.message}")
    return data


def has_overscan(detector: Mapping) -> bool:
    """Whether a profile's ``detector`` section subtracts an overscan; here, not in
    :mod:`ccdflow.detector`, so the Snakemake process asks without importing astropy."""
    return detector.get("overscan", {}).get("from", "none") != "none"


def cuts_subframes(detector: Mapping) -> bool:
    """Whether a subframe without calibrations of its own may be calibrated with a
    full-frame master cut at its origin: only when a raw frame's pixels are the
    product's (no overscan, no trim section), so that the cut holds its pixels."""
    return not has_overscan(detector) and detector.get("trim", {}).get("from", "full") == "full"


#: ``detector.bayer.mode`` -> the colour plane its 2×2 superpixels hold (None: all four)
BAYER_CHANNELS = {"superpixel": None, "green": "G", "red": "R", "blue": "B"}


def superpixel_mosaics(detector: Mapping) -> bool:
    """Whether colour-mosaic frames become 2×2 superpixels (``detector.bayer.mode``
    superpixel, the default, or one colour plane: green, red, blue) rather than being
    reduced as they are (mosaic)."""
    return detector.get("bayer", {}).get("mode", "superpixel") in BAYER_CHANNELS


def bayer_channel(detector: Mapping) -> str | None:
    """The colour ('G', 'R' or 'B') a colour mosaic's superpixels keep
    (``detector.bayer.mode`` green, red or blue); None: R+G+G+B summed, or no
    superpixels."""
    return BAYER_CHANNELS.get(detector.get("bayer", {}).get("mode", "superpixel"))


def has_zero_level(detector: Mapping) -> bool:
    """Whether a raw frame read with ``detector`` has its zero level subtracted without
    a master bias: an overscan, or a constant ``zero_level_adu`` (the zero level the
    gain check on science pairs needs)."""
    return has_overscan(detector) or detector.get("zero_level_adu") is not None


def check_photometry(photometry: Mapping) -> None:
    """Cross-key checks of a validated ``photometry`` section that the schema cannot
    express, so a conflict stops the run before any job instead of failing every
    frame's photometry.  Raises ConfigError naming the keys."""
    annulus = photometry["annulus"]
    if annulus["inner"] >= annulus["outer"]:
        raise ConfigError(f"config key 'photometry.annulus': inner {annulus['inner']:g} must "
                          f"be below outer {annulus['outer']:g}")
    if not photometry["radii_px"] and not photometry["radii_fwhm"]:
        raise ConfigError("config keys 'photometry.radii_px' and 'photometry.radii_fwhm' are "
                          "both empty: no aperture to measure")
    unit = annulus["unit"]
    same_unit = photometry["radii_px" if unit == "px" else "radii_fwhm"]
    if photometry["background"] != "map" and same_unit and max(same_unit) > annulus["inner"]:
        raise ConfigError(
            f"config key 'photometry.annulus.inner': {annulus['inner']:g} {unit} is inside the "
            f"largest aperture, {max(same_unit):g} {unit} (photometry.radii_{unit}): raise the "
            "annulus or use smaller radii")


def resolve_profile_path(instrument: str, *, profiles_dir: str | Path) -> Path:
    """Turn ``instrument`` (a profile name or a path to a YAML file) into a file path."""
    profiles_dir = Path(profiles_dir)
    if instrument.endswith((".yaml", ".yml")) or "/" in instrument:
        path = Path(instrument)
        if not path.is_file():
            raise ConfigError(f"config key 'instrument': profile file {path} does not exist")
        return path
    path = profiles_dir / f"{instrument}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
        raise ConfigError(
            f"config key 'instrument': unknown instrument {instrument!r}; "
            f"known profiles: {', '.join(known)} (or give a path to a .yaml profile)"
        )
    return path


def load_profile(instrument: str, *, profiles_dir: str | Path, schema: str | Path) -> dict:
    """Load and validate an instrument profile by name or path (defaults filled in)."""
    path = resolve_profile_path(instrument, profiles_dir=profiles_dir)
    data = load_yaml(path)
    profile = validate(data or {}, schema=schema, what=f"instrument profile {path}")
    # the frame reader sees the detector section only: it finds a colour mosaic by the
    # profile's bayer_pattern keywords
    bayer = profile.get("detector", {}).get("bayer")
    if isinstance(bayer, dict) and not bayer.get("keywords"):
        bayer["keywords"] = list(profile.get("keywords", {}).get("bayer_pattern", ["BAYERPAT"]))
    return profile
