# Inventory: classify every raw file by its header (read-only), and the calibration
# plan that follows from it: which masters calibrate each science frame.


checkpoint inventory_scan:
    input:
        raw_dir=str(RAW_DIR),
        raw=RAW_FILES,
        frames=config["frames"] or [],
    output:
        table=RESULTS / "inventory.csv",
        # written by this job, not a job of its own: a plan job (~0.03 s of work after
        # a 0.3 s start) took the core a two-thread master dark was waiting for
        plan=RESULTS / "calibration_plan.csv",
    params:
        profile=PROFILE,
        frames=config["frames"],
        extensions=config["inventory"]["extensions"],
        # header cache keyed on path, size and mtime: reruns read changed files only
        cache=str(RESULTS / "cache" / "inventory-headers.json"),
        # the plan the workflow itself follows (common.smk: state())
        plan=plan_options(),
        software=SOFTWARE,
    log:
        LOGS / "inventory.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../../environment.yml"
    script:
        "../scripts/inventory.py"
