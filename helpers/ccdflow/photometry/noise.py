"""The frame's random variance per pixel, computed where photometry needs it.

``ERR² − ERR_CAL²`` (the photons, read and dark noise of this exposure, without the
masters' noise that is the same in every frame) is needed on the aperture sums'
plane, on optimal photometry's stamps and on a sparse sample.  Holding it as a
float64 plane costs 134 MB at 4k², so :class:`RandomVariance` computes it from ERR
and ERR_CAL (float32 as stored) on any rows, stamps or sample: every value is the
one the whole plane would hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import cut_stamps

__all__ = ["RandomVariance"]

#: pixels per row strip when a whole plane is written (:meth:`RandomVariance.into`)
STRIP_PIXELS = 1 << 20


def _variance(error: np.ndarray, error_cal: np.ndarray) -> np.ndarray:
    """``max(ERR² − ERR_CAL², 0)`` in float64; a NaN ERR² counts 0, an infinite one
    the largest float64 (``np.nan_to_num``)."""
    var = np.nan_to_num(np.square(error, dtype=np.float64), copy=False)
    var -= np.square(error_cal, dtype=np.float64)
    np.clip(var, 0.0, None, out=var)
    return var


@dataclass(frozen=True)
class RandomVariance:
    """``ERR² − ERR_CAL²`` of a frame, evaluated on demand (never mutates its planes).

    Parameters
    ----------
    error : ndarray
        ERR (any float dtype; squared in float64).
    error_cal : ndarray
        ERR_CAL with NaN already 0 (same shape).
    """

    error: np.ndarray
    error_cal: np.ndarray

    def at(self, index) -> np.ndarray:
        """The variance at ``index`` (anything that indexes the frame: rows, a
        strided sample, a boolean mask)."""
        return _variance(self.error[index], self.error_cal[index])

    def stamps(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """The variance on stamps (:func:`ccdflow.photometry.model.cut_stamps`; 0 off
        the frame)."""
        return _variance(cut_stamps(self.error, px, py)[0],
                         cut_stamps(self.error_cal, px, py)[0])

    def plane(self) -> np.ndarray:
        """The whole float64 plane."""
        return self.at(...)

    def into(self, out: np.ndarray) -> np.ndarray:
        """Write the whole plane into ``out`` (e.g. float32) a row strip at a time, so
        no float64 plane is ever held; returns ``out``.  Values beyond ``out``'s range
        become ±inf, as casting the plane would make them."""
        rows = max(1, STRIP_PIXELS // max(1, self.error.shape[1]))
        with np.errstate(over="ignore"):
            for start in range(0, self.error.shape[0], rows):
                out[start:start + rows] = self.at(np.s_[start:start + rows])
        return out
