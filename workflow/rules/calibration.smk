# Masters (bias, dark, flat), bad-pixel masks and the detector report (the night's
# calibration plan is written by the inventory job). Science frames are calibrated by
# the per-frame chain (frames.smk).


rule master_bias:
    input:
        raw=get_master_raw("bias"),
    output:
        master=MASTERS / "{night}" / "{group}" / "bias.fits",
    params:
        detector=PROFILE["detector"],
        combine=CAL["combine"].get("bias", {}),
        memory_limit_mb=CAL["memory_limit_mb"],
        min_frames=CAL["min_frames"]["bias"],
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "bias.log",
    threads: master_threads("bias")
    resources:
        mem_mb=CAL["memory_limit_mb"] + 1500,
        runtime=60,
    conda:
        "../../environment.yml"
    script:
        "../scripts/master_bias.py"


rule master_dark:
    input:
        unpack(get_dark_inputs),
        raw=get_master_raw("dark"),
    output:
        master=MASTERS / "{night}" / "{group}" / "dark.fits",
    params:
        detector=PROFILE["detector"],
        combine=CAL["combine"].get("dark", {}),
        memory_limit_mb=CAL["memory_limit_mb"],
        min_frames=CAL["min_frames"]["dark"],
        hot_pixel=CAL["hot_pixel"],
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "dark.log",
    threads: master_threads("dark")
    resources:
        mem_mb=CAL["memory_limit_mb"] + 1500,
        runtime=60,
    conda:
        "../../environment.yml"
    script:
        "../scripts/master_dark.py"


rule master_flat:
    input:
        unpack(get_flat_inputs),
        raw=get_master_raw("flat"),
    output:
        master=MASTERS / "{night}" / "{group}" / "flat_{filt}.fits",
    params:
        detector=PROFILE["detector"],
        combine=CAL["combine"].get("flat", {}),
        memory_limit_mb=CAL["memory_limit_mb"],
        min_frames=CAL["min_frames"]["flat"],
        flat=CAL["flat"],
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "flat_{filt}.log",
    threads: master_threads("flat")
    resources:
        mem_mb=CAL["memory_limit_mb"] + 1500,
        runtime=60,
    conda:
        "../../environment.yml"
    script:
        "../scripts/master_flat.py"


rule master_cut:
    input:
        master=get_cut_master,
    output:
        master=MASTERS / "{night}" / "{group}" / "subframe" / "{name}.fits",
    params:
        cut=get_cut_geometry,
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "subframe" / "{name}.log",
    wildcard_constraints:
        name=r"(bias|dark|flat_[A-Za-z0-9._+-]+)",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/master_cut.py"


rule hot_pixel_map:
    input:
        unpack(get_hotpix_inputs),
    output:
        hot_pixels=MASTERS / "{night}" / "{group}" / "hotpix.fits",
    params:
        detector=PROFILE["detector"],
        options={k: v for k, v in config["hot_pixels"].items() if k != "enabled"},
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "hotpix.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../environment.yml"
    script:
        "../scripts/hot_pixel_map.py"


rule bad_pixel_mask:
    input:
        unpack(get_bpm_inputs),
    output:
        bpm=MASTERS / "{night}" / "{group}" / "bpm_{filt}.fits",
    params:
        detector=PROFILE["detector"],
        origin=get_subframe_origin,
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "bpm_{filt}.log",
    # a product: the frames jobs make the same mask from the same files instead of
    # waiting for it (a job start between the flats and the frames), so it goes after
    # the science jobs and light curves ready beside it, before the QC figures
    priority: -2
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/bad_pixel_mask.py"


rule detector_report:
    input:
        unpack(get_detector_inputs),
        inventory=ancient(RESULTS / "inventory.csv"),
    output:
        report=RESULTS / "reports" / "{night}" / "{group}" / "detector.csv",
    params:
        detector=PROFILE["detector"],
        flat_filters=get_detector_flat_filters,
        warn_fraction=CAL["gain_check_fraction"],
        software=SOFTWARE,
    log:
        LOGS / "reports" / "{night}" / "{group}" / "detector.log",
    # off the critical path: the masters and frames go first
    priority: -10
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/detector_report.py"


rule illumination_model:
    input:
        unpack(get_illumination_inputs),
    output:
        illumination=MASTERS / "{night}" / "{group}" / "illum_{filt}.fits",
    params:
        detector=PROFILE["detector"],
        illumination=ILLUM,
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "illum_{filt}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../environment.yml"
    script:
        "../scripts/illumination_model.py"
