"""Satellite, aircraft and meteor trails: long straight features that are not stars.

A trail through a star adds light that no sky estimate takes out (a Starlink trail of
800 e- a pixel through a 15-mag target put it 30-40σ high, flagged only as
contaminated), and L.A.Cosmic leaves most of a trail as smooth as a star.  A trail is
found as a connected footprint of the background stage's detection (the deblender
cuts a faint trail into pieces at its noise peaks; the footprint keeps it whole) whose
pixels' geometry (not their light, which a bright star it crosses would dominate) is
long and thin: length √12·σ_major at least ``min_length_fwhm`` FWHM and
``min_length_px``, and σ_major/σ_minor at least ``min_elongation``.  Across the line
its median profile must peak on the line, fall below a quarter of that on both sides
and be no wider than 3× the seeing's σ: a vignetted edge's ramp the sky map missed is
long and thin too (a Nickel frame of ../shared had one, 1 024 px long).  The
deblender cuts a trail where it crosses stars, so each trail is then walked along its
line across the frame in chunks of 2 FWHM: chunks whose core (±1.5 σ across) stands
``nsigma`` above the sky extend it, a gap of one chunk (noise) is bridged, and the
stars it crosses lie inside the walked extent; over that extent the trail must be
about as bright everywhere (a chain of blended stars in a crowded field is long, thin
and peaked too, but bright in places only).  The band ±(3 σ_across + 1 px) over
that extent is the trail's mask: :attr:`ccdflow.masks.MaskBit.STREAK`, filled from
the PSF model in the photometry like a cosmic ray.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["STREAK_MIN_ELONGATION", "STREAK_MIN_LENGTH_FWHM", "STREAK_MIN_LENGTH_PX",
           "find_streaks"]

#: a trail is at least this many FWHM long ...
STREAK_MIN_LENGTH_FWHM = 15.0
#: ... and this many pixels (a cosmic-ray track is a few to ~30 px)
STREAK_MIN_LENGTH_PX = 40.0
#: σ_major / σ_minor of the segment's pixels (a line of length L and width W: L/W)
STREAK_MIN_ELONGATION = 5.0
#: a trail's chunks along its length: 25th percentile of their S/N at least this
#: fraction of the median
UNIFORMITY = 0.6
_SQRT12 = math.sqrt(12.0)


def _segment_geometry(labels: np.ndarray):
    """Per label: pixel count, centre, covariance of the pixels' positions (unweighted)."""
    inside = labels > 0
    lab = labels[inside].astype(np.int64)
    yy, xx = np.nonzero(inside)
    size = int(lab.max()) + 1
    n = np.bincount(lab, minlength=size).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = np.bincount(lab, xx, size) / n
        my = np.bincount(lab, yy, size) / n
        cxx = np.bincount(lab, xx * xx.astype(float), size) / n - mx**2
        cyy = np.bincount(lab, yy * yy.astype(float), size) / n - my**2
        cxy = np.bincount(lab, xx * yy.astype(float), size) / n - mx * my
    return n, mx, my, cxx, cyy, cxy, (lab, xx, yy)


def _band(*, shape, bad, cx, cy, ux, uy, t, d):
    """Pixel indices (rows, columns) of the points ``t`` along and ``d`` across the line
    through (cx, cy) in direction (ux, uy), one row per ``t``, clipped to the frame, and
    which of them lie on it and are usable (not ``bad``; ``bad`` None: all)."""
    ny, nx = shape
    sx = np.rint(cx + t[:, None] * ux - d[None, :] * uy).astype(int)
    sy = np.rint(cy + t[:, None] * uy + d[None, :] * ux).astype(int)
    ok = (sx >= 0) & (sx < nx) & (sy >= 0) & (sy < ny)
    sx, sy = np.clip(sx, 0, nx - 1), np.clip(sy, 0, ny - 1)
    if bad is not None:
        ok &= ~bad[sy, sx]
    return sy, sx, ok


