"""Rule bad_pixel_mask: OR of the masters' masks, the hot-pixel map and the profile's bad pixels."""

from ccdflow.calibrate import make_bad_pixel_mask, trimmed_shape
from ccdflow.io import job_logging
from ccdflow.products import read_mask, read_product, write_mask

job_logging(snakemake.log[0])
inputs = snakemake.input
masters = [read_product(inputs[k]) for k in ("bias", "dark", "flat") if k in inputs.keys()]
hot = read_mask(inputs.hot_pixels) != 0 if "hot_pixels" in inputs.keys() else None
shape = trimmed_shape(inputs.reference, detector=snakemake.params.detector)
mask = make_bad_pixel_mask(shape=shape, detector=snakemake.params.detector, masters=masters,
                           hot_pixels=hot)
write_mask(snakemake.output.bpm, mask, inputs=list(inputs), step="bad_pixel_mask")
