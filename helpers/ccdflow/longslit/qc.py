"""Quality-control figures of the long-slit branch (matplotlib, Agg).

* ``plot_warp``: the master arc with every traced line point (used, rejected)
  and the fit's residuals against the slit position and the dispersion pixel;
* ``plot_spectrum``: one spectroscopic frame: SCI, the sky model, SKYSUB with the
  masked pixels and the excluded trace band, and the extracted 1-D spectrum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..qc import _NO_LAYOUT, _for_display, _gray, _pyplot, _save, _zscale

__all__ = ["plot_spectra_batch", "plot_spectrum", "plot_warp"]


def plot_warp(*, warp: str | Path, arc: str | Path, out: str | Path, title: str = "") -> None:
    """The arc with its traced lines, and the warp fit's residuals (px)."""
    from astropy.io import fits

    from ..products import read_product
    from .warp import read_warp, to_dispersion_x

    model, axis = read_warp(warp)
    with fits.open(warp) as hdul:
        rms, n_lines = hdul[0].header["WARPRMS"], hdul[0].header["WARPNLIN"]
    image = to_dispersion_x(read_product(arc).data.astype(float), axis)
    pts = model.points
    used = pts["used"].to_numpy(bool)
    plt = _pyplot()
    fig = plt.figure(figsize=(11, 7), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1.3, 1])
    ax = fig.add_subplot(grid[0, :])
    lo, hi = _zscale(image)
    shown, _, extent = _for_display(image)  # points overlaid in the frame's pixels
    ax.imshow(shown, origin="lower", cmap=_gray(), vmin=lo, vmax=hi, aspect="auto",
              interpolation="nearest", extent=extent)
    ax.plot(pts["x"][used], pts["y"][used], ",", color="tab:cyan")
    ax.plot(pts["x"][~used], pts["y"][~used], "x", color="tab:red", ms=3)
    ax.set_xlabel("dispersion pixel")
    ax.set_ylabel("slit pixel")
    ax.set_title(f"{title or 'warp'}: {n_lines} lines traced, RMS {rms:.4f} px "
                 f"({int((~used).sum())} points rejected, red)", fontsize=10)
    for col, (key, label) in enumerate((("y", "slit pixel"), ("x", "dispersion pixel"))):
        ax = fig.add_subplot(grid[1, col])
        ax.plot(pts[key][used], pts["residual"][used], ".", ms=1.5, color="tab:blue")
        ax.plot(pts[key][~used], pts["residual"][~used], "x", ms=3, color="tab:red")
        ax.axhline(0, color="k", lw=0.6)
        lim = max(0.05, 6 * float(rms))
        ax.set_ylim(-lim, lim)
        ax.set_xlabel(label)
        ax.set_ylabel("traced − model (px)")
    _save(fig, out)


def plot_spectrum(*, product: str | Path, spectrum: str | Path, out: str | Path,
                  title: str = "") -> None:
    """SCI, SKY and SKYSUB (masked pixels in blue, trace band outlined) and the 1-D flux."""
    from astropy.io import fits

    with fits.open(product) as hdul:
        head = hdul[0].header
        planes = {name: np.asarray(hdul[name].data, float) for name in ("SCI", "SKY", "SKYSUB")}
        mask = np.asarray(hdul["MASK"].data) != 0
        axis = str(head.get("DISPAXIS", "x"))
    table = pd.read_csv(spectrum, comment="#")
    if axis == "y":
        planes = {k: v.T for k, v in planes.items()}
        mask = mask.T
    plt = _pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), height_ratios=[1, 1, 1, 1.1],
                             layout=_NO_LAYOUT)  # laid out below, whatever the rcParams say
    lo, hi = _zscale(planes["SCI"])
    for ax, name in zip(axes[:3], ("SCI", "SKY", "SKYSUB"), strict=True):
        data = planes[name]
        if name == "SKYSUB":
            data = np.where(mask, np.nan, data)
            lo, hi = _zscale(data)
        shown, _, extent = _for_display(data)
        ax.imshow(shown, origin="lower", cmap=_gray(), vmin=lo, vmax=hi, aspect="auto",
                  interpolation="nearest", extent=extent)
        ax.plot(table["pixel"], table["trace_row"], color="tab:orange", lw=0.6)
        ax.set_ylabel(f"{name}\nslit pixel", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[2].set_title(f"SKYSUB, masked pixels blue ({int(mask.sum())}); trace orange",
                      fontsize=8)
    ax = axes[3]
    ax.plot(table["pixel"], table["flux"], lw=0.7, label="optimal")
    ax.plot(table["pixel"], table["flux_boxcar"], lw=0.5, alpha=0.7, label="boxcar")
    ax.fill_between(table["pixel"], table["flux"] - table["flux_err"],
                    table["flux"] + table["flux_err"], color="tab:blue", alpha=0.2, lw=0)
    ax.set_xlabel("dispersion pixel")
    ax.set_ylabel("flux (e-)")
    ax.legend(fontsize=8)
    fig.suptitle(title or Path(product).stem, fontsize=11)
    fig.tight_layout()
    _save(fig, out)


def plot_spectra_batch(*, directory: str | Path, out_dir: str | Path) -> list[Path]:
    """:func:`plot_spectrum` of every frame a spectra batch directory holds
    (``<frame>.png`` in ``out_dir``); a frame whose figure fails is logged, not fatal."""
    import logging

    from .chain import SPECTRUM_SUFFIX

    log = logging.getLogger(__name__)
    directory, out_dir = Path(directory), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for product in sorted(directory.glob(f"*{SPECTRUM_SUFFIX['frame']}")):
        frame = product.name[: -len(SPECTRUM_SUFFIX["frame"])]
        spectrum = directory / f"{frame}{SPECTRUM_SUFFIX['spectrum']}"
        try:
            plot_spectrum(product=product, spectrum=spectrum, out=out_dir / f"{frame}.png",
                          title=frame)
            made.append(out_dir / f"{frame}.png")
        except Exception as exc:  # a figure never stops the night
            log.error("%s: no QC figure (%s: %s)", frame, type(exc).__name__, exc)
    log.info("%d QC figure(s) of %s", len(made), directory)
    return made
