"""Naylor (1998) optimal photometry with the frame's PSF (opticam's OptimalPhotometer)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .flags import BAD_FLAGS, PhotFlag
from .model import cut_stamps, model_on_stamps, overlap_fraction

__all__ = ["optimal_photometry"]


def optimal_photometry(*, data, rand_var, err_cal, usable, saturated, x, y, inside, ids, psf, model,
             radius, sky, bmap, sky_var, bkg_rms, n_sky, reference, max_repaired_fraction,
             max_contamination, subtract_neighbours, row_noise_e=0.0) -> pd.DataFrame:
    """Naylor (1998) optimal photometry with the frame's PSF.

    Over the usable pixels within ``radius`` of each star (masked ones simply get no
    weight, which is the repair here)::

        W_i = (P_i/V_i) / Σ_j (P_j²/V_j),     V_i = sky variance + F̂·P_i (the model)
        F   = Σ W_i (D_i − b̂),               flux_err² = Σ W_i² (ERR_i² − ERR_CAL_i²)
                                                        + (Σ W_i)²·Var(b̂)

    F estimates the total flux if the PSF model is right; a per-frame profile
    correction (median of the largest aperture's flux over the optimal flux for
    isolated, unflagged bright stars) absorbs what the model misses in the wings.
    ``repaired_fraction`` is the share of the weight Σ P²/V lost to masked pixels.
    ``rand_var`` is the frame's :class:`~ccdflow.photometry.noise.RandomVariance`
    (ERR² − ERR_CAL², read on the stamps).
    """
    n = len(x)
    pos_x, pos_y = np.where(inside, x, 0.0), np.where(inside, y, 0.0)
    half = math.ceil(radius) + 1
    p, px, py = model.box(half)
    d, within = cut_stamps(data, px, py)
    ok, _ = cut_stamps(usable, px, py, fill=False)
    sat, _ = cut_stamps(saturated, px, py, fill=False)
    rv = rand_var.stamps(px, py)  # ERR² − ERR_CAL² on the stamps (RandomVariance)
    cv = cut_stamps(err_cal, px, py)[0].astype(np.float64) ** 2  # stamps, not the frame
    ov = overlap_fraction(px, py, pos_x, pos_y, radius) > 0.5
    region = within & ov
    use = region & ok
    if bmap is not None:
        bstamp, _ = cut_stamps(bmap, px, py)
        background = bstamp
        level = np.array([np.nan] * n)
    else:
        background = np.nan_to_num(sky)[:, None, None]
        level = sky
    f_est = np.clip(model.flux, 0, None)
    typical = float(np.sqrt(np.median(rand_var.at(np.s_[::7, ::7]))))
    rms = np.where(np.isfinite(bkg_rms), bkg_rms, typical)
    v = np.nan_to_num(rms, nan=1.0)[:, None, None] ** 2 + f_est[:, None, None] * p
    with np.errstate(invalid="ignore", divide="ignore"):
        weight_all = np.where(region, p * p / v, 0.0).sum(axis=(1, 2))
        norm = np.where(use, p * p / v, 0.0).sum(axis=(1, 2))
        w = np.where(use, (p / v) / norm[:, None, None], 0.0)
        resid = d - background
        if subtract_neighbours and model is not None:
            others = model_on_stamps(model, px, py) - model.flux[:, None, None] * p
            resid = resid - others
        flux = (w * resid).sum(axis=(1, 2))
        wsum = w.sum(axis=(1, 2))
        var = (w * w * rv).sum(axis=(1, 2))
        var = var + (wsum**2 * sky_var if sky_var is not None else 0.0)
        if row_noise_e > 0:  # a level common to each row: Σ_r (Σ_row W)² − Σ W²
            var = var + row_noise_e**2 * ((w.sum(axis=2) ** 2).sum(axis=1)
                                          - (w * w).sum(axis=(1, 2)))
        # the PSF model's own error per pixel that differs from star to star, ε_r: Σ W²
        # (ε_r F̂ P)²; its shared part moves every star alike and the profile correction
        # below takes it out (:func:`~ccdflow.photometry.model.psf_model_error`)
        eps = model.rel_error_random
        if eps > 0:
            var = var + (eps * f_est) ** 2 * (w * w * p * p).sum(axis=(1, 2))
        cal = (w * w * cv).sum(axis=(1, 2))
        repaired = np.where(weight_all > 0, 1.0 - norm / weight_all, 0.0)
    # profile correction from isolated, unflagged bright stars
    ref_flux = reference["flux"].to_numpy(float)
    ref_flags = reference["flags"].to_numpy(np.int64)
    clean = ((ref_flags & int(BAD_FLAGS | PhotFlag.CONTAMINATED | PhotFlag.BLENDED
                              | PhotFlag.REPAIRED)) == 0)
    snr = ref_flux / reference["flux_err"].to_numpy(float)
    pick = clean & np.isfinite(flux) & (flux > 0) & (snr > 50)
    correction = float(np.median(ref_flux[pick] / flux[pick])) if pick.sum() >= 3 else 1.0
    flux, var, cal = flux * correction, var * correction**2, cal * correction**2
    flags = np.zeros(n, np.int64)
    flags[repaired > 0] |= PhotFlag.REPAIRED
    flags[repaired > max_repaired_fraction] |= PhotFlag.MASKED
    flags[(sat & region).any(axis=(1, 2))] |= PhotFlag.SATURATED
    keep = int(PhotFlag.NEAR_EDGE | PhotFlag.OFF_FRAME | PhotFlag.FEW_SKY_PIXELS
               | PhotFlag.BLENDED | PhotFlag.CONTAMINATED)
    flags |= ref_flags & keep
    nan = np.where(inside, 1.0, np.nan)
    table = pd.DataFrame({
        "source_id": ids, "x": x, "y": y, "radius": np.nan, "flux": flux * nan,
        "flux_err": np.sqrt(var) * nan, "flux_err_cal": np.sqrt(cal) * nan,
        "bkg": (level if bmap is None else reference["bkg"].to_numpy(float)) * nan,
        "bkg_err": reference["bkg_err"].to_numpy(float),
        "bkg_rms": bkg_rms * nan, "n_ap": region.sum(axis=(1, 2)).astype(float),
        "n_sky": n_sky, "masked_fraction": 1.0 - use.sum(axis=(1, 2)) / np.maximum(
            region.sum(axis=(1, 2)), 1), "repaired_fraction": repaired,
        "contamination": reference["contamination"].to_numpy(float), "flags": flags})
    table.attrs["optimal_correction"] = correction
    return table

