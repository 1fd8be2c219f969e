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

import math

import numpy as np

from .model import SourceModel, cut_stamps

__all__ = ["CROWDED_REFIT_HOPS", "GROUP_REFIT_MAX_FRACTION", "MODEL_OUTLIER_NSIGMA",
           "coupled_sources", "model_outliers", "model_without_outliers", "neighbour_sources",
           "refit_group"]

#: a pixel this many σ above the model (σ² = sky variance + modelled photons + the
#: model's own error (ε·model)²) is no part of a star: a star's pixels scatter about
#: the model by photon noise, and a mis-centred or mis-shaped PSF by ε·model, both in σ
MODEL_OUTLIER_NSIGMA = 8.0

#: a pass refits only the sources whose fits the new outliers touch (those whose boxes
#: overlap, transitively, as DAOPHOT's ALLSTAR regroups), unless that is more than this
#: fraction of the frame's sources: then the frame is refitted whole.  Refitting all
#: 2 172 sources of a 4k² frame took ~2 s a pass, for passes that found 2, 2 and 1 stars
GROUP_REFIT_MAX_FRACTION = 0.5

#: in a crowded field the boxes link every source to the next (10 000 sources on 2048²:
#: one group of all of them), so the exact group is the frame, and each pass refitted it
#: whole (8 s a pass there); a pass then refits the changed stars' neighbours within this
#: many links, the rest held at their fits (:func:`neighbour_sources`): 78× sep's time on
#: that frame became 31×, 99.9 % of the rows equal to the whole-frame refit's to 1e-11σ;
#: the 18 rows that differ (up to 10.9σ, as the passes then take other pixels out) are of
#: two blends whose stars' truth neither refit recovers
CROWDED_REFIT_HOPS = 2


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
    at ``model.x, model.y``); ``fit`` holds model_sources' other arguments.  A pass
    refits the groups its stars are in (:func:`refit_group`, :func:`coupled_sources`);
    in a crowded field, where the group is most of the frame, their neighbours within
    :data:`CROWDED_REFIT_HOPS` links (:func:`neighbour_sources`); the frame whole only
    when even those are more than :data:`GROUP_REFIT_MAX_FRACTION` of its sources."""
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
        most = GROUP_REFIT_MAX_FRACTION * len(model.flux)
        links = _links(model)  # this pass's model: built once for both questions
        group = coupled_sources(model, sources, links=links)
        if model.stamps is not None and len(group) > most:  # a crowded field
            group = neighbour_sources(model, sources, hops=CROWDED_REFIT_HOPS, links=links)
        if model.stamps is None or len(group) > most:
            del image  # a frame-sized float64 plane: one at a time
            model, image, n_hidden = model_sources(data=data, usable=usable, sky=sky,
                                                   sky_rms=sky_rms, free_centres=free, **fit)
        else:
            model, n_hidden = refit_group(model=model, image=image, group=group, data=data,
                                          usable=usable, sky=sky, sky_rms=sky_rms,
                                          free_centres=free, fit=fit)
    rows = np.concatenate(found_rows) if found_rows else np.zeros(0, np.intp)
    columns = np.concatenate(found_columns) if found_columns else np.zeros(0, np.intp)
    flat = np.unique(rows.astype(np.int64) * data.shape[1] + columns)
    rows, columns = flat // data.shape[1], flat % data.shape[1]
    return model, image, n_hidden, (rows, columns), free


def _links(model: SourceModel):
    """``(ok, graph)``: the placed sources and the symmetric sparse graph over them of the
    pairs whose fitting boxes can overlap (centres within :func:`_reach`); ``graph`` is
    None when no source is placed."""
    from scipy.sparse import coo_matrix

    from ..spatial import PointTree

    ok = np.flatnonzero(np.isfinite(model.x) & np.isfinite(model.y))
    if not len(ok):
        return ok, None
    pairs = PointTree(np.column_stack([model.x[ok], model.y[ok]])).query_pairs(
        _reach(model), output_type="ndarray")
    i, j = np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]]
    return ok, coo_matrix((np.ones(len(i)), (i, j)), shape=(len(ok), len(ok))).tocsr()


def _start_and_links(model: SourceModel, start, links):
    """``(start, ok, graph)``: ``start`` as indices, and the model's :func:`_links` (those
    given, else built; not built for an empty ``start``, whose ``graph`` is None)."""
    start = np.asarray(start, dtype=np.intp)
    if not len(start):
        return start, None, None
    ok, graph = links or _links(model)
    return start, ok, graph


def _start_in(ok: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Positions in ``ok`` of the ``start`` sources that are placed."""
    where = np.searchsorted(ok, start)
    found = (where < len(ok)) & (ok[np.minimum(where, len(ok) - 1)] == start)
    return where[found]


