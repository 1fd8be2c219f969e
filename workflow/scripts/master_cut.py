"""Rule master_cut: a full-frame master cut to a subframe's pixels."""

from ccdflow.calibrate import cut_master
from ccdflow.io import job_logging

job_logging(snakemake.log[0])
cut = snakemake.params.cut
cut_master(
    master_path=snakemake.input.master,
    output_path=snakemake.output.master,
    origin_xy=cut["origin_xy"],
    raw_shape=cut["raw_shape"],
    subframe_shape=cut["subframe_shape"],
)
