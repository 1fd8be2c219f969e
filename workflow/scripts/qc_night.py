"""Rule qc_night: masters and background-sample figures of one night."""

from ccdflow.io import job_logging
from ccdflow.qc import night_figures

job_logging(snakemake.log[0])
night_figures(
    night=snakemake.wildcards.night,
    masters=snakemake.params.masters,
    sample=snakemake.params.sample,
    out_masters=snakemake.output.masters,
    out_background=snakemake.output.background,
)
