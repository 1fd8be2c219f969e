# ccdflow: raw CCD frames -> calibrated images -> photometry (and long-slit spectra).
# Run the demo night:      snakemake --cores all
# Your own night:          snakemake --cores all --config raw_dir=PATH instrument=NAME
from snakemake.utils import min_version

min_version("9.0")


configfile: workflow.source_path("config/config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/inventory.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/frames.smk"
include: "workflow/rules/photometry.smk"
include: "workflow/rules/spectra.smk"
include: "workflow/rules/qc.smk"


rule all:
    default_target: True
    input:
        get_final_outputs,


# a finished run exits when its work is done, not when Snakemake's last scheduler timer
# fires (up to 1 s later): see ccdflow.runlock.cancel_pending_timers
onsuccess:
    cancel_pending_timers()


onerror:
    cancel_pending_timers()
