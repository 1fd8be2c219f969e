"""Config and profile validation: defaults filled, wrong keys and values named."""

from __future__ import annotations

import pytest

from ccdflow.config import ConfigError, check_photometry, load_profile, load_yaml, validate

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


@pytest.mark.parametrize("photometry, message", [
    ({"annulus": {"inner": 7, "outer": 4}}, r"'photometry\.annulus': inner 7 must be below "
                                            r"outer 4"),
    ({"radii_fwhm": []}, r"'photometry\.radii_px' and 'photometry\.radii_fwhm' are both empty"),
    ({"radii_px": [3, 5], "annulus": {"unit": "px", "inner": 4, "outer": 9}},
     r"'photometry\.annulus\.inner': 4 px is inside the largest aperture, 5 px "
     r"\(photometry\.radii_px\)"),
    ({"radii_fwhm": [1.5, 5]}, r"4 fwhm is inside the largest aperture, 5 fwhm"),
])
def test_photometry_keys_that_conflict_are_named(photometry, message):
    # conflicts the schema cannot express stop the run before any job (common.smk)
    config = validate({"photometry": photometry}, schema=CONFIG_SCHEMA)
    with pytest.raises(ConfigError, match=message):
        check_photometry(config["photometry"])


def test_photometry_keys_that_agree_pass():
    # the defaults; fixed radii inside a px annulus; any radii with the map as the sky;
    # px radii beside a fwhm annulus (their conflict depends on the frame: checked there)
    for photometry in ({}, {"radii_px": [3, 5], "radii_fwhm": [], "annulus": {
            "unit": "px", "inner": 8, "outer": 12}}, {"radii_fwhm": [9], "background": "map"},
            {"radii_px": [30]}):
        check_photometry(validate({"photometry": photometry}, schema=CONFIG_SCHEMA)["photometry"])


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