def _walk(*, values, rms, bad, cx, cy, ux, uy, sigma, t_seed, chunk, nsigma):
    """The extent (t0, t1) along the line through (cx, cy) in direction (ux, uy) over
    which the trail's core stands ``nsigma`` above the sky, from the seed's extent
    outwards, bridging a gap of one chunk; and whether the chunks' S/N over it is
    uniform (25th percentile ≥ ``UNIFORMITY`` × the median)."""
    ny, nx = values.shape
    big = float(nx + ny)
    t = np.arange(-big, big + 1.0)
    px, py = cx + t * ux, cy + t * uy
    on = (px >= -0.5) & (px < nx - 0.5) & (py >= -0.5) & (py < ny - 0.5)
    t = t[on]
    across = np.arange(-math.ceil(1.5 * sigma), math.ceil(1.5 * sigma) + 1.0)
    sy, sx, ok = _band(shape=values.shape, bad=bad, cx=cx, cy=cy, ux=ux, uy=uy, t=t, d=across)
    signal = np.where(ok, values[sy, sx], 0.0).sum(axis=1)
    noise2 = np.where(ok, rms[sy, sx].astype(float) ** 2, 0.0).sum(axis=1)
    index = np.floor((t - t[0]) / chunk).astype(int)
    n_chunks = int(index.max()) + 1
    s = np.bincount(index, signal, n_chunks)
    v = np.bincount(index, noise2, n_chunks)
    with np.errstate(invalid="ignore", divide="ignore"):
        present = s / np.sqrt(v) >= nsigma
    starts = t[0] + np.arange(n_chunks) * chunk
    seed = np.flatnonzero((starts + chunk >= t_seed[0]) & (starts <= t_seed[1]))
    if not len(seed):
        return float(t_seed[0]), float(t_seed[1])
    lo, hi = int(seed.min()), int(seed.max())
    for step in (-1, 1):
        k, gap, last = (lo, 0, lo) if step < 0 else (hi, 0, hi)
        while 0 <= k + step < n_chunks and gap <= 1:
            k += step
            if present[k]:
                last, gap = k, 0
            else:
                gap += 1
        lo, hi = (last, hi) if step < 0 else (lo, last)
    snr = (s / np.sqrt(np.where(v > 0, v, np.inf)))[lo:hi + 1]
    # a trail is as bright along its length (the stars on it a minority of its chunks);
    # a chain of blended stars in a crowded field is not (25th percentile 0.2-0.6 of the
    # median on simulated 6 000-star/Mpx fields, ~0.9 on trails)
    uniform = bool(np.percentile(snr, 25) >= UNIFORMITY * np.median(snr))
    return (float(min(starts[lo], t_seed[0])), float(max(starts[hi] + chunk, t_seed[1])),
            uniform)


