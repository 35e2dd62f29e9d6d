"""`normopt bench`: norms per layer size and whole optimizer steps.

    cases.py            layer sizes and the variable sets of the step benchmark
    timing.py           the repeat timer and the memory-bandwidth probe
    busy.py             whether the machine was busy during a run, and which
                        figures not to trust (marked ! in the tables)
    environment.py      machine and library versions recorded with every run
    norm_impls.py       the norm implementations (pure TF, fused op, Numba, GPU)
    norms_bench.py      time per norm call, per size and implementation
    step_bench.py       time per optimizer step, per variable set and path
    backend_step.py     the same step on Keras's JAX and torch backends, each
                        in a child process (plain vs normalized)
    fit_models.py       the reference models of the fit benchmark, synthetic data
    fit_bench.py        time per model.fit step, per model, inner optimizer and
                        variant (plain / normalized pure TF / normalized fused)
    fit_report.py       the fit benchmark's table and PNG
    report.py           terminal tables, JSON and the PNG plot
    cli.py              argument parsing and the run

Every implementation is optional at run time: one that cannot run here is
listed as unavailable with the reason, never an error.

`normopt.bench.fit(model, inners=None, ...)` times model.fit steps of your own
model (see fit_bench.fit). It is loaded on first use, so importing
normopt.bench imports no TensorFlow.
"""

__all__ = ["fit"]


def __getattr__(name):
    if name == "fit":
        from normopt.bench.fit_bench import fit

        return fit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
