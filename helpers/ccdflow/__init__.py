"""ccdflow: tested helpers behind the ccdflow Snakemake workflow.

Each workflow rule calls one function of this package; the functions are
pure, keyword-only and never mutate their inputs.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ccdflow")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
