"""Raw frame → electrons: overscan, trim, gain, amplifier mosaic.

Sections follow IRAF: ``[x1:x2,y1:y2]``, 1-based, inclusive, x along a row.
A reversed range (``x1 > x2``) in DETSEC means the amplifier is read out
mirrored; its pixels are flipped when placed in the mosaic.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from .config import bayer_channel, superpixel_mosaics
from .errors import CalibrationError

log = logging.getLogger(__name__)

__all__ = [
    "CalibrationError",
    "RawFrame",
    "bayer_cells",
    "detector_constant",
    "fit_overscan",
    "green_pair_doubt",
    "overscan_level_noise",
    "parse_section",
    "plane_count",
    "read_raw_frame",
]

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


#: FITS keywords describing a data unit, not the observation
STRUCTURAL_KEYWORDS = {
    "SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "XTENSION", "PCOUNT",
    "GCOUNT", "BZERO", "BSCALE", "EXTNAME", "EXTVER", "CHECKSUM", "DATASUM", "", "COMMENT",
    "HISTORY"}


def image_hdus(hdul: fits.HDUList) -> list:
    """HDUs holding an image of two or more non-empty axes (the amplifiers)."""
    out = []
    for hdu in hdul:
        naxis = int(hdu.header.get("NAXIS", 0))
        if hdu.is_image and naxis >= 2 and all(
                int(hdu.header.get(f"NAXIS{i}", 0)) > 0 for i in range(1, naxis + 1)):
            out.append(hdu)
    return out


def plane_count(header: Mapping) -> int:
    """Images an HDU holds: the product of its axes beyond the first two (1 for a 2-D
    image and for a cube of one plane, ``NAXIS3 = 1``, as some capture programs write)."""
    naxis = int(header.get("NAXIS", 0))
    return int(np.prod([int(header.get(f"NAXIS{i}", 1)) for i in range(3, naxis + 1)]))


def merged_header(primary: fits.Header, first: fits.Header) -> fits.Header:
    """Copy of the first image header overlaid with the primary's non-structural cards.

    Keywords of a multi-extension or tile-compressed file then all show in one
    header (the primary's global values win).
    """
    merged = first.copy()
    if first is not primary:
        for card in primary.cards:
            if card.keyword not in STRUCTURAL_KEYWORDS:
                merged[card.keyword] = (card.value, card.comment)
    return merged


def clipped_stats(values: np.ndarray, *, axis: int | None = None, sigma: float = 3.0,
                  maxiters: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, median, std) after iterative σ-clipping about the median, as
    ``astropy.stats.sigma_clipped_stats`` with its defaults (std with ddof 0, values
    outside ``median ± sigma·std`` dropped until none is or ``maxiters``; NaN ignored);
    numpy only, so a job reading raw frames does not import astropy.stats."""
    data = np.array(values, dtype=np.float64)
    for _ in range(maxiters):
        with np.errstate(invalid="ignore"):
            med = np.nanmedian(data, axis=axis, keepdims=True)
            std = np.nanstd(data, axis=axis, keepdims=True)
            out = (data < med - sigma * std) | (data > med + sigma * std)
        if not out.any():
            break
        data[out] = np.nan
    with np.errstate(invalid="ignore"):
        return (np.nanmean(data, axis=axis), np.nanmedian(data, axis=axis),
                np.nanstd(data, axis=axis))


def parse_section(text: str) -> tuple[slice, slice, bool, bool]:
    """Parse an IRAF section into 0-based ``(rows, cols)`` slices and flip flags.

    Parameters
    ----------
    text : str
        ``[x1:x2,y1:y2]``, 1-based inclusive; blanks allowed.

    Returns
    -------
    rows, cols : slice
    flip_x, flip_y : bool
        True where the range was given high-to-low.
    """
    match = _SECTION.match(str(text).strip())
    if not match:
        raise ValueError(f"not an IRAF section [x1:x2,y1:y2]: {text!r}")
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    if min(x1, x2, y1, y2) < 1:
        raise ValueError(f"section {text!r} is 1-based; 0 is not a valid pixel")
    return (slice(min(y1, y2) - 1, max(y1, y2)), slice(min(x1, x2) - 1, max(x1, x2)),
            x1 > x2, y1 > y2)


def detector_constant(spec: Any, headers: Sequence[Mapping], *, name: str, where: str) -> float:
    """A number from the profile: a constant, or ``{keyword, default}`` read from ``headers``.

    ``headers`` are tried in order (amplifier header before primary).
    """
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return float(spec)
    if isinstance(spec, Mapping) and "keyword" in spec:
        for header in headers:
            if spec["keyword"] in header:
                value = header[spec["keyword"]]
                try:
                    return float(value)
                except (TypeError, ValueError):
                    raise CalibrationError(
                        f"{where}: {spec['keyword']}={value!r} is not a number ({name})"
                    ) from None
        if spec.get("default") is not None:
            return float(spec["default"])
        raise CalibrationError(f"{where}: no {spec['keyword']} keyword for {name} and no "
                               "default in the instrument profile")
    raise CalibrationError(f"{where}: profile gives no {name}")


def fit_overscan(strip: np.ndarray, *, function: str = "median", order: int = 1,
                 niterate: int = 3, reject_sigma: float = 3.0) -> np.ndarray:
    """Overscan level per row of ``strip`` (rows × overscan columns), in its units.

    Parameters
    ----------
    strip : ndarray
        Overscan pixels; not modified.
    function : {'median', 'mean', 'constant', 'legendre', 'chebyshev'}
        ``median``: per-row median; ``mean``: per-row 3-sigma-clipped mean;
        ``constant``: one clipped mean for the whole strip; ``legendre`` /
        ``chebyshev``: a polynomial of ``order`` fitted along the rows to the
        per-row medians, ``niterate`` times rejecting points beyond
        ``reject_sigma`` (IRAF ccdproc style).

    Notes
    -----
    Noise of the level per row with ``n`` columns of read noise ``σ``: ``σ/√n``
    (mean) or ``≈1.25 σ/√n`` (median); a fit averages further along the rows.
    """
    strip = np.asarray(strip, dtype=np.float64)
    if strip.ndim != 2 or strip.shape[1] < 1:
        raise ValueError(f"overscan strip must be 2-D with columns, got shape {strip.shape}")
    if function == "median":
        return np.nanmedian(strip, axis=1)
    if function == "mean":
        _, median, std = clipped_stats(strip, axis=1, sigma=3.0)
        lo, hi = median - 3 * std, median + 3 * std
        keep = (strip >= lo[:, None]) & (strip <= hi[:, None])
        return np.nansum(np.where(keep, strip, 0.0), axis=1) / np.maximum(keep.sum(axis=1), 1)
    if function == "constant":
        return np.full(strip.shape[0], clipped_stats(strip, sigma=3.0)[0])
    if function in ("legendre", "chebyshev"):
        kind = np.polynomial.Legendre if function == "legendre" else np.polynomial.Chebyshev
        rows = np.arange(strip.shape[0], dtype=float)
        level = np.nanmedian(strip, axis=1)
        good = np.isfinite(level)
        fit = kind.fit(rows[good], level[good], deg=order)
        for _ in range(niterate):
            resid = level - fit(rows)
            sigma = np.nanstd(resid[good])
            new = np.isfinite(level) & (np.abs(resid) <= reject_sigma * sigma)
            if new.sum() <= order + 1 or np.array_equal(new, good):
                break
            good = new
            fit = kind.fit(rows[good], level[good], deg=order)
        return fit(rows)
    raise ValueError(f"overscan function must be median, mean, constant, legendre or "
                     f"chebyshev, got {function!r}")


#: variance of the median of n unit normal deviates (n ≤ 10; π/2n beyond)
_MEDIAN_VARIANCE = {1: 1.0, 2: 0.5, 3: 0.4487, 4: 0.2982, 5: 0.2868, 6: 0.2147, 7: 0.2104,
                    8: 0.1682, 9: 0.1661, 10: 0.1378}


def overscan_level_noise(strip: np.ndarray, *, function: str = "median",
                         order: int = 1) -> float:
    """1σ noise (ADU) of the overscan level :func:`fit_overscan` subtracts from a row.

    The pixel noise σ comes from differences of neighbouring overscan columns in a
    row (robust, free of any row structure; of neighbouring rows for a single
    column); then the median's noise for a per-row median of n columns (tabulated
    for n ≤ 10, ``√(π/2n)·σ`` beyond), σ/√n for a per-row mean, σ/√(n·rows) for
    one constant, and the per-row median's noise × √((order+1)/rows) for a fit
    along the rows.  The
    level is common to a whole row: a per-row level from a few columns adds noise
    correlated along the rows that no per-pixel error fully describes.
    """
    strip = np.asarray(strip, dtype=np.float64)
    rows, n = strip.shape
    diff = np.diff(strip, axis=1) if n > 1 else np.diff(strip, axis=0)
    diff = diff[np.isfinite(diff)]
    if diff.size < 2:
        return 0.0
    sigma = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2)
    per_row_median = sigma * math.sqrt(_MEDIAN_VARIANCE.get(n, math.pi / (2 * n)))
    if function == "median":
        return per_row_median
    if function == "mean":
        return sigma / math.sqrt(n)
    if function == "constant":
        return sigma / math.sqrt(n * rows)
    return per_row_median * math.sqrt(min(1.0, (order + 1) / rows))


