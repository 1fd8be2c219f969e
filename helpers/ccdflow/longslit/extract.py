"""1-D spectra of the object: boxcar and optimal (Horne 1986) extraction.

The sky-subtracted frame (dispersion along x) and its error; the object's trace
(:class:`ccdflow.longslit.sky.Trace`).  Per column:

* **boxcar**: the sum over rows within ``halfwidth_fwhm`` × FWHM of the trace (the
  edge rows by the fraction inside), masked pixels filled from the optimal profile
  times the optimal flux (their count in ``n_masked``);
* **optimal**: Horne's weights ``P/V`` with the spatial profile ``P`` (the
  normalised data, each row's profile smoothed along the dispersion by a
  polynomial, clipped at 0 and renormalised) and the variance ``V`` from the model
  (``(F·P + sky)``-scaled ERR², as for the sky): ``F = Σ M·P·D/V / Σ M·P²/V``,
  ``Var F = Σ M·P / Σ M·P²/V``, pixels more than ``nsigma`` from ``F·P`` rejected
  iteratively (``M`` = 0).

The flux is in the frame's units (electrons); a column whose aperture leaves the
frame, or holds saturated pixels, is flagged.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["ExtractFlag", "extract_spectrum"]


class ExtractFlag:
    """Bits of the 1-D spectrum's ``flags`` column."""

    MASKED = 1  #: masked pixels in the aperture (filled from the profile)
    SATURATED = 2  #: a saturated pixel in the aperture
    EDGE = 4  #: the aperture leaves the slit
    REJECTED = 8  #: optimal extraction rejected pixels (cosmic rays)
    NO_FLUX = 16  #: no usable pixel


def _profile(data, weight, centre, half, order=3, nsigma=4.0):
    """Horne's spatial profile: each row of the normalised data within the aperture,
    smoothed along the dispersion by a polynomial (clipped), ≥ 0, normalised per
    column."""
    ny, nx = data.shape
    x = np.arange(nx, dtype=float)
    u = 2 * x / (nx - 1) - 1
    prof = np.zeros_like(data)
    for r in range(ny):
        sel = weight[r] > 0
        if sel.sum() <= order + 2:
            continue
        keep = sel.copy()
        for _ in range(5):
            c = np.polynomial.legendre.legfit(u[keep], data[r, keep], order,
                                              w=np.sqrt(weight[r, keep]))
            fit = np.polynomial.legendre.legval(u, c)
            resid = (data[r] - fit) * np.sqrt(weight[r])
            new = sel & (np.abs(resid) <= nsigma)
            if np.array_equal(new, keep):
                break
            keep = new
        prof[r] = fit
    inside = np.abs(np.arange(ny)[:, None] - centre[None, :]) <= half
    prof = np.where(inside, np.clip(prof, 0, None), 0.0)
    total = prof.sum(axis=0)
    return np.where(total > 0, prof / np.where(total > 0, total, 1), 0.0)


