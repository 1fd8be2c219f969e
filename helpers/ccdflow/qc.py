"""Quality-control figures of a night and of a series' light curves (matplotlib, Agg).

Per night:

* ``masters.png``: every master of the night (bias, dark rate, flats) on a
  zscale stretch, with its median and robust spread;
* ``background.png``: one calibrated frame, its background map and the
  residual (frame − map) on a common zscale of the residual;
* ``conditions.png``: sky level, FWHM, airmass, number of detected sources
  and cosmic-ray pixels of every frame against time, coloured by filter.

Per series: ``<series>.png``, the targets' raw (normalised) flux beside their
comparison stars, and the differential light curves with their error bars.

The per-frame figures come from the ``batch-summary.tsv`` of the batch
directories (:mod:`ccdflow.batch`), so a night of thousands of frames is
plotted without opening them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["conditions_figure", "night_conditions", "night_figures", "plot_background_sample",
           "plot_conditions", "plot_lightcurve_result", "plot_lightcurves", "plot_masters"]

_DPI = 90
#: images wider than this (either axis) are shown binned: a panel is ~300-400 px wide, so
#: a 1k² frame shown unbinned lost 2 of every 3 pixels to nearest-neighbour resampling
#: (a 2×2 block mean keeps every pixel's light, and leaves a quarter of them to draw:
#: the 14 panels of a night took 0.6 s to draw unbinned);
#: matplotlib resampling a 4k² frame took ~1 GB per panel
_DISPLAY_PX = 512


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: zlib level of the PNGs: Pillow's default (6) took ~60 ms more per night figure than 3,
#: for a larger file (the demo's masters figure: 546 kB at 6, 390 kB at 3)
_PNG_COMPRESS_LEVEL = 3


def _save(fig, path: str | Path) -> None:
    from .io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png",
                    pil_kwargs={"compress_level": _PNG_COMPRESS_LEVEL})
    _pyplot().close(fig)


#: the layout of the figures whose margins :func:`_fixed_layout` sets: none, whatever the
#: rcParams say (a library imported beside ccdflow, e.g. chromatic-lightcurves under
#: specsuite, turns constrained layout on for the whole process)
_NO_LAYOUT = "none"


def _fixed_layout(fig, *, top_in: float = 0.6, bottom_in: float = 0.45, left_in: float = 0.5,
                  right_in: float = 0.75, wspace: float = 0.45, hspace: float = 0.35) -> None:
    """Margins in inches for a grid of image panels with colour bars, set once: the
    figures' geometry is fixed, and ``tight_layout`` (which measures every tick label)
    took 0.7 s of the masters figure's 1.3 s and 0.55 s of the background figure's 0.9 s.
    The figure is made with ``layout=_NO_LAYOUT``: a constrained figure ignores
    ``subplots_adjust`` (with a warning)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left_in / width, right=1 - right_in / width,
                        bottom=bottom_in / height, top=1 - top_in / height,
                        wspace=wspace, hspace=hspace)


def _gray():
    """Grey scale with masked (NaN) pixels in blue, so they are not read as stars."""
    import matplotlib

    cmap = matplotlib.colormaps["gray"].with_extremes(bad="tab:blue")
    return cmap


