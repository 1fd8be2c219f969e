"""Rule inventory_scan: classify every raw file and write inventory.csv, then the
calibration plan made from that file."""

from ccdflow.inventory import build_inventory
from ccdflow.io import job_logging, write_table
from ccdflow.plan import write_calibration_plan

job_logging(snakemake.log[0])
table = build_inventory(
    raw_dir=snakemake.input.raw_dir,
    profile=snakemake.params.profile,
    frames_table=snakemake.params.frames or None,
    extensions=snakemake.params.extensions,
    cache=snakemake.params.cache,
)
write_table(table, snakemake.output.table)
write_calibration_plan(snakemake.output.table, snakemake.output.plan, **snakemake.params.plan)
