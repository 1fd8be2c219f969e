"""Rule detect_cosmics: astroscrappy cosmic-ray mask of each frame of a batch."""

from ccdflow.batch import cosmics_batch
from ccdflow.io import job_logging

job_logging(snakemake.log[0])
cosmics_batch(
    frames=snakemake.params.frames,
    calibrated_dir=snakemake.input.calibrated,
    background_dir=snakemake.input.background,
    out_dir=snakemake.output.cosmics,
    options=snakemake.params.cosmics,
)
