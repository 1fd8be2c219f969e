"""Rule measure_photometry: every source of the series' list measured in each frame of a batch."""

from ccdflow.batch import photometry_batch
from ccdflow.io import job_logging

job_logging(snakemake.log[0])
photometry_batch(
    frames=snakemake.params.frames,
    calibrated_dir=snakemake.input.calibrated,
    background_dir=snakemake.input.background,
    cosmics_dir=snakemake.input.get("cosmics"),
    sources_dir=snakemake.input.sources,
    reference=snakemake.input.reference,
    out_dir=snakemake.output.photometry,
    options=snakemake.params.options,
    site=snakemake.params.site,
    times=snakemake.params.times,
    header=[f"software: {snakemake.params.software}"],
)
