"""Rule master_dark: dark-current rate (e-/s) of one night and group, hot pixels flagged."""

from pathlib import Path

from ccdflow.calibrate import make_master_dark
from ccdflow.io import job_logging
from ccdflow.products import read_product, write_product

job_logging(snakemake.log[0])
hot = snakemake.params.hot_pixel
master = make_master_dark(
    paths=snakemake.input.raw,
    detector=snakemake.params.detector,
    bias=read_product(snakemake.input.bias) if "bias" in snakemake.input.keys() else None,
    combine=snakemake.params.combine,
    memory_limit_mb=snakemake.params.memory_limit_mb,
    min_frames=snakemake.params.min_frames,
    hot_threshold_e_per_s=hot["threshold_e_per_s"],
    hot_significance=hot["significance"],
    scratch_dir=Path(snakemake.output.master).parent,
    threads=snakemake.threads,
)
write_product(snakemake.output.master, master, unit="electron/s")
