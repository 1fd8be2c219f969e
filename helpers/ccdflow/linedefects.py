"""Hot and dead columns (and rows) of a CCD, from a series of frames.

A CCD's charge traps and defects make whole columns (or segments of them, from the
trap to the readout) stand high, and dead columns stay at zero; one pixel wide, they
have shoulders along the column and are no spikes for
:func:`ccdflow.hotpixels.hot_pixel_candidates`.  Each frame votes for column segments
(:func:`line_defect_votes`): the median of each column over blocks of ``block_px``
rows against the median of its 8 neighbouring columns in the same block, beyond
``nsigma`` × that median's noise (``1.2533·σ/√block_px``), high, or low by that and
by half the neighbours' signal (a column of merely lower response is the flat's to
correct); the same along rows.  Blocks voted for in enough frames, in runs of at
least ``min_length_px``, are segments (:func:`line_defect_maps`) — a star covers a
few rows, so its column's block median barely moves, and it spans less — whose ends
are then found pixel by pixel (:func:`refine_line_ends`).
:func:`ccdflow.hotpixels.hot_pixel_map` makes hot segments HOT and dead ones BAD.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import HotPixelError

__all__ = ["add_line_votes", "line_defect_maps", "line_defect_votes", "line_names",
           "refine_line_ends"]


def line_defect_votes(*, data: np.ndarray, read_noise_e: float, nsigma: float = 5.0,
                      block_px: int = 16, dead_fraction: float = 0.5, axis: int = 0,
                      mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column (``axis=0``) or row (``axis=1``) segments of one frame (e-) that stand
    above, or below, their neighbours.

    Parameters
    ----------
    data : ndarray
        One frame in electrons (overscan-subtracted, trimmed).
    read_noise_e : float
        Read noise (e-), for the pixel noise ``√(level + RN²)``.
    nsigma : float
        A block median's excess over its neighbours', in units of its noise.
    block_px : int
        Pixels per block along the line (a short remainder at the end is judged
        with the last block).
    dead_fraction : float
        A low segment must also lack this fraction of its neighbours' signal.
    axis : int
        0: columns (blocks of rows); 1: rows (blocks of columns).
    mask : ndarray of bool, optional
        Pixels left out of the medians (non-finite, no data).

    Returns
    -------
    high, low : ndarray of bool
        ``(n_blocks, n_lines)``: block ``b`` of line ``i`` covers pixels
        ``b·block_px`` up to the next block's start (:func:`_block_starts`).
    """
    if block_px < 4:
        raise HotPixelError(f"block_px must be >= 4, got {block_px}")
    if axis not in (0, 1):
        raise HotPixelError(f"axis must be 0 (columns) or 1 (rows), got {axis}")
    level = _block_medians(np.asarray(data, np.float32), block_px, axis,
                           None if mask is None else np.asarray(mask, bool))
    if level.shape[0] == 0:
        return np.zeros(level.shape, bool), np.zeros(level.shape, bool)
    around = _neighbour_median(level)
    sigma = 1.2533 * np.sqrt((np.clip(around, 0.0, None) + float(read_noise_e) ** 2)
                             / block_px)
    finite = np.isfinite(level) & np.isfinite(around)
    # dead: below half its neighbours' signal too (a column of lower response is the
    # flat's to correct, not a defect to mask)
    return (finite & (level - around > nsigma * sigma),
            finite & (around - level > np.maximum(nsigma * sigma, dead_fraction * around)))


