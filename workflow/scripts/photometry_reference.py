"""Rule photometry_reference: reference frame and source list of one series."""

from ccdflow.batch import read_frame_metas
from ccdflow.io import job_logging
from ccdflow.photometry import build_reference, write_reference

job_logging(snakemake.log[0])
catalog, meta = build_reference(
    sources=snakemake.params.sources,
    calibrated=snakemake.params.calibrated,
    targets=snakemake.params.targets,
    reference_frame=snakemake.params.reference_frame,
    metas=read_frame_metas(snakemake.input.sources),
    **snakemake.params.options,
)
provenance = {"series": snakemake.wildcards.series, "software": snakemake.params.software,
              "targets": list(snakemake.params.targets), **snakemake.params.options}
write_reference(snakemake.output.reference, catalog, {**meta, **provenance})
