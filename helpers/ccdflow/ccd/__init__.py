"""Raw frame → electrons: overscan, trim, gain, amplifier mosaic, colour superpixels.

Sections follow IRAF: ``[x1:x2,y1:y2]``, 1-based, inclusive, x along a row.
A reversed range (``x1 > x2``) in DETSEC means the amplifier is read out
mirrored; its pixels are flipped when placed in the mosaic.

One module per step:

- :mod:`~ccdflow.ccd.raw`: :func:`read_raw_frame`, per amplifier and the mosaic;
- :mod:`~ccdflow.ccd.frame`: :class:`RawFrame`, what it returns;
- :mod:`~ccdflow.ccd.hdus`: which data units hold images, one merged header;
- :mod:`~ccdflow.ccd.sections`: IRAF sections, the profile's regions and constants;
- :mod:`~ccdflow.ccd.overscan`: the zero level per row and its noise;
- :mod:`~ccdflow.ccd.colour`: one-shot colour cameras (Bayer mosaics).
"""

from ..errors import CalibrationError
from .colour import (
    bayer_cells,
    colour_mosaic,
    full_frame_to_superpixels,
    green_pair_doubt,
    superpixel_frame,
)
from .frame import RawFrame
from .hdus import STRUCTURAL_KEYWORDS, image_hdus, merged_header, plane_count
from .overscan import clipped_stats, fit_overscan, overscan_level_noise
from .raw import read_raw_frame
from .sections import detector_constant, parse_section

__all__ = [
    "STRUCTURAL_KEYWORDS",
    "CalibrationError",
    "RawFrame",
    "bayer_cells",
    "clipped_stats",
    "colour_mosaic",
    "detector_constant",
    "fit_overscan",
    "full_frame_to_superpixels",
    "green_pair_doubt",
    "image_hdus",
    "merged_header",
    "overscan_level_noise",
    "parse_section",
    "plane_count",
    "read_raw_frame",
    "superpixel_frame",
]
