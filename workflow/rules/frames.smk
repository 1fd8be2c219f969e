# The per-frame chain, one job per batch of frames (see ccdflow.batch, ccdflow.chain):
# calibration, background map with its detection, cosmic-ray mask and source list,
# each frame read once; every stage writes its own batch directory and summary.


rule frames_reduce:
    input:
        unpack(get_calibrate_inputs),
        inventory=ancient(RESULTS / "inventory.csv"),
        complete=stale_if_incomplete(*CHAIN_STAGES),
    output:
        **{stage: directory(batch_dir(stage)) for stage in CHAIN_STAGES},
    params:
        frames=get_calibrate_frames,
        detector=PROFILE["detector"],
        steps=STEPS,
        subtract_dark=SUBTRACT_DARK,
        flat_floor=CAL["flat"]["floor"],
        background=config["background"],
        cosmics=COSMICS_OPTIONS,
        detect={
            "nsigma": PHOT["detect_nsigma"],
            "npixels": PHOT["detect_npixels"],
            "shape_limits": PHOT["star_shape"],
            "mask_streaks": PHOT["mask_streaks"],
        },
        software=SOFTWARE,
    log:
        LOGS / "frames" / "{night}" / "{batch}.log",
    group:
        "frames"
    threads: 1
    resources:
        mem_mb=get_batch_mem_mb("frames"),
        runtime=get_batch_runtime(minutes_per_frame=0.5),
    conda:
        "../../environment.yml"
    script:
        "../scripts/frames_reduce.py"
