"""Master bias, dark, flat, bad-pixel mask and calibrated science frames.

Modules: :mod:`.masters` (bias, dark, flat, arc), :mod:`.bpm` (bad-pixel mask),
:mod:`.science` (calibrated science frames), :mod:`.illumination` (illumination model).

Units: every master is in electrons (bias, e-), electrons per second (dark
rate, e-/s) or dimensionless (flat, median 1 in the central region).  Each
master carries an ``EXPTIME`` keyword: 0 for a true bias, or the exposure of
the short darks used as bias (``bias_from_shortest_dark``), so that dark
current is scaled by ``t_science − t_bias``.

Calibrated science, per pixel::

    S = (R − B − D·(t − t_B)) / F
    Var(S) = [RN² + max(R − B, 0)] / F²                                 (this frame)
           + [σ_B² + ((t − t_B)·σ_D)²] / F² + S²·(σ_F / F)²            (ERR_CAL²)

with ``R`` the overscan-corrected, trimmed raw frame in electrons.  The
Poisson term uses the collected charge ``R − B`` (signal plus dark current).
ERR is the square root of the whole; ERR_CAL of the masters' part, which is
the same in every frame calibrated with the same masters (a time series of a
star on fixed pixels does not scatter by it).
"""


from .bpm import HOT_DARK_IMAGES, make_bad_pixel_mask
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
from .science import calibrate_science, trimmed_shape

__all__ = [
    "COMBINE_DEFAULTS",
    "HOT_DARK_IMAGES",
    "calibrate_science",
    "central_level",
    "central_region",
    "make_bad_pixel_mask",
    "make_illumination_model",
    "make_master_arc",
    "make_master_bias",
    "make_master_dark",
    "make_master_flat",
    "trimmed_shape",
]
