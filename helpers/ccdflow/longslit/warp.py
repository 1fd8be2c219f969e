"""The warp of a long slit: where one wavelength falls on every row, from an arc lamp.

Frames are handled with the dispersion along x (columns); :func:`to_dispersion_x`
transposes a frame whose dispersion runs along y.  The steps, each a function:

1. :func:`find_arc_lines`: lines on the central rows (median of a band of rows, a
   running-median baseline removed, peaks above ``nsigma`` × the robust noise;
   peaks closer than ``blend_px`` are one blended line), centroided;
2. :func:`trace_lines`: each line followed along the slit, row by row outwards from
   the reference row (a Gaussian-windowed centroid, SExtractor's XWIN along the row,
   above a linear baseline through a ±``half_window`` px window);
3. :func:`fit_warp`: the effective pixel ``x_eff(x, y)`` — a line's column at the
   reference row — as a 2-D Legendre series of orders (``order_x``, ``order_y``) in
   (x, y), fitted to every traced point with iterative σ-clipping.

:class:`WarpModel` evaluates the map (``EFFPIX``) and carries the traced points,
their residuals and the RMS; it is written as a FITS product (:func:`write_warp`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["WarpError", "WarpModel", "check_dispersion_axis", "find_arc_lines", "fit_warp",
           "from_dispersion_x", "read_warp", "to_dispersion_x", "trace_lines", "warp_from_arc",
           "write_warp"]


class WarpError(ValueError):
    """The warp cannot be modelled; the message says why."""


def to_dispersion_x(image: np.ndarray, axis: str) -> np.ndarray:
    """``image`` with the dispersion along x (a transposed view when ``axis`` is 'y')."""
    if axis not in ("x", "y"):
        raise WarpError(f"dispersion axis must be 'x' or 'y', got {axis!r}")
    return image if axis == "x" else np.asarray(image).T


def from_dispersion_x(image: np.ndarray, axis: str) -> np.ndarray:
    """The inverse of :func:`to_dispersion_x`: back to the detector's orientation."""
    return to_dispersion_x(image, axis)


def _robust_sigma(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) if values.size else 0.0


def _profile_structure(profile: np.ndarray) -> float:
    """How much narrow structure a 1-D profile holds: the robust spread of its
    difference from a 31-px running median, over its own robust noise."""
    from scipy.ndimage import median_filter

    hp = profile - median_filter(profile, size=31, mode="nearest")
    noise = _robust_sigma(np.diff(profile)) / math.sqrt(2) or 1e-12
    return float(np.percentile(np.abs(hp), 99) / noise)


def check_dispersion_axis(arc: np.ndarray, *, axis: str, name: str = "arc") -> None:
    """Raise when the arc's lines run along the assumed dispersion (the other axis is the
    dispersion): arc lines make narrow structure in the profile along the dispersion
    (the mean over the slit) and none across it."""
    image = to_dispersion_x(np.asarray(arc, float), axis)
    along = _profile_structure(np.nanmean(image, axis=0))  # vs column: lines if x disperses
    across = _profile_structure(np.nanmean(image, axis=1))  # vs row
    if across > 3 * along and across > 20:
        other = "y" if axis == "x" else "x"
        raise WarpError(
            f"{name}: its lines run along the dispersion axis '{axis}' (narrow structure "
            f"{across:.0f}x the noise across the slit, {along:.0f}x along the dispersion): "
            f"the dispersion axis is probably '{other}' (profile or config "
            "spectroscopy.dispersion_axis)")