def _block_medians(values: np.ndarray, block_px: int, axis: int,
                   mask: np.ndarray | None) -> np.ndarray:
    """``(n_blocks, n_lines)`` medians of each line over blocks of ``block_px`` pixels
    (the upper median of an even count: a partition, 8× faster than np.median); a
    block with unusable pixels has the median of the others (NaN when none is left)."""
    n_along = values.shape[axis]
    n_blocks = n_along // block_px
    used = n_blocks * block_px
    if axis == 0:  # (n_blocks, block, nx) -> (n_blocks, nx, block)
        blocks = values[:used].reshape(n_blocks, block_px, -1).transpose(0, 2, 1)
        bad = None if mask is None else mask[:used].reshape(n_blocks, block_px, -1
                                                              ).transpose(0, 2, 1)
    else:  # (ny, n_blocks, block) -> (n_blocks, ny, block)
        blocks = values[:, :used].reshape(-1, n_blocks, block_px).transpose(1, 0, 2)
        bad = None if mask is None else mask[:, :used].reshape(-1, n_blocks, block_px
                                                                 ).transpose(1, 0, 2)
    blocks = np.array(blocks, np.float32)  # a contiguous copy to partition in place
    bad = ~np.isfinite(blocks) if bad is None else (bad | ~np.isfinite(blocks))
    affected = bad.any(axis=2)
    patched = np.where(bad[affected], np.nan, blocks[affected]) if affected.any() else None
    blocks.partition(block_px // 2, axis=2)
    level = blocks[:, :, block_px // 2]
    if patched is not None:  # the blocks with unusable pixels: the median of the rest
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a fully masked block: NaN
            level[affected] = np.nanmedian(patched, axis=1)
    return level


def _neighbour_median(level: np.ndarray, half_width: int = 4) -> np.ndarray:
    """Median of the ``half_width`` lines on each side of every line (itself left
    out), over those inside the frame and finite: an edge column is compared with
    the columns next to it, not with copies of itself or of a defective edge."""
    n_blocks, n = level.shape
    padded = np.full((n_blocks, n + 2 * half_width), np.nan, np.float32)
    padded[:, half_width:half_width + n] = level
    offsets = [d for d in range(-half_width, half_width + 1) if d != 0]
    shifts = [padded[:, half_width + d:half_width + d + n] for d in offsets]
    if half_width == 4:  # 8 neighbours: a sorting network, 5x faster than a partition
        ordered = _sort8(shifts)
        out = 0.5 * (ordered[3] + ordered[4])
    else:
        out = np.median(np.stack(shifts), axis=0)
    redo = ~np.isfinite(out)  # a NaN neighbour (beyond the edges, a NaN block) spreads
    if redo.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no finite neighbour: NaN
            out[redo] = np.nanmedian(np.stack([a[redo] for a in shifts], axis=-1), axis=-1)
    return out


#: an optimal sorting network for 8 inputs (19 comparators; Knuth, TAOCP vol. 3, 5.3.4)
_NETWORK_8 = [(0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7), (0, 1), (2, 3),
              (4, 5), (6, 7), (2, 4), (3, 5), (1, 4), (3, 6), (1, 2), (3, 4), (5, 6)]


def _sort8(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The element-wise order statistics of 8 equal-shaped arrays (NaN-free)."""
    out = list(arrays)
    for i, j in _NETWORK_8:
        out[i], out[j] = np.minimum(out[i], out[j]), np.maximum(out[i], out[j])
    return out


def _block_starts(n: int, block_px: int) -> np.ndarray:
    """First row of each block of ``block_px`` rows (the last one covers the rest)."""
    return np.arange(n // block_px) * block_px


def _line_segments(votes: np.ndarray, *, min_blocks: int) -> np.ndarray:
    """``votes`` (n_blocks, nx) kept only in runs of ≥ ``min_blocks`` blocks along axis 0."""
    keep = np.zeros_like(votes)
    for x in np.nonzero(votes.sum(axis=0) >= min_blocks)[0]:
        for a, b in _runs(votes[:, x]):
            if b - a >= min_blocks:
                keep[a:b, x] = True
    return keep


def _blocks_to_pixels(blocks: np.ndarray, n: int, block_px: int) -> np.ndarray:
    """A (n_blocks, nx) block map as an (n, nx) pixel map."""
    starts = _block_starts(n, block_px)
    ends = np.append(starts[1:], n)
    return np.repeat(blocks, ends - starts, axis=0) if len(starts) else np.zeros(
        (n, blocks.shape[1]), bool)


def add_line_votes(line_votes: dict | None, data: np.ndarray, read_noise_e: float, *,
                    nsigma: float, block_px: int, mask: np.ndarray) -> dict:
    """``line_votes`` plus one frame's votes for high and low column and row segments."""
    cols, rows = (line_defect_votes(data=data, read_noise_e=read_noise_e, nsigma=nsigma,
                                    block_px=block_px, mask=mask, axis=axis)
                  for axis in (0, 1))
    frame = {"col_high": cols[0], "col_low": cols[1], "row_high": rows[0], "row_low": rows[1]}
    if line_votes is None:
        return {k: v.astype(np.uint16) for k, v in frame.items()}
    return {k: line_votes[k] + frame[k] for k in frame}


def line_defect_maps(line_votes: dict, *, needed: int, shape: tuple[int, int], block_px: int,
                  min_blocks: int) -> dict[tuple[str, int], np.ndarray]:
    """Pixel maps of the segments voted for in ≥ ``needed`` frames and ≥ ``min_blocks``
    blocks long, keyed ``(kind, axis)``: ``('high', 0)`` are hot columns as an
    ``(ny, nx)`` map, ``('high', 1)`` hot rows as an ``(nx, ny)`` one (lines along the
    first axis in both)."""
    ny, nx = shape
    out = {}
    for kind in ("high", "low"):
        for axis, prefix, length in ((0, "col", ny), (1, "row", nx)):
            blocks = _line_segments(line_votes[f"{prefix}_{kind}"] >= needed,
                                    min_blocks=min_blocks)
            out[kind, axis] = _blocks_to_pixels(blocks, length, block_px)
    return out


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the runs of True in a 1-D array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0], strict=True))


