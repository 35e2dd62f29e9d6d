"""What the sparse-gradient benchmark scripts share: the inner optimizers, a
random IndexedSlices gradient of a ROWS x WIDTH float32 table (INDICES random
rows, duplicates allowed), a traced step applying it to a fresh table, and
the interleaved timing of one such step per variant (normopt.bench.timing),
printed as median and quartiles per variant.
"""

import keras
import numpy as np
import tensorflow as tf

from normopt.bench import timing
from normopt.bench.report import format_spread

WIDTH, INDICES = 64, 2048
INNERS = {
    "sgd": lambda: keras.optimizers.SGD(1e-2),
    "sgd_momentum": lambda: keras.optimizers.SGD(1e-2, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "rmsprop": lambda: keras.optimizers.RMSprop(1e-3),
}


def random_gradient(rng, rows):
    """(values, int32 indices) of INDICES random rows of a `rows`-row table."""
    values = tf.constant(rng.normal(size=(INDICES, WIDTH)).astype("float32"))
    indices = tf.constant(rng.integers(0, rows, INDICES).astype("int32"))
    return values, indices


def table_step(opt, rows, rng):
    """(table, traced step): a fresh random `rows` x WIDTH table that `opt`
    is built for, and step(values, indices) applying that IndexedSlices
    gradient to it."""
    table = keras.Variable(rng.normal(size=(rows, WIDTH)).astype("float32"))
    opt.build([table])
    shape = tf.constant([rows, WIDTH])
    step = tf.function(
        lambda values, indices: opt.apply([tf.IndexedSlices(values, indices, shape)], [table]))
    return table, step


def time_steps(steps, values, indices, repeats, warmup, label):
    """{variant: timing summary} of steps[variant](values, indices), sampled
    interleaved; prints one line per variant, prefixed with `label`."""
    stats = timing.time_calls_interleaved(
        {name: (lambda step=step: step(values, indices)) for name, step in steps.items()},
        repeats, warmup)
    for name, summary in stats.items():
        print(f"{label} {name}: {format_spread(summary)}")
    return stats