def find_arc_lines(*, image: np.ndarray, row: int | None = None, band: int = 5,
                   nsigma: float = 10.0, blend_px: float = 3.0,
                   half_window: int = 4) -> pd.DataFrame:
    """Arc lines on the reference row (dispersion along x).

    Returns
    -------
    DataFrame
        ``x`` (centroid, px), ``peak`` (above the baseline), ``snr`` (peak over the
        profile's robust noise), ``blended`` (several peaks merged), sorted by x.
    """
    from scipy import ndimage

    data = np.asarray(image, float)
    ny, nx = data.shape
    row = ny // 2 if row is None else int(row)
    if not 0 <= row < ny:
        raise WarpError(f"reference row {row} is outside the slit (0..{ny - 1})")
    lo, hi = max(0, row - band), min(ny, row + band + 1)
    profile = np.nanmedian(data[lo:hi], axis=0)
    baseline = ndimage.median_filter(np.nan_to_num(profile), size=51, mode="nearest")
    hp = profile - baseline
    noise = _robust_sigma(hp) or 1e-12
    above = hp > nsigma * noise
    labels, _ = ndimage.label(above)
    rows = []
    for sl in ndimage.find_objects(labels):
        idx = np.arange(sl[0].start, sl[0].stop)
        seg = hp[idx]
        peaks = [i for i in range(len(seg)) if seg[i] >= seg[max(i - 1, 0)]
                 and seg[i] >= seg[min(i + 1, len(seg) - 1)]]
        peak_x = idx[int(np.argmax(seg))]
        w = np.arange(max(0, idx[0] - 1), min(nx, idx[-1] + 2))
        weights = np.clip(hp[w], 0, None)
        x = float((w * weights).sum() / weights.sum()) if weights.sum() > 0 else float(peak_x)
        blended = len(peaks) > 1 and (idx[-1] - idx[0]) >= blend_px
        rows.append({"x": x, "peak": float(seg.max()), "snr": float(seg.max() / noise),
                     "blended": bool(blended)})
    table = pd.DataFrame(rows, columns=["x", "peak", "snr", "blended"])
    # lines closer than blend_px are one (their centroid moves together along the slit)
    if len(table) > 1:
        groups = np.concatenate([[0], np.cumsum(np.diff(table["x"].to_numpy()) > blend_px)])
        if groups[-1] + 1 < len(table):
            merged = []
            for _, g in table.groupby(groups):
                wsum = g["peak"].sum()
                merged.append({"x": float((g["x"] * g["peak"]).sum() / wsum),
                               "peak": float(g["peak"].max()), "snr": float(g["snr"].max()),
                               "blended": bool(len(g) > 1 or g["blended"].any())})
            table = pd.DataFrame(merged)
    edge = half_window + 2
    table = table[(table["x"] > edge) & (table["x"] < nx - 1 - edge)]
    return table.sort_values("x").reset_index(drop=True)


