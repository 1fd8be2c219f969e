"""Raw file → :class:`RawFrame` in electrons: per amplifier the overscan, trim, gain and
saturation (with the ADC's full scale when the frame reaches it), then the amplifiers
placed by DETSEC, then, for a colour camera, superpixels."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..config import bayer_channel, superpixel_mosaics
from ..errors import CalibrationError
from .colour import bayer_cells, colour_mosaic, superpixel_frame
from .frame import RawFrame
from .hdus import _pixels, image_hdus, merged_header, plane_count
from .overscan import _warn_overscan, fit_overscan, overscan_level_noise
from .sections import _binning, _section_from, detector_constant, parse_section

log = logging.getLogger(__name__)


def read_raw_frame(path: str | Path, *, detector: Mapping, exptime_keywords: Sequence[str] = (
        "EXPTIME", "EXPOSURE")) -> RawFrame:
    """Read a raw file (read-only) and return it in electrons, overscan-subtracted and trimmed.

    Parameters
    ----------
    path : path
        Single-HDU or multi-extension (one HDU per amplifier, each with DETSEC).
    detector : mapping
        The profile's ``detector`` section: ``gain_e_per_adu``, ``read_noise_e``,
        ``saturation_adu`` (numbers or ``{keyword, default}``), ``overscan``
        (``from``: biassec | cover | section | none, ``function``, ``order``,
        ``niterate``, ``reject_sigma``, ``skip_columns``), ``trim`` (``from``:
        trimsec | datasec | section | full).

    Returns
    -------
    RawFrame

    Notes
    -----
    Per amplifier: ``e = gain · (raw − overscan(row))``.  Saturation is tested
    on the raw ADU, before any correction.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        # a file cut short fails below with an error naming it (the inventory rejects
        # such files first; this is a file changed since)
        warnings.filterwarnings("ignore", message="File may have been truncated")
        try:
            hdul = fits.open(path, mode="readonly", memmap=False)
        except Exception as exc:
            raise CalibrationError(f"{path}: cannot be read as FITS ({exc})") from exc
        with hdul:
            images = image_hdus(hdul)
            amps = [hdu for hdu in images if plane_count(hdu.header) == 1]
            if not amps and images:
                raise CalibrationError(f"{path}: a data cube of {plane_count(images[0].header)} "
                                       "planes: one image per file expected (split the cube)")
            if not amps:
                raise CalibrationError(f"{path}: no 2-D image HDU")
            if not any([np.isfinite(_pixels(path, hdu)).any() for hdu in amps]):
                raise CalibrationError(f"{path}: no finite pixel in the raw data (all NaN "
                                       "or inf)")
            primary = hdul[0].header
            merged = merged_header(primary, amps[0].header)
            pieces = [_amplifier(path, hdu, primary, detector, len(amps) > 1) for hdu in amps]
    exptime = None
    for key in exptime_keywords:
        if key in merged:
            exptime = float(merged[key])
            break
    if exptime is None:
        raise CalibrationError(f"{path}: no exposure time ({'/'.join(exptime_keywords)})")
    rn = detector_constant(detector.get("read_noise_e", {"keyword": "RDNOISE"}),
                           [primary, amps[0].header], name="read noise (e-)", where=str(path))
    if len(pieces) == 1:
        piece = pieces[0]
        data, sat, nonfinite = piece["data"], piece["saturated"], piece["nonfinite"]
        no_data = np.zeros(data.shape, dtype=bool)
    else:
        data, sat, nonfinite, no_data = _mosaic(pieces, where=str(path))
    notes = [n for p in pieces for n in p["notes"]]
    overscan_noise = max(p["overscan_noise_e"] for p in pieces)
    if overscan_noise > 0.25 * rn:
        _warn_overscan(str(path), detector.get("overscan", {}).get("function", "median"),
                       max(p["overscan_columns"] for p in pieces), overscan_noise, rn)
    frame = RawFrame(data=data, saturated=sat, nonfinite=nonfinite, no_data=no_data,
                     header=merged, exptime_s=exptime, read_noise_e=rn,
                     saturation_e=min(p["saturation_e"] for p in pieces),
                     gains=[p["gain"] for p in pieces], notes=notes,
                     overscan_noise_e=overscan_noise,
                     zero_level=pieces[0]["zero_level"])
    mosaic = colour_mosaic(merged, detector)
    if mosaic is not None and superpixel_mosaics(detector):
        channel = bayer_channel(detector)
        cells = None
        if channel is not None:
            if len(pieces) > 1:
                raise CalibrationError(f"{path}: detector.bayer.mode {detector['bayer']['mode']} "
                                       "(one colour plane) needs a single-amplifier frame; use "
                                       "mode superpixel")
            cells = bayer_cells(merged, detector, origin=pieces[0]["origin"], where=str(path))
        frame = superpixel_frame(frame, pattern=mosaic, channel=channel, cells=cells)
    return frame


