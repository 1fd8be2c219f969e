"""Rule demo_simulate: write the simulated demo night (raw frames + truth)."""

from pathlib import Path

from ccdflow.io import job_logging
from ccdflow.simulate import NightSpec, simulate_night

job_logging(snakemake.log[0])
demo = snakemake.params.demo
spec = NightSpec(
    nx=demo["size"],
    ny=demo["size"],
    science=(("V", demo["n_science"]), ("R", 4)),
    seed=demo["seed"],
    n_stars=demo["n_stars"],
)
simulate_night(out_dir=Path(snakemake.output.raw).parent, spec=spec)
