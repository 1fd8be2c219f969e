"""One long-slit science frame, calibrated to a sky-subtracted 2-D and a 1-D spectrum.

Per frame (dispersion along x internally, products in the detector's orientation):

1. calibrate (:func:`ccdflow.calibrate.calibrate_science`; the master flat is a
   spectroscopic one, the lamp's spectrum removed);
2. the object's trace (:func:`ccdflow.longslit.sky.find_trace`, or a band of rows);
3. the sky along the warp (:func:`ccdflow.longslit.sky.fit_sky`) off the trace;
4. cosmic rays with the sky model as ``inbkg`` (:func:`ccdflow.cosmics.detect_cosmic_rays`),
   OR-ed into MASK as COSMIC; the sky refitted without them;
5. ``SKYSUB = SCI − SKY`` with ``ERR = √(ERR_SCI² + SKY_ERR²)``;
6. boxcar and optimal extraction (:func:`ccdflow.longslit.extract.extract_spectrum`).

Products: ``<frame>.fits`` with HDUs ``SCI`` (calibrated, e-), ``ERR`` (1σ of
``SKYSUB``: the frame's own error and the sky model's), ``MASK``, ``SKY``,
``SKY_ERR``, ``SKYSUB``, ``EFFPIX``; and ``<frame>_1d.csv`` (units in its header).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..batch import SUMMARY

log = logging.getLogger(__name__)

__all__ = ["SPECTRUM_SUFFIX", "make_warp", "reduce_spectra_batch", "reduce_spectrum",
           "write_spectrum"]

#: file endings of a frame's products in a spectra batch directory
SPECTRUM_SUFFIX = {"frame": ".fits", "spectrum": "_1d.csv"}


def make_warp(*, arc: str | Path, axis: str, options: Mapping, out: str | Path,
              figure: str | Path | None = None, title: str = "") -> None:
    """The warp model of a master arc written to ``out`` (and its QC figure).

    ``options``: the config's ``spectroscopy.warp`` (order_x, order_y, line_nsigma,
    blend_px, half_window).  Masked pixels of the arc are replaced by the median of
    their row so they cannot pull a centroid.
    """
    from ..products import read_product
    from .qc import plot_warp
    from .warp import warp_from_arc, write_warp

    product = read_product(arc)
    data = product.data.astype(float)
    bad = (product.mask != 0) | ~np.isfinite(data)
    if bad.any():
        rows = np.nanmedian(np.where(bad, np.nan, data), axis=1, keepdims=True)
        data = np.where(bad, np.nan_to_num(np.broadcast_to(rows, data.shape)), data)
    model = warp_from_arc(arc=data, axis=axis, order_x=options.get("order_x", 3),
                          order_y=options.get("order_y", 2),
                          nsigma=options.get("line_nsigma", 10.0),
                          blend_px=options.get("blend_px", 3.0),
                          half_window=options.get("half_window", 4), name=Path(arc).name)
    write_warp(out, model, axis=axis, inputs=[arc], params={"axis": axis, **dict(options)})
    if figure is not None:
        plot_warp(warp=out, arc=arc, out=figure, title=title)


def reduce_spectrum(*, product, warp, axis: str, trace: Mapping, sky: Mapping,
                    extraction: Mapping, cosmics: Mapping | None) -> dict[str, Any]:
    """Sky model, cosmic rays, sky-subtracted frame and 1-D spectra of one calibrated
    frame (a :class:`ccdflow.products.Product`, detector orientation).

    Returns
    -------
    dict
        ``planes`` (detector orientation: SCI, ERR, MASK, SKY, SKY_ERR, SKYSUB,
        EFFPIX), ``spectrum`` (DataFrame), ``trace`` and ``figures`` (summary).
    """
    from ..cosmics import detect_cosmic_rays
    from ..masks import MaskBit
    from .extract import extract_spectrum
    from .sky import find_trace, fit_sky, trace_mask
    from .warp import WarpError, from_dispersion_x, to_dispersion_x

    sci = to_dispersion_x(product.data.astype(float), axis)
    err = to_dispersion_x(product.error.astype(float), axis)
    mask = to_dispersion_x(product.mask, axis).copy()
    if sci.shape != tuple(warp.shape):
        raise WarpError(f"the frame is {sci.shape[1]}x{sci.shape[0]} along (dispersion, slit) "
                        f"but its warp was measured on {warp.shape[1]}x{warp.shape[0]}")
    rn = float(product.header.get("RDNOISE", 5.0))
    bad = mask != 0
    effpix = warp.effpix()
    tr = find_trace(data=sci, mask=bad, rows=trace.get("rows", "auto"))
    on_trace = trace_mask(tr, sci.shape, k=trace.get("k", 3.0),
                          margin_px=trace.get("margin_px", 3.0))
    options = {k: sky[k] for k in ("knot_spacing", "slit_order", "nsigma", "iterations")
               if k in sky}
    model = fit_sky(data=sci, error=err, mask=bad, effpix=effpix, exclude=on_trace,
                    read_noise_e=rn, **options)
    n_cosmic = 0
    if cosmics is not None:
        crmask = detect_cosmic_rays(data=sci, error=err, mask=bad, background=model.sky,
                                    read_noise_e=rn,
                                    saturation_e=float(product.header.get("SATURATE", 1e9)),
                                    **cosmics)
        n_cosmic = int(crmask.sum())
        if n_cosmic:
            mask[crmask] |= np.uint16(MaskBit.COSMIC)
            bad = mask != 0
            model = fit_sky(data=sci, error=err, mask=bad, effpix=effpix, exclude=on_trace,
                            read_noise_e=rn, **options)
    skysub = sci - model.sky
    err_total = np.sqrt(err**2 + model.error**2)
    spectrum = extract_spectrum(
        skysub=skysub, error=err_total, mask=bad, sky=model.sky, trace=tr, read_noise_e=rn,
        halfwidth_fwhm=extraction.get("halfwidth_fwhm", 2.0),
        saturated=(mask & np.uint16(MaskBit.SATURATED)) != 0,
        nsigma=extraction.get("nsigma", 5.0))
    planes = {"SCI": sci, "ERR": err_total, "MASK": mask, "SKY": model.sky,
              "SKY_ERR": model.error, "SKYSUB": skysub, "EFFPIX": effpix}
    planes = {k: from_dispersion_x(v, axis) for k, v in planes.items()}
    off = ~on_trace & ~bad
    figures = {"trace_row": round(float(tr.centre(np.array([sci.shape[1] / 2]))[0]), 3),
               "trace_fwhm_px": round(tr.fwhm, 3), "sky_median_e": round(float(
                   np.nanmedian(model.sky[off])), 3) if off.any() else float("nan"),
               "sky_chi2_red": round(model.chi2_red, 4), "sky_rejected": model.n_rejected,
               "n_cosmic_px": n_cosmic,
               "flux_median_e": round(float(np.nanmedian(spectrum["flux"])), 3)}
    return {"planes": planes, "spectrum": spectrum, "trace": tr, "figures": figures,
            "sky": model}


def write_spectrum(directory: str | Path, frame: str, result: Mapping, *, header,
                   inputs: Sequence[str], params: Mapping) -> None:
    """The frame's FITS product and its 1-D CSV, each written atomically."""
    from astropy.io import fits

    from ..io import atomic_path, write_table
    from ..masks import header_cards
    from ..products import provenance_header

    directory = Path(directory)
    head = provenance_header(step="spectra_reduce", inputs=inputs, params=params, base=header)
    head["DISPAXIS"] = (str(params.get("axis", "x")), "dispersion axis of the detector")
    tr = result["trace"]
    head["TRACEC0"] = (float(tr.coefficients[0]), "trace row = sum c_i x^i (dispersion px)")
    for i, c in enumerate(tr.coefficients[1:], start=1):
        head[f"TRACEC{i}"] = float(c)
    head["TRACEFW"] = (round(tr.fwhm, 4), "[px] FWHM of the trace across the slit")
    for key, value in result["figures"].items():
        card = {"sky_chi2_red": "SKYCHI2", "sky_rejected": "SKYNREJ", "n_cosmic_px": "NCOSMIC",
                "sky_median_e": "SKYMED"}.get(key)
        if card:
            head[card] = value
    hdus = [fits.PrimaryHDU(header=head)]
    units = {"SCI": "electron", "ERR": "electron", "SKY": "electron", "SKY_ERR": "electron",
             "SKYSUB": "electron", "EFFPIX": "pix"}
    for name, plane in result["planes"].items():
        data = plane.astype(np.uint16) if name == "MASK" else plane.astype(np.float32)
        hdu = fits.ImageHDU(data, name=name)
        if name in units:
            hdu.header["BUNIT"] = units[name]
        if name == "ERR":
            hdu.header["UTYPE"] = ("StdDevUncertainty", "1-sigma of SKYSUB (sky model incl.)")
        if name == "MASK":
            for key, value, comment in header_cards():
                hdu.header[key] = (value, comment)
        hdus.append(hdu)
    with atomic_path(directory / f"{frame}{SPECTRUM_SUFFIX['frame']}") as tmp:
        fits.HDUList(hdus).writeto(tmp)
    write_table(result["spectrum"], directory / f"{frame}{SPECTRUM_SUFFIX['spectrum']}",
                comments=[
                    f"ccdflow 1-D spectrum of {frame} (optimal extraction, Horne 1986; boxcar "
                    "beside it)",
                    "units: pixel [dispersion pixel, 0-based], flux, flux_err, flux_boxcar, "
                    "flux_boxcar_err, sky [electron per column], n_pix [rows in the aperture],"
                    " n_masked [pixels], trace_row [slit pixel, 0-based]",
                    "sky: the sky model summed over the boxcar aperture (already subtracted)",
                    "flags: 1=MASKED 2=SATURATED 4=EDGE 8=REJECTED 16=NO_FLUX",
                    f"trace FWHM {tr.fwhm:.3f} px; parameters: {dict(params)}"])


