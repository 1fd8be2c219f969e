"""Simulated observing night with truth: the demo data and the test oracle.

``simulate_night`` writes raw frames as a real camera would (uint16 FITS with
BZERO=32768, an overscan strip, IRAF/MaxIm header keywords) and, beside them,
the truth every later stage is tested against.

Conventions
-----------
* Pixel coordinates in the truth tables are 0-based ``(x, y)`` of the trimmed
  data area, pixel ``i`` covering ``[i - 0.5, i + 0.5]`` (the photutils
  convention).  FITS sections in headers are 1-based and inclusive.
* Electrons (``_e``) are charge collected in a pixel *before* the flat field,
  i.e. what a perfectly calibrated frame should show.  ``flux_e`` of a star is
  the total charge over the whole plane for that exposure.
* The raw frame is, in ADU::

      raw = round(level + drift[y] + pattern[y, x]
                  + (flat * (sky + stars) + dark_rate * t + cosmics + noise_e) / gain)

  clipped to ``[0, 65535]``, where ``noise_e`` is Poisson noise of the
  collected charge plus Gaussian read noise.  The overscan columns carry
  ``level + drift[y]`` and read noise only.

Truth layout (``<out>/truth``)
------------------------------
``truth.json``               scalars: gain, read noise, geometry, site, field, transit
``bias_pattern_adu.fits``    fixed 2-D bias structure over the data area (ADU)
``dark_rate_e_per_s.fits``   dark current per pixel
``flat_<filter>.fits``       true flat per filter (median 1)
``row_drift_adu.fits``       per frame (row of the image) bias drift per detector row
``frames.csv``               one row per raw frame (type, times, sky, seeing, drift)
``stars.csv``                star list with base positions, sky coordinates, rates
``star_frames.csv``          per science frame and star: position and electrons
``cosmics.csv``              every cosmic-ray pixel: frame, x, y, electrons
"""

from .cli import main
from .night import simulate_night
from .scene import cosmic_ray_hits, render_gaussian_stars, sky_model, transit_factor
from .spec import NightSpec
from .truth import Truth, load_truth

__all__ = ["NightSpec", "Truth", "cosmic_ray_hits", "load_truth", "main",
           "render_gaussian_stars", "simulate_night", "sky_model", "transit_factor"]
