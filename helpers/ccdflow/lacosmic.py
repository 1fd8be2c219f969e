"""L.A.Cosmic (van Dokkum 2001) evaluated only where a cosmic ray can be.

astroscrappy's ``detect_cosmics`` computes, at every pixel and in every
iteration, a Laplacian of the 2× subsampled frame, a 5×5 median of the
variance (the noise), a 5×5 median of the Laplacian significance, and the
fine-structure image (3×3 then 7×7 medians).  On a star field fewer than one
pixel in a hundred can pass its first test, so almost all of that work is
spent on sky.  This module gives astroscrappy's answer (``sepmed=False``,
``fsmode='median'``, ``cleantype='meanmask'``, ``gain=1``) with the same
float32 arithmetic, but evaluates the medians only at the pixels that can
matter:

* A pixel can be a cosmic-ray *seed* only if its Laplacian significance
  ``S = s / (2·noise)`` exceeds ``sigclip`` (the median-subtracted ``sp`` is
  at most ``S`` because ``S ≥ 0``).  With the 5×5 *minimum* of the variance
  in place of its median, ``S_ub ≥ S`` is a cheap upper bound computed for the
  whole frame (one Laplacian, one separable minimum filter); only pixels with
  ``S_ub > sigclip`` are evaluated exactly.
* The exact ``sp`` and fine structure ``f`` are computed at those seeds (and
  ``sp`` at the neighbours the two 3×3 growths reach) from gathered windows,
  with astroscrappy's edge rules (filters copy the input within their half
  width of the frame edge; the dilations do not reach the 1-px border).
* After the first iteration only pixels near cleaned cosmic rays can change:
  later iterations evaluate the 8-px neighbourhood of the pixels that the
  cleaning changed, so the loop costs what the cosmic rays cost.

Tests compare the mask with ``astroscrappy.detect_cosmics`` on the same
inputs (tests/test_cosmics.py).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["lacosmic_mask"]

F32 = np.float32


def _laplace_rebin(clean: np.ndarray, rows: np.ndarray | None = None,
                   cols: np.ndarray | None = None) -> np.ndarray:
    """astroscrappy's ``rebin(max(laplaceconvolve(subsample(clean)), 0))`` in float32,
    for the whole frame or only at pixels (``rows``, ``cols``).

    A pixel's four sub-pixels of the 2× subsampled frame see the pixel itself twice
    and one neighbour across each of their two outer sides.  The C code subtracts
    the neighbours one by one in float32 (right, left, down, up), leaves out those
    beyond the frame, and computes the first sub-row as one double expression.
    """
    ny, nx = clean.shape
    if rows is None:
        pad = np.zeros((ny + 2, nx + 2), F32)
        pad[1:-1, 1:-1] = clean
        out = _laplace_core(clean, pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2],
                            pad[1:-1, 2:], top=None)
        out[0] = _laplace_rebin(clean, np.zeros(nx, np.int64), np.arange(nx))
        return out

    def at(r, c):
        inside = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
        return np.where(inside, clean[np.clip(r, 0, ny - 1), np.clip(c, 0, nx - 1)], F32(0))

    return _laplace_core(clean[rows, cols], at(rows - 1, cols), at(rows + 1, cols),
                         at(rows, cols - 1), at(rows, cols + 1), top=rows == 0)


def _laplace_core(c, up, down, left, right, *, top):
    four = F32(4.0) * c

    def sub(upper: bool, left_half: bool):
        r_, l_ = (c, left) if left_half else (right, c)
        d_, u_ = (c, up) if upper else (down, c)
        out = four - r_
        out = out - l_
        out = out - d_
        out = out - u_
        if upper and top is not None and top.any():
            dbl = (4.0 * c.astype(np.float64) - r_.astype(np.float64) - l_.astype(np.float64)
                   - d_.astype(np.float64) - u_.astype(np.float64))
            out = np.where(top, dbl.astype(F32), out)
        return np.maximum(out, F32(0.0))

    # rebin: p = tl; p += bl; p += br; p += tr; p /= 4.0 (the C loop's order)
    total = sub(True, True) + sub(False, True)
    total = total + sub(False, False)
    total = total + sub(True, False)
    return (total.astype(np.float64) / 4.0).astype(F32)


#: padding kept around the working arrays: the widest reach from a pixel whose value is
#: needed (medfilt7 of medfilt3: 3 + 1; sp: 5×5 median of S, each from a 5×5 variance
#: median: 2 + 2)
PAD = 4


#: pixels whose exact sp and f are evaluated at once: their gathered windows cost ~2.5
#: kB per pixel, so a frame with many candidates (a night without darks: thousands of hot
#: pixels) would otherwise hold hundreds of MB at a time (+550 MB at 4k², measured)
CHUNK_PIXELS = 16384


def _in_chunks(fn, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``fn(rows, cols)`` evaluated :data:`CHUNK_PIXELS` pixels at a time (each pixel's
    value depends only on its own neighbourhood, so the result is the same)."""
    if len(rows) <= CHUNK_PIXELS:
        return fn(rows, cols)
    return np.concatenate([fn(rows[i: i + CHUNK_PIXELS], cols[i: i + CHUNK_PIXELS])
                           for i in range(0, len(rows), CHUNK_PIXELS)])


