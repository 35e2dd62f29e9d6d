"""The inner optimizers the benchmarks time, by name (one table for all).

`fit` probes every candidate for the fused path; `step` times those with a
fused rule (STEP_INNERS). Bytes moved per parameter by one step are counted
from the optimizer's slots: read g, read and write w and each slot
(12 + 8 * slots bytes of float32), plus one more read of g for the norms
when normalized. (A trust-ratio rule such as Lamb's reads w, its slots and g
once more in its first pass; the count is still that of the step itself.)
"""

import numpy as np


def _sgd_momentum(keras):
    return keras.optimizers.SGD(1e-2, momentum=0.9)


def _sgd_nesterov(keras):
    return keras.optimizers.SGD(1e-2, momentum=0.9, nesterov=True)


# name -> factory(keras) of an inner optimizer. fit_bench.fused_inners()
# probes the whole list; add a candidate here when a fused rule is planned.
INNER_CANDIDATES = {
    "sgd_momentum": _sgd_momentum,
    "adam": lambda keras: keras.optimizers.Adam(1e-3),
    "adamw": lambda keras: keras.optimizers.AdamW(1e-3, weight_decay=4e-3),
    "sgd_nesterov": _sgd_nesterov,
    "nadam": lambda keras: keras.optimizers.Nadam(1e-3),
    "rmsprop": lambda keras: keras.optimizers.RMSprop(1e-3),
    "adagrad": lambda keras: keras.optimizers.Adagrad(1e-2),
    "adamax": lambda keras: keras.optimizers.Adamax(1e-3),
    "lion": lambda keras: keras.optimizers.Lion(1e-4),
    "adadelta": lambda keras: keras.optimizers.Adadelta(1.0),
    "ftrl": lambda keras: keras.optimizers.Ftrl(1e-2),
    "lamb": lambda keras: keras.optimizers.Lamb(1e-3),
    "schedule_free_adamw": lambda keras: keras.optimizers.ScheduleFreeAdamW(2.5e-3),
}
# The candidates with a fused rule, one per rule family (the step benchmark's
# choice; tests/test_bench_cli.py checks each takes the fused path).
STEP_INNERS = ("adam", "sgd_nesterov", "adamw", "rmsprop", "adagrad", "adamax", "nadam",
               "adadelta", "ftrl", "lion", "lamb", "schedule_free_adamw")


def make_inner(name):
    import keras

    if name not in INNER_CANDIDATES:
        raise KeyError(
            f"unknown inner optimizer {name!r}; known: {', '.join(INNER_CANDIDATES)}"
        )
    return INNER_CANDIDATES[name](keras)


def slot_count(name):
    """Slot variables per model variable of inner optimizer `name`."""
    import keras

    opt = make_inner(name)
    opt.build([keras.Variable(np.zeros(2, np.float32))])
    return sum(1 for v in opt.variables if tuple(v.shape) == (2,))


def bytes_per_param(name, normalized):
    """float32 bytes one step moves per parameter (see the module docstring)."""
    return 12 + 8 * slot_count(name) + (4 if normalized else 0)
