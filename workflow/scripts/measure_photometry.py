"""Rule measure_photometry: every source of the series' list measured in one frame."""

from ccdflow.io import job_logging, write_table
from ccdflow.series import (
    frame_photometry,
    load_frame,
    read_reference,
    read_sources,
    unit_comments,
)

job_logging(snakemake.log[0])
frame = load_frame(
    calibrated=snakemake.input.calibrated,
    background=snakemake.input.background,
    cosmics=snakemake.input.get("cosmics"),
)
sources, meta = read_sources(snakemake.input.sources)
catalog, reference = read_reference(snakemake.input.reference)
table, notes = frame_photometry(
    data=frame.data, error=frame.error, mask=frame.mask, header=frame.header,
    background=frame.background, background_rms=frame.rms, source_mask=frame.source_mask,
    sources=sources, meta=meta,
    catalog=catalog, reference_meta=reference, site=snakemake.params.site,
    frame=snakemake.wildcards.frame, **snakemake.params.options,
)
comments = [
    f"ccdflow photometry of {snakemake.wildcards.frame} ({snakemake.params.software})",
    f"source list: {snakemake.input.reference} (reference frame {reference['reference_frame']})",
    f"parameters: {snakemake.params.options}",
    *notes,
    *unit_comments(list(table.columns)),
]
write_table(table, snakemake.output.photometry, comments=comments)
