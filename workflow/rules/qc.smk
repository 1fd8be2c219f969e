# Quality control: per-night figures as PNGs under qc/ and in the HTML of
# `snakemake --report report.html` (a series' light-curve figure is drawn by its
# light-curve job, photometry.smk).


rule qc_night:
    input:
        masters=lambda wildcards: list(get_qc_masters(wildcards).values()),
        sample=get_qc_sample_batches,
    output:
        masters=report(
            RESULTS / "qc" / "{night}" / "masters.png",
            caption="../report/masters.rst",
            category="Nights",
            subcategory="{night}",
            labels={"night": "{night}", "figure": "masters"},
        ),
        background=report(
            RESULTS / "qc" / "{night}" / "background.png",
            caption="../report/background.rst",
            category="Nights",
            subcategory="{night}",
            labels={"night": "{night}", "figure": "background"},
        ),
    params:
        masters=get_qc_masters,
        sample=get_qc_sample,
    log:
        LOGS / "qc" / "{night}" / "night.log",
    # needs no photometry: drawn on a core the science jobs, light curves (-1) and masks
    # (-2) leave free while the night's photometry runs, before the conditions figure
    # (-4); at -5 it came last on the 28-frame night and ran alone for 2.4 s
    priority: -3
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/qc_night.py"


rule qc_conditions:
    input:
        batches=get_qc_summary_batches,
        inventory=ancient(RESULTS / "inventory.csv"),
    output:
        conditions=report(
            RESULTS / "qc" / "{night}" / "conditions.png",
            caption="../report/conditions.rst",
            category="Nights",
            subcategory="{night}",
            labels={"night": "{night}", "figure": "conditions"},
        ),
    params:
        frames=lambda wildcards: night_frames(wildcards.night)[
            ["frame", "filter", "mjd_obs"]
        ].to_dict("records"),
        summaries=get_qc_summaries,
    log:
        LOGS / "qc" / "{night}" / "conditions.log",
    # ready only when the night's last photometry ends, beside that night's last light
    # curves (each with its figure, the longer jobs: they go first)
    priority: -4
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/qc_conditions.py"
