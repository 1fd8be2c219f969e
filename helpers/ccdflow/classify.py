"""A frame's type and observing mode from its header, by the profile's ordered rules.

A rule is ``{type (or mode), when: {name: test}}``; ``name`` is a canonical field
in lower case (``imagetyp``, ``object``, ``exptime`` …, read through the profile's
``keywords``) or a header keyword as written, and ``test`` any of ``present``,
``in`` (case- and space-insensitive), ``regex`` (case-insensitive), ``min``, ``max``.
The first rule whose tests all hold decides (:func:`classify`, :func:`observing_mode`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .headertime import _as_float, _first

__all__ = ["classify", "observing_mode"]


def _norm(value: Any) -> str:
    return " ".join(str(value).split()).lower()


def _value_for(name: str, header: Mapping, keywords: Mapping[str, Sequence[str]]) -> Any:
    """Lower-case ``name`` is a canonical field (via the profile's keywords), else a keyword."""
    if name.islower() and name in keywords:
        return _first(header, keywords[name])
    return _first(header, [name])


def _test(value: Any, test: Mapping[str, Any]) -> bool:
    if "present" in test and (value is not None) != test["present"]:
        return False
    if ("in" in test or "regex" in test or "min" in test or "max" in test) and value is None:
        return False
    if "in" in test and _norm(value) not in {_norm(v) for v in test["in"]}:
        return False
    if "regex" in test and not re.search(test["regex"], str(value), flags=re.IGNORECASE):
        return False
    if "min" in test or "max" in test:
        number = _as_float(value)
        if number is None:
            return False
        if "min" in test and number < test["min"]:
            return False
        if "max" in test and number > test["max"]:
            return False
    return True


def observing_mode(*, header: Mapping, profile: Mapping) -> str:
    """The frame's observing mode: the first of the profile's ``modes`` rules whose
    conditions all hold, else the profile's ``mode`` (default ``imaging``)."""
    keywords = profile.get("keywords", {})
    for rule in profile.get("modes", []):
        values = {name: _value_for(name, header, keywords) for name in rule["when"]}
        if all(_test(values[name], test) for name, test in rule["when"].items()):
            return rule["mode"]
    return str(profile.get("mode", "imaging"))


def classify(*, header: Mapping, profile: Mapping) -> tuple[str, str]:
    """Frame type by the profile's ordered rules; returns ``(type, rule description)``.

    ``unknown`` with an explanation when no rule matches.
    """
    keywords = profile.get("keywords", {})
    for i, rule in enumerate(profile.get("classification", []), start=1):
        values = {name: _value_for(name, header, keywords) for name in rule["when"]}
        if all(_test(values[name], test) for name, test in rule["when"].items()):
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            return rule["type"], f"rule {i}: {shown}"
    seen = {k: _first(header, keywords.get(k, [])) for k in ("imagetyp", "object", "exptime")}
    shown = ", ".join(f"{k}={v!r}" for k, v in seen.items())
    return "unknown", f"no classification rule matched ({shown})"

