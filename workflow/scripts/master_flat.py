"""Rule master_flat: normalised flat of one night, group and filter."""

from pathlib import Path

from ccdflow.calibrate import make_master_flat
from ccdflow.io import job_logging
from ccdflow.products import read_product, write_product

job_logging(snakemake.log[0])
inputs = snakemake.input
master = make_master_flat(
    paths=inputs.raw,
    detector=snakemake.params.detector,
    bias=read_product(inputs.bias) if "bias" in inputs.keys() else None,
    dark=read_product(inputs.dark) if "dark" in inputs.keys() else None,
    combine=snakemake.params.combine,
    memory_limit_mb=snakemake.params.memory_limit_mb,
    min_frames=snakemake.params.min_frames,
    scratch_dir=Path(snakemake.output.master).parent,
    threads=snakemake.threads,
    **snakemake.params.flat,
)
write_product(snakemake.output.master, master, unit="")
