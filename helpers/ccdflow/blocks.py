"""Block statistics of an image whose shape need not divide by the block size."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

__all__ = ["nan_block_reduce"]


def nan_block_reduce(image: np.ndarray, *, box: int,
                     func: Callable[..., np.ndarray] = np.nanmean) -> np.ndarray:
    """``func`` (NaN-aware, e.g. ``np.nanmean``, ``np.nanmedian``) of each ``box``×``box``
    block of ``image``, the last row and column of blocks padded with NaN (so they reduce
    what they hold); a block all NaN gives NaN.  Shape ``(⌈ny/box⌉, ⌈nx/box⌉)``."""
    if box < 1:
        raise ValueError(f"box must be >= 1, got {box}")
    ny, nx = image.shape
    by, bx = -(-ny // box), -(-nx // box)
    padded = np.full((by * box, bx * box), np.nan)
    padded[:ny, :nx] = image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        return func(padded.reshape(by, box, bx, box), axis=(1, 3))
