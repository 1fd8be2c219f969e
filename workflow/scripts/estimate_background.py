"""Rule estimate_background: sky map, RMS and source mask of each frame of a batch."""

from ccdflow.batch import background_batch
from ccdflow.io import job_logging

job_logging(snakemake.log[0])
background_batch(
    frames=snakemake.params.frames,
    calibrated_dir=snakemake.input.calibrated,
    out_dir=snakemake.output.background,
    options=snakemake.params.background,
)
