"""Cosmic rays the frame's mask missed on the stars themselves, found against the PSF
model.

The cosmic-ray stage spares star cores: on an undersampled frame (FWHM < 2 px) a star's
peak is as sharp as a cosmic ray, and L.A.Cosmic's contrast test keeps it (see
:func:`ccdflow.cosmics.effective_objlim`).  A cosmic ray that lands on a star there is
left in the frame and adds its charge to the star's flux: a 1 900 e- hit on a
7 400 e- star of a simulated 12-bit night (FWHM 1.3 px) made a 14σ outlier of the
light curve with honest-looking errors.

The PSF model knows what the star should look like.  As Horne (1986) does in optimal
extraction, pixels standing far above the fitted model of every source (the star and
its neighbours), beyond the pixel's noise and the model's own error, are cosmic rays
(or defects the hot-pixel map missed): they are filled from the model like any masked
pixel, and the row's ``repaired_fraction`` and REPAIRED flag say so.
"""

from __future__ import annotations

import numpy as np

from .model import SourceModel, cut_stamps

__all__ = ["MODEL_OUTLIER_NSIGMA", "model_outliers", "model_without_outliers"]

#: a pixel this many σ above the model (σ² = sky variance + modelled photons + the
#: model's own error (ε·model)²) is no part of a star: a star's pixels scatter about
#: the model by photon noise, and a mis-centred or mis-shaped PSF by ε·model, both in σ
MODEL_OUTLIER_NSIGMA = 8.0


def model_outliers(*, data: np.ndarray, usable: np.ndarray, saturated: np.ndarray,
                   model: SourceModel, image: np.ndarray, sky: np.ndarray,
                   sky_rms: np.ndarray, nsigma: float = MODEL_OUTLIER_NSIGMA,
                   core_fraction: float = 0.02,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows and columns of the usable pixels of the modelled stars' cores that stand
    more than ``nsigma`` above the model of the frame: each star's worst one.

    A core pixel holds more than ``core_fraction`` of its star's light (within ~1.5
    FWHM), where the model knows what the star puts: farther out, a bright star's
    wings beyond its model and stars the list lacks would be taken for cosmic rays
    (the cosmic-ray stage examines those pixels anyway).  Stars with a saturated pixel
    on their stamp are left alone: their model is fitted to the wings only; so are
    blends (another source within 2 FWHM), whose joint fit can leave their peaks far off.

    Parameters
    ----------
    data, usable, saturated : ndarray
        The frame (e-), its usable pixels (masked and saturated ones are never
        outliers) and its saturated pixels.
    model : SourceModel
        The fitted sources with their stamps and ``rel_error`` ε.
    image : ndarray
        Every modelled source's light on the frame (the scene).
    sky, sky_rms : ndarray
        Each source's local sky level and per-pixel noise.

    Returns
    -------
    rows, columns, sources : ndarray of int
        Each outlying pixel and the index of the source whose core it is in.
    """
    empty = np.zeros(0, np.intp)
    if model.stamps is None or not len(model.flux):
        return empty, empty, empty
    pick = np.flatnonzero(np.isfinite(model.x) & np.isfinite(model.y))
    if not len(pick):
        return empty, empty, empty
    px, py = model.px[pick], model.py[pick]
    d, inside = cut_stamps(data, px, py)
    ok, _ = cut_stamps(usable, px, py, fill=False)
    clipped = cut_stamps(saturated, px, py, fill=False)[0].any(axis=(1, 2))
    m, _ = cut_stamps(image, px, py)
    residual = d - sky[pick][:, None, None] - m
    lit = np.clip(m, 0, None)
    variance = sky_rms[pick][:, None, None] ** 2 + lit + (model.rel_error * lit) ** 2
    core = (model.stamps[pick] > core_fraction) & ~(clipped | _blended(model, pick))[:, None, None]
    z = np.where(inside & ok & core, residual / np.sqrt(variance), -np.inf)
    worst = z.reshape(len(pick), -1).argmax(axis=1)  # each star's worst pixel only
    star = np.flatnonzero(z.reshape(len(pick), -1)[np.arange(len(pick)), worst] > nsigma)
    if not len(star):
        return empty, empty, empty
    row, column = np.unravel_index(worst[star], z.shape[1:])
    return py[star, row].astype(np.intp), px[star, column].astype(np.intp), pick[star]


def _blended(model: SourceModel, pick: np.ndarray) -> np.ndarray:
    """Whether each picked source has another within 2 FWHM."""
    from ..spatial import PointTree

    xy = np.column_stack([model.x[pick], model.y[pick]])
    pairs = PointTree(xy).query_pairs(2.0 * float(model.psf.fwhm), output_type="ndarray")
    near = np.zeros(len(pick), bool)
    near[pairs.ravel()] = True
    return near


def model_without_outliers(*, data: np.ndarray, usable: np.ndarray, sky: np.ndarray,
                           sky_rms: np.ndarray, nsigma: float = MODEL_OUTLIER_NSIGMA,
                           max_passes: int = 4, **fit,
                           ) -> tuple[SourceModel, np.ndarray, int,
                                      tuple[np.ndarray, np.ndarray], np.ndarray]:
    """:func:`~ccdflow.photometry.model.model_sources`, fitted again without the pixels
    :func:`model_outliers` finds, one per star and pass, up to ``max_passes`` passes
    (Horne 1986: a cosmic ray pulls the fit of the star it hit, so that the star's own
    peak may stand out of the biased model until the ray's pixel is out); a star is
    refitted with its centre free before its pixel is taken:
    ``(model, image, n_hidden, (rows, columns), refitted)``, ``refitted`` the sources
    whose centres were fitted (a ray pulls a star's measured centroid too: measure them
    at ``model.x, model.y``); ``fit`` holds model_sources' other arguments."""
    from .model import model_sources

    free = np.zeros(len(fit["x"]), bool)
    model, image, n_hidden = model_sources(data=data, usable=usable, sky=sky,
                                           sky_rms=sky_rms, **fit)
    found_rows, found_columns = [], []
    for _ in range(max_passes):
        rows, columns, sources = model_outliers(
            data=data, usable=usable, saturated=fit["saturated"], model=model, image=image,
            sky=sky, sky_rms=sky_rms, nsigma=nsigma)
        if not len(rows):
            break
        # a centre off by a tenth of a pixel leaves an undersampled star's peak pixel
        # ~8σ out (with a trough across the star): such stars are fitted first with
        # their centres free; what still stands out then is no part of the star
        fixed = free[sources]
        free[sources] = True
        if fixed.any():
            if not found_rows:
                usable = usable.copy()
            usable[rows[fixed], columns[fixed]] = False
            found_rows.append(rows[fixed])
            found_columns.append(columns[fixed])
        del image  # a frame-sized float64 plane: one at a time
        model, image, n_hidden = model_sources(data=data, usable=usable, sky=sky,
                                               sky_rms=sky_rms, free_centres=free, **fit)
    rows = np.concatenate(found_rows) if found_rows else np.zeros(0, np.intp)
    columns = np.concatenate(found_columns) if found_columns else np.zeros(0, np.intp)
    flat = np.unique(rows.astype(np.int64) * data.shape[1] + columns)
    rows, columns = flat // data.shape[1], flat % data.shape[1]
    return model, image, n_hidden, (rows, columns), free
