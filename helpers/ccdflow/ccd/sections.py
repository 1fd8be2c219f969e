"""IRAF sections (``[x1:x2,y1:y2]``, 1-based, inclusive, x along a row), the overscan
and trim regions an instrument profile names, binning, and the profile's detector
constants (a number, or a header keyword with a default)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import CalibrationError

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


def parse_section(text: str) -> tuple[slice, slice, bool, bool]:
    """Parse an IRAF section into 0-based ``(rows, cols)`` slices and flip flags.

    Parameters
    ----------
    text : str
        ``[x1:x2,y1:y2]``, 1-based inclusive; blanks allowed.

    Returns
    -------
    rows, cols : slice
    flip_x, flip_y : bool
        True where the range was given high-to-low.
    """
    match = _SECTION.match(str(text).strip())
    if not match:
        raise ValueError(f"not an IRAF section [x1:x2,y1:y2]: {text!r}")
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    if min(x1, x2, y1, y2) < 1:
        raise ValueError(f"section {text!r} is 1-based; 0 is not a valid pixel")
    return (slice(min(y1, y2) - 1, max(y1, y2)), slice(min(x1, x2) - 1, max(x1, x2)),
            x1 > x2, y1 > y2)


def detector_constant(spec: Any, headers: Sequence[Mapping], *, name: str, where: str) -> float:
    """A number from the profile: a constant, or ``{keyword, default}`` read from ``headers``.

    ``headers`` are tried in order (amplifier header before primary).
    """
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return float(spec)
    if isinstance(spec, Mapping) and "keyword" in spec:
        for header in headers:
            if spec["keyword"] in header:
                value = header[spec["keyword"]]
                try:
                    return float(value)
                except (TypeError, ValueError):
                    raise CalibrationError(
                        f"{where}: {spec['keyword']}={value!r} is not a number ({name})"
                    ) from None
        if spec.get("default") is not None:
            return float(spec["default"])
        raise CalibrationError(f"{where}: no {spec['keyword']} keyword for {name} and no "
                               "default in the instrument profile")
    raise CalibrationError(f"{where}: profile gives no {name}")


def _section_from(kind: str, cfg: Mapping, header: Mapping, shape: tuple[int, int], *,
                  where: str, what: str) -> tuple[slice, slice] | None:
    """Resolve the overscan or trim region of one amplifier (None: not applicable)."""
    source = cfg.get("from", "none" if what == "overscan" else "full")
    if source == "none":
        return None
    if source == "full":
        return slice(0, shape[0]), slice(0, shape[1])
    if source == "cover":
        keyword = cfg.get("keyword", "COVER")
        if keyword not in header:
            raise CalibrationError(f"{where}: no {keyword} keyword for the {what} columns")
        ncols = int(header[keyword])
        if not 0 < ncols < shape[1]:
            raise CalibrationError(f"{where}: {keyword}={ncols} is not a usable column count")
        return slice(0, shape[0]), slice(shape[1] - ncols, shape[1])
    if source == "section":
        text = cfg.get("section")
    else:  # biassec, trimsec, datasec: a header keyword
        keyword = cfg.get("keyword", source.upper())
        text = header.get(keyword)
        if text is None or str(text).strip().upper() in ("", "UNKNOWN", "N/A"):
            raise CalibrationError(f"{where}: no usable {keyword} keyword for the {what} region "
                                   f"(found {text!r}); set detector.{what} in the profile")
    try:
        rows, cols, _, _ = parse_section(text)
    except ValueError as exc:
        raise CalibrationError(f"{where}: {what} {exc}") from None
    if rows.stop > shape[0] or cols.stop > shape[1]:
        raise CalibrationError(f"{where}: {what} section {text} exceeds the image "
                               f"({shape[1]}x{shape[0]})")
    return rows, cols


def _binning(header: Mapping) -> tuple[int, int]:
    parts = re.findall(r"\d+", str(header.get("CCDSUM", "1 1")))
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 else (1, 1)
