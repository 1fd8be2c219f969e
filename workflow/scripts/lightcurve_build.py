"""Rule lightcurve_build: long table, per-source and differential light curves of a series,
and its QC figure."""

from ccdflow.batch import series_products
from ccdflow.io import job_logging
from ccdflow.photometry import build_lightcurves, read_photometry, read_reference, write_lightcurves
from ccdflow.qc import plot_lightcurve_result

job_logging(snakemake.log[0])
catalog, reference = read_reference(snakemake.input.reference)
# frames that an earlier stage could not make are named in every file's header
tables, absent = series_products(snakemake.params.tables)
absent.update(snakemake.params.rejected)
result = build_lightcurves(
    tables=[read_photometry(path) for path in tables.values()],
    catalog=catalog,
    aperture=snakemake.params.aperture,
    comparisons=snakemake.params.comparisons,
    listed_ids=reference.get("comparison_ids") or {},
)
header = [
    f"ccdflow light curves of series {snakemake.wildcards.series} ({snakemake.params.software})",
    f"reference frame {reference['reference_frame']}; {len(tables)} frames measured",
    reference.get("note", ""),
    *[f"frame {frame} not measured: {reason}" for frame, reason in absent.items()],
]
write_lightcurves(
    result, table=snakemake.output.table, directory=snakemake.output.directory, header=header
)
plot_lightcurve_result(
    result=result,
    out=snakemake.output.figure,
    title=f"light curves of {snakemake.wildcards.series}",
)
