"""Master bias, dark, flat, bad-pixel mask and calibrated science frames.

Modules: :mod:`.masters` (bias, dark, flat, arc), :mod:`.bpm` (bad-pixel mask),
:mod:`.science` (calibrated science frames: the masters' units, the bias exposure
convention and the per-pixel formulas of SCI, ERR and ERR_CAL are in its docstring),
:mod:`.illumination` (illumination model), :mod:`.subframe` (a full-frame master cut to a
subframe).
"""

from .bpm import HOT_DARK_IMAGES, bad_pixel_mask_from_files, make_bad_pixel_mask
from .illumination import make_illumination_model
from .masters import (
    COMBINE_DEFAULTS,
    central_level,
    central_region,
    make_master_arc,
    make_master_bias,
    make_master_dark,
    make_master_flat,
)
from .science import calibrate_science, trimmed_geometry, trimmed_shape
from .subframe import cut_master

__all__ = [
    "COMBINE_DEFAULTS",
    "HOT_DARK_IMAGES",
    "bad_pixel_mask_from_files",
    "calibrate_science",
    "central_level",
    "central_region",
    "cut_master",
    "make_bad_pixel_mask",
    "make_illumination_model",
    "make_master_arc",
    "make_master_bias",
    "make_master_dark",
    "make_master_flat",
    "trimmed_geometry",
    "trimmed_shape",
]
