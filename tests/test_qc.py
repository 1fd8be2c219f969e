"""QC figures: large frames are shown binned (the figures' workflow runs are in
tests/test_workflow.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from astropy.io import fits

from ccdflow.products import Product, write_product
from ccdflow.qc import _for_display


def test_display_binning_means_blocks_and_keeps_pixel_coordinates(rng):
    image = rng.normal(100.0, 5.0, (1300, 2500))
    image[:3, :3] = np.nan  # one whole block masked: stays NaN (blue)
    image[10, 10] = np.nan  # one pixel of a block: the block is shown masked (blue)
    image[1299, 2499] = np.nan  # the last, partial block (padded): masked too
    shown, factor, extent = _for_display(image, max_px=1024)
    assert factor == 3 and shown.shape == (434, 834)
    assert np.isnan(shown[0, 0]) and np.isnan(shown[3, 3]) and np.isnan(shown[433, 833])
    # every other block is the mean of its pixels, the partial edge blocks of theirs
    assert np.isnan(shown).sum() == 3
    assert shown[3, 4] == np.mean(image[9:12, 12:15])
    assert shown[433, 832] == np.mean(image[1299:1300, 2496:2499])
    assert extent == (-0.5, 2501.5, -0.5, 1301.5)
    small = rng.normal(0, 1, (1024, 600))
    same, one, _ = _for_display(small, max_px=1024)
    assert one == 1 and same is small


def test_masters_figure_of_a_4k_frame_stays_small(tmp_path, rng):
    # a 4096² master shown at full resolution cost matplotlib ~1 GB per panel (the QC
    # job peaked at 2.6 GB on a 4k² night); binned 4×4, the figure's process holds the
    # product it reads (SCI, ERR float32, MASK: 160 MB), its NaN-masked float64 copy
    # (128 MB) and the statistics' temporaries: measured in a fresh process
    data = rng.normal(1000.0, 3.0, (4096, 4096)).astype(np.float32)
    product = Product(data=data, error=np.full(data.shape, 3.0, np.float32),
                      mask=np.zeros(data.shape, np.uint16), header=fits.Header())
    path = tmp_path / "bias.fits"
    write_product(path, product, unit="electron")
    code = ("import sys; from ccdflow.qc import plot_masters; from ccdflow.io import "
            "peak_rss_mb; plot_masters(masters={'bias': sys.argv[1]}, out=sys.argv[2]); "
            "print(peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "m.png")],
                         capture_output=True, text=True, check=True)
    assert (tmp_path / "m.png").stat().st_size > 10_000
    assert float(out.stdout.split()[-1]) < 1000, out.stdout


def test_meridian_flips_are_found_where_the_rotation_crosses_90_degrees():
    # the light-curve figure marks each flip half-way between the frames on either
    # side: the frame's rotation from the reference jumps by 180° (the reference may
    # be on either pier side); an unaligned frame (NaN) is no flip, and a night
    # without the column has none
    import pandas as pd

    from ccdflow.photometry.lightcurves import meridian_flips
    from ccdflow.qc import flip_times

    light = pd.DataFrame({"frame": [f"f{k}" for k in range(1, 7)],
                          "mjd_utc": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                          "rotation_deg": [-179.9, 179.8, np.nan, 0.1, -0.2, 0.05]})
    assert flip_times(light) == [3.0]  # 2.0 (turned) and 4.0 (not): NaN left out
    assert meridian_flips(light) == [("f2", "f4", 3.0)]  # named in the light curve's note
    alt_az = light.assign(rotation_deg=[0.0, 20.0, 40.0, 60.0, 80.0, 85.0])
    assert flip_times(alt_az) == []
    assert flip_times(light.drop(columns="rotation_deg")) == []


def test_qc_figures_keep_their_layout_under_a_global_constrained_layout(tmp_path):
    # a library imported beside ccdflow (chromatic-lightcurves, under specsuite) sets
    # rcParams["figure.constrained_layout.use"] = True for the whole process: the QC
    # figures keep their fixed margins (a constrained figure ignores subplots_adjust and
    # warns; warnings are errors in this suite)
    import matplotlib
    import pandas as pd

    from ccdflow.qc import _NO_LAYOUT, _fixed_layout, _pyplot, plot_conditions

    table = pd.DataFrame({"frame": ["a", "b", "c"], "filter": ["V", "V", "R"],
                          "mjd": [60000.1, 60000.2, 60000.3],
                          "sky_median_e": [100.0, 110.0, 90.0], "fwhm_px": [3.0, 3.2, 2.9]})
    plt = _pyplot()
    with matplotlib.rc_context({"figure.constrained_layout.use": True}):
        plot_conditions(table=table, out=tmp_path / "conditions.png")
        fig, _ = plt.subplots(2, 1, figsize=(8, 6), layout=_NO_LAYOUT)
        _fixed_layout(fig, top_in=0.5, bottom_in=0.5, left_in=0.8, right_in=0.2)
    assert (tmp_path / "conditions.png").stat().st_size > 10_000
    assert fig.get_layout_engine() is None
    assert abs(fig.subplotpars.left - 0.8 / 8) < 1e-12
    assert abs(fig.subplotpars.top - (1 - 0.5 / 6)) < 1e-12
    plt.close(fig)
