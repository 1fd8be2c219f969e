"""Calibration groups: which frames can share masters.

A frame's group is its instrument, binning, shape (and number of amplifiers), readout
mode and, for a subframe read out away from the detector's corner, its origin
(``at<x0>-<y0>``): frames of one group have the same pixels on the detector, read the
same way.  :func:`group_fields` gives the inventory's columns of one header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .headertime import _as_float, _first

__all__ = ["group_fields", "parse_shape"]


def parse_shape(text: Any) -> tuple[int, int] | None:
    """(ny, nx) of an inventory ``shape`` 'NAXIS2xNAXIS1' (:func:`group_fields`), None
    when it is not one (a rejected file's empty shape)."""
    try:
        ny, nx = (int(v) for v in str(text).split("x")[:2])
    except ValueError:
        return None
    return ny, nx


def group_fields(header: Mapping, *, keywords: Mapping[str, Sequence[str]], n_ext: int,
                 shape: tuple[int, int], default_instrument: str = "") -> dict[str, Any]:
    """``instrument, readout, binning, shape, subframe_x0, subframe_y0, group`` of a
    frame (``shape`` is (ny, nx) of its first image HDU, ``n_ext`` its image HDUs)."""
    instrument = str(_first(header, keywords.get("instrument", [])) or default_instrument)
    readout = _first(header, keywords.get("readout", []))
    readout = "" if readout is None else str(readout).strip()
    binning = _binning(header, keywords)
    shape_text = f"{shape[0]}x{shape[1]}"
    x0, y0 = _subframe_origin(header, keywords)
    group = "_".join([_slug(instrument), binning, shape_text + (f"x{n_ext}" if n_ext > 1 else ""),
                      _slug(readout) if readout else "default"]
                     + ([f"at{x0}-{y0}"] if x0 or y0 else []))
    return dict(instrument=instrument, readout=readout, binning=binning, shape=shape_text,
                subframe_x0=x0, subframe_y0=y0, group=group)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "na"


def _binning(header: Mapping, keywords: Mapping[str, Sequence[str]]) -> str:
    text = _first(header, keywords.get("binning", []))
    if isinstance(text, str):
        parts = re.findall(r"\d+", text)
        if len(parts) == 2:
            return f"{parts[0]}x{parts[1]}"
    xb = _as_float(_first(header, keywords.get("xbinning", [])))
    yb = _as_float(_first(header, keywords.get("ybinning", [])))
    return f"{int(xb or 1)}x{int(yb or xb or 1)}"


def _subframe_origin(header: Mapping, keywords: Mapping[str, Sequence[str]]) -> tuple[int, int]:
    """The subframe's origin on the detector (binned pixels, 0-based; MaxIm DL and ASCOM
    write XORGSUBF/YORGSUBF), (0, 0) without the keywords or with values not whole
    numbers ≥ 0."""
    def origin(field: str, default: str) -> int:
        value = _as_float(_first(header, keywords.get(field, [default])))
        return int(value) if value is not None and value >= 0 and value == int(value) else 0

    return origin("subframe_x", "XORGSUBF"), origin("subframe_y", "YORGSUBF")
