# Inventory: classify every raw file by its header (read-only).


checkpoint inventory_scan:
    input:
        raw_dir=str(RAW_DIR),
        raw=RAW_FILES,
        frames=config["frames"] or [],
    output:
        table=RESULTS / "inventory.csv",
    params:
        profile=PROFILE,
        frames=config["frames"],
        extensions=config["inventory"]["extensions"],
        # header cache keyed on path, size and mtime: reruns read changed files only
        cache=str(RESULTS / "cache" / "inventory-headers.json"),
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
