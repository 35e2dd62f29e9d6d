"""The chunk table of a multi-tensor launch (host side, NumPy only).

A list of N tensors with sizes n_t is cut into fixed-size chunks of
`chunk_size` elements; chunk c covers elements [start[c], start[c] + chunk_size)
of tensor `tensor[c]` (the last chunk of a tensor may be shorter). Empty
tensors get no chunk. `first[t]:first[t+1]` are the chunks of tensor t, in
element order, so a per-tensor finish pass merges them in a fixed order.

    chunks(t) = ceil(n_t / chunk_size)
    first     = [0, cumsum(chunks)]
    tensor[c] = t   for first[t] <= c < first[t+1]
    start[c]  = (c - first[t]) * chunk_size

The CUDA launchers build the same table with `csrc/cuda/chunk_table.h`; the
Numba and CuPy paths build it here. DEFAULT_CHUNK_SIZE is the GPU op's
(kDefaultChunkElems there; defined for Python in `_finalize`).
"""

import collections

import numpy as np

from normopt.kernels._finalize import DEFAULT_CHUNK_SIZE  # noqa: F401 - re-exported

ChunkTable = collections.namedtuple("ChunkTable", "tensor start first chunk_size")
ChunkTable.__doc__ = (
    "tensor: int32[C] owner of each chunk; start: int64[C] first element of "
    "each chunk in its tensor; first: int64[N+1] first chunk of each tensor; "
    "chunk_size: elements per full chunk."
)


def chunk_table(sizes, chunk_size=DEFAULT_CHUNK_SIZE):
    """The ChunkTable of tensors with element counts `sizes`."""
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if sizes.size and sizes.min() < 0:
        raise ValueError("tensor sizes must be >= 0")
    counts = (sizes + chunk_size - 1) // chunk_size
    first = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    tensor = np.repeat(np.arange(sizes.size, dtype=np.int32), counts)
    start = (np.arange(first[-1], dtype=np.int64) - first[tensor]) * chunk_size
    return ChunkTable(tensor, start, first, chunk_size)
