"""Is a raw FITS file complete?  A walk over its header and data units.

astropy reads headers lazily and a truncated data unit only shows when the
pixels are read, as ``ValueError: cannot reshape array of size 539280 into
shape (1024,1056)`` deep inside a batch job, naming no file.  The inventory
therefore walks every file's HDUs itself, from the FITS standard alone (4.0,
§4.4.1.1): each header is 2880-byte blocks of 80-character cards ending in
``END``, and its data unit holds

    |BITPIX| / 8 × GCOUNT × (PCOUNT + NAXIS1 × … × NAXISn)

bytes, padded to a multiple of 2880.  Only headers are read (a few blocks per
file), so checking a night of 10,000 frames costs what reading their headers
costs.  Gzip and bzip2 files are decompressed as a stream, which also checks
their CRC.

A data unit shorter than declared is *truncated* (a missing final padding is
tolerated: some writers omit it and every pixel is there).  Bytes after the
last HDU that are neither zero padding nor another extension mean the data
unit is larger than its header says (a header that does not describe its
data); both make the file ``rejected`` in the inventory, with this module's
message.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["BLOCK", "FitsIntegrityError", "check_fits_file", "iter_hdu_sizes"]

#: the FITS block size in bytes
BLOCK = 2880
_CARD = 80
#: a header longer than this is taken as a corrupt file, not read on
_MAX_HEADER_BLOCKS = 10_000


class FitsIntegrityError(ValueError):
    """The file is not complete FITS; the message says what is wrong and where."""


def _open(path: Path) -> BinaryIO:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def _read_header(handle: _Stream, index: int) -> dict[str, str] | None:
    """Cards of one header as {keyword: raw value text}; None at a clean end of file."""
    cards: dict[str, str] = {}
    for n in range(_MAX_HEADER_BLOCKS):
        block = handle.read(BLOCK)
        if not block and n == 0:
            return None
        if n == 0 and index == 0 and not block.startswith(b"SIMPLE  ="):
            raise FitsIntegrityError("not a FITS file (it does not begin with SIMPLE =)")
        if len(block) < BLOCK:
            raise FitsIntegrityError(
                f"header of HDU {index} is truncated ({len(block)} of {BLOCK} bytes in its "
                f"block {n + 1})")
        for start in range(0, BLOCK, _CARD):
            card = block[start:start + _CARD].decode("ascii", errors="replace")
            keyword = card[:8].strip()
            if keyword == "END":
                return cards
            if card[8:10] == "= " and keyword not in cards:
                cards[keyword] = card[10:].split("/", 1)[0].strip()
    raise FitsIntegrityError(f"header of HDU {index} has no END card")


def _integer(cards: dict[str, str], key: str, index: int, default: int | None = None) -> int:
    text = cards.get(key)
    if text is None:
        if default is None:
            raise FitsIntegrityError(f"HDU {index} lacks the mandatory keyword {key}")
        return default
    try:
        return int(text)
    except ValueError:
        raise FitsIntegrityError(f"HDU {index}: {key} = {text!r} is not an integer") from None


def _declared(cards: dict[str, str], index: int) -> tuple[int, str]:
    """Bytes of the data unit the header declares, and how it says so."""
    bitpix = _integer(cards, "BITPIX", index)
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise FitsIntegrityError(f"HDU {index}: BITPIX = {bitpix} is not a FITS value")
    naxis = _integer(cards, "NAXIS", index)
    if not 0 <= naxis <= 999:
        raise FitsIntegrityError(f"HDU {index}: NAXIS = {naxis} is out of range")
    axes = [_integer(cards, f"NAXIS{i}", index) for i in range(1, naxis + 1)]
    if any(a < 0 for a in axes):
        raise FitsIntegrityError(f"HDU {index}: negative axis length {axes}")
    pcount = _integer(cards, "PCOUNT", index, default=0)
    gcount = _integer(cards, "GCOUNT", index, default=1)
    if naxis == 0:
        return 0, f"BITPIX={bitpix}, no data"
    # random groups (NAXIS1 = 0) count from NAXIS2 on
    size = abs(bitpix) // 8 * gcount * (pcount + math.prod(axes[1:] if axes[0] == 0 and
                                                            "GROUPS" in cards else axes))
    return size, f"BITPIX={bitpix}, {'x'.join(str(a) for a in axes)}"


class _Stream:
    """A binary reader that can hand back bytes it has read (gzip streams seek slowly)."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.back = b""

    def read(self, n: int = -1) -> bytes:
        back, self.back = self.back, b""
        if n < 0:
            return back + self.raw.read()
        if len(back) >= n:
            self.back = back[n:]
            return back[:n]
        return back + self.raw.read(n - len(back))

    def unread(self, data: bytes) -> None:
        self.back = data + self.back

    def skip(self, n: int) -> int:
        """Move ``n`` bytes on without keeping them; returns how many there were.

        A plain file is not read (a seek within its size); a compressed stream is
        decompressed in 1-MiB pieces, never held whole.
        """
        taken = min(n, len(self.back))
        self.back = self.back[taken:]
        n -= taken
        if n <= 0:
            return taken
        try:
            size = os.fstat(self.raw.fileno()).st_size
            plain = isinstance(self.raw, io.BufferedReader)
        except (AttributeError, OSError, io.UnsupportedOperation):
            plain = False
        if plain:
            here = self.raw.tell()
            moved = max(0, min(n, size - here))
            self.raw.seek(here + moved)
            return taken + moved
        moved = 0
        while moved < n:
            piece = self.raw.read(min(n - moved, 1 << 20))
            if not piece:
                break
            moved += len(piece)
        return taken + moved


