"""Rule hot_pixel_map: HOT pixels of a night from its own science frames (no darks)."""

from ccdflow.hotpixels import write_hot_pixel_map
from ccdflow.io import job_logging

job_logging(snakemake.log[0])
write_hot_pixel_map(
    snakemake.output.hot_pixels,
    paths=snakemake.input.raw,
    detector=snakemake.params.detector,
    bias=snakemake.input.get("bias"),
    **snakemake.params.options,
)
