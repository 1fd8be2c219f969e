"""Rule master_bias: combine the bias frames of one night and group."""

from pathlib import Path

from ccdflow.calibrate import make_master_bias
from ccdflow.io import job_logging
from ccdflow.products import write_product

job_logging(snakemake.log[0])
master = make_master_bias(
    paths=snakemake.input.raw,
    detector=snakemake.params.detector,
    combine=snakemake.params.combine,
    memory_limit_mb=snakemake.params.memory_limit_mb,
    min_frames=snakemake.params.min_frames,
    scratch_dir=Path(snakemake.output.master).parent,
    threads=snakemake.threads,
)
write_product(snakemake.output.master, master, unit="electron")
