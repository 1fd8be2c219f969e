"""ccdflow: tested helpers behind the ccdflow Snakemake workflow.

Each workflow rule calls one function of this package; the functions are
pure, keyword-only and never mutate their inputs.
"""

#: the package version (pyproject reads it from here; written into every product's
#: CCDFVERS)
__version__ = "0.1.0"

__all__ = ["__version__"]
