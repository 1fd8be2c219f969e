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

*Hot and dead columns.*  One pixel wide, a hot column has shoulders along itself and
is no spike: :mod:`ccdflow.linedefects` finds hot and dead column (and row) segments
in the same pass (``lines``); hot ones are HOT (rated against the ring without their
own column), dead ones BAD.

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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import HotPixelError
from .linedefects import add_line_votes, line_defect_maps, line_names, refine_line_ends

log = logging.getLogger(__name__)

__all__ = ["HotPixelError", "hot_pixel_candidates", "hot_pixel_map", "hot_pixel_rates",
           "write_hot_pixel_map"]

_RING = np.ones((5, 5), bool)
_RING[1:4, 1:4] = False
_CROSS = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], float) / 4.0


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
            line_votes = add_line_votes(line_votes, data, frame.read_noise_e,
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
            maps = refine_line_ends(
                line_defect_maps(line_votes, needed=needed, shape=shape, block_px=block_px,
                                 min_blocks=math.ceil(min_length_px / block_px)),
                frames=_frames_e(_spread(read, 15), detector, bias_e), nsigma=nsigma,
                block_px=block_px)
            line_code = np.where(maps["high", 0], 1, np.where(maps["high", 1].T, 2, 0))
            hot |= maps["high", 0] | maps["high", 1].T
            dead = maps["low", 0] | maps["low", 1].T  # a hot pixel there stays BAD too
            hot_lines, dead_lines = line_names(maps, "high"), line_names(maps, "low")
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


def _frames_e(paths: Sequence[str | Path], detector: Mapping,
              bias_e: np.ndarray | None) -> Iterator[tuple[np.ndarray, float]]:
    """(bias-subtracted electrons, read noise) of each frame, read one at a time."""
    from .ccd import read_raw_frame

    for path in paths:
        frame = read_raw_frame(path, detector=detector)
        yield _minus_bias(frame.data, bias_e), float(frame.read_noise_e)


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
