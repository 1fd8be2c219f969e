"""Rule qc_conditions: the conditions figure of one night, from its batch summaries."""

from ccdflow.io import job_logging
from ccdflow.qc import conditions_figure

job_logging(snakemake.log[0])
conditions_figure(
    night=snakemake.wildcards.night,
    frames=snakemake.params.frames,
    summaries=snakemake.params.summaries,
    out=snakemake.output.conditions,
)
