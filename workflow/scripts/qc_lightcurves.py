"""Rule qc_lightcurves: raw and differential light curves of one series."""

from ccdflow.io import job_logging
from ccdflow.qc import plot_lightcurves

job_logging(snakemake.log[0])
plot_lightcurves(
    table=snakemake.input.table,
    directory=snakemake.input.directory,
    out=snakemake.output.figure,
    title=f"light curves of {snakemake.wildcards.series}",
)
