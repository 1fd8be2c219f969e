"""Rule bad_pixel_mask: OR of the masters' masks, the hot-pixel map and the profile's bad pixels."""

from ccdflow.calibrate import HOT_DARK_IMAGES, make_bad_pixel_mask, trimmed_geometry
from ccdflow.io import job_logging
from ccdflow.products import read_mask, read_mask_images, read_product, write_mask

job_logging(snakemake.log[0])
inputs = snakemake.input
masters = [read_product(inputs[k]) for k in ("bias", "dark", "flat") if k in inputs.keys()]
has_hot = "hot_pixels" in inputs.keys()
hot = read_mask(inputs.hot_pixels) if has_hot else None
rates = read_mask_images(inputs.hot_pixels, HOT_DARK_IMAGES) if has_hot else {}
shape, superpixel = trimmed_geometry(inputs.reference, detector=snakemake.params.detector)
mask = make_bad_pixel_mask(shape=shape, detector=snakemake.params.detector, masters=masters,
                           hot_pixels=hot, superpixel=superpixel,
                           origin=snakemake.params.origin)
write_mask(snakemake.output.bpm, mask, inputs=list(inputs), step="bad_pixel_mask", images=rates)
