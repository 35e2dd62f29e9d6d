"""`normopt bench`: norms per layer size and whole optimizer steps.

    cases.py            layer sizes and the variable sets of the step benchmark
    timing.py           the repeat timer and the memory-bandwidth probe
    environment.py      machine and library versions recorded with every run
    norm_impls.py       the norm implementations (pure TF, fused op, Numba, GPU)
    norms_bench.py      time per norm call, per size and implementation
    step_bench.py       time per optimizer step, per variable set and path
    report.py           terminal tables, JSON and the PNG plot
    cli.py              argument parsing and the run

Every implementation is optional at run time: one that cannot run here is
listed as unavailable with the reason, never an error.
"""
