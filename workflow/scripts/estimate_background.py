"""Rule estimate_background: sky map, RMS and source mask of one calibrated frame."""

from ccdflow.background import background_for_product, write_background
from ccdflow.io import job_logging
from ccdflow.products import read_product

job_logging(snakemake.log[0])
options = dict(snakemake.params.background)
circles = options.pop("manual_masks")
result = background_for_product(
    product=read_product(snakemake.input.calibrated), manual_circles=circles, **options
)
write_background(
    snakemake.output.background,
    result,
    inputs=[snakemake.input.calibrated],
    params=snakemake.params.background,
)
