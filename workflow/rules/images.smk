# Per-frame image products: background maps and cosmic-ray masks.


rule estimate_background:
    input:
        calibrated=RESULTS / "calibrated" / "{night}" / "{frame}.fits",
    output:
        background=RESULTS / "background" / "{night}" / "{frame}.fits",
    params:
        background=config["background"],
        software=SOFTWARE,
    log:
        LOGS / "background" / "{night}" / "{frame}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/estimate_background.py"


rule detect_cosmics:
    input:
        calibrated=RESULTS / "calibrated" / "{night}" / "{frame}.fits",
        background=RESULTS / "background" / "{night}" / "{frame}.fits",
    output:
        cosmics=RESULTS / "cosmics" / "{night}" / "{frame}.fits",
    params:
        cosmics={k: v for k, v in config["cosmics"].items() if k != "enabled"},
        software=SOFTWARE,
    log:
        LOGS / "cosmics" / "{night}" / "{frame}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        "../../environment.yml"
    script:
        "../scripts/detect_cosmics.py"
