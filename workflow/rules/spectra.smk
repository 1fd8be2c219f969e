# Long-slit spectra: spectroscopic flats normalised along the dispersion, a master arc
# and its warp model per night and setup, then per batch of science frames the sky
# along the warp, cosmic rays, SKYSUB and 1-D extraction (ccdflow.longslit).


rule spectra_flat:
    input:
        unpack(get_lamp_inputs("specflat")),
        raw=get_master_raw("specflat"),
    output:
        master=MASTERS / "{night}" / "{group}" / "specflat_{filt}.fits",
    params:
        detector=PROFILE["detector"],
        combine=CAL["combine"].get("flat", {}),
        memory_limit_mb=CAL["memory_limit_mb"],
        min_frames=CAL["min_frames"]["flat"],
        flat={**CAL["flat"], "dispersion_axis": DISPERSION_AXIS},
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "specflat_{filt}.log",
    threads: master_threads("specflat")
    resources:
        mem_mb=CAL["memory_limit_mb"] + 1500,
        runtime=60,
    conda:
        "../../environment.yml"
    script:
        "../scripts/master_flat.py"


rule arc_combine:
    input:
        unpack(get_lamp_inputs("arc")),
        raw=get_master_raw("arc"),
    output:
        master=MASTERS / "{night}" / "{group}" / "arc_{filt}.fits",
    params:
        detector=PROFILE["detector"],
        combine=CAL["combine"].get("arc", {}),
        memory_limit_mb=CAL["memory_limit_mb"],
        min_frames=CAL["min_frames"]["arc"],
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "arc_{filt}.log",
    threads: 1
    resources:
        mem_mb=CAL["memory_limit_mb"] + 1500,
        runtime=30,
    conda:
        "../../environment.yml"
    script:
        "../scripts/arc_combine.py"


rule arc_warp:
    input:
        arc=MASTERS / "{night}" / "{group}" / "arc_{filt}.fits",
    output:
        warp=MASTERS / "{night}" / "{group}" / "warp_{filt}.fits",
        figure=report(
            RESULTS / "qc" / "{night}" / "warp_{group}_{filt}.png",
            caption="../report/warp.rst",
            category="Spectra",
            subcategory="{night}",
            labels={"night": "{night}", "figure": "warp {group} {filt}"},
        ),
    params:
        axis=DISPERSION_AXIS,
        warp=SPEC["warp"],
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "warp_{filt}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/arc_warp.py"


rule spectra_bpm:
    input:
        unpack(get_spectra_bpm_inputs),
    output:
        bpm=MASTERS / "{night}" / "{group}" / "specbpm_{filt}.fits",
    params:
        detector=PROFILE["detector"],
        origin=get_subframe_origin,
        software=SOFTWARE,
    log:
        LOGS / "masters" / "{night}" / "{group}" / "specbpm_{filt}.log",
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/bad_pixel_mask.py"


rule spectra_reduce:
    input:
        unpack(get_spectra_inputs),
        inventory=ancient(RESULTS / "inventory.csv"),
        complete=stale_if_incomplete("spectra", mode="spectroscopy"),
    output:
        spectra=directory(batch_dir("spectra")),
    params:
        frames=get_spectra_frames,
        detector=PROFILE["detector"],
        steps=STEPS,
        subtract_dark=SUBTRACT_DARK,
        flat_floor=CAL["flat"]["floor"],
        axis=DISPERSION_AXIS,
        trace=SPEC["trace"],
        sky=SPEC["sky"],
        extraction=SPEC["extraction"],
        cosmics=SPEC_COSMICS,
        software=SOFTWARE,
    log:
        LOGS / "spectra" / "{night}" / "{batch}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=get_batch_runtime(minutes_per_frame=0.5, mode="spectroscopy"),
    conda:
        "../../environment.yml"
    script:
        "../scripts/spectra_reduce.py"


rule qc_spectra:
    input:
        spectra=batch_dir("spectra"),
    output:
        figures=directory(RESULTS / "qc" / "spectra" / "{night}" / "{batch}"),
    log:
        LOGS / "qc" / "spectra" / "{night}" / "{batch}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../environment.yml"
    script:
        "../scripts/qc_spectra.py"
