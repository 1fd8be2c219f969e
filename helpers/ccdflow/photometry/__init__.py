"""Photometric time series, one module per step.

A *series* is one field (OBJECT) in one filter, across all nights.  Its source
list comes from one reference frame; each frame is aligned to it, bright
sources are re-centroided, and every source of the list is measured in every
frame (a source off a frame keeps its row, flagged OFF_FRAME).  Units: fluxes
and backgrounds in electrons (``bkg`` per pixel), positions in 0-based pixels,
times in days.

==============  =================================================================
module          what it holds
==============  =================================================================
``detect``      per-frame detections (segmentation), FWHM, re-centroiding, the
                sources stage's ECSV product (:func:`frame_sources`)
``align``       frame-to-reference transform (:func:`frame_offset`, affine refinement)
``targets``     reference-frame choice and the series' source list with the named
                targets (:func:`build_reference`, :func:`reference_catalog`)
``apertures``   aperture sums with the sky-estimate error term, flags
                (:func:`measure_apertures`, :class:`PhotFlag`)
``measure``     one frame's photometry of the source list with times
                (:func:`frame_photometry`), frame I/O (:func:`load_frame`)
``lightcurves`` per-source and differential light curves (:func:`build_lightcurves`)
==============  =================================================================

Everything public is importable from ``ccdflow.photometry`` itself.
"""

from .align import Alignment, align_frame, frame_offset
from .apertures import (
    BAD_FLAGS,
    SKY_VARIANCE_FACTOR,
    PhotFlag,
    PhotometryError,
    annulus_statistics,
    measure_apertures,
)
from .detect import (
    SHAPE_LIMITS,
    SOURCE_COLUMNS,
    SourceError,
    detect_stars,
    estimate_fwhm,
    frame_sources,
    read_sources,
    recentroid,
    shape_rejections,
    star_shapes,
    write_sources,
)
from .lightcurves import build_lightcurves, differential_photometry, good_mask, write_lightcurves
from .measure import (
    LONG_UNITS,
    PHOTOMETRY_COLUMNS,
    FrameData,
    align_to_reference,
    aperture_labels,
    frame_photometry,
    load_frame,
    read_photometry,
    unit_comments,
)
from .targets import (
    build_reference,
    choose_reference,
    place_pixel_targets,
    read_reference,
    reference_catalog,
    resolve_comparisons,
    sky_coord,
    write_reference,
)

__all__ = ["BAD_FLAGS", "LONG_UNITS", "PHOTOMETRY_COLUMNS", "SHAPE_LIMITS", "SKY_VARIANCE_FACTOR",
           "SOURCE_COLUMNS", "Alignment", "FrameData", "PhotFlag", "PhotometryError",
           "SourceError", "align_frame", "align_to_reference", "annulus_statistics",
           "aperture_labels", "build_lightcurves", "build_reference", "choose_reference",
           "detect_stars", "differential_photometry", "estimate_fwhm", "frame_offset",
           "frame_photometry", "frame_sources", "good_mask", "load_frame", "measure_apertures",
           "place_pixel_targets", "read_photometry", "read_reference", "read_sources",
           "recentroid", "reference_catalog", "resolve_comparisons", "shape_rejections",
           "sky_coord", "star_shapes", "unit_comments", "write_lightcurves", "write_reference",
           "write_sources"]