@dataclass
class RawFrame:
    """A raw frame in electrons, overscan-corrected and trimmed (all amplifiers mosaicked)."""

    data: np.ndarray  #: float32, electrons
    saturated: np.ndarray  #: bool, raw value >= saturation level
    nonfinite: np.ndarray  #: bool, no finite raw value
    no_data: np.ndarray  #: bool, outside every amplifier section
    header: fits.Header  #: primary header (merged with the first amplifier's)
    exptime_s: float
    read_noise_e: float
    saturation_e: float  #: lowest saturation level over amplifiers, in electrons
    gains: list[float] = field(default_factory=list)  #: e-/ADU per amplifier
    notes: list[str] = field(default_factory=list)  #: what was done, for logs and headers
    #: 1σ (e-) of the overscan level subtracted from each row (largest over amplifiers)
    overscan_noise_e: float = 0.0
    #: how the zero level was subtracted: 'overscan', 'constant' (detector.zero_level_adu)
    #: or 'none' (the camera's pedestal stays in ``data`` until a master bias removes it)
    zero_level: str = "overscan"
    #: 2 when a colour mosaic was summed into 2×2 superpixels (:func:`superpixel_frame`)
    superpixel: int = 1


def _section_from(kind: str, cfg: Mapping, header: Mapping, shape: tuple[int, int], *,
                  where: str, what: str) -> tuple[slice, slice] | None:
    """Resolve the overscan or trim region of one amplifier (None: not applicable)."""
    source = cfg.get("from", "none" if what == "overscan" else "full")
    if source == "none":
        return None
    if source == "full":
        return slice(0, shape[0]), slice(0, shape[1])
    if source == "cover":
        keyword = cfg.get("keyword", "COVER")
        if keyword not in header:
            raise CalibrationError(f"{where}: no {keyword} keyword for the {what} columns")
        ncols = int(header[keyword])
        if not 0 < ncols < shape[1]:
            raise CalibrationError(f"{where}: {keyword}={ncols} is not a usable column count")
        return slice(0, shape[0]), slice(shape[1] - ncols, shape[1])
    if source == "section":
        text = cfg.get("section")
    else:  # biassec, trimsec, datasec: a header keyword
        keyword = cfg.get("keyword", source.upper())
        text = header.get(keyword)
        if text is None or str(text).strip().upper() in ("", "UNKNOWN", "N/A"):
            raise CalibrationError(f"{where}: no usable {keyword} keyword for the {what} region "
                                   f"(found {text!r}); set detector.{what} in the profile")
    try:
        rows, cols, _, _ = parse_section(text)
    except ValueError as exc:
        raise CalibrationError(f"{where}: {what} {exc}") from None
    if rows.stop > shape[0] or cols.stop > shape[1]:
        raise CalibrationError(f"{where}: {what} section {text} exceeds the image "
                               f"({shape[1]}x{shape[0]})")
    return rows, cols


