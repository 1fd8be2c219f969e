"""Rule detect_sources: detections and FWHM of each frame of a batch."""

from ccdflow.batch import sources_batch
from ccdflow.io import job_logging

job_logging(snakemake.log[0])
sources_batch(
    frames=snakemake.params.frames,
    calibrated_dir=snakemake.input.calibrated,
    background_dir=snakemake.input.background,
    cosmics_dir=snakemake.input.get("cosmics"),
    out_dir=snakemake.output.sources,
    provenance={"software": snakemake.params.software},
    **snakemake.params.detect,
)