def coupled_sources(model: SourceModel, start: np.ndarray, *, links=None) -> np.ndarray:
    """Indices of the modelled sources linked to ``start`` by chains of sources whose
    fitting boxes can overlap (centres within (2·half + 3)·√2 px: the boxes' width, a
    recentring's shift each, on the diagonal), ``start`` included; sorted.  ``links``:
    the model's ``_links`` when the caller has them already."""
    from scipy.sparse.csgraph import connected_components

    start, ok, graph = _start_and_links(model, start, links)
    if graph is None:  # nothing to start from, or no source placed
        return np.unique(start)
    _, labels = connected_components(graph, directed=False)
    keep = np.isin(labels, labels[_start_in(ok, start)])
    return np.union1d(ok[keep], start)


def neighbour_sources(model: SourceModel, start: np.ndarray, *,
                      hops: int = CROWDED_REFIT_HOPS, links=None) -> np.ndarray:
    """Indices of the modelled sources within ``hops`` links of ``start`` (links as in
    :func:`coupled_sources`), ``start`` included; sorted.  A change to a star's fit
    reaches its neighbours' fits through their shared pixels, and theirs' neighbours
    only through those: what a crowded field's pass refits."""
    start, ok, graph = _start_and_links(model, start, links)
    if graph is None:  # nothing to start from, or no source placed
        return np.unique(start)
    reached = np.zeros(len(ok), bool)
    reached[_start_in(ok, start)] = True
    for _ in range(hops):
        grown = reached | ((graph @ reached.astype(np.float64)) > 0)
        if np.array_equal(grown, reached):  # the whole group is reached
            break
        reached = grown
    return np.union1d(ok[reached], start)


def _reach(model: SourceModel) -> float:
    return (2 * model.half + 3) * math.sqrt(2.0)


def _hidden_within(model: SourceModel, group: np.ndarray) -> np.ndarray:
    """Indices (into ``model.hidden``) of the residual's stars within reach of the group:
    one may be the very cosmic ray the pass takes out (a 1 900 e- ray beside an
    undersampled star's peak was fitted as a faint neighbour), so they are searched for
    again with the group."""
    from ..spatial import PointTree

    hidden = model.hidden
    if hidden is None or not len(hidden.x):
        return np.zeros(0, np.intp)
    xy = np.column_stack([model.x[group], model.y[group]])
    dist, _ = PointTree(xy).query(np.column_stack([hidden.x, hidden.y]),
                                  distance_upper_bound=_reach(model))
    return np.flatnonzero(np.isfinite(dist))


def _add_light(image: np.ndarray, model: SourceModel, idx: np.ndarray, sign: float) -> None:
    """Add (sign +1) or take out (-1) the modelled light of sources ``idx`` in place, as
    :func:`~ccdflow.photometry.model.model_image` puts it."""
    from .model import add_stamps

    idx = idx[(model.flux[idx] != 0) & np.isfinite(model.x[idx]) & np.isfinite(model.y[idx])]
    if len(idx):
        add_stamps(image, model.stamps[idx], model.px[idx], model.py[idx],
                   sign * model.flux[idx])