def _centroids(data: np.ndarray, row: int, x_guess: np.ndarray, half_window: int,
               sigma_w: float, iterations: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-windowed centroids (SExtractor's XWIN along a row: x ← x + 2·Σwᵢ·Iᵢ·
    (xᵢ − x)/Σwᵢ·Iᵢ, w = exp(−(xᵢ − x)²/2σ_w²)) of every line on one row, above a
    linear baseline through the ends of a ±``half_window`` px window; and each line's
    signal (the window's sum above the baseline)."""
    nx = data.shape[1]
    d = np.arange(-half_window, half_window + 1)
    x = x_guess.astype(float).copy()
    c = np.floor(x + 0.5).astype(np.int64)
    cols = np.clip(c[:, None] + d[None, :], 0, nx - 1)
    v = data[row, cols]
    left, right = v[:, :1], v[:, -1:]
    base = left + (right - left) * (d[None, :] + half_window) / (2 * half_window)
    intensity = v - base
    signal = np.clip(intensity, 0, None).sum(axis=1)
    for _ in range(iterations):
        off = cols - x[:, None]
        w = np.exp(-0.5 * (off / sigma_w) ** 2) * intensity
        with np.errstate(invalid="ignore", divide="ignore"):
            step = 2.0 * (w * off).sum(axis=1) / w.sum(axis=1)
        step = np.where(np.isfinite(step), np.clip(step, -1.0, 1.0), 0.0)
        x = x + step
        if np.all(np.abs(step) < 1e-4):
            break
    return x, signal


def trace_lines(*, image: np.ndarray, x_ref: np.ndarray, row_ref: int, half_window: int = 4,
                min_signal_sigma: float = 5.0, sigma_w: float | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each line's column on every row of the slit, walking outwards from ``row_ref``.

    Returns
    -------
    rows : ndarray (n_rows,)
    xs : ndarray (n_lines, n_rows)
        NaN where the line is too faint (signal below ``min_signal_sigma`` × the
        row's noise) or its centroid jumped by more than a pixel.
    """
    data = np.asarray(image, float)
    ny = data.shape[0]
    xs = np.full((len(x_ref), ny), np.nan)
    if not len(x_ref):
        return np.arange(ny), xs
    noise = np.array([_robust_sigma(np.diff(data[r])) / math.sqrt(2) for r in range(ny)])
    width = 2 * half_window + 1
    if sigma_w is None:  # the lines' own width on the reference row
        prof = data[row_ref]
        widths = []
        for x0 in np.asarray(x_ref, float):
            c = round(x0)
            seg = prof[max(0, c - half_window): c + half_window + 1]
            seg = np.clip(seg - min(seg[0], seg[-1]), 0, None)
            pos = np.arange(len(seg)) + max(0, c - half_window)
            if seg.sum() > 0:
                widths.append(math.sqrt(max((seg * (pos - x0) ** 2).sum() / seg.sum(), 0.25)))
        sigma_w = float(np.clip(np.median(widths), 0.6, half_window / 2)) if widths else 1.2
    for direction in (1, -1):
        guess = np.asarray(x_ref, float).copy()
        start = row_ref if direction == 1 else row_ref - 1
        stop = ny if direction == 1 else -1
        for r in range(start, stop, direction):
            x, signal = _centroids(data, r, guess, half_window, sigma_w)
            ok = (signal > min_signal_sigma * noise[r] * math.sqrt(width)) & (
                np.abs(x - guess) < 1.0) & np.isfinite(x)
            xs[ok, r] = x[ok]
            guess = np.where(ok, x, guess)
    return np.arange(ny), xs


@dataclass
class WarpModel:
    """x_eff(x, y) = Σ c_ij P_i(u) P_j(v), Legendre in u = 2x/(nx−1)−1, v = 2y/(ny−1)−1."""

    coefficients: np.ndarray  #: (order_x + 1, order_y + 1)
    shape: tuple[int, int]  #: (ny, nx) with the dispersion along x
    reference_row: float
    rms_px: float = float("nan")
    n_lines: int = 0
    n_points: int = 0
    n_rejected: int = 0
    points: pd.DataFrame = field(default_factory=pd.DataFrame)  #: x, y, x_eff, residual, used

    @property
    def order_x(self) -> int:
        return self.coefficients.shape[0] - 1

    @property
    def order_y(self) -> int:
        return self.coefficients.shape[1] - 1

    def _uv(self, x, y):
        ny, nx = self.shape
        return 2.0 * np.asarray(x, float) / (nx - 1) - 1.0, 2.0 * np.asarray(y, float) / (
            ny - 1) - 1.0

    def __call__(self, x, y) -> np.ndarray:
        u, v = self._uv(x, y)
        return np.polynomial.legendre.legval2d(u, v, self.coefficients)

    def effpix(self) -> np.ndarray:
        """The effective pixel of every pixel centre (ny, nx)."""
        ny, nx = self.shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        return self(xx, yy)


def fit_warp(*, rows: np.ndarray, xs: np.ndarray, row_ref: float, shape: tuple[int, int],
             order_x: int = 3, order_y: int = 2, nsigma: float = 3.0, iterations: int = 8,
             name: str = "arc", line_order_y: int = 3) -> WarpModel:
    """Fit the effective-pixel map to traced lines (see the module docstring).

    Each line's reference position (its ``x_eff``) is its own smooth fit along the
    slit (a polynomial of ``line_order_y`` in y) evaluated at ``row_ref``.
    """
    n_lines = int(np.sum(np.isfinite(xs).sum(axis=1) > max(10, xs.shape[1] // 4)))
    if n_lines < order_x + 2:
        raise WarpError(f"{name}: {n_lines} arc line(s) traced along the slit; a warp of "
                        f"order {order_x} along the dispersion needs at least {order_x + 2} "
                        "(lower spectroscopy.warp.order_x or take a richer arc)")
    pts_x, pts_y, pts_e, pts_line = [], [], [], []
    for k in range(xs.shape[0]):
        ok = np.isfinite(xs[k])
        if ok.sum() <= max(10, xs.shape[1] // 4):
            continue
        yk, xk = rows[ok].astype(float), xs[k, ok]
        keep = np.ones(len(yk), bool)
        for _ in range(5):  # a line's own smooth shape, outliers (cosmic rays) clipped
            c = np.polynomial.polynomial.polyfit(yk[keep], xk[keep], line_order_y)
            r = xk - np.polynomial.polynomial.polyval(yk, c)
            s = _robust_sigma(r[keep]) or 1e-6
            new = np.abs(r) < max(5 * s, 0.02)
            if np.array_equal(new, keep):
                break
            keep = new
        e = float(np.polynomial.polynomial.polyval(row_ref, c))
        pts_x.append(xk[keep])
        pts_y.append(yk[keep])
        pts_e.append(np.full(keep.sum(), e))
        pts_line.append(np.full(keep.sum(), k))
    x = np.concatenate(pts_x)
    y = np.concatenate(pts_y)
    e = np.concatenate(pts_e)
    line = np.concatenate(pts_line)
    model = WarpModel(coefficients=np.zeros((order_x + 1, order_y + 1)), shape=shape,
                      reference_row=float(row_ref))
    u, v = model._uv(x, y)
    design = np.polynomial.legendre.legvander2d(u, v, [order_x, order_y])
    keep = np.ones(len(x), bool)
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(design[keep], e[keep], rcond=None)
        resid = e - design @ coef
        rms = float(np.sqrt(np.mean(resid[keep] ** 2)))
        new = np.abs(resid) <= nsigma * max(rms, 1e-6)
        if np.array_equal(new, keep):
            break
        keep = new
    model.coefficients = coef.reshape(order_x + 1, order_y + 1)
    model.rms_px = float(np.sqrt(np.mean(resid[keep] ** 2)))
    model.n_lines = len(np.unique(line))
    model.n_points = int(keep.sum())
    model.n_rejected = int((~keep).sum())
    model.points = pd.DataFrame({"line": line, "x": x, "y": y, "x_eff": e, "residual": resid,
                                 "used": keep})
    log.info("%s: warp of order (%d, %d) from %d lines, %d points: RMS %.4f px (%d rejected)",
             name, order_x, order_y, model.n_lines, model.n_points, model.rms_px,
             model.n_rejected)
    return model


def warp_from_arc(*, arc: np.ndarray, axis: str = "x", order_x: int = 3, order_y: int = 2,
                  nsigma: float = 10.0, blend_px: float = 3.0, half_window: int = 4,
                  reference_row: int | None = None, name: str = "arc") -> WarpModel:
    """Find, trace and fit an arc's lines: the warp of one night and setup."""
    check_dispersion_axis(arc, axis=axis, name=name)
    image = to_dispersion_x(np.asarray(arc, float), axis)
    ny, nx = image.shape
    # x_eff is a line's column at the slit's centre ((ny − 1)/2); tracing starts on the
    # row nearest to it
    centre = (ny - 1) / 2.0 if reference_row is None else float(reference_row)
    row_ref = round(centre)
    lines = find_arc_lines(image=image, row=row_ref, nsigma=nsigma, blend_px=blend_px,
                           half_window=half_window)
    if len(lines) < order_x + 2:
        raise WarpError(f"{name}: {len(lines)} arc line(s) found above {nsigma:g} sigma on the "
                        f"reference row; a warp of order {order_x} along the dispersion needs "
                        f"at least {order_x + 2} (lower spectroscopy.warp.order_x or "
                        "spectroscopy.warp.line_nsigma, or take a richer arc)")
    rows, xs = trace_lines(image=image, x_ref=lines["x"].to_numpy(), row_ref=row_ref,
                           half_window=half_window)
    model = fit_warp(rows=rows, xs=xs, row_ref=centre, shape=(ny, nx), order_x=order_x,
                     order_y=order_y, name=name)
    model.points["blended"] = lines["blended"].to_numpy()[model.points["line"].to_numpy()]
    return model


def write_warp(path: str | Path, model: WarpModel, *, axis: str, inputs, params: Mapping) -> None:
    """The warp as FITS: primary (provenance, orders, RMS), ``EFFPIX`` (in the detector's
    orientation), ``COEFFS`` and ``POINTS`` tables."""
    from astropy.io import fits
    from astropy.table import Table

    from ..io import atomic_path
    from ..products import provenance_header

    header = provenance_header(step="arc_warp", inputs=inputs, params=params)
    header["DISPAXIS"] = (axis, "dispersion axis of the detector")
    header["WARPOX"] = (model.order_x, "Legendre order along the dispersion")
    header["WARPOY"] = (model.order_y, "Legendre order along the slit")
    header["WARPRMS"] = (round(model.rms_px, 5), "[px] RMS of traced lines about the fit")
    header["WARPNLIN"] = (model.n_lines, "arc lines traced")
    header["WARPNPT"] = (model.n_points, "traced points used")
    header["WARPNREJ"] = (model.n_rejected, "traced points rejected")
    header["WARPREF"] = (model.reference_row, "reference row (slit axis, 0-based)")
    header["WARPNY"], header["WARPNX"] = model.shape
    effpix = fits.ImageHDU(from_dispersion_x(model.effpix(), axis).astype(np.float32),
                           name="EFFPIX")
    effpix.header["BUNIT"] = "pix"
    coeffs = fits.BinTableHDU(Table({"coefficients": model.coefficients}), name="COEFFS")
    points = fits.BinTableHDU(Table.from_pandas(model.points), name="POINTS")
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(header=header), effpix, coeffs, points]).writeto(tmp)


def read_warp(path: str | Path) -> tuple[WarpModel, str]:
    """(model, dispersion axis) of a warp product."""
    from astropy.io import fits

    with fits.open(path) as hdul:
        h = hdul[0].header
        coef = np.asarray(hdul["COEFFS"].data["coefficients"], float)
        points = pd.DataFrame({c: np.asarray(hdul["POINTS"].data[c])
                               for c in hdul["POINTS"].columns.names})
    model = WarpModel(coefficients=coef, shape=(int(h["WARPNY"]), int(h["WARPNX"])),
                      reference_row=float(h["WARPREF"]), rms_px=float(h["WARPRMS"]),
                      n_lines=int(h["WARPNLIN"]), n_points=int(h["WARPNPT"]),
                      n_rejected=int(h["WARPNREJ"]), points=points)
    return model, str(h["DISPAXIS"])
