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

A list with sparse gradients (`sparse_chunk_table`) cuts each dense chunk
of a sparse tensor further at its row boundaries, so that each chunk lies in
one present row or in one run of absent rows, and adds where each chunk's
gradient is: `grad[2c]` its first element in the gradient's array (-1: the
chunk's gradient is zeros, which no array holds), `grad[2c + 1]` its element
count; and `zeros[t]`, the zeros of tensor t that its array does not hold.

The CUDA launchers build the same table with `csrc/cuda/chunk_table.h`; the
Numba and CuPy paths build it here. DEFAULT_CHUNK_SIZE is the GPU op's
(kDefaultChunkElems there; defined for Python in `_finalize`).
"""

import collections

import numpy as np

from normopt.kernels._finalize import DEFAULT_CHUNK_SIZE  # noqa: F401 - re-exported

ChunkTable = collections.namedtuple("ChunkTable", "tensor start first chunk_size grad zeros",
                                    defaults=(None, None))
ChunkTable.__doc__ = (
    "tensor: int32[C] owner of each chunk; start: int64[C] first element of "
    "each chunk in its tensor; first: int64[N+1] first chunk of each tensor; "
    "chunk_size: elements per full chunk; grad: int64[2C] (gradient offset or "
    "-1, count) and zeros: int64[N], or None when every gradient is dense."
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


def sorted_rows(indices, rows):
    """(present, value_row) of a sparse gradient whose value row k is dense
    row indices[k]: the listed rows in increasing order and where each is
    held. ValueError for a row outside [0, rows) or listed twice."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= rows):
        raise ValueError(f"sparse gradient rows must lie in [0, {rows}), got "
                         f"{indices.min()}..{indices.max()}")
    value_row = np.argsort(indices, kind="stable")
    present = indices[value_row]
    if present.size > 1 and (np.diff(present) == 0).any():
        raise ValueError("a sparse gradient lists a row twice (sum duplicate "
                         "indices first)")
    return present, value_row


def sparse_chunk_table(sizes, chunk_size, sparse):
    """The ChunkTable (with `grad` and `zeros`) of tensors of dense element
    counts `sizes`, where sparse[t] = (row_elems, indices) makes gradient t
    sparse: its array holds len(indices) rows of row_elems elements, row k
    being dense row indices[k] (any order, each at most once)."""
    dense = chunk_table(sizes, chunk_size)
    chunk_size = dense.chunk_size
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    tensor, start, grad = [], [], []
    first = np.zeros(sizes.size + 1, dtype=np.int64)
    zeros = np.zeros(sizes.size, dtype=np.int64)

    def add(t, at, offset, count):
        tensor.append(t)
        start.append(at)
        grad.extend((offset, count))

    for t, size in enumerate(sizes.tolist()):
        width, indices = sparse.get(t, (0, ()))
        width = int(width)
        if width > 0:
            present, value_row = sorted_rows(indices, size // width)
            zeros[t] = size - present.size * width
            present, value_row = present.tolist(), value_row.tolist()
        k = 0  # the first present row that ends after element e
        for lo in range(0, size, chunk_size):
            end = min(size, lo + chunk_size)
            if width <= 0:
                add(t, lo, lo, end - lo)
                continue
            e = lo
            while e < end:
                while k < len(present) and (present[k] + 1) * width <= e:
                    k += 1
                nxt = present[k] * width if k < len(present) else end
                if e < nxt:  # absent rows up to the next present one
                    piece = min(end, nxt) - e
                    add(t, e, -1, piece)
                else:
                    piece = min(end, nxt + width) - e
                    add(t, e, value_row[k] * width + (e - nxt), piece)
                e += piece
        first[t + 1] = len(tensor)
    return ChunkTable(np.array(tensor, np.int32), np.array(start, np.int64), first,
                      chunk_size, np.array(grad, np.int64), zeros)