def refine_line_ends(maps: dict[tuple[str, int], np.ndarray], *,
                     frames: Iterable[tuple[np.ndarray, float]], nsigma: float, block_px: int,
                     dead_fraction: float = 0.5) -> dict[tuple[str, int], np.ndarray]:
    """The segments of :func:`line_defect_maps` with their ends found pixel by pixel.

    A block votes with its median, so a segment's ends are known to a block; here each
    pixel within a block of an end is judged on its own: its excess over the median of
    the 8 neighbouring pixels across the line, the median over ``frames`` (``(data in
    e-, read noise e-)``, e.g. 15 of the night's, bias-subtracted), against ``nsigma``
    × that median's noise (the same tests as the blocks'), and the end put where two
    consecutive pixels pass (:func:`_segment_end`)."""
    strips = [(key, x, max(end - block_px, 0), min(end + block_px, m.shape[0]), is_start)
              for key, m in maps.items() for x in np.nonzero(m.any(axis=0))[0]
              for run in _runs(m[:, x]) for end, is_start in zip(run, (True, False),
                                                                  strict=True)]
    if not strips:
        return maps
    samples: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in strips]
    noise_e = []
    for data, read_noise_e in frames:
        data = np.asarray(data, np.float64)
        noise_e.append(float(read_noise_e))
        for sample, ((_, axis), x, lo, hi, _) in zip(samples, strips, strict=True):
            view = data if axis == 0 else data.T
            across = [x + d for d in range(-4, 5) if d and 0 <= x + d < view.shape[1]]
            sample.append((view[lo:hi, x], np.median(view[lo:hi][:, across], axis=1)))
    if not samples[0]:
        return maps
    out = {key: m.copy() for key, m in maps.items()}
    for sample, ((kind, axis), x, lo, hi, is_start) in zip(samples, strips, strict=True):
        here = np.array([h for h, _ in sample])
        around = np.array([a for _, a in sample])
        excess = np.median(here - around, axis=0)
        level = np.clip(np.median(around, axis=0), 0.0, None)
        sigma = 1.2533 * np.sqrt((level + np.median(noise_e) ** 2) / len(sample))
        verdict = (excess > nsigma * sigma if kind == "high" else
                   -excess > np.maximum(nsigma * sigma, dead_fraction * level))
        out[kind, axis][lo:hi, x] = _segment_end(verdict, is_start=is_start)
    return out


def _segment_end(verdict: np.ndarray, *, is_start: bool) -> np.ndarray:
    """The pixels of a strip across one end of a segment that belong to it: from the
    first pair of consecutive defective pixels on (a start), or up to the last pair (a
    stop).  One pixel that passes inside (a hot pixel on a dead column) or one noise
    spike outside moves no end; no pair at all ends the segment at the strip's edge."""
    pairs = np.nonzero(verdict[:-1] & verdict[1:])[0]
    keep = np.zeros(verdict.shape, bool)
    if is_start:
        keep[pairs[0] if pairs.size else verdict.size:] = True
    else:
        keep[:pairs[-1] + 2 if pairs.size else 0] = True
    return keep


def line_names(maps: dict[tuple[str, int], np.ndarray], kind: str) -> list[str]:
    """'x=201 (y=1-500)' for each column, 'y=...' for each row, of one kind."""
    return [_describe_line("xy"[axis], x, maps[kind, axis][:, x])
            for axis in (0, 1) for x in np.nonzero(maps[kind, axis].any(axis=0))[0]]


def _describe_line(axis: str, index: int, pixels: np.ndarray) -> str:
    """'x=201 (y=1-500)': a flagged column or row, 1-based, with its extent (first to
    last flagged pixel)."""
    along = np.nonzero(pixels)[0]
    other = "y" if axis == "x" else "x"
    return f"{axis}={index + 1} ({other}={along[0] + 1}-{along[-1] + 1})"