def _for_display(image: np.ndarray, *, max_px: int = _DISPLAY_PX
                 ) -> tuple[np.ndarray, int, tuple[float, float, float, float]]:
    """The image binned by the smallest integer factor that brings both axes to
    ``max_px`` or fewer (block means; a block that holds a masked (NaN) pixel is shown
    masked, so an isolated bad pixel, a cosmic ray or a hot pixel stays visible instead
    of vanishing into its neighbours' mean), the factor, and the imshow ``extent`` that
    keeps the axes in the frame's pixel coordinates."""
    from .blocks import nan_block_reduce

    ny, nx = image.shape
    factor = max(1, -(-max(ny, nx) // max_px))
    if factor == 1:
        return image, 1, (-0.5, nx - 0.5, -0.5, ny - 0.5)
    binned = nan_block_reduce(image, box=factor, func=np.nanmean)
    by, bx = binned.shape
    # the image's own NaN, padded with False (a bool plane: a 4k² frame's is 16 MB)
    nan = np.zeros((by * factor, bx * factor), bool)
    nan[:ny, :nx] = np.isnan(image)
    binned[nan.reshape(by, factor, bx, factor).any(axis=(1, 3))] = np.nan
    return binned, factor, (-0.5, bx * factor - 0.5, -0.5, by * factor - 0.5)


def _zscale(image: np.ndarray) -> tuple[float, float]:
    from astropy.visualization import ZScaleInterval

    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    return tuple(float(v) for v in ZScaleInterval().get_limits(finite))


def _robust(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(finite))
    return med, float(1.4826 * np.median(np.abs(finite - med)))


def plot_masters(*, masters: Mapping[str, str | Path], out: str | Path, title: str = "") -> None:
    """One panel per master (label → product path): SCI on zscale with median and MAD-σ."""
    from .products import read_product

    plt = _pyplot()
    n = max(1, len(masters))
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False,
                             layout=_NO_LAYOUT)
    for ax in axes.ravel():
        ax.set_axis_off()
    if not masters:
        axes[0, 0].text(0.5, 0.5, "no masters made this night\n(its frames use another "
                        "night's: see calibration_plan.csv)", ha="center", va="center")
    for ax, (label, path) in zip(axes.ravel(), masters.items(), strict=False):
        product = read_product(path)
        data = np.where(product.mask == 0, product.data, np.nan)
        med, sig = _robust(data)
        shown, factor, extent = _for_display(data)
        lo, hi = _zscale(shown)
        im = ax.imshow(shown, origin="lower", cmap=_gray(), vmin=lo, vmax=hi,
                       interpolation="nearest", extent=extent)
        unit = product.header.get("BUNIT", "")
        binned = f"(shown {factor}×{factor} binned)" if factor > 1 else ""
        ax.set_title(" ".join(filter(None, [f"{label}: median {med:.4g}, σ {sig:.3g}", unit,
                                            binned])), fontsize=9)
        ax.set_axis_on()
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title or "masters", fontsize=11)
    fig.text(0.5, 0.005, "zscale; masked pixels in blue (in a binned panel, every block "
             "that holds one)", ha="center", fontsize=8)
    _fixed_layout(fig)
    _save(fig, out)


def plot_background_sample(*, calibrated: str | Path, background: str | Path, out: str | Path,
                           frame: str = "") -> None:
    """A calibrated frame, its background map and the residual frame − map."""
    from astropy.io import fits

    from .products import read_product

    plt = _pyplot()
    product = read_product(calibrated)
    with fits.open(background) as hdul:
        bkg = hdul["BKG"].data.astype(np.float64)
        srcmask = hdul["SRCMASK"].data != 0
        header = hdul[0].header
    data = np.where(product.mask == 0, product.data, np.nan)
    residual = data - bkg
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), layout=_NO_LAYOUT)
    lo, hi = _zscale(data)
    panels = [(data, "calibrated SCI [e-]", (lo, hi)),
              (bkg, f"background map [e-] (SKYMED {header.get('SKYMED', np.nan):.1f})",
               (float(np.nanmin(bkg)), float(np.nanmax(bkg)))),
              (np.where(srcmask, np.nan, residual),
               f"SCI − map [e-], source mask in blue ({100 * srcmask.mean():.1f} %)",
               _zscale(np.where(srcmask, np.nan, residual)))]
    for ax, (image, label, (vmin, vmax)) in zip(axes, panels, strict=True):
        shown, factor, extent = _for_display(image)
        im = ax.imshow(shown, origin="lower", cmap=_gray(), vmin=vmin, vmax=vmax,
                       interpolation="nearest", extent=extent)
        ax.set_title(label + (f" ({factor}×{factor} binned)" if factor > 1 else ""),
                     fontsize=9)
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"background of {frame or Path(calibrated).stem}", fontsize=11)
    _fixed_layout(fig, bottom_in=0.35)
    _save(fig, out)


def night_conditions(*, frames: pd.DataFrame, summaries: Mapping[str, Sequence[str | Path]]
                     ) -> pd.DataFrame:
    """Per-frame conditions of a night from the batch summaries.

    Parameters
    ----------
    frames : DataFrame
        ``frame, filter, mjd_obs`` of the night's science frames.
    summaries : mapping
        Per stage (``background``, ``cosmics``, ``sources``, ``photometry``),
        the batch directories whose ``batch-summary.tsv`` to read; stages may
        be missing.

    Returns
    -------
    DataFrame
        ``frame, filter, mjd`` (mid-exposure UTC from the photometry when
        present, else the start) and whichever of ``sky_median_e, sky_rms_e,
        n_cosmic_px, n_sources, fwhm_px, airmass`` the stages give.
    """
    from .batch import read_summary

    table = frames[["frame", "filter", "mjd_obs"]].copy()
    for directories in summaries.values():
        parts = [read_summary(d) for d in directories]
        if not parts:
            continue
        summary = pd.concat(parts, ignore_index=True).drop(columns=["seconds"], errors="ignore")
        keep = [c for c in summary.columns if c == "frame" or c not in table.columns]
        table = table.merge(summary[keep], on="frame", how="left")
    table["mjd"] = table["mjd_utc"] if "mjd_utc" in table else table["mjd_obs"]
    table["mjd"] = table["mjd"].fillna(table["mjd_obs"])
    return table.sort_values("mjd", kind="stable").reset_index(drop=True)


