"""Rule detector_report: gain (and read noise) measured from bias and flat pairs, or from
consecutive science frames on a night without them."""

from ccdflow.detector import check_gain_report
from ccdflow.io import job_logging, write_record

job_logging(snakemake.log[0])
row = check_gain_report(
    bias_paths=snakemake.input.bias,
    flat_filters=snakemake.params.flat_filters,
    detector=snakemake.params.detector,
    warn_fraction=snakemake.params.warn_fraction,
    series_paths=snakemake.input.series,
)
write_record(
    {"night": snakemake.wildcards.night, "group": snakemake.wildcards.group, **row},
    snakemake.output.report,
)