def padded_plane(shape: tuple[int, int], fill: float) -> np.ndarray:
    """A float32 plane of ``shape`` inside a buffer padded by :data:`PAD` (``fill``):
    :func:`lacosmic_mask` with ``overwrite_input`` works in such ``data`` (fill 0) and
    ``invar`` (fill +inf) planes without copying them (128 MB less at 4k²)."""
    ny, nx = shape
    buffer = np.full((ny + 2 * PAD, nx + 2 * PAD), fill, F32)
    return buffer[PAD:-PAD, PAD:-PAD]


def _padded_buffer(plane: np.ndarray) -> np.ndarray | None:
    """The padded float32 buffer ``plane`` is the interior of (from :func:`padded_plane`)."""
    base = plane.base
    if (plane.dtype != F32 or not isinstance(base, np.ndarray) or base.dtype != F32
            or base.shape != (plane.shape[0] + 2 * PAD, plane.shape[1] + 2 * PAD)
            or not base.flags.c_contiguous):
        return None
    interior = base[PAD:-PAD, PAD:-PAD]
    same = (interior.__array_interface__["data"][0] == plane.__array_interface__["data"][0]
            and interior.strides == plane.strides)
    return base if same else None


class _Frame:
    """The evolving state of one L.A.Cosmic run (astroscrappy's cleanarr and clean_var),
    held in arrays padded by :data:`PAD` so that windows are plain slices of them: the
    padding is 0 for the data (the Laplacian leaves out-of-frame terms out) and +inf for
    the variance (so that a window minimum ignores it)."""

    def __init__(self, clean, clean_var, bkg, mask, sigclip, sigfrac, objlim, adopt=False):
        ny, nx = clean.shape
        self.ny, self.nx = ny, nx
        self.cpad = self._pad(clean, 0.0, adopt)
        self.vpad = self._pad(clean_var, np.inf, adopt)
        self.clean = self.cpad[PAD:-PAD, PAD:-PAD]  # views
        self.var = self.vpad[PAD:-PAD, PAD:-PAD]
        self.bkg, self.mask = bkg, mask
        self.good = ~mask
        self.sigclip = F32(sigclip)
        self.sigcliplow = F32(F32(sigfrac) * F32(sigclip))
        self.objlim = F32(objlim)

    @staticmethod
    def _pad(plane, fill, adopt):
        """``plane`` padded by ``fill``: its own buffer when ``adopt`` and it has one."""
        buffer = _padded_buffer(plane) if adopt else None
        if buffer is None:
            buffer = np.full((plane.shape[0] + 2 * PAD, plane.shape[1] + 2 * PAD), fill, F32)
            buffer[PAD:-PAD, PAD:-PAD] = plane
        else:  # the padding holds ``fill``, whatever it held
            buffer[:PAD], buffer[-PAD:], buffer[:, :PAD], buffer[:, -PAD:] = fill, fill, fill, fill
        return buffer

    # ---- windows and filters at pixels
    def _windows(self, padded, rows, cols, half):
        d = np.arange(-half, half + 1)
        return padded[(rows + PAD)[:, None, None] + d[None, :, None],
                      (cols + PAD)[:, None, None] + d[None, None, :]].reshape(len(rows), -1)

    def _border(self, rows, cols, half):
        return (rows < half) | (rows >= self.ny - half) | (cols < half) | (cols >= self.nx - half)

    def _median(self, padded, rows, cols, half):
        """astroscrappy's ``medfilt{2h+1}`` at pixels: the window median, or the value
        itself within ``half`` pixels of the frame edge."""
        windows = self._windows(padded, rows, cols, half)
        k = windows.shape[1] // 2
        med = np.partition(windows, k, axis=1)[:, k]
        here = padded[rows + PAD, cols + PAD]
        return np.where(self._border(rows, cols, half), here, med)

    def _laplace(self, rows, cols):
        c = self.cpad
        r, q = rows + PAD, cols + PAD
        return _laplace_core(c[r, q], c[r - 1, q], c[r + 1, q], c[r, q - 1], c[r, q + 1],
                             top=rows == 0)

    def noise_at(self, rows, cols):
        m5 = self._median(self.vpad, rows, cols, 2)
        if self.bkg is not None:
            m5 = m5 + self.bkg[rows, cols]
        m5 = np.where(m5 < F32(1e-5), F32(1e-5), m5)
        return np.sqrt(m5)

    def significance_at(self, rows, cols):
        """Exact S = s / (2·noise) at pixels."""
        return self._laplace(rows, cols) / (F32(2.0) * self.noise_at(rows, cols))

    def sp_at(self, rows, cols):
        """Exact sp = S − medfilt5(S) at pixels (S computed once per pixel needed)."""
        nx = self.nx
        d = np.arange(-2, 3)
        rr = rows[:, None, None] + d[None, :, None]
        cc = cols[:, None, None] + d[None, None, :]
        rr, cc = np.broadcast_arrays(rr, cc)
        inside = (rr >= 0) & (rr < self.ny) & (cc >= 0) & (cc < nx)
        keys = rr[inside].astype(np.int64) * nx + cc[inside]
        need, where = np.unique(keys, return_inverse=True)
        window = np.zeros(rr.shape, F32)
        window[inside] = self.significance_at(need // nx, need % nx)[where]
        window = window.reshape(len(rows), 25)
        here = window[:, 12]
        med = np.partition(window, 12, axis=1)[:, 12]
        return here - np.where(self._border(rows, cols, 2), here, med)

    def fine_structure_at(self, rows, cols):
        """f = (medfilt3 − medfilt7(medfilt3)) / noise, floored at 0.01, at pixels."""
        nx = self.nx
        d = np.arange(-3, 4)
        rr, cc = np.broadcast_arrays(rows[:, None, None] + d[None, :, None],
                                     cols[:, None, None] + d[None, None, :])
        inside = (rr >= 0) & (rr < self.ny) & (cc >= 0) & (cc < nx)
        keys = rr[inside].astype(np.int64) * nx + cc[inside]
        need, where = np.unique(keys, return_inverse=True)
        m3 = np.zeros(rr.shape, F32)
        m3[inside] = self._median(self.cpad, need // nx, need % nx, 1)[where]
        m3 = m3.reshape(len(rows), 49)
        here = m3[:, 24]
        m7 = np.where(self._border(rows, cols, 3), here, np.partition(m3, 24, axis=1)[:, 24])
        f = (here - m7) / self.noise_at(rows, cols)
        return np.where(f < F32(0.01), F32(0.01), f)

    # ---- seeds and one iteration
    def seeds(self, region: np.ndarray | None, *,
              strip_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Good pixels whose S can exceed sigclip (S_ub > sigclip): the whole frame (in
        strips of ``strip_rows`` rows, so that its float temporaries are a strip's, not a
        frame's), or the pixels of ``region`` (rows, cols)."""
        if region is None:
            found = [self._strip_seeds(y0, min(y0 + strip_rows, self.ny))
                     for y0 in range(0, self.ny, strip_rows)]
            return (np.concatenate([r for r, _ in found]),
                    np.concatenate([c for _, c in found]))
        rows, cols = region
        keep = self.good[rows, cols]
        rows, cols = rows[keep], cols[keep]
        ok = _in_chunks(self._passes_bound, rows, cols)
        return rows[ok], cols[ok]

    def _passes_bound(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """S_ub > sigclip at pixels (the 5×5 variance minimum in place of its median)."""
        low = self._windows(self.vpad, rows, cols, 2).min(axis=1)
        if self.bkg is not None:
            low = low + self.bkg[rows, cols]
        low = np.where(low < F32(1e-5), F32(1e-5), low).astype(F32)
        return self._laplace(rows, cols) / (F32(2.0) * np.sqrt(low)) > self.sigclip

    def _strip_seeds(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        """Seeds in rows y0..y1−1, from a slab with 2 rows above and below: the Laplacian
        reaches 1 row, the 5×5 minimum 2, so the strip's rows see exactly what they see
        in the whole frame (the frame's own edges keep their rules: the slab's row 0 is
        the frame's when y0 = 0, and ``nearest`` repeats the same edge rows)."""
        a, b = max(0, y0 - 2), min(self.ny, y1 + 2)
        s = _laplace_rebin(self.clean[a:b])[y0 - a: y1 - a]
        low = ndimage.minimum_filter(self.var[a:b], size=5, mode="nearest")[y0 - a: y1 - a]
        if self.bkg is not None:
            low = low + self.bkg[y0:y1]
        low = np.where(low < F32(1e-5), F32(1e-5), low)
        rows, cols = np.nonzero((s / (F32(2.0) * np.sqrt(low)) > self.sigclip)
                                & self.good[y0:y1])
        return rows + y0, cols

    def detect(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One iteration's cosmic-ray pixels (rows, cols), given every pixel that can
        pass sigclip."""
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        if not len(rows):
            return empty
        strong = _in_chunks(self.sp_at, rows, cols) > self.sigclip  # seeds are good pixels
        r, c = rows[strong], cols[strong]
        if not len(r):
            return empty
        sp = _in_chunks(self.sp_at, r, c)
        core = (sp / _in_chunks(self.fine_structure_at, r, c)) > self.objlim
        # dilate3 (astroscrappy's leaves the 1-px border as it was), ∧ sp > sigclip ∧ good
        is_strong = _PixelSet(self.ny, self.nx, r, c)
        gr, gc = _dilate3(r[core], c[core], self.ny, self.nx)
        keep = is_strong.contains(gr, gc)
        gr, gc = gr[keep], gc[keep]
        # dilate3 again, ∧ sp > sigcliplow ∧ good
        fr, fc = _dilate3(gr, gc, self.ny, self.nx)
        keep = self.good[fr, fc]
        fr, fc = fr[keep], fc[keep]
        if not len(fr):
            return empty
        hit = _in_chunks(self.sp_at, fr, fc) > self.sigcliplow
        return fr[hit], fc[hit]


class _PixelSet:
    """Membership of pixels in a sparse set (sorted flat indices)."""

    def __init__(self, ny, nx, rows, cols):
        self.nx = nx
        self.keys = np.unique(rows.astype(np.int64) * nx + cols)

    def contains(self, rows, cols):
        keys = rows.astype(np.int64) * self.nx + cols
        i = np.searchsorted(self.keys, keys)
        i = np.minimum(i, len(self.keys) - 1)
        return (len(self.keys) > 0) & (self.keys[i] == keys)


def _dilate3(rows, cols, ny, nx):
    """astroscrappy's ``dilate3`` of a sparse set: the 3×3 neighbourhoods of its pixels,
    except that a pixel of the 1-px frame border is only in it when it was before."""
    if not len(rows):
        return rows, cols
    d = np.array([-1, 0, 1])
    rr = (rows[:, None, None] + d[None, :, None]).repeat(3, axis=2).ravel()
    cc = (cols[:, None, None] + d[None, None, :]).repeat(3, axis=1).ravel()
    inside = (rr >= 1) & (rr < ny - 1) & (cc >= 1) & (cc < nx - 1)
    keys = np.unique(np.concatenate([rr[inside].astype(np.int64) * nx + cc[inside],
                                     rows.astype(np.int64) * nx + cols]))
    return keys // nx, keys % nx


def _clean_meanmask(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                    crmask: np.ndarray, mask: np.ndarray, level) -> np.ndarray:
    """astroscrappy's ``clean_meanmask`` at the cosmic-ray pixels (rows, cols): each
    one away from the 2-px border becomes the float32 mean of its 5×5 neighbours that
    are neither cosmic rays nor masked (``level()`` when none is).  Writes into
    ``padded``; returns which of the pixels changed value."""
    ny, nx = crmask.shape
    inner = (rows >= 2) & (rows < ny - 2) & (cols >= 2) & (cols < nx - 2)
    changed = np.zeros(len(rows), bool)
    r0, c0 = rows[inner], cols[inner]
    if not len(r0):
        return changed
    total = np.zeros(len(r0), F32)
    count = np.zeros(len(r0), np.int64)
    for dl in range(-2, 3):  # the C loop's order: rows outer, columns inner
        for dk in range(-2, 3):
            rr, cc = r0 + dl, c0 + dk
            use = ~(crmask[rr, cc] | mask[rr, cc])
            total = np.where(use, total + padded[rr + PAD, cc + PAD], total)
            count += use
    new = (total.astype(np.float64) / np.maximum(count, 1)).astype(F32)
    if not count.all():
        new = np.where(count > 0, new, F32(level()))
    changed[inner] = padded[r0 + PAD, c0 + PAD] != new
    padded[r0 + PAD, c0 + PAD] = new
    return changed


def lacosmic_mask(*, data: np.ndarray, inmask: np.ndarray | None = None,
                  inbkg: np.ndarray | None = None, invar: np.ndarray | None = None,
                  sigclip: float = 4.5, sigfrac: float = 0.3, objlim: float = 5.0,
                  readnoise: float = 6.5, satlevel: float = 65536.0,
                  niter: int = 4, overwrite_input: bool = False) -> np.ndarray:
    """Cosmic-ray mask equal to ``astroscrappy.detect_cosmics(data, inmask, inbkg, invar,
    sigclip, sigfrac, objlim, gain=1, readnoise, satlevel, niter, sepmed=False,
    cleantype='meanmask', fsmode='median')[0]``, evaluated only where it can differ
    from "no cosmic ray" (module docstring).

    Parameters
    ----------
    data : ndarray
        Frame in electrons (gain 1), sky included.
    inmask : ndarray of bool, optional
        Pixels never flagged nor used for cleaning (dilated by 3×3 as astroscrappy does,
        and saturated stars added).
    inbkg, invar : ndarray, optional
        Background and variance (electrons, electrons²), as astroscrappy's.
    sigclip, sigfrac, objlim, readnoise, satlevel, niter
        As astroscrappy's.
    overwrite_input : bool
        Let the work use the buffers of ``data`` and ``invar`` (float32 arrays are
        changed): two frame-sized planes less, four when both come from
        :func:`padded_plane` (256 MB at 4k²).

    Returns
    -------
    ndarray of bool
        True at cosmic-ray pixels.
    """
    from astroscrappy.utils import dilate3, dilate5

    adopt = (overwrite_input and invar is not None and _padded_buffer(np.asarray(data)) is not None
             and _padded_buffer(np.asarray(invar)) is not None)
    clean = np.asarray(data) if adopt else np.ascontiguousarray(data, dtype=F32)
    ny, nx = clean.shape
    if ny < 2 * PAD or nx < 2 * PAD:
        raise ValueError(f"frame {nx}x{ny} is too small for L.A.Cosmic (>= {2 * PAD} px)")
    bkg = None if inbkg is None else np.ascontiguousarray(inbkg, dtype=F32)
    mask = (np.zeros((ny, nx), np.uint8) if inmask is None
            else np.ascontiguousarray(inmask, dtype=np.uint8))
    if invar is not None:
        var = np.asarray(invar, F32) if overwrite_input else np.array(invar, F32)
        if bkg is not None:
            np.subtract(var, bkg, out=var)
    elif bkg is not None:
        var = clean - bkg + F32(readnoise * readnoise)
    else:
        var = clean + F32(readnoise * readnoise)

    # update_mask: saturated stars (5×5 median above satlevel/10), dilated 5×5 twice
    sat = clean >= F32(satlevel)
    if sat.any():
        rows, cols = np.nonzero(sat)
        probe = _Frame(clean, var, None, np.zeros((ny, nx), bool), sigclip, sigfrac, objlim,
                       adopt=adopt)
        keep = probe._median(probe.cpad, rows, cols, 2) > F32(satlevel / 10.0)
        del probe  # its padded copies of the frame (unless it read the planes' own)
        sat[:] = False
        sat[rows[keep], cols[keep]] = True
    mask = np.asarray(dilate5(sat.view(np.uint8), 2), bool) | np.asarray(dilate3(mask), bool)
    del sat
    if bkg is not None:
        clean = np.subtract(clean, bkg, out=clean if overwrite_input else None)
    frame = _Frame(clean, var, bkg, mask, sigclip, sigfrac, objlim, adopt=adopt)
    del clean, var, data, invar
    good = frame.good

    def level_of(array):  # astroscrappy's background levels: used when no neighbour is good
        return lambda: _lower_median(array[good])

    clean_level, var_level = level_of(frame.clean), level_of(frame.var)
    crmask = np.zeros((ny, nx), bool)
    keys = np.zeros(0, np.int64)  # flat indices of crmask's pixels
    region = None  # first iteration: the whole frame
    for _ in range(niter):
        fr, fc = frame.detect(*frame.seeds(region))
        if region is None and not len(fr):
            break
        crmask[fr, fc] = True
        keys = np.unique(np.concatenate([keys, fr.astype(np.int64) * nx + fc]))
        rows, cols = keys // nx, keys % nx
        changed = (_clean_meanmask(frame.cpad, rows, cols, crmask, mask, clean_level)
                   | _clean_meanmask(frame.vpad, rows, cols, crmask, mask, var_level))
        if not changed.any():
            break  # nothing cleaned differently: every later iteration would repeat this one
        # pixels whose seeds, sp or f can change: 8 px around what the cleaning changed
        region = _neighbourhood(rows[changed], cols[changed], ny, nx, half=8)
    return crmask


def _neighbourhood(rows, cols, ny, nx, *, half):
    """Pixels within a (2·half+1)² box of any given pixel, as (rows, cols)."""
    hit = np.zeros((ny, nx), bool)
    d = np.arange(-half, half + 1)
    rr = np.clip(rows[:, None] + d[None, :], 0, ny - 1)
    cc = np.clip(cols[:, None] + d[None, :], 0, nx - 1)
    hit[rr[:, :, None], cc[:, None, :]] = True
    return np.nonzero(hit)


def _lower_median(values: np.ndarray) -> float:
    """astroscrappy's ``median``: element (n−1)//2 of the sorted values."""
    if not values.size:
        return 0.0
    k = (values.size - 1) // 2
    return float(np.partition(values, k)[k])
