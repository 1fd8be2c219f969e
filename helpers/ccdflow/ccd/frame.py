"""The raw frame in electrons that :func:`ccdflow.ccd.read_raw_frame` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits


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