def _across_profile(*, values, bad, cx, cy, ux, uy, t_range, floor):
    """The trail's width σ across it (second moment of the median across-profile along
    the seed's extent: the median leaves out the stars it crosses; at least ``floor``)
    and whether that profile is a trail's: highest within ``floor`` + 1 px of the line
    and falling below a quarter of that on both sides (an edge's ramp, a gradient the
    sky map missed, rises to one side; a masked or off-frame side proves nothing)."""
    reach = max(6.0, 4.0 * floor)
    t = np.arange(t_range[0], t_range[1] + 1.0)
    d = np.arange(-math.ceil(reach), math.ceil(reach) + 1.0)
    sy, sx, ok = _band(shape=values.shape, bad=bad, cx=cx, cy=cy, ux=ux, uy=uy, t=t, d=d)
    samples = np.where(ok, values[sy, sx], np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(samples, axis=0)
    profile = np.clip(np.nan_to_num(median), 0, None)
    if profile.sum() <= 0 or not np.isfinite(median).all():
        return floor, False
    peak = float(profile[np.abs(d) <= floor + 1.0].max())
    outer = np.abs(d) >= reach / 2
    peaked = (peak >= profile.max() and profile[outer & (d < 0)].min() <= 0.25 * peak
              and profile[outer & (d > 0)].min() <= 0.25 * peak)
    sigma = max(math.sqrt(float((profile * d**2).sum() / profile.sum())), floor)
    return sigma, bool(peaked)


def _refine_line(*, values, bad, cx, cy, ux, uy, t_range, reach, chunk):
    """The line through the trail's ridge: per chunk of the walked extent the centroid of
    the median across-profile, a weighted straight-line fit of those centroids along
    the line; the angle of a short seed piece is off by a fraction of a degree, which
    over a frame's width moves the line off the trail.  Returns (cx, cy, ux, uy)."""
    t = np.arange(t_range[0], t_range[1] + 1.0)
    d = np.arange(-math.ceil(reach), math.ceil(reach) + 1.0)
    sy, sx, ok = _band(shape=values.shape, bad=bad, cx=cx, cy=cy, ux=ux, uy=uy, t=t, d=d)
    samples = np.where(ok, values[sy, sx], np.nan)
    index = np.floor((t - t[0]) / chunk).astype(int)
    centres, weights, where = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(int(index.max()) + 1):
            rows = samples[index == i]
            if len(rows) < 3:
                continue
            profile = np.clip(np.nan_to_num(np.nanmedian(rows, axis=0)), 0, None)
            if profile.sum() > 0:
                centres.append(float((profile * d).sum() / profile.sum()))
                weights.append(float(profile.sum()))
                where.append(float(t[index == i].mean()))
    if len(centres) < 3:
        return cx, cy, ux, uy
    b, a = np.polyfit(where, centres, 1, w=np.sqrt(weights))
    angle = math.atan2(uy, ux) + math.atan(b)
    return cx - a * uy, cy + a * ux, math.cos(angle), math.sin(angle)


def find_streaks(*, data: np.ndarray, background: np.ndarray, rms: np.ndarray,
                 labels: np.ndarray, fwhm_px: float, mask: np.ndarray | None = None,
                 nsigma: float = 3.0, min_length_px: float = STREAK_MIN_LENGTH_PX,
                 min_length_fwhm: float = STREAK_MIN_LENGTH_FWHM,
                 min_elongation: float = STREAK_MIN_ELONGATION,
                 ) -> tuple[np.ndarray, list[dict]]:
    """The pixels of the frame's trails (module docstring) and one dict per trail.

    Parameters
    ----------
    data, background, rms : ndarray
        Calibrated frame, its sky and the sky's noise per pixel (e-).
    labels : ndarray of int
        The background stage's segmentation (0 = sky); its connected footprints are
        measured.
    fwhm_px : float
        The frame's seeing (px).
    mask : ndarray, optional
        Pixels with no usable value (nonzero), left out of the walk's sums.

    Returns
    -------
    mask : ndarray of bool
        The trails' pixels.
    streaks : list of dict
        ``x, y`` (a point on the trail, 0-based), ``angle_deg`` (counter-clockwise
        from +x, -90..90), ``length_px`` (masked extent), ``width_px`` (the masked
        band's full width).
    """
    if fwhm_px is None or not np.isfinite(fwhm_px) or fwhm_px <= 0:
        raise ValueError(f"fwhm_px must be a positive number, got {fwhm_px!r}")
    out = np.zeros(np.shape(data), bool)
    from scipy import ndimage

    footprint = np.asarray(labels) > 0
    if not footprint.any():
        return out, []
    labels, _ = ndimage.label(footprint, structure=np.ones((3, 3), bool))
    n, mx, my, cxx, cyy, cxy, (lab, xx, yy) = _segment_geometry(labels)
    half_trace = (cxx + cyy) / 2.0
    root = np.sqrt(np.clip(((cxx - cyy) / 2.0) ** 2 + cxy**2, 0, None))
    major, minor = half_trace + root, np.clip(half_trace - root, 1.0 / 12.0, None)
    with np.errstate(invalid="ignore"):
        long_thin = ((_SQRT12 * np.sqrt(np.clip(major, 0, None))
                      >= max(min_length_px, min_length_fwhm * fwhm_px))
                     & (np.sqrt(major / minor) >= min_elongation) & (n > 0))
    candidates = np.flatnonzero(long_thin)
    candidates = candidates[np.argsort(-major[candidates], kind="stable")]  # longest first
    if not len(candidates):
        return out, []
    values = np.asarray(data, float) - background
    bad = np.zeros(out.shape, bool) if mask is None else np.asarray(mask) != 0
    values = np.where(np.isfinite(values), values, 0.0)
    seeing_sigma = fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    chunk = max(4.0, 2.0 * fwhm_px)
    ny, nx = out.shape
    streaks = []
    for k in candidates:
        if out[min(max(round(my[k]), 0), ny - 1), min(max(round(mx[k]), 0), nx - 1)]:
            continue  # a piece of a trail already walked (the deblender cut it at a star)
        angle = 0.5 * math.atan2(2.0 * cxy[k], cxx[k] - cyy[k])
        ux, uy = math.cos(angle), math.sin(angle)
        pick = lab == k
        t_pix = (xx[pick] - mx[k]) * ux + (yy[pick] - my[k]) * uy
        sigma, peaked = _across_profile(values=values, bad=bad, cx=mx[k], cy=my[k], ux=ux,
                                        uy=uy, t_range=(t_pix.min(), t_pix.max()),
                                        floor=seeing_sigma)
        if not peaked or sigma > max(3.0 * seeing_sigma, 2.0):
            continue  # not a trail's profile: an edge's ramp, a gradient, a wide blur
        cx, cy = float(mx[k]), float(my[k])
        t0, t1, _ = _walk(values=values, rms=np.asarray(rms), bad=bad, cx=cx, cy=cy, ux=ux,
                          uy=uy, sigma=sigma, t_seed=(t_pix.min(), t_pix.max()),
                          chunk=chunk, nsigma=nsigma)
        cx, cy, ux, uy = _refine_line(values=values, bad=bad, cx=cx, cy=cy, ux=ux, uy=uy,
                                      t_range=(t0, t1), reach=3.0 * sigma + 1.0,
                                      chunk=4.0 * chunk)
        t0, t1, uniform = _walk(values=values, rms=np.asarray(rms), bad=bad, cx=cx, cy=cy,
                                ux=ux, uy=uy, sigma=sigma, t_seed=(t0, t1), chunk=chunk,
                                nsigma=nsigma)
        if not uniform:
            continue  # bright in places only: blended stars in a row, not a trail
        angle = math.atan2(uy, ux)
        if angle > math.pi / 2:
            angle -= math.pi
        elif angle <= -math.pi / 2:
            angle += math.pi
        half_width = 3.0 * sigma + 1.0
        t = np.arange(t0, t1 + 0.5, 0.5)
        d = np.arange(-half_width, half_width + 0.25, 0.5)
        sy, sx, ok = _band(shape=out.shape, bad=None, cx=cx, cy=cy, ux=ux, uy=uy, t=t, d=d)
        out[sy[ok], sx[ok]] = True
        streaks.append({"x": round(float(cx), 2), "y": round(float(cy), 2),
                        "angle_deg": round(math.degrees(angle), 2),
                        "length_px": round(t1 - t0, 1), "width_px": round(2 * half_width, 1)})
    return out, streaks
