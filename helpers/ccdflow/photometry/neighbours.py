"""Stars the source list lacks, found in the residual of the frame's source model
(DAOPHOT's second pass): :func:`find_hidden_neighbours` on whole planes, and the same
search on stamps around the sources that :func:`~ccdflow.photometry.model.model_sources`
runs (two frame-sized planes fewer at 4k²).
"""

from __future__ import annotations

import math

import numpy as np

from .model import SourceModel, cut_stamps

__all__ = ["find_hidden_neighbours"]


def find_hidden_neighbours(*, residual: np.ndarray, variance: np.ndarray, model: SourceModel,
                           radius: float, nsigma: float = 5.0, min_fraction: float = 0.005,
                           avoid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stars the source list lacks, found in the residual of its PSF model (DAOPHOT's
    second pass): around every source, the PSF-matched filter of ``residual`` (frame
    − sky − model, about the median of the source's stamp, so that an error of the sky
    map is not taken for stars) above ``nsigma`` × its noise, a local maximum at least one FWHM
    from every listed source and brighter than ``min_fraction`` of the source whose
    neighbourhood it is in.  Close pairs that detection left as one segment are the
    usual find: their light is not the star's, and the model then holds it.

    ``avoid`` marks pixels near which nothing is searched (saturated stars, whose
    model leaves structured residuals).

    Returns
    -------
    x, y : ndarray
        Positions (0-based) of the hidden stars: the matched filter's peak, refined
        to a fraction of a pixel by a parabola through it and its neighbours.
    """
    def stamps(px, py):
        r_st, inside = cut_stamps(residual, px, py)
        v_st, _ = cut_stamps(variance, px, py, fill=np.inf)
        return r_st, np.where(inside, v_st, np.inf), inside

    return _hidden_neighbours(stamps=stamps, model=model, radius=radius, nsigma=nsigma,
                              min_fraction=min_fraction, avoid=avoid)


def _hidden_neighbours(*, stamps, model: SourceModel, radius: float, nsigma: float = 5.0,
                       min_fraction: float = 0.005,
                       avoid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`find_hidden_neighbours` on stamps: ``stamps(px, py)`` gives the residual
    (0 off the frame), its variance (inf off the frame) and the on-frame pixels of
    the stamps with columns ``px`` and rows ``py``."""
    from ..spatial import PointTree
    from .psf import psf_stamps

    psf = model.psf
    fwhm = psf.fwhm
    hk = max(1, math.ceil(1.0 * fwhm))
    kernel, _, _ = psf_stamps(psf, np.zeros(1), np.zeros(1), hk)
    kernel = kernel[0]
    k2 = float((kernel**2).sum())
    reach = math.ceil(radius + fwhm)
    ok = np.flatnonzero(np.isfinite(model.x) & np.isfinite(model.y) & (model.flux > 0))
    if not len(ok) or reach + hk > model.half + 20:
        return np.zeros(0), np.zeros(0)
    d = np.arange(-(reach + hk), reach + hk + 1)
    cx = np.floor(model.x[ok] + 0.5).astype(np.int64)
    cy = np.floor(model.y[ok] + 0.5).astype(np.int64)
    px, py = cx[:, None] + d[None, :], cy[:, None] + d[None, :]
    r_st, v_st, inside = stamps(px, py)
    # each stamp about its own median (mostly sky, the modelled stars subtracted): an
    # error of the sky map (a scalar sky on a vignetted frame, a coarse mesh) would
    # otherwise pass the matched filter as faint stars (on a 200² demo frame a scalar
    # sky gave 37-75 finds a frame, the default map 7-12; about the median, 8-15)
    offset = np.nanmedian(np.where(inside, r_st, np.nan), axis=(1, 2))
    r_st = np.where(inside, r_st - offset[:, None, None], 0.0)
    from numpy.lib.stride_tricks import sliding_window_view

    win = sliding_window_view(r_st, (2 * hk + 1, 2 * hk + 1), axis=(1, 2))
    amp = np.einsum("nijab,ab->nij", win, kernel) / k2  # PSF amplitude centred on a pixel
    vwin = sliding_window_view(v_st, (2 * hk + 1, 2 * hk + 1), axis=(1, 2))
    with np.errstate(invalid="ignore", over="ignore"):
        sigma_amp = np.sqrt(np.einsum("nijab,ab->nij", vwin, kernel**2)) / k2
        snr = amp / sigma_amp
    snr = np.nan_to_num(snr, nan=0.0, posinf=0.0, neginf=0.0)
    # local maxima above threshold, away from the stamp's border
    pad = np.pad(snr, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    centre = pad[:, 1:-1, 1:-1]
    peak = np.ones(snr.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                peak &= centre >= pad[:, 1 + dy:pad.shape[1] - 1 + dy,
                                     1 + dx:pad.shape[2] - 1 + dx]
    inner = np.arange(-reach, reach + 1)
    gy, gx = np.meshgrid(inner, inner, indexing="ij")
    near = gx**2 + gy**2 <= (radius + fwhm) ** 2
    hit = peak & (snr > nsigma) & near[None] & (
        amp > min_fraction * model.flux[ok][:, None, None])
    src, iy, ix = np.nonzero(hit)
    if not len(src):
        return np.zeros(0), np.zeros(0)

    def vertex(lo, mid, hi):  # offset of a parabola's vertex through three samples
        with np.errstate(invalid="ignore", divide="ignore"):
            off = 0.5 * (lo - hi) / (lo - 2 * mid + hi)
        return np.clip(np.nan_to_num(off), -0.5, 0.5)

    ap = np.pad(amp, ((0, 0), (1, 1), (1, 1)), mode="edge")
    mid = ap[src, iy + 1, ix + 1]
    hx = cx[src] + inner[ix] + vertex(ap[src, iy + 1, ix], mid, ap[src, iy + 1, ix + 2])
    hy = cy[src] + inner[iy] + vertex(ap[src, iy, ix + 1], mid, ap[src, iy + 2, ix + 1])
    if avoid is not None and avoid.any():
        ny, nx = avoid.shape
        keep = ~avoid[np.clip(np.round(hy).astype(int), 0, ny - 1),
                      np.clip(np.round(hx).astype(int), 0, nx - 1)]
        hx, hy = hx[keep], hy[keep]
        if not len(hx):
            return hx, hy
    listed = np.column_stack([model.x[ok], model.y[ok]])
    far = PointTree(listed).query(np.column_stack([hx, hy]))[0] >= fwhm
    hx, hy = hx[far].astype(float), hy[far].astype(float)
    if not len(hx):
        return hx, hy
    # one per star: peaks found from several listed neighbours' stamps are the same
    pixel = np.round(hx).astype(np.int64) * 1_000_003 + np.round(hy).astype(np.int64)
    _, first = np.unique(pixel, return_index=True)
    return hx[first], hy[first]

