"""Config and profile validation: defaults filled, wrong keys and values named."""

from __future__ import annotations

import pytest

from ccdflow.config import ConfigError, load_profile, load_yaml, validate

from .conftest import PROFILES, ROOT, SCHEMAS

CONFIG_SCHEMA = SCHEMAS / "config.schema.yaml"


def test_shipped_config_is_valid_and_defaults_fill():
    config = validate(load_yaml(ROOT / "config" / "config.yaml"), schema=CONFIG_SCHEMA)
    assert config["instrument"] == "demo"
    minimal = validate({}, schema=CONFIG_SCHEMA)
    assert minimal["raw_dir"] == "demo/raw"
    assert minimal["demo"]["size"] == 1024
    assert minimal["inventory"]["extensions"] == [".fits", ".fit", ".fts"]


def test_validate_does_not_mutate_its_input():
    given = {"demo": {"seed": 3}}
    validate(given, schema=CONFIG_SCHEMA)
    assert given == {"demo": {"seed": 3}}


@pytest.mark.parametrize("config, message", [
    ({"rawdir": "x"}, r"unknown key 'rawdir'"),
    ({"demo": {"sise": 3}}, r"unknown key 'demo.sise'"),
    ({"demo": {"size": 10}}, r"key 'demo.size': 10 is less than the minimum of 64"),
    ({"results_dir": ""}, r"key 'results_dir'"),
    ({"inventory": {"extensions": ["fits"]}}, r"key 'inventory.extensions.0'"),
])
def test_bad_values_are_named(config, message):
    with pytest.raises(ConfigError, match=message):
        validate(config, schema=CONFIG_SCHEMA)


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILES.glob("*.yaml")))
def test_every_shipped_profile_validates(name):
    prof = load_profile(name, profiles_dir=PROFILES, schema=SCHEMAS / "instrument.schema.yaml")
    assert prof["name"] == name
    assert prof["classification"], "a profile without rules classifies nothing"
    assert prof["keywords"]["exptime"]


def test_profile_by_path_and_unknown_name(tmp_path):
    path = tmp_path / "cam.yaml"
    path.write_text("name: cam\nclassification:\n  - {type: bias, when: {exptime: {max: 0}}}\n")
    assert load_profile(str(path), profiles_dir=PROFILES,
                        schema=SCHEMAS / "instrument.schema.yaml")["name"] == "cam"
    with pytest.raises(ConfigError, match=r"unknown instrument 'nikel'; known profiles: .*nickel"):
        load_profile("nikel", profiles_dir=PROFILES, schema=SCHEMAS / "instrument.schema.yaml")
    path.write_text("name: cam\nclassification:\n  - {type: biass, when: {EXPTIME: {max: 0}}}\n")
    with pytest.raises(ConfigError, match=r"cam.yaml key 'classification.0.type'"):
        load_profile(str(path), profiles_dir=PROFILES, schema=SCHEMAS / "instrument.schema.yaml")
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"cam.yaml is not valid YAML"):
        load_profile(str(path), profiles_dir=PROFILES, schema=SCHEMAS / "instrument.schema.yaml")
