"""One-shot colour cameras: the mosaic's pattern (header or profile), the colour of each
position of a 2×2 block, 2×2 superpixels of all four colours or of one colour plane, the
check that the pattern's two G positions look alike, and the WCS scaled to superpixels."""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Mapping

import numpy as np
from astropy.io import fits

from ..errors import CalibrationError
from .frame import RawFrame

log = logging.getLogger(__name__)


def colour_mosaic(header: Mapping, detector: Mapping) -> str | None:
    """``'BAYERPAT = RGGB'`` when the header says the frame is a one-shot colour camera's
    mosaic (the keywords of ``detector.bayer.keywords``, which the profile loader fills
    from ``keywords.bayer_pattern``; default BAYERPAT) or the profile does
    (``detector.bayer.pattern``, for every frame), else None."""
    bayer = detector.get("bayer", {})
    found = _header_pattern(header, bayer)
    if found is not None:
        return f"{found[0]} = {found[1]}"
    if bayer.get("pattern"):
        return f"detector.bayer.pattern {bayer['pattern']}"
    return None


def _header_pattern(header: Mapping, bayer: Mapping) -> tuple[str, str] | None:
    """(keyword, pattern) of the first of ``bayer['keywords']`` (default BAYERPAT) the
    header gives as a non-empty string, else None."""
    for key in bayer.get("keywords") or ["BAYERPAT"]:
        value = header.get(key)
        if isinstance(value, str) and value.strip():
            return key, value.strip()
    return None


#: keywords giving the colour pattern's origin (MaxIm DL; N.I.N.A. and ASCOM)
_BAYER_OFFSETS = (("XBAYROFF", "YBAYROFF"), ("BAYOFFX", "BAYOFFY"))


def bayer_cells(header: Mapping, detector: Mapping, *, origin: tuple[int, int] = (0, 0),
                where: str = "frame") -> np.ndarray:
    """The colour of each position of the trimmed frame's 2×2 blocks, as a 2×2 array of
    'R', 'G', 'B'.

    The pattern (the profile's ``detector.bayer.pattern`` when given, else the header's
    ``BAYERPAT`` or ``detector.bayer.keywords``) is read row by row from the raw array's
    first stored pixel, shifted by the header's ``XBAYROFF``/``YBAYROFF`` (or
    ``BAYOFFX``/``BAYOFFY``) and by the trim's ``origin`` (first raw row and column
    kept): a trim that starts on an odd column swaps the colours of a block's two
    columns.

    Raises
    ------
    CalibrationError
        A pattern that is not four of R, G, B with one R, two G and one B.
    """
    bayer = detector.get("bayer", {})
    text = bayer.get("pattern")  # the profile's, when given, wins over the header's
    if not text:
        found = _header_pattern(header, bayer)
        text = found[1] if found else ""
    text = text.upper()
    if sorted(text) != ["B", "G", "G", "R"]:
        raise CalibrationError(f"{where}: colour pattern {text!r} is not one R, two G and one "
                               "B (e.g. RGGB); set detector.bayer.pattern")
    x_off = y_off = 0
    for kx, ky in _BAYER_OFFSETS:
        if kx in header or ky in header:
            x_off, y_off = int(header.get(kx, 0)), int(header.get(ky, 0))
            break
    cell = np.array(list(text)).reshape(2, 2)
    dy, dx = (origin[0] + y_off) % 2, (origin[1] + x_off) % 2
    return np.roll(cell, (-dy, -dx), axis=(0, 1))


def full_frame_to_superpixels(value, factor: int):
    """A 0-based pixel coordinate of the camera's full frame on a frame of ``factor`` ×
    ``factor`` superpixels: superpixel i spans full-frame pixels ``factor·i .. factor·i +
    factor − 1``, so ``x' = (x + 0.5)/factor − 0.5`` (a length is divided by ``factor``)."""
    return (np.asarray(value, np.float64) + 0.5) / factor - 0.5


