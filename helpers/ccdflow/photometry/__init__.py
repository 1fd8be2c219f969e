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
``detect``      per-frame detections (segmentation) and the sources stage's ECSV
                product (:func:`frame_sources`)
``centroids``   the frame's FWHM (Gaussian PRF fits) and star centres (windowed
                centroids, PRF fits where masks or undersampling spoil them)
``shapes``      which detections are stars: sharpness/roundness tests (:func:`star_shapes`)
``daofind``     DAOFIND sharpness/roundness in numpy (equal to DAOStarFinder)
``psf``         the frame's PSF (elliptical Gaussian or Moffat) and its stamps
``align``       frame-to-reference transform (:func:`frame_offset`, affine refinement)
``targets``     reference-frame choice and the series' source list with the named
                targets (:func:`build_reference`, :func:`reference_catalog`)
``sky``         clipped annulus statistics (:func:`annulus_statistics`)
``flags``       a row's flags and the mask bits photometry acts on (:class:`PhotFlag`)
``model``       the frame's source model: joint PSF fit, recentring, rendering
                (:func:`fit_source_fluxes`, :func:`model_sources`)
``neighbours``  stars the list lacks, found in the model's residual (DAOPHOT's second
                pass, :func:`~ccdflow.photometry.neighbours.find_hidden_neighbours`)
``apertures``   aperture sums with repair, neighbour light, two errors
                (:func:`measure_apertures`)
``repair``      the pixels photometry fills or leaves out, and the frame it sums with
                the filled ones repaired from the sky and the PSF model
``optimal``     Naylor (1998) optimal photometry (:func:`optimal_photometry`)
``noise``       the frame's random variance ERR² − ERR_CAL², evaluated where needed
                (:class:`~ccdflow.photometry.noise.RandomVariance`)
``measure``     one frame's photometry of the source list with times
                (:func:`frame_photometry`)
``frametimes``  when and where: mid-exposure MJD, BJD_TDB, site (profile or header,
                west-positive longitudes caught), airmass (:func:`frame_times`)
``frameio``     a frame's products read for photometry (:func:`load_frame`), the CSV
                read back and its unit comments
``ensemble``    differential photometry: comparison choice, weighted ensemble
                (:func:`differential_photometry`)
``lightcurves`` per-source and differential light curves of a series, the aperture
                chosen, the files (:func:`build_lightcurves`)
==============  =================================================================

Everything public is importable from ``ccdflow.photometry`` itself.
"""

from .align import Alignment, align_frame, frame_offset
from .apertures import (
    BAD_FLAGS,
    COMPARISON_BAD_FLAGS,
    SKY_VARIANCE_FACTOR,
    PhotFlag,
    PhotometryError,
    annulus_statistics,
    fit_source_fluxes,
    measure_apertures,
)
from .centroids import estimate_fwhm, masked_near, recentroid, refine_centres
from .detect import (
    SOURCE_COLUMNS,
    SourceError,
    detect_stars,
    frame_sources,
    merge_split_sources,
    read_sources,
    write_sources,
)
from .ensemble import differential_photometry
from .frameio import LONG_UNITS, FrameData, load_frame, read_photometry, unit_comments
from .frametimes import frame_times
from .lightcurves import build_lightcurves, good_mask, write_lightcurves
from .measure import (
    OPTIMAL,
    PHOTOMETRY_COLUMNS,
    align_to_reference,
    aperture_labels,
    frame_photometry,
    frame_psf,
)
from .psf import PSF_KINDS, PSFModel, fit_psf, psf_stamps
from .shapes import SHAPE_LIMITS, psf_roundness, shape_rejections, star_shapes
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

__all__ = [
    "BAD_FLAGS",
    "COMPARISON_BAD_FLAGS",
    "LONG_UNITS",
    "OPTIMAL",
    "PHOTOMETRY_COLUMNS",
    "PSF_KINDS",
    "SHAPE_LIMITS",
    "SKY_VARIANCE_FACTOR",
    "SOURCE_COLUMNS",
    "Alignment",
    "FrameData",
    "PSFModel",
    "PhotFlag",
    "PhotometryError",
    "SourceError",
    "align_frame",
    "align_to_reference",
    "annulus_statistics",
    "aperture_labels",
    "build_lightcurves",
    "build_reference",
    "choose_reference",
    "detect_stars",
    "differential_photometry",
    "estimate_fwhm",
    "fit_psf",
    "fit_source_fluxes",
    "frame_offset",
    "frame_photometry",
    "frame_psf",
    "frame_sources",
    "frame_times",
    "good_mask",
    "load_frame",
    "masked_near",
    "measure_apertures",
    "merge_split_sources",
    "place_pixel_targets",
    "psf_roundness",
    "psf_stamps",
    "read_photometry",
    "read_reference",
    "read_sources",
    "recentroid",
    "reference_catalog",
    "refine_centres",
    "resolve_comparisons",
    "shape_rejections",
    "sky_coord",
    "star_shapes",
    "unit_comments",
    "write_lightcurves",
    "write_reference",
    "write_sources",
]
