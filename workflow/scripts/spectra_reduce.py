"""Rule spectra_reduce: each spectroscopic frame of a batch calibrated, its sky fitted
along the warp, cosmic rays masked, the sky subtracted and the trace extracted."""

from ccdflow.io import job_logging
from ccdflow.longslit.chain import reduce_spectra_batch

job_logging(snakemake.log[0])
reduce_spectra_batch(
    frames=snakemake.params.frames,
    detector=snakemake.params.detector,
    steps=snakemake.params.steps,
    subtract_dark=snakemake.params.subtract_dark,
    flat_floor=snakemake.params.flat_floor,
    axis=snakemake.params.axis,
    trace=snakemake.params.trace,
    sky=snakemake.params.sky,
    extraction=snakemake.params.extraction,
    cosmics=snakemake.params.cosmics,
    out_dir=snakemake.output.spectra,
)
