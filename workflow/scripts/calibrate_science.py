"""Rule calibrate_science: a batch of science frames to electrons with ERR and MASK."""

from ccdflow.batch import calibrate_batch
from ccdflow.io import job_logging

job_logging(snakemake.log[0])
calibrate_batch(
    frames=snakemake.params.frames,
    detector=snakemake.params.detector,
    steps=snakemake.params.steps,
    subtract_dark=snakemake.params.subtract_dark,
    out_dir=snakemake.output.calibrated,
)