def plot_conditions(*, table: pd.DataFrame, out: str | Path, title: str = "") -> None:
    """Sky, FWHM, airmass, sources and cosmic-ray pixels against UTC hours, by filter."""
    plt = _pyplot()
    quantities = [("sky_median_e", "sky [e-/pix]"), ("fwhm_px", "FWHM [px]"),
                  ("airmass", "airmass"), ("n_sources", "sources detected"),
                  ("n_cosmic_px", "cosmic-ray pixels")]
    quantities = [(c, label) for c, label in quantities if c in table and table[c].notna().any()]
    fig, axes = plt.subplots(max(1, len(quantities)), 1, figsize=(8, 1.9 * max(1, len(quantities))
                                                                  + 0.8), sharex=True,
                             squeeze=False, layout=_NO_LAYOUT)
    day0 = np.floor(table["mjd"].min()) if len(table) else 0.0
    hours = (table["mjd"] - day0) * 24.0
    for ax, (column, label) in zip(axes[:, 0], quantities, strict=False):
        for filt, rows in table.groupby(table["filter"].fillna("")):
            ax.plot(hours[rows.index], rows[column], "o", ms=3, label=filt or "none")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if quantities:
        axes[0, 0].legend(fontsize=7, title="filter", title_fontsize=7, loc="best")
    else:
        axes[0, 0].text(0.5, 0.5, "no per-frame figures", ha="center", va="center")
    axes[-1, 0].set_xlabel(f"UTC hours since MJD {day0:.0f}", fontsize=8)
    fig.suptitle(title or "observing conditions", fontsize=11)
    # stacked panels sharing x: margins for the y labels and the x axis, set once
    _fixed_layout(fig, top_in=0.5, bottom_in=0.5, left_in=0.8, right_in=0.2, hspace=0.12)
    _save(fig, out)


def flip_times(light: pd.DataFrame) -> list[float]:
    """MJDs (UTC) half-way between consecutive frames on either side of a meridian flip
    (:func:`ccdflow.photometry.lightcurves.meridian_flips`)."""
    from .photometry.lightcurves import meridian_flips

    return [when for _, _, when in meridian_flips(light)]


def plot_lightcurves(*, table: str | Path, directory: str | Path, out: str | Path,
                     title: str = "", max_stars: int = 8) -> None:
    """Raw and differential light curves of a series, from its light-curve files.

    Per target (``differential_<name>.csv``): top, the target's flux and its
    comparison stars' fluxes, each divided by its median; bottom, ``rel_flux``
    with ``rel_flux_err``; a dashed line at each meridian flip (:func:`flip_times`).
    A series without targets shows the ``max_stars`` brightest sources' normalised
    fluxes.  :func:`plot_lightcurve_result` draws the same figure from the light
    curves in memory.
    """
    directory = Path(directory)
    targets = {}
    for path in sorted(directory.glob("differential_*.csv")):
        name = path.stem.removeprefix("differential_")
        targets[name] = (pd.read_csv(path, comment="#"),
                         pd.read_csv(directory / f"comparisons_{name}.csv", comment="#"))
    _draw_lightcurves(long=pd.read_csv(table, comment="#"), targets=targets,
                      source=lambda sid: pd.read_csv(directory / f"source_{sid}.csv",
                                                     comment="#"),
                      out=out, title=title, max_stars=max_stars)


def plot_lightcurve_result(*, result: Mapping, out: str | Path, title: str = "",
                           max_stars: int = 8) -> None:
    """The figure of :func:`plot_lightcurves` from the light curves in memory (the result
    of :func:`ccdflow.photometry.build_lightcurves`): the light-curve job draws it
    without reading back the files it has just written."""
    per_source = result["per_source"]
    _draw_lightcurves(long=result["long"], targets=dict(sorted(result["differential"].items())),
                      source=lambda sid: per_source[int(sid)], out=out, title=title,
                      max_stars=max_stars)


