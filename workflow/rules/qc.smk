# Quality control: per-night figures and per-series light-curve figures, as PNGs
# under qc/ and in the HTML of `snakemake --report report.html`.


rule qc_night:
    input:
        unpack(get_qc_night_inputs),
        inventory=ancient(RESULTS / "inventory.csv"),
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
        conditions=report(
            RESULTS / "qc" / "{night}" / "conditions.png",
            caption="../report/conditions.rst",
            category="Nights",
            subcategory="{night}",
            labels={"night": "{night}", "figure": "conditions"},
        ),
    params:
        masters=get_qc_masters,
        sample=get_qc_sample,
        frames=lambda wildcards: night_frames(wildcards.night)[
            ["frame", "filter", "mjd_obs"]
        ].to_dict("records"),
        summaries=get_qc_summaries,
    log:
        LOGS / "qc" / "{night}.log",
    # ready only when the night's last photometry ends, beside that night's light curves
    # and their figures: the longest of those last jobs (1.6 s on the demo night against
    # 0.4 + 0.6 s for a series' light curve and its figure) starts first, so the night
    # ends sooner (at -5 it waited for a light curve on the 28-frame night and ran alone
    # at the end, one core idle for 0.9 s)
    priority: 1
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/qc_night.py"


rule qc_lightcurves:
    input:
        table=RESULTS / "lightcurves" / "{series}.csv",
        directory=RESULTS / "lightcurves" / "{series}",
    output:
        figure=report(
            RESULTS / "qc" / "lightcurves" / "{series}.png",
            caption="../report/lightcurve.rst",
            category="Light curves",
            labels={"series": "{series}"},
        ),
    log:
        LOGS / "qc" / "lightcurves" / "{series}.log",
    # after the science jobs ready beside it: on the demo's 28-frame night, one series'
    # figure took a core while the other series' photometry waited 0.9 s for it
    priority: -5
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/qc_lightcurves.py"