def _binning(header: Mapping) -> tuple[int, int]:
    parts = re.findall(r"\d+", str(header.get("CCDSUM", "1 1")))
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 else (1, 1)


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


def _pixels(path: Path, hdu) -> np.ndarray:
    """The pixels of one HDU as a 2-D array (a cube of one plane loses its extra axes);
    a file cut short names itself (astropy's error does not)."""
    try:
        data = hdu.data
        return data if data.ndim == 2 else data.reshape(data.shape[-2:])
    except (OSError, ValueError, TypeError) as exc:
        raise CalibrationError(f"{path}: pixel data cannot be read ({type(exc).__name__}: "
                               f"{exc}; the file is shorter than its header says?)") from exc


def _amplifier(path: Path, hdu, primary: Mapping, detector: Mapping, multi: bool) -> dict:
    header = hdu.header
    where = f"{path}[{hdu.name or 0}]" if multi else str(path)
    pixels = _pixels(path, hdu)
    raw = np.asarray(pixels, dtype=np.float64)  # read by _pixels already
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
    saturated = raw >= sat_adu
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


def _adc_ceiling(pixels: np.ndarray, *, min_pixels: int = 3) -> tuple[int | None, int]:
    """The ADC's full scale when a frame of integer pixels reaches it, and the step every
    value is a multiple of (16 for a 12-bit ADC stored in the top bits of 16).

    The full scale is ``2^k − step`` (4095, 16383, 65520, ...), held by at least
    ``min_pixels`` pixels with none above: clipped, whatever the profile's saturation
    says.  ``(None, step)`` when the frame does not reach one (or is not integer)."""
    if not np.issubdtype(pixels.dtype, np.integer) or pixels.size == 0:
        return None, 1
    top = int(pixels.max())
    if top <= 0 or int(pixels.min()) < 0:
        return None, 1
    bits = int(np.bitwise_or.reduce(pixels, axis=None))
    step = bits & -bits
    full = next(((1 << k) - step for k in range(8, 17) if (1 << k) - step == top), None)
    if full is None or int(np.count_nonzero(pixels == top)) < min_pixels:
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


_OVERSCAN_WARNED: set[tuple] = set()


def _warn_overscan(where: str, function: str, n_cols: int, noise_e: float, rn_e: float) -> None:
    """Say once per process that a per-row overscan level adds row noise."""
    key = (function, n_cols)
    if key in _OVERSCAN_WARNED:
        return
    _OVERSCAN_WARNED.add(key)
    log.warning("%s: the overscan %s of %d column(s) adds %.1f e- of noise to every row "
                "(%.2f x the read noise; in ERR, but correlated along each row): "
                "detector.overscan.function legendre (a fit along the rows) or constant "
                "averages it away", where, function, n_cols, noise_e, noise_e / rn_e)


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
