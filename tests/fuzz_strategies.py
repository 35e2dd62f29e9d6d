"""Hypothesis strategies for gradient lists: ranks 0-5, empty tensors, odd values."""

import numpy as np
from hypothesis import strategies as st

DTYPES = ["float16", "bfloat16", "float32", "float64"]
# Finite values whose squares and sums stay inside float32 (the accumulation
# dtype of 16/32-bit gradients), including +-0 and subnormals.
TAME = [0.0, -0.0, 1e-45, -1e-40, 5e-324, 1e-30, 1.0, -3.5, 1e15, -1e15]
EXTREME = [1e30, -1e30, np.inf, -np.inf, np.nan]
# Largest magnitude a tame value of each dtype takes (float16 tops out at 65504).
TAME_LIMIT = {"float16": 1e4, "bfloat16": 1e15, "float32": 1e15, "float64": 1e15}


@st.composite
def shapes(draw, max_elements=100_000):
    rank = draw(st.integers(0, 5))
    dims = []
    budget = max_elements
    for _ in range(rank):
        d = draw(st.integers(0, max(1, min(budget, 64 if rank > 2 else 4096))))
        dims.append(d)
        budget = max(1, budget // max(d, 1))
    return tuple(dims)


@st.composite
def gradient(draw, shape, dtype, extreme=False):
    n = int(np.prod(shape)) if shape else 1
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.RandomState(seed)
    scale = 10.0 ** draw(st.integers(-6, 6))
    values = rng.standard_normal(n) * scale
    specials = TAME + (EXTREME if extreme else [])
    picks = draw(st.lists(st.sampled_from(specials), max_size=min(n, 8)))
    if not extreme:
        limit = TAME_LIMIT[dtype]
        values = np.clip(values, -limit, limit)
        picks = [v for v in picks if abs(v) <= limit]
    for v in picks:
        values[rng.randint(0, n)] = v
    return values.reshape(shape)


@st.composite
def gradient_lists(draw, extreme=False, max_len=64, max_elements=100_000):
    dtype = draw(st.sampled_from(DTYPES))
    count = draw(st.integers(1, max_len))
    budget = max(1, max_elements // count)
    out = []
    for _ in range(count):
        if draw(st.booleans()) and draw(st.booleans()):
            shape = draw(st.sampled_from([(0,), (3, 0), (0, 2, 2)]))
        else:
            shape = draw(shapes(budget))
        out.append(draw(gradient(shape, dtype, extreme)))
    return dtype, out
