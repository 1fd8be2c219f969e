"""Rule bad_pixel_mask: OR of the masters' masks and the profile's bad pixels."""

from ccdflow.calibrate import make_bad_pixel_mask
from ccdflow.io import job_logging
from ccdflow.products import read_product, write_mask

job_logging(snakemake.log[0])
masters = {kind: read_product(path) for kind, path in snakemake.input.items()}
shape = next(iter(masters.values())).data.shape
mask = make_bad_pixel_mask(
    shape=shape, detector=snakemake.params.detector, masters=list(masters.values())
)
write_mask(snakemake.output.bpm, mask, inputs=list(snakemake.input), step="bad_pixel_mask")