def refit_group(*, model: SourceModel, image: np.ndarray, group: np.ndarray,
                data: np.ndarray, usable: np.ndarray, sky: np.ndarray, sky_rms: np.ndarray,
                free_centres: np.ndarray, fit: dict) -> tuple[SourceModel, int]:
    """The model with the sources ``group`` modelled again, as
    :func:`~ccdflow.photometry.model.model_sources` models a frame (jointly, from the
    positions given to it, on ``usable`` pixels, with ``free_centres``; then the stars
    its residual reveals), against the frame less every other source's modelled light;
    the residual's stars within reach of the group are searched for again with it.
    ``image`` (the scene) is updated in place and the model's error ε recomputed over
    the frame.  ``group`` must hold every source whose box reaches the changed ones
    (:func:`coupled_sources`): the others' fits do not see the change.  Returns the new
    model (``model`` is not modified) and the number of the residual's stars;
    ``fit`` holds model_sources' other arguments."""
    from .model import model_sources, psf_model_error

    group = np.asarray(group, dtype=np.intp)
    x0, y0 = np.asarray(fit["x"], float)[group], np.asarray(fit["y"], float)[group]
    near = _hidden_within(model, group)
    hidden = model.hidden
    _add_light(image, model, group, -1.0)  # the scene is now every other source
    if len(near):
        _add_light(image, hidden, near, -1.0)
    # every box the group and its residual's stars can have, wholly inside the cut
    margin = 2 * model.half + 3
    xs = np.concatenate([x0, model.x[group], hidden.x[near] if len(near) else []])
    ys = np.concatenate([y0, model.y[group], hidden.y[near] if len(near) else []])
    ny, nx = data.shape
    x_lo = int(max(0, math.floor(np.nanmin(xs)) - margin))
    x_hi = int(min(nx, math.ceil(np.nanmax(xs)) + margin + 1))
    y_lo = int(max(0, math.floor(np.nanmin(ys)) - margin))
    y_hi = int(min(ny, math.ceil(np.nanmax(ys)) + margin + 1))
    cut = (slice(y_lo, y_hi), slice(x_lo, x_hi))
    sky_map = fit.get("sky_map")
    local, scene, _ = model_sources(
        data=data[cut] - image[cut], usable=usable[cut], saturated=fit["saturated"][cut],
        psf=fit["psf"], x=x0 - x_lo, y=y0 - y_lo, sky=sky[group], sky_rms=sky_rms[group],
        sky_map=None if sky_map is None else sky_map[cut],
        typical_noise=fit["typical_noise"], radius=fit["radius"], recentre=fit["recentre"],
        free_centres=free_centres[group], model_error=False)  # ε: over the frame below
    image[cut] += scene
    out = SourceModel(psf=model.psf, x=model.x.copy(), y=model.y.copy(),
                      flux=model.flux.copy(), flux_var=model.flux_var.copy(),
                      half=model.half, stamps=model.stamps.copy(), px=model.px.copy(),
                      py=model.py.copy())
    out.x[group], out.y[group] = local.x + x_lo, local.y + y_lo
    out.flux[group], out.flux_var[group] = local.flux, local.flux_var
    out.stamps[group] = local.stamps
    out.px[group], out.py[group] = local.px + x_lo, local.py + y_lo
    out.hidden = _merged_hidden(hidden, near, local.hidden, x_lo, y_lo, model)
    out.rel_error, out.rel_error_random = psf_model_error(
        data=data, usable=usable, model=out, image=image, sky=sky, sky_rms=sky_rms)
    return out, 0 if out.hidden is None else len(out.hidden.x)


def _merged_hidden(hidden: SourceModel | None, dropped: np.ndarray,
                   found: SourceModel | None, x_lo: int, y_lo: int,
                   model: SourceModel) -> SourceModel | None:
    """The residual's stars: the old ones but ``dropped``, and those ``found`` again (in
    a cut starting at ``x_lo, y_lo``)."""
    parts = []
    if hidden is not None and len(hidden.x):
        keep = np.setdiff1d(np.arange(len(hidden.x)), dropped)
        parts.append((hidden.x[keep], hidden.y[keep], hidden.flux[keep],
                      hidden.flux_var[keep], hidden.stamps[keep], hidden.px[keep],
                      hidden.py[keep]))
    if found is not None and len(found.x):
        parts.append((found.x + x_lo, found.y + y_lo, found.flux, found.flux_var,
                      found.stamps, found.px + x_lo, found.py + y_lo))
    if not parts:
        return None
    x, y, flux, flux_var, stamps, px, py = (np.concatenate(a) for a in zip(*parts,
                                                                              strict=True))
    return SourceModel(psf=model.psf, x=x, y=y, flux=flux, flux_var=flux_var,
                       half=model.half, stamps=stamps, px=px, py=py)
