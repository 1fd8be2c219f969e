"""Rule illumination_model: smooth night-sky illumination correction per filter."""

from ccdflow.calibrate import make_illumination_model
from ccdflow.io import job_logging
from ccdflow.products import read_product, write_product

job_logging(snakemake.log[0])
inputs = snakemake.input
masters = {k: read_product(inputs[k]) for k in ("bias", "dark", "flat") if k in inputs.keys()}
cfg = snakemake.params.illumination
model = make_illumination_model(
    paths=inputs.raw,
    detector=snakemake.params.detector,
    bias=masters.get("bias"),
    dark=masters.get("dark"),
    flat=masters.get("flat"),
    order=cfg["order"],
    box_px=cfg["box_px"],
    min_frames=cfg["min_frames"],
)
write_product(snakemake.output.illumination, model, unit="")
