"""Cosmic-ray masks (L.A.Cosmic, van Dokkum 2001) on calibrated frames in electrons.

Settings measured by the team (NOTES.md): passing the real read noise, the
saturation level, the background map (``inbkg``) and the variance (``invar``)
matters, and ``sepmed=False`` cut false flags on star cores from ~200 to ~30
per 2k² frame.  Two methods give that mask:

* ``lacosmic`` (default): :func:`ccdflow.lacosmic.lacosmic_mask`, astroscrappy's
  algorithm with ``sepmed=False`` evaluated only where a cosmic ray can be — the
  same pixels (tests/test_cosmics.py) in ~1/10 of astroscrappy's time with
  ``sepmed=True``;
* ``astroscrappy``: ``astroscrappy.detect_cosmics`` itself (any ``sepmed``), the
  reference.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["CosmicsError", "detect_cosmic_rays", "write_cosmics"]


class CosmicsError(ValueError):
    """Cosmic-ray detection cannot run; the message says why."""


def detect_cosmic_rays(*, data: np.ndarray, error: np.ndarray, mask: np.ndarray | None,
                       background: np.ndarray | None, read_noise_e: float,
                       saturation_e: float, sigclip: float = 4.5, sigfrac: float = 0.3,
                       objlim: float = 5.0, niter: int = 4, sepmed: bool = False,
                       psffwhm: float = 2.5, method: str = "lacosmic") -> np.ndarray:
    """Boolean cosmic-ray mask of a calibrated frame.

    Parameters
    ----------
    data, error : ndarray
        SCI and ERR planes in electrons (gain 1); not modified.
    mask : ndarray of bool, optional
        Pixels not to examine (bad, saturated, no data).
    background : ndarray, optional
        Sky map in electrons, passed as ``inbkg``.
    read_noise_e, saturation_e : float
        Detector read noise and saturation level, both in electrons.
    sigclip, sigfrac, objlim, niter, sepmed, psffwhm
        astroscrappy ``detect_cosmics`` options (``psffwhm`` is unused by its
        default ``fsmode='median'``).
    method : {'lacosmic', 'astroscrappy'}
        See the module docstring; ``lacosmic`` needs ``sepmed=False``.

    Returns
    -------
    ndarray of bool
        True where a cosmic ray was found (never where ``mask`` is True).

    Notes
    -----
    ``invar`` is ERR², the full per-pixel variance (read noise, Poisson of sky
    and sources, calibration terms), so the Laplacian significance uses the
    same noise model as the rest of the pipeline.
    """
    if method not in ("lacosmic", "astroscrappy"):
        raise CosmicsError(f"method must be 'lacosmic' or 'astroscrappy', got {method!r}")
    if method == "lacosmic" and sepmed:
        raise CosmicsError("method 'lacosmic' is astroscrappy's sepmed=False; use method "
                           "'astroscrappy' for sepmed=True")
    data = np.asarray(data, np.float32)
    error = np.asarray(error, np.float32)
    if data.shape != error.shape:
        raise CosmicsError(f"data {data.shape} and error {error.shape} differ in shape")
    if not read_noise_e > 0:
        raise CosmicsError(f"read_noise_e must be > 0, got {read_noise_e}")
    bad = ~np.isfinite(data) | ~np.isfinite(error) | (error <= 0)
    if mask is not None:
        bad |= np.asarray(mask, bool)
    if bad.all():
        raise CosmicsError("every pixel is masked: nothing to search")
    from .lacosmic import padded_plane

    # lacosmic works in padded planes: made so, they are not copied again
    def plane(fill):
        return (padded_plane(data.shape, fill) if method == "lacosmic"
                else np.empty(data.shape, np.float32))

    clean = plane(0.0)
    np.copyto(clean, data)
    clean[bad] = 0.0
    # ERR² in float32 (the float32 square of a float32 is the float64 one rounded)
    var = plane(np.inf)
    np.square(error, out=var)
    var[bad] = np.median(error[~bad], overwrite_input=True) ** 2  # finite: nanmedian's value
    del error  # the caller may have handed over its only reference (ccdflow.chain)
    bkg = (None if background is None
           else np.where(bad, np.float32(0.0), np.asarray(background, np.float32)))
    if method == "lacosmic":
        from .lacosmic import lacosmic_mask

        crmask = lacosmic_mask(data=clean, inmask=bad, inbkg=bkg, invar=var,
                               sigclip=sigclip, sigfrac=sigfrac, objlim=objlim,
                               readnoise=float(read_noise_e), satlevel=float(saturation_e),
                               niter=niter, overwrite_input=True)  # clean, var: ours
    else:
        import astroscrappy

        crmask, _ = astroscrappy.detect_cosmics(
            clean, inmask=bad, inbkg=bkg, invar=var, sigclip=sigclip,
            sigfrac=sigfrac, objlim=objlim, gain=1.0, readnoise=float(read_noise_e),
            satlevel=float(saturation_e), niter=niter, sepmed=sepmed, cleantype="meanmask",
            psffwhm=psffwhm, verbose=False)
    crmask = np.asarray(crmask, bool) & ~bad
    log.info("cosmic rays: %d pixels flagged (%.4f%%)", crmask.sum(), 100 * crmask.mean())
    return crmask


def write_cosmics(path, crmask: np.ndarray, *, inputs, params) -> None:
    """Write the cosmic-ray mask (uint8 CRMASK, count NCOSMIC) with provenance, atomically."""
    from astropy.io import fits

    from .io import atomic_path
    from .products import provenance_header

    header = provenance_header(step="detect_cosmics", inputs=inputs, params=params)
    header["NCOSMIC"] = (int(crmask.sum()), "pixels flagged as cosmic rays")
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(header=header),
                      fits.ImageHDU(crmask.astype(np.uint8), name="CRMASK")]).writeto(tmp)
