"""Rule calibrate_science: one science frame to electrons with ERR and MASK."""

from ccdflow.calibrate import calibrate_science
from ccdflow.io import job_logging
from ccdflow.products import read_mask, read_product, write_product

job_logging(snakemake.log[0])
inputs = snakemake.input
kinds = ("bias", "dark", "flat", "illumination")
masters = {k: read_product(inputs[k]) for k in kinds if k in inputs.keys()}
product = calibrate_science(
    path=inputs.raw,
    detector=snakemake.params.detector,
    bias=masters.get("bias"),
    dark=masters.get("dark"),
    flat=masters.get("flat"),
    bad_pixel_mask=read_mask(inputs.bpm),
    illumination=masters.get("illumination"),
    params={"steps": snakemake.params.steps, "subtract_dark": snakemake.params.subtract_dark},
    master_names={k: str(inputs[k]) for k in (*kinds, "bpm") if k in inputs.keys()},
)
write_product(snakemake.output.calibrated, product, unit="electron")
