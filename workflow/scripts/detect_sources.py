"""Rule detect_sources: detections and FWHM of one calibrated frame."""

from ccdflow.io import job_logging
from ccdflow.series import frame_sources, load_frame, write_sources

job_logging(snakemake.log[0])
frame = load_frame(
    calibrated=snakemake.input.calibrated,
    background=snakemake.input.background,
    cosmics=snakemake.input.get("cosmics"),
)
sources, meta = frame_sources(
    data=frame.data,
    mask=frame.mask,
    background=frame.background,
    rms=frame.rms,
    **snakemake.params.detect,
)
provenance = {"software": snakemake.params.software, "inputs": list(map(str, snakemake.input))}
write_sources(
    snakemake.output.sources, sources, {**meta, **provenance}, frame=snakemake.wildcards.frame
)
