"""The per-frame chain in one job: calibrate → background and detection → cosmic rays →
sources, each frame read once.

Running the four per-frame stages as four workflow jobs cost four job starts
(a fresh Python importing astropy and friends, ~0.5 s each) and three re-reads
of what the previous job had just written, per batch; on a small night that
was a quarter of the wall time (issue 13).  One job per batch now carries a
frame through every stage in memory and still writes each stage's product
into its own batch directory, with that stage's ``batch-summary.tsv``:

==============  ===============================================================
stage           what it does (product)
==============  ===============================================================
calibrated      :func:`ccdflow.calibrate.calibrate_science` (SCI, ERR, MASK)
background      :func:`ccdflow.background.estimate_background`: map, RMS and the
                iterative source mask; its last detection round is the frame's
                segmentation (BKG, BKG_RMS, SRCMASK)
cosmics         :func:`ccdflow.cosmics.detect_cosmic_rays` with that map as
                ``inbkg`` and ERR² as ``invar`` (CRMASK)
sources         the background's segments (cosmic-ray pixels removed) that are
                stars (:func:`ccdflow.photometry.detect_stars`) and the FWHM
                (ECSV)
==============  ===============================================================

A frame that fails in one stage is written to that stage's summary as
``failed`` (with the reason) and to the later stages' as ``skipped``; the
other frames of the batch are still made.  Every batch job logs ``frame k of
n`` with the seconds of each stage, so ``tail -f`` on its log shows where a
long night stands.

Memory (issue 13: a per-frame job under 1 GB at 4k²): the job holds one frame's
state (SCI, MASK, the background map, its RMS and segments: ~530 MB at 4k²) and each
stage's work space, not the masters.  Frames above :data:`LARGE_FRAME_PIXELS` read
their masters in row strips while they are calibrated (calibration works in strips of
2²¹ pixels), keep ERR on disk between calibration and the cosmic rays, and L.A.Cosmic
works in its own padded planes with its candidates in chunks.  Every product is
bitwise the one of the whole-frame code (tests/test_batch.py, tests/test_calibrate.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .batch import SUMMARY, collect_frame_cycles, product_path

log = logging.getLogger(__name__)

__all__ = ["STAGES", "reduce_batch", "reduce_frame"]

#: the stages of the chain, in order
STAGES = ("calibrated", "background", "cosmics", "sources")


class _StageFailed(Exception):
    """A stage of one frame failed; carries the stage and the reason."""

    def __init__(self, stage: str, exc: BaseException, figures: Mapping | None = None,
                 seconds: Mapping | None = None):
        super().__init__(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        self.stage = stage
        self.cause = exc
        self.figures = dict(figures or {})  # of the stages made before the failure
        self.seconds = dict(seconds or {})


def reduce_frame(*, item: Mapping[str, Any], masters: Mapping[str, Any], detector: Mapping,
                 steps: Sequence[str], subtract_dark: bool, background: Mapping,
                 cosmics: Mapping | None, detect: Mapping, out_dirs: Mapping[str, str | Path],
                 provenance: Mapping | None = None, flat_floor: float = 0.2) -> dict[str, dict]:
    """Carry one raw science frame through the chain and write every product.

    Parameters
    ----------
    item : mapping
        ``frame`` (product name), ``raw`` (path) and the paths of the masters
        that apply (``bias``, ``dark``, ``flat``, ``illumination``, ``bpm``; a
        ``bpm`` with ``bpm_sources`` is made, see :func:`_read_masters`).
    masters : mapping
        The masters already read: ``{path: Product or bit mask}``.
    detector, steps, subtract_dark
        As for :func:`ccdflow.calibrate.calibrate_science`.
    background : mapping
        The config's ``background`` section (``manual_masks`` included).
    cosmics : mapping or None
        The config's ``cosmics`` section without ``enabled``; None = no
        cosmic-ray stage.
    detect : mapping
        ``nsigma``, ``npixels``, ``shape_limits`` of the source list.
    out_dirs : mapping
        Batch directory of each stage (``cosmics`` absent when disabled).
    flat_floor : float
        Flat response below which a pixel is not divided (BAD).

    Returns
    -------
    dict
        Per stage, the figures of its batch summary; the seconds of each stage
        under ``"seconds"``.

    Raises
    ------
    _StageFailed
        Naming the stage that failed (the caller records it).
    """
    from .background import background_for_product, write_background
    from .calibrate import calibrate_science
    from .cosmics import (
        DEFAULT_OBJLIM,
        DEFAULT_STAR_MARGIN,
        detect_cosmic_rays,
        effective_objlim,
        write_cosmics,
    )
    from .masks import MaskBit
    from .photometry import frame_sources, write_sources
    from .products import write_product
    from .streaks import find_streaks

    frame = item["frame"]
    detect = dict(detect)
    mask_streaks = bool(detect.pop("mask_streaks", True))
    figures: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    kinds = ("bias", "dark", "flat", "illumination")

    def run(stage, work):
        start = time.perf_counter()
        try:
            figures[stage] = work()
        except Exception as exc:
            raise _StageFailed(stage, exc, figures, seconds) from exc
        seconds[stage] = time.perf_counter() - start

    calibrated_path = product_path(out_dirs["calibrated"], frame, "calibrated")
    background_path = product_path(out_dirs["background"], frame, "background")
    state: dict[str, Any] = {}

    def calibrate():
        product = calibrate_science(
            path=item["raw"], detector=detector,
            bias=masters.get(item.get("bias")), dark=masters.get(item.get("dark")),
            flat=masters.get(item.get("flat")),
            bad_pixel_mask=bpm[0] if (bpm := masters.get(item.get("bpm"))) is not None else None,
            hot_dark=bpm[1] if bpm is not None else None,
            illumination=masters.get(item.get("illumination")),
            params={"steps": list(steps), "subtract_dark": subtract_dark,
                    "flat_floor": flat_floor},
            master_names={k: str(item[k]) for k in (*kinds, "bpm") if item.get(k)},
            flat_floor=flat_floor)
        write_product(calibrated_path, product, unit="electron")
        product.extras.clear()  # ERR_CAL: written; no later stage reads it (64 MB at 4k²)
        if product.data.size > LARGE_FRAME_PIXELS:
            product.error = None  # read back for the cosmic rays, not held through the sky
        state["product"] = product
        good = product.mask == 0
        return {"sci_median_e": round(float(np.median(product.data[good])), 3)
                if good.any() else float("nan"),
                "masked_fraction": round(float(1 - good.mean()), 6)}

    def sky():
        opts = dict(background)
        circles = opts.pop("manual_masks", [])
        result = background_for_product(product=state["product"], manual_circles=circles,
                                        **opts)
        write_background(background_path, result, inputs=[calibrated_path], params=background)
        state["background"] = result
        return {"sky_median_e": round(result.sky_median, 3),
                "sky_rms_e": round(result.sky_rms, 3),
                "mask_fraction": round(result.mask_fractions[-1], 5),
                "iterations": result.iterations}

    def rays():
        product, result = state["product"], state["background"]
        fwhm = result.seeing_px
        crmask = detect_cosmic_rays(
            data=product.data, error=_take_error(product, calibrated_path),
            mask=product.mask,
            background=result.background, read_noise_e=product.header["RDNOISE"],
            saturation_e=product.header["SATURATE"], fwhm_px=fwhm, **cosmics)
        objlim = effective_objlim(objlim=cosmics.get("objlim", DEFAULT_OBJLIM), fwhm_px=fwhm,
                                  star_margin=cosmics.get("star_margin", DEFAULT_STAR_MARGIN))
        streaks, trails = None, []
        if mask_streaks and result.labels is not None and fwhm is not None and np.isfinite(fwhm):
            streaks, trails = find_streaks(data=product.data, background=result.background,
                                           rms=result.rms, labels=result.labels, fwhm_px=fwhm,
                                           mask=product.mask)
            if trails:
                log.info("%s: %d satellite or aircraft trail(s) masked (STREAK, %d pixels): %s",
                         frame, len(trails), int(streaks.sum()), trails)
                state["streaks"] = streaks
        write_cosmics(product_path(out_dirs["cosmics"], frame, "cosmics"), crmask,
                      inputs=[calibrated_path, background_path], params=cosmics,
                      fwhm_px=fwhm, objlim=objlim, streaks=streaks, n_streaks=len(trails))
        state["crmask"] = crmask
        return {"n_cosmic_px": int(crmask.sum()), "objlim": round(objlim, 3),
                "n_streaks": len(trails),
                "n_streak_px": int(streaks.sum()) if streaks is not None else 0}

    def stars():
        product, result = state["product"], state["background"]
        mask = product.mask.copy()
        labels = result.labels
        if "crmask" in state:
            mask[state["crmask"]] |= np.uint16(MaskBit.COSMIC)
            if labels is not None:
                labels[state["crmask"]] = 0  # the background's own segmentation, used last here
        if "streaks" in state:
            mask[state["streaks"]] |= np.uint16(MaskBit.STREAK)
            if labels is not None:
                labels[state["streaks"]] = 0
        sources, meta = frame_sources(data=product.data, mask=mask, background=result.background,
                                      rms=result.rms, labels=labels,
                                      backend=background.get("backend", "sep"), **detect)
        write_sources(product_path(out_dirs["sources"], frame, "sources"), sources,
                      {**meta, **(provenance or {})}, frame=frame)
        return {"n_sources": int(meta["n_sources"]), "fwhm_px": round(meta["fwhm_px"], 4),
                "npixels": int(meta["npixels"]), "merged": int(meta.get("merged", 0)),
                **{k: int(v) for k, v in meta.items() if k.startswith("rejected_")}}

    run("calibrated", calibrate)
    run("background", sky)
    if cosmics is not None:
        run("cosmics", rays)
    run("sources", stars)
    figures["seconds"] = seconds
    return figures


#: frames above this many pixels (2k²) are "large": their masters are read in row strips
#: while a frame is calibrated, not held whole (at 4k² the bias, dark and flat are 480
#: MB), and their ERR plane is read back from the calibrated file for the cosmic rays
#: instead of being held through the background (64 MB)
LARGE_FRAME_PIXELS = 1 << 22


def _take_error(product, path) -> np.ndarray:
    """The product's ERR, taken out of it (no stage after the cosmic rays reads it): the
    plane in memory, or for a large frame the one just written to ``path``."""
    from .products import read_plane

    error, product.error = product.error, None
    return error if error is not None else read_plane(path, "ERR")


def _read_masters(frames: Sequence[Mapping[str, Any]], *, detector: Mapping) -> dict[str, Any]:
    """Every master the batch's frames name, opened once: read whole up to
    :data:`LARGE_FRAME_PIXELS`, else a :class:`~ccdflow.products.ProductFile`
    (close with :func:`_close_masters`).

    A frame's bad-pixel mask (``bpm``): made here from its ``bpm_sources``
    (``reference``, ``masters``, ``hot_pixels``, ``origin``;
    :func:`~ccdflow.calibrate.bad_pixel_mask_from_files`, what rule bad_pixel_mask
    writes to that path) when the item has them, else read from the file."""
    from .calibrate import HOT_DARK_IMAGES, bad_pixel_mask_from_files
    from .products import ProductFile, read_mask, read_mask_images

    out: dict[str, Any] = {}
    try:
        for item in frames:
            for kind in ("bias", "dark", "flat", "illumination", "bpm"):
                path = item.get(kind)
                if not path or path in out:
                    continue
                if kind == "bpm" and item.get("bpm_sources"):
                    made = item["bpm_sources"]
                    out[path] = bad_pixel_mask_from_files(
                        reference=made["reference"], detector=detector,
                        masters=list(made["masters"].values()),
                        hot_pixels=made.get("hot_pixels"), origin=made.get("origin"))
                    continue
                if kind == "bpm":
                    out[path] = (read_mask(path), read_mask_images(path, HOT_DARK_IMAGES))
                    continue
                master = ProductFile(path)
                if np.prod(master.shape) <= LARGE_FRAME_PIXELS:
                    with master:
                        master = master.rows(0, master.shape[0])
                out[path] = master
    except Exception:
        _close_masters(out)
        raise
    return out


def _close_masters(masters: Mapping[str, Any]) -> None:
    for master in masters.values():
        if hasattr(master, "close"):
            master.close()


def reduce_batch(*, frames: Sequence[Mapping[str, str]], detector: Mapping,
                 steps: Sequence[str], subtract_dark: bool, background: Mapping,
                 cosmics: Mapping | None, detect: Mapping, out_dirs: Mapping[str, str | Path],
                 provenance: Mapping | None = None,
                 flat_floor: float = 0.2) -> dict[str, pd.DataFrame]:
    """The chain for every frame of a batch; one summary per stage directory.

    See :func:`reduce_frame` for the arguments.  A master that cannot be read
    fails every frame of the batch (its reason in every summary).

    Returns
    -------
    dict
        ``{stage: summary DataFrame}`` as written to ``batch-summary.tsv``.
    """
    from .io import write_table

    stages = [s for s in STAGES if s != "cosmics" or cosmics is not None]
    missing = [s for s in stages if s not in out_dirs]
    if missing:
        raise ValueError(f"out_dirs lacks the stage(s) {missing}")
    for stage in stages:
        Path(out_dirs[stage]).mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {s: [] for s in stages}
    try:
        masters = _read_masters(frames, detector=detector)
        master_error = None
    except Exception as exc:  # a master that cannot be read fails the batch's frames
        masters, master_error = {}, _StageFailed("calibrated", exc)
    try:
        _reduce_frames(frames=frames, masters=masters, master_error=master_error, rows=rows,
                       stages=stages, detector=detector, steps=steps,
                       subtract_dark=subtract_dark, background=background, cosmics=cosmics,
                       detect=detect, out_dirs=out_dirs, provenance=provenance,
                       flat_floor=flat_floor)
    finally:
        _close_masters(masters)
    summaries = {}
    for stage in stages:
        summary = pd.DataFrame(rows[stage])
        order = [c for c in summary.columns if c not in ("status", "reason", "seconds")]
        summary = summary[[*order, "status", "reason", "seconds"]]
        write_table(summary, Path(out_dirs[stage]) / SUMMARY, sep="\t")
        summaries[stage] = summary
    bad = summaries[stages[-1]]
    n_bad = int((bad["status"] != "ok").sum())
    if n_bad:
        log.warning("%d of %d frames of this batch not made to the end: %s", n_bad, len(bad),
                    "; ".join(f"{r.frame} ({r.status}: {r.reason})"
                              for r in bad[bad["status"] != "ok"].itertuples()))
    return summaries


def _reduce_frames(*, frames, masters, master_error, rows, stages, **chain) -> None:
    """Every frame of the batch through the chain, its figures (or failure) into ``rows``.

    After the first frame and after a failed one the garbage collector runs
    (:func:`ccdflow.batch.collect_frame_cycles`: a traceback caught in a library's
    one-time set-up holds that frame's planes in a cycle).
    """
    for k, item in enumerate(frames, start=1):
        collect_frame_cycles(index=k, previous_ok=k == 1 or rows[stages[-1]][-1]["status"] == "ok")
        frame = item["frame"]
        start = time.perf_counter()
        try:
            if master_error is not None:
                raise master_error
            figures = reduce_frame(item=item, masters=masters, **chain)
        except _StageFailed as failed:
            reason = str(failed)
            log.error("%s: FAILED, left out of this and later stages (%s failed: %s); raw file %s",
                      frame, failed.stage, reason, item["raw"], exc_info=failed.cause)
            for stage in stages[stages.index(failed.stage) + 1:]:
                log.warning("%s: skipped in %s (%s failed: %s)", frame, stage, failed.stage,
                            reason)
            after = False
            for stage in stages:
                if stage == failed.stage:
                    rows[stage].append({"frame": frame, "status": "failed", "reason": reason,
                                        "seconds": 0.0})
                    after = True
                elif after:
                    rows[stage].append({"frame": frame, "status": "skipped",
                                        "reason": f"{failed.stage} failed: {reason}",
                                        "seconds": 0.0})
                else:  # made before the failure: its product exists
                    rows[stage].append({"frame": frame, **failed.figures.get(stage, {}),
                                        "status": "ok", "reason": "",
                                        "seconds": round(failed.seconds.get(stage, 0.0), 4)})
            continue
        seconds = figures.pop("seconds")
        for stage in stages:
            rows[stage].append({"frame": frame, **figures.get(stage, {}), "status": "ok",
                                "reason": "", "seconds": round(seconds.get(stage, 0.0), 4)})
        log.info("%s: frame %d of %d in %.2f s (%s); %s", frame, k, len(frames),
                 time.perf_counter() - start,
                 ", ".join(f"{s} {seconds.get(s, 0):.2f}" for s in stages),
                 "; ".join(f"{s}: " + ", ".join(f"{key}={v}" for key, v in figures[s].items())
                           for s in stages if figures.get(s)))
