"""Hot and warm pixels from the science frames themselves, for cameras without darks.

A hot pixel stays high at the same detector position in every frame while the
stars drift and cosmic rays come and go.  Each frame (in electrons, after
overscan and trim) votes for pixels that stand out of their 3×3 neighbourhood
like a single-pixel spike:

    around   = median of the 16 pixels of the 5×5 box's outer ring
    excess   = value − around                                  > nsigma · σ
    shoulder = mean of the 4 nearest neighbours − around       < shoulder_fraction · excess + σ

with ``σ = √(max(around, 0) + RN²)`` the pixel's own noise (σ is also about
twice the noise of the 4-neighbour mean).  A star's core has shoulders (a
star of FWHM 1.5 px puts 29 % of its peak in each nearest neighbour when
centred on a pixel, more otherwise; 15 % at FWHM 1.2 px); a hot pixel does
not.  A pixel voted for in at least ``persistence`` of the frames is HOT: a
cosmic ray hits one frame, a drifting star sits on a pixel for a few.

*Hot and dead columns.*  A CCD's charge traps and defects make whole columns (or
segments of them, from the trap to the readout) stand high, and dead columns stay
at zero; one pixel wide, they have shoulders along the column and are no spikes.
Each frame also votes for column segments (:func:`line_defect_votes`): the median
of each column over blocks of ``block_px`` rows against the median of its 8
neighbouring columns in the same block, beyond ``nsigma`` × that median's noise
(``1.2533·σ/√block_px``), high, or low by that and by half the neighbours' signal
(a column of merely lower response is the flat's to correct); the same along rows.
A segment voted for in ``persistence`` of the frames and at least ``min_length_px``
long is a defect: HOT when high (its rate is measured like a hot pixel's), BAD when
low (no signal to correct); near its ends each pixel is judged on its own
(:func:`_refine_line_ends`).  A star covers a
few rows, so its column's block median barely moves, and it spans less than
``min_length_px``.

The map is OR-ed into the bad-pixel mask of the night's calibration group
(:func:`ccdflow.calibrate.make_bad_pixel_mask`) when no dark is subtracted, so
every calibrated frame's MASK carries it as ``HOT``.

*The series as its own dark.*  A hot pixel's dark charge is measured from the
same frames (:func:`hot_pixel_rates`): its excess over the ring in each frame per
second of exposure, the median over the frames (a star or a cosmic ray sits on
the pixel in a few of them), with the error ``1.253·σ_rob/√N``.  Calibration then
subtracts ``rate × EXPTIME`` at HOT pixels, as a master dark would, and the
pixel is measured (its ERR_CAL holds the rate's error) rather than filled.  A
pixel whose excess varies more than ``max_instability`` × its noise from frame
to frame (random-telegraph pixels), or that was saturated in most frames, gets
no rate: it is HOT and BAD, and photometry fills it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

__all__ = ["HotPixelError", "hot_pixel_candidates", "hot_pixel_map", "hot_pixel_rates",
           "line_defect_votes", "write_hot_pixel_map"]

_RING = np.ones((5, 5), bool)
_RING[1:4, 1:4] = False
_CROSS = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], float) / 4.0


class HotPixelError(ValueError):
    """A hot-pixel map cannot be made; the message says why."""


def hot_pixel_candidates(*, data: np.ndarray, read_noise_e: float, nsigma: float = 5.0,
                         shoulder_fraction: float = 0.1,
                         mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels of one frame (e-) that stand out of their neighbours like a spike.

    Parameters
    ----------
    data : ndarray
        One frame in electrons (overscan-subtracted, trimmed).
    read_noise_e : float
        Read noise (e-), for the pixel noise ``√(level + RN²)``.
    nsigma : float
        Excess over the local level (5×5 outer ring), in units of the pixel noise.
    shoulder_fraction : float
        Largest mean excess of the 4 nearest neighbours, as a fraction of the
        pixel's excess (plus their noise), for a spike rather than a star.
    mask : ndarray of bool, optional
        Pixels that cannot vote (non-finite, no data).

    Returns
    -------
    ndarray of bool
    """
    if nsigma <= 0:
        raise HotPixelError(f"nsigma must be > 0, got {nsigma}")
    values = np.nan_to_num(np.asarray(data, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    rn2 = float(read_noise_e) ** 2
    # the ring median only where a spike can be: (v − a)/√(a⁺ + RN²) falls as the level a
    # rises, and the 5×5 minimum (a superset of the ring) is at most the ring's median,
    # so pixels failing the test with the minimum fail it with the median (a full-frame
    # ring median was 75 ms per 0.3 Mpx, 50 frames per night)
    low = ndimage.minimum_filter(values, size=5, mode="nearest")
    bound = (values - low) > nsigma * np.sqrt(np.clip(low, 0.0, None) + rn2)
    ys, xs = np.nonzero(bound)
    spike = np.zeros(values.shape, bool)
    if ys.size:
        around = _ring_median_at(values, ys, xs, upper=True)
        here = values[ys, xs]
        excess = here - around
        sigma = np.sqrt(np.clip(around, 0.0, None) + rn2)
        shoulder = _cross_mean_at(values, ys, xs) - around
        spike[ys, xs] = (excess > nsigma * sigma) & (shoulder < shoulder_fraction * excess
                                                     + sigma)
    if mask is not None:
        spike &= ~np.asarray(mask, bool)
    return spike


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


def _cross_mean_at(values: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``ndimage.correlate(values, _CROSS, mode='nearest')`` at (ys, xs): the mean of the
    4 nearest neighbours, edges repeated."""
    ny, nx = values.shape
    total = np.zeros(ys.size)
    for dy, dx in ((-1, 0), (0, -1), (0, 1), (1, 0)):  # correlate's order: row-major
        total += 0.25 * values[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)]
    return total


def _spread(paths: Sequence[str | Path], n: int) -> list[str | Path]:
    """Up to ``n`` of ``paths``, evenly spread (the frames are in time order)."""
    if len(paths) <= n:
        return list(paths)
    index = np.unique(np.round(np.linspace(0, len(paths) - 1, n)).astype(int))
    return [paths[i] for i in index]


def hot_pixel_map(*, paths: Sequence[str | Path], detector: Mapping, max_frames: int = 50,
                  persistence: float = 0.6, nsigma: float = 5.0, min_frames: int = 5,
                  lines: bool = True, block_px: int = 16, min_length_px: int = 96,
                  bias_e: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """HOT map of a night's science frames (see the module docstring).

    Parameters
    ----------
    paths : sequence of path
        Raw science frames of one night and calibration group, in time order
        (read-only; a frame that cannot be read is skipped and logged).
    detector : mapping
        The profile's detector section (overscan, trim, gain, read noise).
    max_frames : int
        Frames used, evenly spread over the night (the cost per frame is one read
        and two small filters).
    persistence : float
        Fraction of the frames in which a pixel must be a spike.
    min_frames : int
        Fewer usable frames give no map (an empty one, logged): with 2 frames a
        cosmic ray and a hot pixel cannot be told apart.
    lines : bool
        Also find hot and dead column (and row) segments (:func:`line_defect_votes`).
    block_px, min_length_px : int
        Rows per block of a column's median, and the shortest segment kept.
    bias_e : ndarray, optional
        The master bias (e-) the frames will be calibrated with, subtracted
        first: a column or pixel whose bias level stands out is the bias's to
        correct, not a defect.

    Returns
    -------
    hot : ndarray of bool
        Hot pixels and the pixels of hot column or row segments.
    info : dict
        ``n_frames`` used, ``n_hot``, ``skipped`` (files that could not be read),
        ``dead`` (bool map of the dead segments' pixels), ``lines`` (1 on a hot
        column segment, 2 on a hot row segment, 0 elsewhere), ``hot_lines`` and
        ``dead_lines`` (columns or rows with a segment, e.g. ``['x=201 (y=1-500)']``,
        1-based like IRAF sections).
    """
    from .ccd import read_raw_frame

    if not 0 < persistence <= 1:
        raise HotPixelError(f"persistence must be in (0, 1], got {persistence}")
    if not paths:
        raise HotPixelError("no science frames for a hot-pixel map")
    votes, used, skipped, shape, read = None, 0, [], None, []
    line_votes = None
    for path in _spread(list(paths), max_frames):
        try:
            frame = read_raw_frame(path, detector=detector)
        except Exception as exc:  # one unreadable frame never stops the map
            skipped.append(f"{Path(path).name} ({type(exc).__name__}: {exc})")
            log.warning("hot-pixel map: %s skipped (%s)", path, exc)
            continue
        if shape is None:
            shape, votes = frame.data.shape, np.zeros(frame.data.shape, np.uint16)
        if frame.data.shape != shape or (bias_e is not None and bias_e.shape != shape):
            skipped.append(f"{Path(path).name} (shape {frame.data.shape} not "
                           f"{shape if bias_e is None else bias_e.shape})")
            continue
        data = _minus_bias(frame.data, bias_e)
        unusable = frame.nonfinite | frame.no_data
        votes += hot_pixel_candidates(data=data, read_noise_e=frame.read_noise_e,
                                      nsigma=nsigma, mask=unusable)
        if lines:
            line_votes = _add_line_votes(line_votes, data, frame.read_noise_e,
                                         nsigma=nsigma, block_px=block_px, mask=unusable)
        used += 1
        read.append(path)
    if votes is None:
        raise HotPixelError("hot-pixel map: no frame could be read: " + "; ".join(skipped))
    dead = np.zeros(shape, bool)
    line_code = np.zeros(shape, np.int8)
    hot_lines, dead_lines = [], []
    if used < min_frames:
        log.warning("hot-pixel map: only %d usable frames (< %d): no pixel flagged", used,
                    min_frames)
        hot = np.zeros(shape, bool)
    else:
        needed = math.ceil(persistence * used)
        hot = votes >= needed
        if lines:
            maps = _refine_line_ends(
                _line_defects(line_votes, needed=needed, shape=shape, block_px=block_px,
                              min_blocks=math.ceil(min_length_px / block_px)),
                paths=read, detector=detector, bias_e=bias_e, nsigma=nsigma,
                block_px=block_px)
            line_code = np.where(maps["high", 0], 1, np.where(maps["high", 1].T, 2, 0))
            hot |= maps["high", 0] | maps["high", 1].T
            dead = maps["low", 0] | maps["low", 1].T  # a hot pixel there stays BAD too
            hot_lines, dead_lines = _line_names(maps, "high"), _line_names(maps, "low")
    info = {"n_frames": used, "n_hot": int(hot.sum()), "skipped": skipped, "frames": read,
            "dead": dead, "lines": line_code.astype(np.int8), "hot_lines": hot_lines,
            "dead_lines": dead_lines}
    log.info("hot-pixel map from %d frames: %d HOT pixels (%.3f %% of the frame)", used,
             info["n_hot"], 100.0 * hot.mean())
    for kind, found in (("hot", hot_lines), ("dead", dead_lines)):
        if found:
            log.info("%d %s column/row segment(s): %s", len(found), kind, ", ".join(found[:20])
                     + (" ..." if len(found) > 20 else ""))
    return hot, info


def _minus_bias(data: np.ndarray, bias_e: np.ndarray | None) -> np.ndarray:
    return data if bias_e is None else np.asarray(data, np.float64) - bias_e


def _add_line_votes(line_votes: dict | None, data: np.ndarray, read_noise_e: float, *,
                    nsigma: float, block_px: int, mask: np.ndarray) -> dict:
    """``line_votes`` plus one frame's votes for high and low column and row segments."""
    cols, rows = (line_defect_votes(data=data, read_noise_e=read_noise_e, nsigma=nsigma,
                                    block_px=block_px, mask=mask, axis=axis)
                  for axis in (0, 1))
    frame = {"col_high": cols[0], "col_low": cols[1], "row_high": rows[0], "row_low": rows[1]}
    if line_votes is None:
        return {k: v.astype(np.uint16) for k, v in frame.items()}
    return {k: line_votes[k] + frame[k] for k in frame}


def _line_defects(line_votes: dict, *, needed: int, shape: tuple[int, int], block_px: int,
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


def _refine_line_ends(maps: dict[tuple[str, int], np.ndarray], *, paths: Sequence[str | Path],
                      detector: Mapping, bias_e: np.ndarray | None, nsigma: float,
                      block_px: int, dead_fraction: float = 0.5,
                      max_frames: int = 15) -> dict[tuple[str, int], np.ndarray]:
    """The segments of :func:`_line_defects` with their ends found pixel by pixel.

    A block votes with its median, so a segment's ends are known to a block; here each
    pixel within a block of an end is judged on its own: its excess over the median of
    the 8 neighbouring pixels across the line, the median over up to ``max_frames``
    frames, against ``nsigma`` × that median's noise (the same tests as the blocks')."""
    strips = [(key, x, max(end - block_px, 0), min(end + block_px, m.shape[0]), is_start)
              for key, m in maps.items() for x in np.nonzero(m.any(axis=0))[0]
              for run in _runs(m[:, x]) for end, is_start in zip(run, (True, False),
                                                                  strict=True)]
    if not strips:
        return maps
    from .ccd import read_raw_frame

    samples: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in strips]
    read_noise_e = 0.0
    for path in _spread(list(paths), max_frames):
        frame = read_raw_frame(path, detector=detector)
        data = np.asarray(_minus_bias(frame.data, bias_e), np.float64)
        read_noise_e = float(frame.read_noise_e)
        for sample, ((_, axis), x, lo, hi, _) in zip(samples, strips, strict=True):
            view = data if axis == 0 else data.T
            across = [x + d for d in range(-4, 5) if d and 0 <= x + d < view.shape[1]]
            sample.append((view[lo:hi, x], np.median(view[lo:hi][:, across], axis=1)))
    out = {key: m.copy() for key, m in maps.items()}
    for sample, ((kind, axis), x, lo, hi, is_start) in zip(samples, strips, strict=True):
        here = np.array([h for h, _ in sample])
        around = np.array([a for _, a in sample])
        excess = np.median(here - around, axis=0)
        level = np.clip(np.median(around, axis=0), 0.0, None)
        sigma = 1.2533 * np.sqrt((level + read_noise_e**2) / len(sample))
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


def _line_names(maps: dict[tuple[str, int], np.ndarray], kind: str) -> list[str]:
    """'x=201 (y=1-500)' for each column, 'y=...' for each row, of one kind."""
    return [_describe_line("xy"[axis], x, maps[kind, axis][:, x])
            for axis in (0, 1) for x in np.nonzero(maps[kind, axis].any(axis=0))[0]]


def _describe_line(axis: str, index: int, pixels: np.ndarray) -> str:
    """'x=201 (y=1-500)': a flagged column or row, 1-based, with its extent (first to
    last flagged pixel)."""
    along = np.nonzero(pixels)[0]
    other = "y" if axis == "x" else "x"
    return f"{axis}={index + 1} ({other}={along[0] + 1}-{along[-1] + 1})"


def _ring_median_at(values: np.ndarray, ys: np.ndarray, xs: np.ndarray, *,
                    upper: bool = False, skip: str | None = None) -> np.ndarray:
    """Median of the 16 pixels of the 5×5 box's outer ring around each (y, x), edges
    repeated: the mean of the middle two, or with ``upper`` the 9th smallest, which is
    what ``median_filter(footprint=_RING, mode='nearest')`` gives.  ``skip='column'``
    ('row') leaves out the ring's 2 pixels on the pixel's own column (row): for a
    pixel of a hot column, whose column neighbours share its dark charge."""
    ny, nx = values.shape
    dy, dx = np.nonzero(_RING)
    if skip is not None:
        keep = dx != 2 if skip == "column" else dy != 2
        dy, dx = dy[keep], dx[keep]
    ry = np.clip(ys[:, None] + dy[None, :] - 2, 0, ny - 1)
    rx = np.clip(xs[:, None] + dx[None, :] - 2, 0, nx - 1)
    ring = values[ry, rx]
    if upper:
        return np.partition(ring, 8, axis=1)[:, 8]
    return np.median(ring, axis=1)


def hot_pixel_rates(*, paths: Sequence[str | Path], detector: Mapping, hot: np.ndarray,
                    max_instability: float = 2.0, bias_e: np.ndarray | None = None,
                    lines: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Dark rate (e-/s) of each HOT pixel from the science frames themselves.

    Parameters
    ----------
    paths : sequence of path
        The frames the map was made from (read-only).
    detector : mapping
        The profile's detector section.
    hot : ndarray of bool
        The HOT map (:func:`hot_pixel_map`).
    max_instability : float
        A pixel whose frame-to-frame excess scatters more than this × its noise
        (robust) gets no rate (NaN): it is filled, not corrected.
    bias_e : ndarray, optional
        The master bias (e-) subtracted first, as in :func:`hot_pixel_map`: the
        rate is then the dark charge alone, as calibration subtracts it after
        the bias.
    lines : ndarray of int, optional
        1 for a pixel of a hot column segment, 2 of a hot row segment (``info['lines']``
        of :func:`hot_pixel_map`): its excess is taken over the ring without the 2
        pixels on its own column (row), which carry the same dark charge.

    Returns
    -------
    rate, rate_err : ndarray
        e-/s at HOT pixels with a stable rate, NaN elsewhere.
    info : dict
        ``n_rated``, ``n_unstable`` and ``n_frames``.
    """
    from .ccd import read_raw_frame

    ys, xs = np.nonzero(hot)
    along = np.zeros(ys.size, np.int8) if lines is None else np.asarray(lines)[ys, xs]
    rate = np.full(hot.shape, np.nan, np.float32)
    rate_err = np.full(hot.shape, np.nan, np.float32)
    if not len(ys):
        return rate, rate_err, {"n_rated": 0, "n_unstable": 0, "n_frames": 0}
    per_s, noise_s = [], []
    for path in paths:
        try:
            frame = read_raw_frame(path, detector=detector)
        except Exception:  # already logged by the map
            continue
        if frame.data.shape != hot.shape or not frame.exptime_s > 0:
            continue
        values = np.nan_to_num(np.asarray(_minus_bias(frame.data, bias_e), np.float64))
        around = _ring_median_at(values, ys, xs)
        for code, skip in ((1, "column"), (2, "row")):
            on = along == code
            if on.any():
                around[on] = _ring_median_at(values, ys[on], xs[on], skip=skip)
        excess = values[ys, xs] - around
        sigma = np.sqrt(np.clip(around, 0, None) + np.clip(excess, 0, None)
                        + float(frame.read_noise_e) ** 2)
        unusable = frame.saturated[ys, xs] | frame.nonfinite[ys, xs] | frame.no_data[ys, xs]
        per_s.append(np.where(unusable, np.nan, excess / frame.exptime_s))
        noise_s.append(sigma / frame.exptime_s)
    if len(per_s) < 3:
        return rate, rate_err, {"n_rated": 0, "n_unstable": 0, "n_frames": len(per_s)}
    k = np.asarray(per_s)
    sig = np.asarray(noise_s)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no rate
        median = np.nanmedian(k, axis=0)
        n = np.isfinite(k).sum(axis=0)
        spread = 1.4826 * np.nanmedian(np.abs(k - median), axis=0)
        instability = 1.4826 * np.nanmedian(np.abs(k - median) / sig, axis=0)
    stable = (n >= max(3, len(per_s) // 2)) & (instability <= max_instability)
    rate[ys[stable], xs[stable]] = median[stable]
    rate_err[ys[stable], xs[stable]] = 1.2533 * spread[stable] / np.sqrt(n[stable])
    info = {"n_rated": int(stable.sum()), "n_unstable": int((~stable).sum()),
            "n_frames": len(per_s)}
    log.info("hot-pixel dark rates from %d frames: %d HOT pixels corrected, %d unstable or "
             "saturated (left to be filled)", len(per_s), info["n_rated"], info["n_unstable"])
    return rate, rate_err, info


def write_hot_pixel_map(path: str | Path, *, paths: Sequence[str | Path], detector: Mapping,
                        correct: bool = True, max_instability: float = 2.0,
                        bias: str | Path | None = None, **options) -> dict:
    """:func:`hot_pixel_map` written as a mask product (HOT bits; HOT and BAD for a pixel
    without a stable rate or in a dead column) with ``NHOTPIX``, ``NFRAMES``,
    ``NHOTLINE``, ``NDEADLIN`` and the frames used (and the master ``bias``, a product
    path, subtracted first) in its provenance, and (``correct``) the HOTDARK and
    HOTDARK_ERR images of :func:`hot_pixel_rates` (e-/s); returns the info."""
    from .masks import MaskBit
    from .products import read_product, write_mask

    bias_e = None if bias is None else np.asarray(read_product(bias).data, np.float64)
    hot, info = hot_pixel_map(paths=paths, detector=detector, bias_e=bias_e, **options)
    mask = np.where(hot, np.uint16(MaskBit.HOT), np.uint16(0))
    mask[info["dead"]] |= np.uint16(MaskBit.BAD)
    images, cards = {}, {}
    if correct:
        rate, rate_err, rated = hot_pixel_rates(paths=info["frames"], detector=detector, hot=hot,
                                                max_instability=max_instability, bias_e=bias_e,
                                                lines=info["lines"])
        mask[hot & ~np.isfinite(rate)] |= np.uint16(MaskBit.BAD)
        images = {"HOTDARK": rate, "HOTDARK_ERR": rate_err}
        cards = {"NHOTRATE": (rated["n_rated"], "HOT pixels with a dark rate from the series"),
                 "NHOTBAD": (rated["n_unstable"], "HOT pixels without one (BAD, filled)")}
        info.update(rated)
    write_mask(path, mask, inputs=[*paths, *([bias] if bias is not None else [])],
               step="hot_pixel_map",
               params={**options, "correct": correct, "max_instability": max_instability},
               cards={"NHOTPIX": (info["n_hot"], "pixels flagged HOT from the science frames"),
                      "NFRAMES": (info["n_frames"], "science frames that voted"),
                      "NHOTLINE": (len(info["hot_lines"]), "hot column/row segments (HOT)"),
                      "NDEADLIN": (len(info["dead_lines"]), "dead column/row segments (BAD)"),
                      "HOTLINES": (", ".join(info["hot_lines"]), "1-based, first-last pixel"),
                      "DEADLINS": (", ".join(info["dead_lines"]), "1-based, first-last pixel"),
                      **cards},
               images=images)
    return info
