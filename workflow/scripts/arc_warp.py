"""Rule arc_warp: the warp model x_eff(x, y) of a master arc, and its QC figure."""

from ccdflow.io import job_logging
from ccdflow.longslit.chain import make_warp

job_logging(snakemake.log[0])
make_warp(
    arc=snakemake.input.arc,
    axis=snakemake.params.axis,
    options=snakemake.params.warp,
    out=snakemake.output.warp,
    figure=snakemake.output.figure,
    title=f"warp {snakemake.wildcards.night} {snakemake.wildcards.group} "
    f"{snakemake.wildcards.filt}",
)