def iter_hdu_sizes(stream: _Stream) -> Iterator[tuple[int, int, int, str]]:
    """Walk the HDUs of a FITS stream.

    Yields ``(index, declared_bytes, present_bytes, description)`` for each
    HDU; ``present_bytes`` < ``declared_bytes`` only for a truncated last unit.
    Stops at the end of the file, or after zero padding that follows the last HDU.
    """
    index = 0
    while True:
        cards = _read_header(stream, index)
        if cards is None:
            return
        if index > 0 and "XTENSION" not in cards:
            raise FitsIntegrityError(f"HDU {index} has no XTENSION card")
        size, text = _declared(cards, index)
        padded = -(-size // BLOCK) * BLOCK
        present = stream.skip(padded)  # a seek for plain files: the pixels are not read
        yield index, size, min(present, size), text
        if present < padded:
            return
        head = stream.read(_CARD)
        if not head.startswith(b"XTENSION"):
            if (head + stream.read()).strip(b"\0 "):
                raise FitsIntegrityError(
                    f"bytes after the last HDU (number {index}, {text}) are not a FITS "
                    "extension: the data unit is larger than its header declares")
            return
        stream.unread(head)
        index += 1


def check_fits_file(path: str | Path) -> int:
    """Check that every header and data unit of ``path`` is complete.

    Parameters
    ----------
    path : str or Path
        A FITS file, optionally ``.gz``/``.bz2`` compressed (decompressed as a
        stream) or tile-compressed (``.fz``, checked as the binary tables it holds).

    Returns
    -------
    int
        Number of HDUs.

    Raises
    ------
    FitsIntegrityError
        Empty file, not FITS, a truncated header or data unit, or bytes after
        the last HDU that are not an extension; the message gives the HDU, what
        its header declares (BITPIX and axes) and how many bytes the file holds.
    OSError, EOFError
        The file cannot be read or decompressed.
    """
    path = Path(path)
    with _open(path) as raw:
        stream = _Stream(raw)
        first = stream.read(BLOCK)
        if not first:
            raise FitsIntegrityError("empty file (0 bytes)")
        stream.unread(first)
        n = 0
        for index, declared, present, text in iter_hdu_sizes(stream):
            n = index + 1
            if present < declared:
                raise FitsIntegrityError(
                    f"data of HDU {index} is truncated: its header declares {declared} "
                    f"bytes ({text}), the file holds {present}")
        return n
