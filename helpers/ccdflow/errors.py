"""Errors shared by modules that must stay light to import.

The Snakemake process imports the inventory and the calibration plan to build the
DAG; keeping :class:`CalibrationError` here (re-exported by :mod:`ccdflow.ccd`) spares
it astropy.io.fits, ~0.3 s of every Snakemake start (each SLURM job runs one).
"""

from __future__ import annotations

__all__ = ["CalibrationError", "HotPixelError", "SourceError"]


class CalibrationError(ValueError):
    """A frame cannot be calibrated; the message names the file and the problem."""


class HotPixelError(ValueError):
    """A hot-pixel or line-defect map cannot be made; the message says why (re-exported
    by :mod:`ccdflow.hotpixels`)."""


class SourceError(ValueError):
    """Sources cannot be found or matched; the message says why (re-exported by
    :mod:`ccdflow.photometry`)."""