def _amplifier(path: Path, hdu, primary: Mapping, detector: Mapping, multi: bool) -> dict:
    header = hdu.header
    where = f"{path}[{hdu.name or 0}]" if multi else str(path)
    pixels = _pixels(path, hdu)
    raw = np.asarray(pixels, dtype=np.float64)  # read by _pixels already
    scale = float(detector.get("data_scale", 1.0))
    if scale != 1.0:
        raw = raw * scale
    else:
        _check_not_normalised(pixels, where)
    gain = detector_constant(detector.get("gain_e_per_adu", {"keyword": "GAIN"}),
                             [header, primary], name="gain (e-/ADU)", where=where)
    if not gain > 0:
        raise CalibrationError(f"{where}: gain {gain} e-/ADU is not positive; fix the profile's "
                               "detector.gain_e_per_adu")
    sat_adu = detector_constant(detector.get("saturation_adu", 65535), [header, primary],
                                name="saturation (ADU)", where=where)
    over_cfg = detector.get("overscan", {"from": "none"})
    trim_cfg = detector.get("trim", {"from": "full"})
    if multi and trim_cfg.get("from") == "trimsec" and "TRIMSEC" not in header:
        trim_cfg = {"from": "datasec"}  # amplifier headers give DATASEC
    notes = []
    ceiling, step = _adc_ceiling(pixels)
    if ceiling is not None and ceiling < sat_adu:
        _warn_ceiling(where, ceiling, step, sat_adu)
        notes.append(f"ADC full scale {ceiling} ADU reached: SATURATED from it "
                     f"(profile {sat_adu:g})")
        sat_adu = float(ceiling)
    nonfinite = ~np.isfinite(raw)
    # scaled floats carry float32's rounding (4095/65535 × 65535 = 4094.9998)
    saturated = raw >= (sat_adu if scale == 1.0 else sat_adu * (1 - 1e-6))
    over = _section_from("overscan", over_cfg, header, raw.shape, where=where, what="overscan")
    level = np.zeros(raw.shape[0])
    noise_e, n_over, zero_level = 0.0, 0, "none"
    if over is not None:
        zero_level = "overscan"
        rows, cols = over
        skip = int(over_cfg.get("skip_columns", 0))
        strip = raw[rows, cols.start + skip: cols.stop]
        if strip.shape[1] < 1:
            raise CalibrationError(f"{where}: no overscan columns left after skip_columns={skip}")
        function, order = over_cfg.get("function", "median"), int(over_cfg.get("order", 1))
        fitted = fit_overscan(strip, function=function, order=order,
                              niterate=int(over_cfg.get("niterate", 3)),
                              reject_sigma=float(over_cfg.get("reject_sigma", 3.0)))
        level[rows] = fitted
        noise_e = gain * overscan_level_noise(strip, function=function, order=order)
        n_over = strip.shape[1]
        notes.append(f"overscan {function} of columns "
                     f"{cols.start + skip + 1}-{cols.stop}, mean {np.nanmean(fitted):.2f} ADU, "
                     f"noise {noise_e:.2f} e-/row")
    elif detector.get("zero_level_adu") is not None:
        zero = detector_constant(detector["zero_level_adu"], [header, primary],
                                 name="zero level (ADU)", where=where)
        level[:] = zero
        zero_level = "constant"
        notes.append(f"overscan: none; zero level {zero:g} ADU subtracted "
                     "(detector.zero_level_adu)")
    else:
        notes.append("overscan: none (profile says the camera has none)")
    trim = _section_from("trim", trim_cfg, header, raw.shape, where=where, what="trim")
    rows, cols = trim
    data = (raw[rows, cols] - level[rows, np.newaxis]) * gain
    sat_e = (sat_adu - float(np.nanmedian(level[rows]))) * gain
    out = {"data": data.astype(np.float32), "saturated": saturated[rows, cols],
           "nonfinite": nonfinite[rows, cols], "gain": gain, "saturation_e": sat_e,
           "notes": notes, "overscan_noise_e": noise_e, "overscan_columns": n_over,
           "zero_level": zero_level, "origin": (rows.start or 0, cols.start or 0)}
    if multi:
        detsec = header.get("DETSEC")
        if not detsec:
            raise CalibrationError(f"{where}: multi-amplifier frame without DETSEC")
        out["detsec"] = parse_section(detsec)
        out["binning"] = _binning(header if "CCDSUM" in header else primary)
    return out


