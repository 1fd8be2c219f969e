"""FITS products: SCI / ERR / MASK extensions, CCDData-compatible, with provenance.

Layout: an empty primary HDU carrying the frame's header and the provenance
keywords; ``SCI`` (float32, ``BUNIT``), ``ERR`` (float32 1-sigma, ``UTYPE =
'StdDevUncertainty'``) and ``MASK`` (uint16 bit flags, see
:mod:`ccdflow.masks`).  ``astropy.nddata.CCDData.read(path, hdu='SCI',
hdu_uncertainty='ERR', hdu_mask='MASK')`` reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from . import __version__
from .io import atomic_path
from .masks import header_cards

__all__ = ["Product", "ProductFile", "param_hash", "provenance_header", "read_mask",
           "read_mask_images", "read_plane", "read_product", "write_mask", "write_product"]

_DROP = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE",
         "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "CHECKSUM", "DATASUM", "BUNIT", "BLANK"}


@dataclass
class Product:
    """An image product in memory."""

    data: np.ndarray
    error: np.ndarray
    mask: np.ndarray
    header: fits.Header
    extras: dict[str, np.ndarray] = field(default_factory=dict)  #: more image extensions

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def rows(self, start: int, stop: int) -> Product:
        """Rows ``start:stop`` of every plane (views), with the same header."""
        return Product(data=self.data[start:stop], error=self.error[start:stop],
                       mask=self.mask[start:stop], header=self.header,
                       extras={k: v[start:stop] for k, v in self.extras.items()})


class ProductFile:
    """A product on disk whose planes are read in row strips, never whole.

    For masters of large frames: ``rows(start, stop)`` reads only those rows of
    SCI, ERR and MASK (and ERR_CAL) from the file, with the values and dtypes
    :func:`read_product` gives, so a job calibrating many frames holds a strip
    of each master instead of the whole (a 4k² master is 160 MB).  The file stays
    open until :meth:`close`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._hdul = fits.open(self.path, mode="readonly", memmap=False)
        try:
            names = {hdu.name for hdu in self._hdul}
            missing = {"SCI", "ERR", "MASK"} - names
            if missing:
                raise ValueError(f"{self.path} is not a ccdflow product (missing extension "
                                 f"{sorted(missing)[0]!r})")
            self.header = self._hdul[0].header.copy()
            self.shape = tuple(self._hdul["SCI"].shape)
            self._extras = [n for n in ("ERR_CAL",) if n in names]
        except Exception:
            self._hdul.close()
            raise

    def rows(self, start: int, stop: int) -> Product:
        """Rows ``start:stop`` of every plane, read from the file."""
        def read(name, dtype):
            return np.asarray(self._hdul[name].section[start:stop], dtype=dtype)

        return Product(data=read("SCI", np.float32), error=read("ERR", np.float32),
                       mask=read("MASK", np.uint16), header=self.header,
                       extras={n: read(n, np.float32) for n in self._extras})

    def close(self) -> None:
        self._hdul.close()

    def __enter__(self) -> ProductFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def param_hash(params: Mapping[str, Any]) -> str:
    """First 16 hex digits of the SHA-256 of the parameters as canonical JSON."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance_header(*, step: str, inputs: Iterable[str | Path], params: Mapping[str, Any],
                      base: fits.Header | None = None) -> fits.Header:
    """Copy of ``base`` (structural keywords dropped) plus provenance keywords.

    Keywords: ``CCDFSTEP`` (step), ``CCDFVERS`` (software version), ``CCDFPARH``
    (hash of ``params``), ``DATE-RED`` (UTC processing time), ``NINPUTS`` and
    ``INPUTnnn`` (input file names), and ``HISTORY`` lines with the parameters.
    """
    header = fits.Header()
    if base is not None:
        for card in base.cards:
            if card.keyword not in _DROP:
                header.append(card)
    header["CCDFSTEP"] = (step, "ccdflow processing step")
    header["CCDFVERS"] = (__version__, "ccdflow version")
    header["CCDFPARH"] = (param_hash(params), "SHA-256 (16 hex) of the step parameters")
    header["DATE-RED"] = (datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "UTC of processing")
    inputs = [Path(p).name for p in inputs]
    header["NINPUTS"] = (len(inputs), "number of input files")
    for i, name in enumerate(inputs[:999], start=1):
        header[f"INPUT{i:03d}"] = name
    header.add_history(f"ccdflow {step}: " + json.dumps(params, sort_keys=True, default=str))
    return header


def write_product(path: str | Path, product: Product, *, unit: str) -> None:
    """Write ``product`` atomically as primary (header) + SCI + ERR + MASK (+ extras)."""
    wcs_like = fits.Header([c for c in product.header.cards
                            if c.keyword[:5] in ("CTYPE", "CRPIX", "CRVAL", "CDELT", "CUNIT")
                            or (c.keyword[:2] in ("CD", "PC") and "_" in c.keyword)
                            or c.keyword in ("RADESYS", "RADECSYS", "EQUINOX", "LONPOLE",
                                             "LATPOLE", "WCSAXES")])
    primary = fits.PrimaryHDU(header=product.header)
    # SCI repeats the full header so CCDData.read(hdu='SCI') sees WCS and provenance
    sci = fits.ImageHDU(np.asarray(product.data, np.float32), header=product.header, name="SCI")
    sci.header["BUNIT"] = unit
    err = fits.ImageHDU(np.asarray(product.error, np.float32), header=wcs_like, name="ERR")
    err.header["BUNIT"] = unit
    err.header["UTYPE"] = ("StdDevUncertainty", "1-sigma uncertainty of SCI")
    mask = fits.ImageHDU(np.asarray(product.mask, np.uint16), name="MASK")
    for key, value, comment in header_cards():
        mask.header[key] = (value, comment)
    extras = [fits.ImageHDU(np.asarray(v), name=k) for k, v in product.extras.items()]
    with atomic_path(path) as tmp:
        fits.HDUList([primary, sci, err, mask, *extras]).writeto(tmp, output_verify="silentfix")


def read_product(path: str | Path) -> Product:
    """Read a product written by :func:`write_product` (every row of
    :class:`ProductFile`)."""
    with ProductFile(path) as product:
        return product.rows(0, product.shape[0])


def read_plane(path: str | Path, name: str, dtype=np.float32) -> np.ndarray:
    """One image extension of a product (e.g. ``ERR``), as :func:`read_product` gives it."""
    with fits.open(path, mode="readonly", memmap=False) as hdul:
        return hdul[name].data.astype(dtype)


def write_mask(path: str | Path, mask: np.ndarray, *, inputs: Iterable[str | Path], step: str,
               params: Mapping[str, Any] | None = None,
               cards: Mapping[str, tuple[Any, str]] | None = None,
               images: Mapping[str, np.ndarray] | None = None) -> None:
    """Write a bit mask (uint16) as primary (provenance) + MASK, atomically;
    ``cards`` ({keyword: (value, comment)}) go into the primary header, ``images``
    ({EXTNAME: array}) after MASK (float32, e.g. the hot pixels' HOTDARK rates)."""
    header = provenance_header(step=step, inputs=inputs, params=params or {})
    for key, card in (cards or {}).items():
        header[key] = card
    hdu = fits.ImageHDU(np.asarray(mask, np.uint16), name="MASK")
    for key, value, comment in header_cards():
        hdu.header[key] = (value, comment)
    extra = [fits.ImageHDU(np.asarray(image, np.float32), name=name)
             for name, image in (images or {}).items()]
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(header=header), hdu, *extra]).writeto(tmp)


def read_mask(path: str | Path) -> np.ndarray:
    """Read the MASK extension of a mask or product file."""
    with fits.open(path, mode="readonly", memmap=False) as hdul:
        return hdul["MASK"].data.astype(np.uint16)


def read_mask_images(path: str | Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The float images of a mask file that it has among ``names`` (e.g. HOTDARK)."""
    with fits.open(path, mode="readonly", memmap=False) as hdul:
        present = {hdu.name for hdu in hdul}
        return {name: hdul[name].data.astype(np.float64) for name in names if name in present}
