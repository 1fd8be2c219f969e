"""Rule detect_cosmics: astroscrappy cosmic-ray mask of one calibrated frame."""

from astropy.io import fits

from ccdflow.cosmics import detect_cosmic_rays, write_cosmics
from ccdflow.io import job_logging
from ccdflow.products import read_product

job_logging(snakemake.log[0])
product = read_product(snakemake.input.calibrated)
crmask = detect_cosmic_rays(
    data=product.data,
    error=product.error,
    mask=product.mask != 0,
    background=fits.getdata(snakemake.input.background, "BKG"),
    read_noise_e=product.header["RDNOISE"],
    saturation_e=product.header["SATURATE"],
    **snakemake.params.cosmics,
)
inputs = [snakemake.input.calibrated, snakemake.input.background]
write_cosmics(snakemake.output.cosmics, crmask, inputs=inputs, params=snakemake.params.cosmics)
