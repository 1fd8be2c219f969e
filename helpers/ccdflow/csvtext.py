"""CSV text of a plain table, byte for byte as ``DataFrame.to_csv(index=False)`` writes it.

A frame's photometry table (608 rows × 33 columns on the demo night) took
pandas' ``to_csv`` 18 ms and takes :func:`csv_text` 8 ms, in every frame of a
photometry job; a light curve's small file (24 rows) takes either ~0.6 ms.
:func:`csv_text` formats the columns pandas formats simply (floats,
integers, booleans, strings) the way it does: floats as their shortest
round-trip repr (numpy's ``str``, which is Python's ``repr`` for float64),
NaN as an empty field, strings quoted only when they hold the separator or a
quote (``csv.QUOTE_MINIMAL``).  Anything else gives ``None`` and the caller lets
pandas write it.  ``tests/test_io.py`` puts pandas' bytes beside these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas is imported by the callers
    import pandas as pd

__all__ = ["csv_text", "number_strings", "record_text"]


class _NotPlain(Exception):
    """A column pandas formats in a way this module does not copy."""


def _field(text: str, sep: str) -> str:
    if "\n" in text or "\r" in text:  # csv's rules for line breaks: pandas writes it
        raise _NotPlain("line break in a field")
    if sep in text or '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def number_strings(values: np.ndarray, *, na: str) -> list[str] | None:
    """Text of a float, integer or bool column as pandas' ``to_csv`` and astropy's ECSV
    writer put it: floats as their shortest round-trip repr (Python's ``repr`` for
    float64, numpy's ``str`` for float16/32), NaN as ``na``; None for other dtypes."""
    kind = values.dtype.kind
    if kind == "f" and values.dtype == np.float64:
        return [na if v != v else repr(v) for v in values.tolist()]
    if kind == "f" and values.dtype.itemsize in (2, 4):
        return [na if v != v else str(v) for v in values]
    if kind in "iu":
        return [str(v) for v in values.tolist()]
    if kind == "b":
        return ["True" if v else "False" for v in values.tolist()]
    return None


def _strings(values: np.ndarray, sep: str) -> list[str]:
    numbers = number_strings(values, na="")
    if numbers is not None:
        return numbers
    if values.dtype.kind == "O":
        out = []
        for v in values.tolist():
            if isinstance(v, str):
                out.append(_field(v, sep))
            elif v is None or (isinstance(v, float) and v != v):
                out.append("")
            else:
                raise _NotPlain(f"object column holding {type(v).__name__}")
        return out
    raise _NotPlain(f"dtype {values.dtype}")


def _check_sep(sep: str) -> None:
    if len(sep) != 1 or sep in '"\r\n':
        raise ValueError(f"sep must be one character other than a quote or line break, "
                         f"got {sep!r}")


def _plain_labels(labels: Sequence[Any]) -> bool:
    """Two or more string labels (one column: csv writes an empty field alone on its
    line as "", as pandas does: left to pandas)."""
    return len(labels) >= 2 and all(isinstance(c, str) for c in labels)


def _table_text(labels: Sequence[str], columns: Iterable[np.ndarray], sep: str) -> str | None:
    """Header line and one line per row of ``columns`` (numpy arrays, in ``labels``'
    order), or ``None`` when a column is not plain."""
    try:
        header = sep.join(_field(c, sep) for c in labels)
        fields = [_strings(values, sep) for values in columns]
    except _NotPlain:
        return None
    lines = [header, *(sep.join(row) for row in zip(*fields, strict=True))]
    return "\n".join(lines) + "\n"


def csv_text(frame: pd.DataFrame, *, sep: str = ",") -> str | None:
    """The CSV text of ``frame`` (header line, then one line per row, no index), or
    ``None`` when a column or label is one that pandas should format itself.

    Parameters
    ----------
    frame : DataFrame
        Not modified.  Columns of dtype float64/32/16, signed or unsigned
        integers, bool, or object holding ``str`` (``None`` and NaN as empty
        fields); string column labels; two or more columns.
    sep : str
        One-character field separator (not a quote or line break).

    Returns
    -------
    str or None
        Exactly ``frame.to_csv(index=False, sep=sep)``, or ``None``.
    """
    _check_sep(sep)
    labels = list(frame.columns)
    if not _plain_labels(labels):
        return None
    import pandas as pd

    # numpy dtypes and pandas' strings (the default for text since pandas 3); other
    # extension dtypes (nullable integers, categoricals, dates...) format their own way
    if not all(isinstance(dtype, np.dtype | pd.StringDtype) for dtype in frame.dtypes):
        return None
    # column by column (items(): a third of iloc's cost per column)
    return _table_text(labels, (column.to_numpy() for _, column in frame.items()), sep)


def record_text(record: Mapping[str, Any], *, sep: str = ",") -> str | None:
    """The CSV text of one row, ``pandas.DataFrame([record]).to_csv(index=False)``, without
    pandas (a job writing a one-row report need not import it: ~0.3 s); ``None`` when a
    value is not a plain number, bool, string or None/NaN."""
    _check_sep(sep)
    labels = list(record)
    if not _plain_labels(labels):
        return None
    columns = []
    for value in record.values():
        if value is None or isinstance(value, str):
            columns.append(np.array([value], dtype=object))
        elif isinstance(value, bool | int | float | np.bool_ | np.integer | np.floating):
            columns.append(np.asarray([value]))
        else:
            return None
    return _table_text(labels, columns, sep)
