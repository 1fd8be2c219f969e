"""Rule calibration_plan: which masters calibrate each science frame."""

from ccdflow.inventory import read_inventory
from ccdflow.io import job_logging, write_table
from ccdflow.plan import calibration_sets, plan_calibrations

job_logging(snakemake.log[0])
inventory = read_inventory(snakemake.input.inventory)
sets = calibration_sets(
    inventory,
    min_frames=snakemake.params.min_frames,
    bias_from_shortest_dark=snakemake.params.bias_from_shortest_dark,
)
plan = plan_calibrations(
    inventory,
    sets=sets,
    max_age_days=snakemake.params.max_age_days,
    steps=snakemake.params.steps,
    cut_subframes=snakemake.params.cut_subframes,
)
write_table(plan, snakemake.output.plan)
