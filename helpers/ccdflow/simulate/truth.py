"""The truth written beside a simulated night, read back (:func:`load_truth`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from .scene import sky_model


@dataclass
class Truth:
    """The truth written next to a simulated night (see the module docstring)."""

    meta: dict
    bias_pattern_adu: np.ndarray
    dark_rate_e_per_s: np.ndarray
    flats: dict[str, np.ndarray]
    row_drift_adu: np.ndarray
    frames: pd.DataFrame
    stars: pd.DataFrame
    star_frames: pd.DataFrame
    cosmics: pd.DataFrame
    raw_dir: Path = field(default_factory=Path)

    def sky(self, frame: str) -> np.ndarray:
        """True sky in electrons (before the flat) for ``frame``."""
        row = self.frames.set_index("frame").loc[frame]
        return sky_model(
            level_e=row["sky_level_e"], gx=row["sky_gx"], gy=row["sky_gy"],
            shape=self.bias_pattern_adu.shape,
        )

    def cosmic_mask(self, frame: str) -> np.ndarray:
        """Boolean mask of the pixels hit by a cosmic ray in ``frame``."""
        mask = np.zeros(self.bias_pattern_adu.shape, dtype=bool)
        hits = self.cosmics[self.cosmics["frame"] == frame]
        mask[hits["y"].to_numpy(), hits["x"].to_numpy()] = True
        return mask


def _read_image(path: Path) -> np.ndarray:
    return fits.getdata(path).astype(np.float64)


def load_truth(night_dir: str | Path) -> Truth:
    """Read the truth written by :func:`simulate_night` (``night_dir`` holds raw/ and truth/)."""
    night_dir = Path(night_dir)
    tdir = night_dir / "truth"
    if not (tdir / "truth.json").is_file():
        raise FileNotFoundError(f"no simulator truth in {tdir} (truth.json missing)")
    meta = json.loads((tdir / "truth.json").read_text())
    return Truth(
        meta=meta,
        bias_pattern_adu=_read_image(tdir / "bias_pattern_adu.fits"),
        dark_rate_e_per_s=_read_image(tdir / "dark_rate_e_per_s.fits"),
        flats={f: _read_image(tdir / f"flat_{f}.fits") for f in meta["spec"]["filters"]},
        row_drift_adu=_read_image(tdir / "row_drift_adu.fits"),
        frames=pd.read_csv(tdir / "frames.csv", keep_default_na=False, na_values=[""]),
        stars=pd.read_csv(tdir / "stars.csv"),
        star_frames=pd.read_csv(tdir / "star_frames.csv"),
        cosmics=pd.read_csv(tdir / "cosmics.csv"),
        raw_dir=night_dir / "raw",
    )