def reduce_spectra_batch(*, frames: Sequence[Mapping[str, str]], detector: Mapping,
                         steps: Sequence[str], subtract_dark: bool, axis: str,
                         trace: Mapping, sky: Mapping, extraction: Mapping,
                         cosmics: Mapping | None, out_dir: str | Path,
                         flat_floor: float = 0.2) -> pd.DataFrame:
    """Every spectroscopic frame of a batch: calibrated, sky-subtracted and extracted.

    ``frames`` items: ``frame``, ``raw`` and the masters (``bias``, ``dark``,
    ``flat``, ``bpm``, ``warp``).  One frame failing is written to the summary with
    its reason; the others are made.

    Returns
    -------
    DataFrame
        The batch summary (``batch-summary.tsv``).
    """
    from ..calibrate import calibrate_science
    from ..io import write_table
    from ..products import read_mask, read_product
    from .warp import read_warp

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = {}

    def load(path, kind):
        if path not in cache:
            cache[path] = (read_mask(path) if kind == "bpm" else read_warp(path)[0]
                           if kind == "warp" else read_product(path))
        return cache[path]

    params = {"axis": axis, "trace": dict(trace), "sky": dict(sky),
              "extraction": dict(extraction), "cosmics": cosmics}
    rows = []
    for k, item in enumerate(frames, start=1):
        frame = item["frame"]
        start = time.perf_counter()
        try:
            masters = {kind: load(item[kind], kind) for kind in
                       ("bias", "dark", "flat", "bpm", "warp") if item.get(kind)}
            product = calibrate_science(
                path=item["raw"], detector=detector, bias=masters.get("bias"),
                dark=masters.get("dark"), flat=masters.get("flat"),
                bad_pixel_mask=masters.get("bpm"),
                params={"steps": list(steps), "subtract_dark": subtract_dark},
                master_names={kk: str(item[kk]) for kk in ("bias", "dark", "flat", "bpm")
                              if item.get(kk)}, flat_floor=flat_floor)
            result = reduce_spectrum(product=product, warp=masters["warp"], axis=axis,
                                     trace=trace, sky=sky, extraction=extraction,
                                     cosmics=cosmics)
            write_spectrum(out_dir, frame, result, header=product.header,
                           inputs=[item["raw"], *(item[kk] for kk in
                                                  ("bias", "dark", "flat", "bpm", "warp")
                                                  if item.get(kk))], params=params)
            figures, status, reason = result["figures"], "ok", ""
        except Exception as exc:  # one bad frame never stops its batch
            figures, status = {}, "failed"
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            log.error("%s: FAILED, left out (%s); raw file %s", frame, reason, item["raw"],
                      exc_info=True)
        seconds = time.perf_counter() - start
        rows.append({"frame": frame, **figures, "status": status, "reason": reason,
                     "seconds": round(seconds, 4)})
        if status == "ok":
            log.info("%s: frame %d of %d in %.2f s: %s", frame, k, len(frames), seconds,
                     ", ".join(f"{key}={v}" for key, v in figures.items()))
    summary = pd.DataFrame(rows)
    order = [c for c in summary.columns if c not in ("status", "reason", "seconds")]
    summary = summary[[*order, "status", "reason", "seconds"]]
    write_table(summary, out_dir / SUMMARY, sep="\t")
    return summary
