# The demo night: simulated raw frames plus truth, made only when raw_dir is
# the demo location and does not exist yet.


if IS_DEMO:

    rule demo_simulate:
        output:
            raw=directory(DEMO_DIR / "raw"),
            truth=directory(DEMO_DIR / "truth"),
        params:
            demo=config["demo"],
            software=SOFTWARE,
        log:
            LOGS / "demo_simulate.log",
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            "../../environment.yml"
        script:
            "../scripts/demo_simulate.py"
