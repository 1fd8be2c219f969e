# Photometry: a source list per series (field x filter), per-frame photometry
# CSVs (one job per batch of frames), light curves and differential photometry.


rule photometry_reference:
    input:
        unpack(get_reference_inputs),
        inventory=ancient(RESULTS / "inventory.csv"),
    output:
        reference=RESULTS / "photometry" / "reference" / "{series}.ecsv",
    params:
        sources=lambda wildcards: series_frame_paths(wildcards.series, "sources"),
        calibrated=lambda wildcards: series_frame_paths(wildcards.series, "calibrated"),
        targets=series_targets,
        reference_frame=lambda wildcards: PHOT["reference_frame"].get(wildcards.series),
        options={
            "min_sources": PHOT["min_reference_sources"],
            "max_sources": PHOT["max_sources"],
            "match_radius_px": PHOT["match_radius_px"],
            "snap_radius_px": PHOT["snap_radius_px"],
            "comparison_positions": PHOT["comparisons"]["positions"],
        },
        software=SOFTWARE,
    log:
        LOGS / "photometry" / "reference" / "{series}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/photometry_reference.py"


rule measure_photometry:
    input:
        unpack(get_photometry_inputs),
        inventory=ancient(RESULTS / "inventory.csv"),
        complete=stale_if_incomplete("photometry"),
    output:
        photometry=directory(batch_dir("photometry")),
    params:
        frames=get_batch_frame_names,
        options={
            "radii_px": PHOT["radii_px"],
            "radii_fwhm": PHOT["radii_fwhm"],
            "min_radius_px": PHOT["min_radius_px"],
            "annulus": PHOT["annulus"],
            "sky": PHOT["background"],
            "sky_sigma": PHOT["sky_sigma"],
            "sky_exclude_sources": PHOT["sky_exclude_sources"],
            "min_sky_pixels": PHOT["min_sky_pixels"],
            "map_box_px": config["background"]["box_size"],
            "max_shift_px": PHOT["max_shift_px"],
            "recentroid_min_snr": PHOT["recentroid_min_snr"],
            "psf_model": PHOT["psf_model"],
            "optimal": PHOT["optimal"],
            "max_repaired_fraction": PHOT["max_repaired_fraction"],
            "max_contamination": PHOT["max_contamination"],
            "subtract_neighbours": PHOT["subtract_neighbours"],
        },
        site=PROFILE.get("site"),
        times=get_batch_times,
        software=SOFTWARE,
    log:
        LOGS / "photometry" / "{night}" / "{batch}.log",
    group:
        "photometry"
    threads: 1
    resources:
        mem_mb=get_batch_mem_mb("photometry"),
        runtime=get_batch_runtime(minutes_per_frame=0.2),
    conda:
        "../../environment.yml"
    script:
        "../scripts/measure_photometry.py"


rule lightcurve_build:
    input:
        inventory=ancient(RESULTS / "inventory.csv"),
        photometry=get_lightcurve_inputs,
        reference=RESULTS / "photometry" / "reference" / "{series}.ecsv",
    output:
        table=RESULTS / "lightcurves" / "{series}.csv",
        directory=directory(RESULTS / "lightcurves" / "{series}"),
        # the series' QC figure, drawn by the job that made the light curves: a job of
        # its own cost a job start and a re-read (0.4-0.5 s of each series' last step)
        figure=report(
            RESULTS / "qc" / "lightcurves" / "{series}.png",
            caption="../report/lightcurve.rst",
            category="Light curves",
            labels={"series": "{series}"},
        ),
    params:
        tables=lambda wildcards: series_frame_paths(wildcards.series, "photometry"),
        rejected=lambda wildcards: series_rejected(wildcards.series),
        aperture=PHOT["lightcurve_aperture"],
        comparisons=PHOT["comparisons"],
        software=SOFTWARE,
    log:
        LOGS / "lightcurves" / "{series}.log",
    # after the science jobs ready beside it (a light curve ready early would take the
    # core a photometry batch waits for), before the masks and QC figures (-2 to -4): a
    # series' light curve left behind them met the night's last one and the conditions
    # figure at the end (one core idle for 1 s on the 12-frame night)
    priority: -1
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        "../../environment.yml"
    script:
        "../scripts/lightcurve_build.py"
