# Per-frame image products, one job per batch of frames (see ccdflow.batch):
# background maps, cosmic-ray masks and source lists.


rule estimate_background:
    input:
        inventory=ancient(RESULTS / "inventory.csv"),
        complete=stale_if_incomplete("background"),
        calibrated=batch_dir("calibrated"),
    output:
        background=directory(batch_dir("background")),
    params:
        frames=get_batch_frame_names,
        background=config["background"],
        software=SOFTWARE,
    log:
        LOGS / "background" / "{night}" / "{batch}.log",
    group:
        "frames"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=get_batch_runtime(minutes_per_frame=0.5),
    conda:
        "../../environment.yml"
    script:
        "../scripts/estimate_background.py"


rule detect_cosmics:
    input:
        inventory=ancient(RESULTS / "inventory.csv"),
        complete=stale_if_incomplete("cosmics"),
        calibrated=batch_dir("calibrated"),
        background=batch_dir("background"),
    output:
        cosmics=directory(batch_dir("cosmics")),
    params:
        frames=get_batch_frame_names,
        cosmics={k: v for k, v in config["cosmics"].items() if k != "enabled"},
        software=SOFTWARE,
    log:
        LOGS / "cosmics" / "{night}" / "{batch}.log",
    group:
        "frames"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=get_batch_runtime(minutes_per_frame=1.0),
    conda:
        "../../environment.yml"
    script:
        "../scripts/detect_cosmics.py"


rule detect_sources:
    input:
        unpack(get_image_products),
        inventory=ancient(RESULTS / "inventory.csv"),
        complete=stale_if_incomplete("sources"),
    output:
        sources=directory(batch_dir("sources")),
    params:
        frames=get_batch_frame_names,
        detect={
            "nsigma": PHOT["detect_nsigma"],
            "npixels": PHOT["detect_npixels"],
            "shape_limits": PHOT["star_shape"],
        },
        software=SOFTWARE,
    log:
        LOGS / "sources" / "{night}" / "{batch}.log",
    group:
        "frames"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=get_batch_runtime(minutes_per_frame=0.2),
    conda:
        "../../environment.yml"
    script:
        "../scripts/detect_sources.py"
