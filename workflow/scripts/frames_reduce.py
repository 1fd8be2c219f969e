"""Rule frames_reduce: each frame of a batch calibrated, its background, cosmic rays and
source list made in one pass (ccdflow.chain)."""

from ccdflow.chain import reduce_batch
from ccdflow.io import job_logging

job_logging(snakemake.log[0])
reduce_batch(
    frames=snakemake.params.frames,
    detector=snakemake.params.detector,
    steps=snakemake.params.steps,
    subtract_dark=snakemake.params.subtract_dark,
    flat_floor=snakemake.params.flat_floor,
    background=snakemake.params.background,
    cosmics=snakemake.params.cosmics,
    detect=snakemake.params.detect,
    out_dirs={stage: path for stage, path in snakemake.output.items()},
    provenance={"software": snakemake.params.software},
)