def _check_not_normalised(pixels: np.ndarray, where: str) -> None:
    """Stop on a floating-point frame whose values all lie within [0, 1]: an image a
    program normalized (PixInsight writes 32-bit float FITS so), not ADU.  Read as ADU
    its sky would hold a hundredth of an electron and no star would be found; no camera's
    raw frame in ADU peaks at 1."""
    if not np.issubdtype(pixels.dtype, np.floating):
        return
    with warnings.catch_warnings():  # an all-NaN frame is stopped elsewhere
        warnings.simplefilter("ignore", RuntimeWarning)
        top, bottom = float(np.nanmax(pixels)), float(np.nanmin(pixels))
    if 0.0 <= bottom < top <= 1.0:  # (a constant frame is named as one elsewhere)
        raise CalibrationError(
            f"{where}: floating-point values within [0, 1] (median {np.nanmedian(pixels):.4g}, "
            f"maximum {top:.4g}): an image normalized to [0, 1] (PixInsight, some "
            "capture programs), not ADU; give the profile's detector.data_scale (65535 for "
            "a 16-bit camera) so that its values are ADU")


def _adc_ceiling(pixels: np.ndarray, *, min_pixels: int = 3) -> tuple[int | None, int]:
    """The ADC's full scale when a frame of integer pixels reaches it, and the step every
    value is a multiple of (16 for a 12-bit ADC stored in the top bits of 16).

    The full scale is ``2^k − step`` (4095, 16383, 65520, ...), held by at least
    ``min_pixels`` pixels with none above, and by more pixels than the value one step
    below: a clip piles up everything above it there, while a noise tail thins out
    towards its maximum (a bias of 1000 ± 5 ADU whose four highest pixels read 1023 is
    not a 10-bit ADC).  ``(None, step)`` when the frame does not reach one (or is not
    integer)."""
    if not np.issubdtype(pixels.dtype, np.integer) or pixels.size == 0:
        return None, 1
    top = int(pixels.max())
    if top <= 0 or int(pixels.min()) < 0:
        return None, 1
    bits = int(np.bitwise_or.reduce(pixels, axis=None))
    step = bits & -bits
    full = next(((1 << k) - step for k in range(8, 17) if (1 << k) - step == top), None)
    if full is None:
        return None, step
    at_top = int(np.count_nonzero(pixels == top))
    if at_top < min_pixels or at_top <= int(np.count_nonzero(pixels == top - step)):
        return None, step
    return full, step


_CEILING_WARNED: set[tuple] = set()


def _warn_ceiling(where: str, ceiling: int, step: int, sat_adu: float) -> None:
    """Say once per process that the frames reach an ADC full scale the profile's
    saturation level is above."""
    if (ceiling, sat_adu) in _CEILING_WARNED:
        return
    _CEILING_WARNED.add((ceiling, sat_adu))
    bits = int(np.log2(ceiling + step)) - int(np.log2(step))
    log.warning("%s: pixels sit at %d ADU, the full scale of a %d-bit ADC%s, below "
                "detector.saturation_adu %g: they are flagged SATURATED from %d ADU; give "
                "the profile saturation_adu: %d (or the camera's linearity limit)%s", where,
                ceiling, bits, f" stored in steps of {step}" if step > 1 else "", sat_adu,
                ceiling, ceiling,
                f", and a gain in e- per stored ADU (the camera's e-/count / {step})"
                if step > 1 else "")


def _mosaic(pieces: list[dict], *, where: str):
    """Place amplifiers by DETSEC (unbinned detector pixels) into one binned image."""
    x0 = min(p["detsec"][1].start for p in pieces)
    y0 = min(p["detsec"][0].start for p in pieces)
    x1 = max(p["detsec"][1].stop for p in pieces)
    y1 = max(p["detsec"][0].stop for p in pieces)
    bx, by = pieces[0]["binning"]
    shape = ((y1 - y0) // by, (x1 - x0) // bx)
    data = np.zeros(shape, dtype=np.float32)
    sat = np.zeros(shape, dtype=bool)
    nonfinite = np.zeros(shape, dtype=bool)
    no_data = np.ones(shape, dtype=bool)
    for p in pieces:
        rows, cols, flip_x, flip_y = p["detsec"]
        ys = slice((rows.start - y0) // by, (rows.stop - y0) // by)
        xs = slice((cols.start - x0) // bx, (cols.stop - x0) // bx)
        want = (ys.stop - ys.start, xs.stop - xs.start)
        if p["data"].shape != want:
            raise CalibrationError(f"{where}: amplifier data {p['data'].shape} does not fill its "
                                   f"DETSEC ({want} binned pixels)")
        order = (slice(None, None, -1 if flip_y else 1), slice(None, None, -1 if flip_x else 1))
        data[ys, xs] = p["data"][order]
        sat[ys, xs] = p["saturated"][order]
        nonfinite[ys, xs] = p["nonfinite"][order]
        no_data[ys, xs] = False
    return data, sat, nonfinite, no_data
