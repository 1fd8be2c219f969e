"""Rule bad_pixel_mask: OR of the masters' masks, the hot-pixel map and the profile's bad pixels."""

from ccdflow.calibrate import bad_pixel_mask_from_files
from ccdflow.io import job_logging
from ccdflow.products import write_mask

job_logging(snakemake.log[0])
inputs = snakemake.input
mask, rates = bad_pixel_mask_from_files(
    reference=inputs.reference,
    detector=snakemake.params.detector,
    masters=[inputs[k] for k in ("bias", "dark", "flat") if k in inputs.keys()],
    hot_pixels=inputs.hot_pixels if "hot_pixels" in inputs.keys() else None,
    origin=snakemake.params.origin,
)
write_mask(snakemake.output.bpm, mask, inputs=list(inputs), step="bad_pixel_mask", images=rates)
