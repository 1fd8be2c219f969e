"""Rule arc_combine: master arc of one night, group and setup (bias/dark subtracted)."""

from pathlib import Path

from ccdflow.calibrate import make_master_arc
from ccdflow.io import job_logging
from ccdflow.products import read_product, write_product

job_logging(snakemake.log[0])
inputs = snakemake.input
master = make_master_arc(
    paths=inputs.raw,
    detector=snakemake.params.detector,
    bias=read_product(inputs.bias) if "bias" in inputs.keys() else None,
    dark=read_product(inputs.dark) if "dark" in inputs.keys() else None,
    combine=snakemake.params.combine,
    memory_limit_mb=snakemake.params.memory_limit_mb,
    min_frames=snakemake.params.min_frames,
    scratch_dir=Path(snakemake.output.master).parent,
    threads=snakemake.threads,
)
write_product(snakemake.output.master, master, unit="electron")