def superpixel_frame(frame: RawFrame, *, pattern: str, channel: str | None = None,
                     cells: np.ndarray | None = None) -> RawFrame:
    """A colour mosaic as a monochrome frame of 2×2 superpixels.

    ``channel`` None: each superpixel is the sum of its block's R, G, G and B pixels
    (in electrons: whatever the pattern's phase, every 2×2 block holds one of each).
    ``channel`` 'G', 'R' or 'B': the sum of the block's pixels of that colour only (two
    G, one R, one B), whose positions ``cells`` (:func:`bayer_cells`) gives: one colour
    plane, as AAVSO's DSLR photometry takes the green one (TG).

    A superpixel is SATURATED, NONFINITE or NO_DATA when any of the pixels it sums is;
    the read noise grows as √n for n pixels summed, the overscan's row noise as
    √(Σ per-row count²) (the row's level is common to the pixels of one row); an odd
    last row or column is dropped.  The header's WCS is scaled to the superpixels,
    ``CCDFBIN = 2`` and ``CFAPLANE`` (the colours summed) say so.
    """
    if channel is not None and cells is None:
        raise ValueError("superpixel_frame: channel needs cells (bayer_cells)")
    ny, nx = (n - n % 2 for n in frame.data.shape)
    used = [(dy, dx) for dy in (0, 1) for dx in (0, 1)
            if channel is None or cells[dy, dx] == channel]

    def summed(a):
        a = np.asarray(a[:ny, :nx], np.float64)
        return sum(a[dy::2, dx::2] for dy, dx in used)

    def any_of(a):
        a = np.asarray(a[:ny, :nx], bool)
        out = np.zeros((ny // 2, nx // 2), bool)
        for dy, dx in used:
            out |= a[dy::2, dx::2]
        return out

    n = len(used)
    per_row = [sum(1 for dy, _ in used if dy == row) for row in (0, 1)]
    plane = "R+G+G+B" if channel is None else "+".join([channel] * n)
    doubt = None if channel is None else green_pair_doubt(
        frame.data[:ny, :nx], ok=~(frame.saturated | frame.nonfinite | frame.no_data)[:ny, :nx],
        cells=cells)
    if doubt:
        log.warning("colour mosaic (%s): %s; if the %s plane is wrong, set "
                    "detector.bayer.pattern to the stored array's", pattern, doubt, channel)
    header = _superpixel_header(frame.header)
    header["CFAPLANE"] = (plane, "colour-mosaic pixels summed in each 2x2 superpixel")
    dropped = frame.data.shape != (ny, nx)
    note = (f"colour mosaic ({pattern}): 2x2 superpixels {plane}"
            + (f" (the {channel} plane)" if channel is not None else "")
            + (", odd last row/column dropped" if dropped else "")
            + (f"; CHECK THE PATTERN: {doubt}" if doubt else ""))
    return RawFrame(data=summed(frame.data).astype(np.float32),
                    saturated=any_of(frame.saturated), nonfinite=any_of(frame.nonfinite),
                    no_data=any_of(frame.no_data), header=header, exptime_s=frame.exptime_s,
                    read_noise_e=math.sqrt(n) * frame.read_noise_e,
                    saturation_e=n * frame.saturation_e, gains=list(frame.gains),
                    notes=[*frame.notes, note],
                    overscan_noise_e=math.sqrt(sum(k * k for k in per_row))
                    * frame.overscan_noise_e,
                    zero_level=frame.zero_level, superpixel=2)


#: levels (e-) below which a frame says nothing about its colours (a bias)
_PAIR_CHECK_MIN_E = 100.0


def green_pair_doubt(data: np.ndarray, *, ok: np.ndarray, cells: np.ndarray) -> str | None:
    """Whether the pattern's two G positions look like G: the two G pixels of a block
    sit behind one filter, so over a whole frame of sky or a flat their medians agree,
    while R and B, the other diagonal, differ by the light's colour.  When the chosen
    G pair differs by more than 5 % and the other diagonal agrees three times better,
    the pattern's phase is likely wrong: a sentence saying so, else None (also when
    the frame is too faint to tell, below :data:`_PAIR_CHECK_MIN_E`, or grey)."""
    medians = {}
    step = 8 if data.size >= 2**20 else 2  # from 1k²: every 4th block each way, ≥ 16k px
    for dy in (0, 1):
        for dx in (0, 1):
            values = data[dy::step, dx::step][ok[dy::step, dx::step]]
            if values.size < 100:
                return None
            medians[dy, dx] = float(np.median(values))
    if min(medians.values()) < _PAIR_CHECK_MIN_E:
        return None
    green = [p for p in medians if cells[p] == "G"]
    other = [p for p in medians if cells[p] != "G"]

    def spread(pair):
        a, b = medians[pair[0]], medians[pair[1]]
        return 2.0 * abs(a - b) / (a + b)

    if spread(green) > 0.05 and spread(other) < spread(green) / 3:
        levels = ", ".join(f"{cells[p]}{p[0]}{p[1]} {medians[p]:.0f}" for p in medians)
        return (f"the two G positions' medians differ by {100 * spread(green):.0f} %, the "
                f"other diagonal's by {100 * spread(other):.0f} % (e-: {levels})")
    return None


def _superpixel_header(header) -> fits.Header:
    """``header`` for 2×2 superpixels: the WCS scaled (pixel i of the superpixel frame
    spans pixels 2i, 2i+1 of the mosaic), CCDSUM/XBINNING/YBINNING doubled, CCDFBIN."""
    out = header.copy()
    try:
        from astropy.wcs import WCS, FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
            if wcs.has_celestial:
                scaled = _binned_wcs(wcs, 2).to_header(relax=True)
                _drop_wcs(out)  # a CD matrix left beside the scaled PC would win
                out.update(scaled)
    except Exception as exc:  # a WCS astropy cannot slice: dropped, and said
        _drop_wcs(out)
        out["HISTORY"] = f"ccdflow: WCS dropped, it could not be scaled to superpixels ({exc})"
    for key in ("XBINNING", "YBINNING"):
        if key in out:
            out[key] = int(out[key]) * 2
    if "CCDSUM" in out:
        parts = re.findall(r"\d+", str(out["CCDSUM"]))
        if len(parts) == 2:
            out["CCDSUM"] = f"{int(parts[0]) * 2} {int(parts[1]) * 2}"
    out["CCDFBIN"] = (2, "ccdflow 2x2 superpixels of a colour mosaic")
    return out


_WCS_KEYS = re.compile(r"^(CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CROTA|CD\d_\d|PC\d_\d|[AB]P?_(\d_\d|ORDER)"
                       r"|LONPOLE|LATPOLE|WCSAXES)")


def _binned_wcs(wcs, factor: int):
    """``wcs`` for pixels binned ``factor`` × ``factor``: full-frame (1-based) pixel
    ``x = factor·x' − (factor − 1)/2``, so CRPIX' = (CRPIX + (factor − 1)/2)/factor, the
    CD (or CDELT) × factor, and each SIP coefficient of order p+q × factor^(p+q−1).
    (astropy's ``wcs[::2, ::2]`` ignores the step when the header has a CD matrix.)"""
    from astropy.wcs import Sip

    out = wcs.deepcopy()
    out.wcs.crpix = (wcs.wcs.crpix + (factor - 1) / 2.0) / factor
    if wcs.wcs.has_cd():
        out.wcs.cd = wcs.wcs.cd * factor
    else:
        out.wcs.cdelt = wcs.wcs.cdelt * factor
    if wcs.sip is not None:
        def scaled(coeffs):
            if coeffs is None:
                return None
            p, q = np.indices(coeffs.shape)
            return coeffs * float(factor) ** (p + q - 1)

        sip = wcs.sip
        out.sip = Sip(scaled(sip.a), scaled(sip.b), scaled(sip.ap), scaled(sip.bp),
                      out.wcs.crpix)
    out.wcs.set()
    return out


def _drop_wcs(header: fits.Header) -> None:
    """Remove the celestial WCS keywords (TAN and SIP) from ``header``, in place."""
    for key in [k for k in header if _WCS_KEYS.match(k)]:
        del header[key]