def extract_spectrum(*, skysub: np.ndarray, error: np.ndarray, mask: np.ndarray,
                     sky: np.ndarray, trace, read_noise_e: float = 5.0,
                     halfwidth_fwhm: float = 2.0, saturated: np.ndarray | None = None,
                     nsigma: float = 5.0, iterations: int = 5) -> pd.DataFrame:
    """Boxcar and optimal 1-D spectra (module docstring).

    Parameters
    ----------
    skysub, error : ndarray
        The sky-subtracted frame and its ERR (sky model error included), e-.
    mask : ndarray of bool
        Bad pixels (cosmic rays, bad pixels).
    sky : ndarray
        The sky model (the ``sky`` column: its sum over the aperture).
    trace : Trace
        The object's trace.
    halfwidth_fwhm : float
        Aperture half-width in FWHM of the trace's profile.

    Returns
    -------
    DataFrame
        ``pixel, flux, flux_err, flux_boxcar, flux_boxcar_err, sky, n_pix,
        n_masked, flags`` per column (fluxes and sky in e-; ``flux`` optimal).
    """
    d = np.asarray(skysub, float)
    e = np.asarray(error, float)
    ny, nx = d.shape
    bad = np.asarray(mask, bool) | ~np.isfinite(d) | ~np.isfinite(e) | (e <= 0)
    sat = np.zeros(d.shape, bool) if saturated is None else np.asarray(saturated, bool)
    x = np.arange(nx)
    centre = trace.centre(x)
    half = halfwidth_fwhm * trace.fwhm
    y = np.arange(ny)[:, None]
    # fraction of each row inside the boxcar aperture [c − half, c + half]
    frac = np.clip(np.minimum(y + 0.5, centre[None, :] + half)
                   - np.maximum(y - 0.5, centre[None, :] - half), 0.0, 1.0)
    in_ap = frac > 0
    edge = (centre - half < -0.5) | (centre + half > ny - 0.5)
    good = in_ap & ~bad
    rn2 = read_noise_e**2
    # boxcar first guess, then Horne's profile and optimal flux
    box0 = (np.where(good, d, 0.0) * frac).sum(axis=0)
    weight = np.where(good, 1.0 / np.where(good, e, 1.0) ** 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(good, d / np.where(box0 != 0, box0, np.nan)[None, :], 0.0)
        nweight = np.where(good, weight * box0[None, :] ** 2, 0.0)
    norm = np.nan_to_num(norm)
    profile = _profile(norm, np.nan_to_num(nweight), centre, half)
    keep = good.copy()
    flux = box0.copy()
    var_data = np.where(good, e**2, np.inf)
    skyv = np.asarray(sky, float)
    for _ in range(iterations):
        model = flux[None, :] * profile
        # the data's variance rescaled to the model's photons (a cosmic ray does not
        # weigh itself down)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = var_data * (np.abs(model + skyv) + rn2) / (np.abs(d + skyv) + rn2)
        v = np.where(keep, np.clip(v, 1e-6, None), np.inf)
        with np.errstate(invalid="ignore", divide="ignore"):
            num = np.where(keep, profile * d / v, 0.0).sum(axis=0)
            den = np.where(keep, profile**2 / v, 0.0).sum(axis=0)
            new_flux = num / den
            resid2 = (d - new_flux[None, :] * profile) ** 2 / v
        new_keep = keep & ~(resid2 > nsigma**2)
        # never reject more than one pixel per column per pass (the worst)
        worst = np.argmax(np.where(keep & (resid2 > nsigma**2), resid2, -1), axis=0)
        drop = np.zeros_like(keep)
        hit = (keep & (resid2 > nsigma**2)).any(axis=0)
        drop[worst[hit], np.flatnonzero(hit)] = True
        new_keep = keep & ~drop
        flux = np.where(np.isfinite(new_flux), new_flux, flux)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    with np.errstate(invalid="ignore", divide="ignore"):
        p_sum = np.where(keep, profile, 0.0).sum(axis=0)
        den = np.where(keep, profile**2 / v, 0.0).sum(axis=0)
        flux_var = p_sum / den  # Horne's Var F = Σ M·P / Σ M·P²/V
    # boxcar with masked (or rejected) pixels filled from the optimal model
    filled = np.where(keep, d, flux[None, :] * profile)
    box = (np.where(in_ap, filled, 0.0) * frac).sum(axis=0)
    model_var = np.where(in_ap & ~keep, np.abs(flux[None, :] * profile + skyv) + rn2, 0.0)
    box_var = (np.where(keep, e**2, 0.0) * frac).sum(axis=0) + (model_var * frac).sum(axis=0)
    n_masked = (in_ap & ~good).sum(axis=0)
    flags = np.zeros(nx, np.int64)
    flags[n_masked > 0] |= ExtractFlag.MASKED
    flags[(in_ap & sat).any(axis=0)] |= ExtractFlag.SATURATED
    flags[edge] |= ExtractFlag.EDGE
    flags[(good & ~keep).any(axis=0)] |= ExtractFlag.REJECTED
    no_flux = ~np.isfinite(flux) | ~(den > 0)
    flags[no_flux] |= ExtractFlag.NO_FLUX
    return pd.DataFrame({
        "pixel": x, "flux": np.where(no_flux, np.nan, flux),
        "flux_err": np.where(no_flux, np.nan, np.sqrt(np.abs(flux_var))),
        "flux_boxcar": box, "flux_boxcar_err": np.sqrt(box_var),
        "sky": (np.where(in_ap, skyv, 0.0) * frac).sum(axis=0),
        "n_pix": frac.sum(axis=0), "n_masked": n_masked, "trace_row": centre,
        "flags": flags})


def halfwidth_px(trace, halfwidth_fwhm: float) -> float:
    """The boxcar aperture's half-width in rows."""
    return halfwidth_fwhm * trace.fwhm if math.isfinite(trace.fwhm) else float("nan")