def _draw_lightcurves(*, long: pd.DataFrame, targets: Mapping[str, tuple],
                      source: Callable[[int], pd.DataFrame], out: str | Path, title: str,
                      max_stars: int) -> None:
    """Draw the light-curve figure: ``targets`` {name: (differential light curve,
    comparison choice)}; ``source(id)`` a source's light curve."""
    from .photometry import good_mask

    plt = _pyplot()
    rows = max(1, len(targets))
    fig, axes = plt.subplots(2 * rows, 1, figsize=(8, 4.6 * rows), squeeze=False,
                             layout=_NO_LAYOUT)
    axes = axes[:, 0]
    if long.empty:
        axes[0].text(0.5, 0.5, "no photometry in this series", ha="center", va="center")
    day0 = np.floor(long["mjd_utc"].min()) if len(long) else 0.0

    def hours(values):
        return (np.asarray(values, float) - day0) * 24.0

    def normalised(sid):
        one = source(sid)
        ok = good_mask(one["flags"]) & np.isfinite(one["flux"])
        med = np.median(one.loc[ok, "flux"]) if ok.any() else np.nan
        return one["mjd_utc"], np.where(ok, one["flux"] / med, np.nan)

    if not targets and len(long):
        first = long[long["aperture"] == long["aperture"].iloc[0]]
        bright = first.groupby("source_id")["flux"].median().nlargest(max_stars).index
        for sid in bright:
            t, f = normalised(sid)
            axes[0].plot(hours(t), f, ".-", lw=0.6, ms=3, label=f"source {sid}")
        axes[0].set_ylabel("flux / median", fontsize=8)
        axes[0].legend(fontsize=6, ncol=2)
        axes[1].set_axis_off()
    for k, (name, (light, choice)) in enumerate(targets.items()):
        top, bottom = axes[2 * k], axes[2 * k + 1]
        for sid in choice.loc[choice["weight"] > 0, "source_id"].head(max_stars):
            t, f = normalised(int(sid))
            top.plot(hours(t), f, "-", lw=0.6, color="0.6")
        target_sid = int(light["source_id"].iloc[0])
        t, f = normalised(target_sid)
        top.plot(hours(t), f, "o-", ms=3, lw=0.8, color="C0", label=f"{name} (raw)")
        top.plot([], [], "-", color="0.6", label="comparisons")
        top.set_ylabel("flux / median", fontsize=8)
        top.legend(fontsize=7)
        ok = light["usable"].astype(bool)
        bottom.errorbar(hours(light.loc[ok, "mjd_utc"]), light.loc[ok, "rel_flux"],
                        yerr=light.loc[ok, "rel_flux_err"], fmt="o", ms=3, color="C1",
                        label=f"{name} / ensemble of {int((choice['weight'] > 0).sum())}")
        bottom.set_ylabel("relative flux", fontsize=8)
        flips = flip_times(light)  # where a flip's step may sit (detrend for it)
        for when in flips:
            for ax in (top, bottom):
                ax.axvline(hours([when])[0], ls="--", lw=0.8, color="0.4")
        if flips:
            bottom.plot([], [], "--", lw=0.8, color="0.4", label="meridian flip")
        bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        bottom.set_xlabel(f"UTC hours since MJD {day0:.0f}", fontsize=8)
    fig.suptitle(title or "light curves", fontsize=11)
    # margins set once (tight_layout measured every tick label: ~0.15 s a figure)
    _fixed_layout(fig, top_in=0.5, bottom_in=0.5, left_in=0.8, right_in=0.2, hspace=0.3)
    _save(fig, out)


def _first_sample(sample: Mapping[str, str] | Sequence[Mapping[str, str]]) -> dict | None:
    """The first candidate {frame, calibrated, background} whose two products exist."""
    candidates = [sample] if isinstance(sample, Mapping) else list(sample)
    for candidate in candidates:
        if Path(candidate["calibrated"]).is_file() and Path(candidate["background"]).is_file():
            return dict(candidate)
    return None


def _plot_note(*, text: str, out: str | Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10)
    _save(fig, out)


def night_figures(*, night: str, masters: Mapping[str, str | Path],
                  sample: Mapping[str, str] | Sequence[Mapping[str, str]],
                  out_masters: str | Path, out_background: str | Path) -> None:
    """The masters and background figures of a night (:func:`plot_masters`,
    :func:`plot_background_sample` on the first of the ``sample`` candidates ({calibrated,
    background, frame}, in time order) whose products were made).  Frames that failed
    have no products: the next candidate is drawn.  They need no photometry, so the
    workflow draws them while the night's photometry runs; the conditions figure
    (:func:`conditions_figure`) waits for it."""
    plot_masters(masters=masters, out=out_masters, title=f"masters of night {night}")
    chosen = _first_sample(sample)
    if chosen is None:
        log.warning("no frame of night %s has a calibrated frame and a background map", night)
        _plot_note(text=f"night {night}: no frame has a calibrated product and a background "
                   "map (see the batch summaries)", out=out_background)
    else:
        plot_background_sample(calibrated=chosen["calibrated"], background=chosen["background"],
                               out=out_background, frame=chosen["frame"])


def conditions_figure(*, night: str, frames: pd.DataFrame | Sequence[Mapping],
                      summaries: Mapping[str, Sequence[str | Path]],
                      out: str | Path) -> pd.DataFrame:
    """The conditions figure of a night (:func:`night_conditions`, :func:`plot_conditions`);
    returns the conditions table."""
    table = night_conditions(frames=pd.DataFrame(frames), summaries=summaries)
    plot_conditions(table=table, out=out, title=f"conditions, night {night}")
    return table
