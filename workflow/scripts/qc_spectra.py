"""Rule qc_spectra: one figure per spectroscopic frame of a batch (frame, sky model,
SKYSUB with the mask, 1-D spectrum)."""

from ccdflow.io import job_logging
from ccdflow.longslit.qc import plot_spectra_batch

job_logging(snakemake.log[0])
plot_spectra_batch(directory=snakemake.input.spectra, out_dir=snakemake.output.figures)
