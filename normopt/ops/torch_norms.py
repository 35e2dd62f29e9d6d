"""The per-tensor norms of many gradients in one `torch._foreach_norm` call
(Keras's torch backend): the torch override of `keras_step.Tensors.tensor_norms`.

    l1   sum |g| + eps        ord 1
    l2   sqrt(sum g^2) + eps  ord 2
    max  max |g| + eps        ord inf

returned in the accumulation dtype of `scale_math` (float32 for 16-bit and
float32 gradients, float64 for float64) and reduced in float64
(`norm_vector`). Torch's CPU norm kernels accumulate each reduction
serially, in the dtype they are given: one float32 call over a 4096 x 4096
tensor is off by 4e-3 (l1) and 8e-4 (l2) relative, and float32 chunks of
2^14 still by up to 3e-6, against 5e-9 for float64 chunks and 1e-7 for the
keras.ops path's pairwise float32 sums (measured, torch 2.14). Hence:

- l2 of a 16/32-bit tensor above ROWS_FROM elements (`row_norms`): the
  float32 norms of its rows of ROW elements (a short, vectorized float32
  sum each), then the float64 root of the sum of their squares: 1e-11 to
  2e-9 relative before the float32 rounding of the result on 4096^2,
  1024^2 and 784 x 128 Gaussian tensors, and 2.5 times faster than float64
  chunks (float64 conversion is what costs). Where such a norm is not
  finite, or below sqrt(n) 2^-48 (where squares that underflow float32
  could matter), it is taken again in float64 chunks.
- the smaller ones in one `_foreach_norm` in float64;
- l1, and float64 tensors: `chunked_norms`, in two calls per accumulation
  dtype: one over every chunk of CHUNK elements of every gradient, one
  over each gradient's chunk norms;
- max is exact in any dtype and reduced in its own.

So these are the keras.ops path's norms rounded better, not worse. A
step's recorded L2 norms right after its l2 normalization reuse that pass
(`measured`, or `ForeachTensors._chunked` under skip_nonfinite, where they
are taken first). Overflow: where a norm of finite elements is not finite,
the keras.ops norm with its rescue pass replaces it
(`scale_math.builtin_norm`); whether any is not finite is one host read per
call, where the keras.ops path reads one per tensor.

A plan of whole-tensor groups only, of one built-in norm among these three,
normalizing or clipping (`ForeachTensors.scale_all`, which keras_step's
`scale_groups` asks first) takes its whole step here: the norms of each
accumulation dtype as one vector (`norm_vector`), its scales from it
(`plan.scaling.scale`, i.e. `scale_math.scale_from_norm`; that every norm
is finite and every pre is 1 is the step's one host read, else the group
loop below runs), then one multiply
(`_scaled_all`). What it decides of a plan is kept with the plan.

The scaling of the gradients of whole-tensor groups (`scaled`): the scales
of all of them at once (`plan.scaling.scale` on the vector of their norms,
the same elementwise math as one scalar at a time), then, where every
`pre` is 1 (one host read), g' = g * mult for all in one
`torch._foreach_mul` per gradient dtype, the product formed in the scale's
dtype and cast back as `scale_math.apply_scale` does, and written into the
memory of the same plan's last step (`_buffers_of`: one gradient-sized
buffer per whole-tensor gradient, kept between steps); otherwise, and for
unit-wise and global groups, `keras_step.Tensors.scaled`.

The multiply writes into the memory of the same plan's last step only for
tensors of KEEP_FROM elements or more (`_buffers_of`), where fresh pages
cost more than the list form of `_foreach_mul` writing into given outputs;
below, that form costs more than a fresh product (0.9 against 0.5 ms for
the MLP set's 121 small tensors, one thread).

`foreach_norms(False)` (a context manager) turns all this off for a block:
the benchmark times the wrapper with and without them in one process.
"""

import contextlib
import math
import operator
import weakref

import torch

from normopt import normalizations
from normopt.ops import keras_step, scale_math

ORDS = {"l1": 1.0, "l2": 2.0, "max": math.inf}
# Elements per reduction of the first call: a 4096 x 4096 tensor is 1024
# chunks (with 2^12 the list's length costs more than the float64 sums).
CHUNK = 1 << 14
# l2 of a 16/32-bit tensor above ROWS_FROM elements: float32 norms of rows
# of ROW elements, summed in float64 (`row_norms`); up to ROWS_FROM, one
# float64 reduction (a serial float64 sum of 2^16 squares: 1e-11 relative).
ROWS_FROM = 1 << 16
ROW = 256
# Scaled gradients of at least KEEP_FROM elements are written into kept
# buffers (`_buffers_of`).
KEEP_FROM = 1 << 16
_ACC = {torch.float64: torch.float64}
_state = {"enabled": True}


@contextlib.contextmanager
def foreach_norms(enabled):
    """Within the block, ForeachTensors uses `_foreach_norm` only if `enabled`."""
    before = _state["enabled"]
    _state["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _state["enabled"] = before


def chunked_norms(tensors, ord_, dtype):
    """[norm(t, ord_) for t in tensors] in `dtype`: the norm of each
    tensor's chunk norms (ord 1: their sum, 2: the root of their sum of
    squares, inf: their maximum), chunks of CHUNK elements, the sums
    accumulated in float64."""
    wide = dtype if ord_ == math.inf else torch.float64
    views, counts = [], []
    for t in tensors:
        if t.numel() <= CHUNK:
            views.append(t)
            counts.append(1)
        else:
            parts = t.reshape(-1).split(CHUNK)
            views.extend(parts)
            counts.append(len(parts))
    partial = torch._foreach_norm(views, ord_, dtype=wide)
    norms, multi, k = [], [], 0
    for count in counts:
        if count == 1:
            norms.append(partial[k])
        else:
            multi.append((len(norms), torch.stack(partial[k:k + count])))
            norms.append(None)
        k += count
    if multi:
        for (i, _), n in zip(multi, torch._foreach_norm([m for _, m in multi], ord_)):
            norms[i] = n
    if wide == dtype:
        return norms
    return list(torch.stack(norms).to(dtype).unbind())


def row_norms(tensor):
    """The l2 norm of a 16/32-bit tensor as a float64 scalar: the float32
    norms of its rows of ROW elements (the last row the rest), then the
    float64 root of the sum of their squares."""
    flat = tensor.reshape(-1)
    rows = flat.numel() // ROW
    parts = torch.linalg.vector_norm(flat[:rows * ROW].view(rows, ROW), 2, dim=1,
                                     dtype=torch.float32)
    if rows * ROW < flat.numel():
        tail = torch.linalg.vector_norm(flat[rows * ROW:], 2, dtype=torch.float32)
        parts = torch.cat([parts, tail.reshape(1)])
    return torch.linalg.vector_norm(parts, 2, dtype=torch.float64)


def norm_vector(tensors, ord_, acc):
    """The vector of norm(t, ord_) of `tensors` (dense, non-empty, of one
    accumulation dtype `acc`), in `acc`, no eps; see the module docstring
    for how each is reduced."""
    if ord_ != 2.0 or acc is not torch.float32:
        return torch.stack(chunked_norms(tensors, ord_, acc))
    norms = [None] * len(tensors)
    rowwise = [j for j, t in enumerate(tensors) if t.numel() > ROWS_FROM]
    if rowwise:
        floors = [math.sqrt(tensors[j].numel()) * 2.0 ** -48 for j in rowwise]
        wide = torch.stack([row_norms(tensors[j]) for j in rowwise])
        for j, n in zip(rowwise, wide.unbind()):
            norms[j] = n
        least = torch.tensor(floors, dtype=wide.dtype)
        if not bool((torch.isfinite(wide) & (wide >= least)).all()):
            # float32 squares that overflow, or underflow where it matters
            for j, n, floor in zip(rowwise, wide.tolist(), floors):
                if not (math.isfinite(n) and n >= floor):
                    norms[j] = chunked_norms([tensors[j]], ord_, torch.float64)[0]
    small = [j for j in range(len(tensors)) if norms[j] is None]
    if small:
        measured = torch._foreach_norm([tensors[j] for j in small], ord_, dtype=torch.float64)
        for j, n in zip(small, measured):
            norms[j] = n
    return torch.stack(norms).to(acc)


def _accumulation(tensor):
    return _ACC.get(tensor.dtype, torch.float32)


class ForeachTensors(keras_step.Tensors):
    """keras_step.Tensors with the l1/l2/max norms of whole tensors from
    `norm_vector`, and a whole step of such norms at once (`scale_all`)."""

    def __init__(self):
        self._last = None
        self._buffers = (None, {})
        self._whole = (None, None)
        self._unbound = (None, ())

    def _chunked(self, tensors, ord_, acc):
        """norm_vector(...), or that of the call just before when it had
        the same tensors, unchanged since (their `_version`), and the same
        ord: under skip_nonfinite a step's recorded L2 norms, taken first,
        serve its l2 normalization. Kept for that one next call only, and
        dropped once a step has scaled its gradients (`_scaled_step`)."""
        key = (ord_, acc, tuple((id(t), t._version) for t in tensors))
        last, self._last = self._last, None
        if last is not None and last[0] == key:
            return last[2]
        norms = norm_vector(tensors, ord_, acc)
        self._last = (key, tensors, norms)  # the tensors: their ids stay theirs
        return norms

    def tensor_norms(self, grads, name, eps=None):
        name = normalizations.canonical_name(name)
        ord_ = ORDS.get(name)
        if (ord_ is None or not _state["enabled"]
                or normalizations.custom_function(name) is not None):
            return super().tensor_norms(grads, name, eps)
        eps = scale_math._eps(eps)
        norms = [None] * len(grads)
        groups = scale_math.group_indices(
            _accumulation(g) if _dense(g) and g.numel() > 0 else None for g in grads)
        for i, g in enumerate(grads):
            if not (_dense(g) and g.numel() > 0):
                norms[i] = self.norm(g, name, eps)
        for acc, members in groups.items():
            vector = self._chunked([grads[i] for i in members], ord_, acc)
            if eps:
                # one add on their vector: the same sums, without a kernel
                # per norm
                vector = vector + eps
            for i, n in zip(members, self.unstack(vector)):
                norms[i] = n
            self._rescue(grads, members, norms, name, eps)
        return norms

    def stack(self, values):
        """torch.stack(values); the vector itself where `values` are the
        entries `unstack` gave last (record_norms stacks the l2 norms a
        step took)."""
        vector, parts = self._unbound
        if len(values) == len(parts) and all(map(operator.is_, values, parts)):
            return vector
        return torch.stack(values)

    def unstack(self, vector):
        parts = vector.unbind()
        self._unbound = (vector, parts)
        return list(parts)

    def scale_all(self, plan, grads, vectors, measured):
        """scale_groups for a plan of whole-tensor groups of dense
        gradients, one built-in norm of ORDS, normalizing or clipping
        (`_whole_of`): per accumulation dtype the norms as one vector, the
        scales from it (`_scales`), one multiply; None where the plan is
        another, or a norm is not finite or a scale below the smallest
        normal (then the group loop)."""
        if not _state["enabled"] or vectors or not all(map(_dense, grads)):
            return None
        whole = self._whole_of(plan, grads)
        if whole is None:
            return None
        ord_, by_acc = whole
        out = list(grads)
        taken = []
        for acc, members in by_acc:
            tensors = [grads[i] for i in members]
            norms = self._chunked(tensors, ord_, acc)
            mult, fine = _scales(plan.scaling, norms)
            taken.append((members, tensors, norms, mult, fine))
        if not bool(torch.stack([t[4] for t in taken]).all()
                    if len(taken) > 1 else taken[0][4]):
            return None
        self._last = None  # this step's norms are taken
        buffers = self._buffers_of(plan)
        for members, tensors, norms, mult, _ in taken:
            if measured is not None and ord_ == 2.0:
                measured.update(zip(members, zip(tensors, self.unstack(norms))))
            kept = buffers.setdefault(mult.dtype, {})
            for i, g in zip(members, _scaled_all(tensors, list(mult.unbind()), mult.dtype,
                                                 kept)):
                out[i] = g
        return out

    def _whole_of(self, plan, grads):
        """(ord, ((accumulation dtype, member indices), ...)) of a plan
        `scale_all` takes, else None; decided once per plan (a plan is
        reused only for gradients of the same dtypes and shapes:
        step_plan.PlanCache)."""
        ref, whole = self._whole
        if ref is not None and ref() is plan:
            return whole
        whole = _whole_plan(plan, grads)
        self._whole = (weakref.ref(plan), whole)
        return whole

    def scaled(self, plan, grads, norms, weight_norms):
        self._last = None  # this step's norms are taken
        whole = [k for k, group in enumerate(plan.groups)
                 if len(group.members) == 1 and not group.merged and group.axes is None
                 and _dense(grads[group.members[0]])]
        if not _state["enabled"] or not whole:
            return super().scaled(plan, grads, norms, weight_norms)
        out, rest = list(grads), set(range(len(plan.groups))) - set(whole)
        buffers = self._buffers_of(plan)
        by_dtype = scale_math.group_indices(None if k in rest else norms[k].dtype
                                            for k in range(len(norms)))
        for ks in by_dtype.values():
            norm = torch.stack([norms[k] for k in ks])
            weight_norm = (None if weight_norms[ks[0]] is None
                           else torch.stack([weight_norms[k] for k in ks]))
            pre, mult = plan.scaling.scale(norm, weight_norm)
            if not bool(torch.all(pre == 1)):
                rest.update(ks)
                continue
            members = [plan.groups[k].members[0] for k in ks]
            kept = buffers.setdefault(mult.dtype, {})
            for i, g in zip(members, _scaled_all([grads[i] for i in members],
                                                 list(mult.unbind()), mult.dtype, kept)):
                out[i] = g
        for k in sorted(rest):
            self.scale_group(plan, plan.groups[k], norms[k], weight_norms[k], grads, out)
        return out

    def _buffers_of(self, plan):
        """The scaled gradients' memory of the last step of `plan`, reused
        by its next step ({mult dtype: {index: tensor}}): a step of a
        reused plan (step_plan.PlanCache) allocates no new gradients, whose
        fresh pages cost more than the multiply on large tensors. Kept for
        the one plan of the last step, while that plan lives; a buffer is
        dead between steps (the inner optimizer reads it within its step)."""
        ref, buffers = self._buffers
        if ref is not None and ref() is plan:
            return buffers
        buffers = {}

        def drop(dead, self=self):
            if self._buffers[0] is dead:
                self._buffers = (None, {})

        self._buffers = (weakref.ref(plan, drop), buffers)
        return buffers

    def _rescue(self, grads, members, norms, name, eps):
        """The keras.ops norm (with its overflow rescue) of every member
        whose `_foreach_norm` is not finite: one host read for all."""
        stacked = torch.stack([norms[i] for i in members])
        if bool(torch.isfinite(stacked).all()):
            return
        for i in members:
            if not bool(torch.isfinite(norms[i])):
                norms[i] = scale_math.builtin_norm(grads[i], name, eps)


def _scales(scaling, norms):
    """(mult, fine) of a vector of norms without eps: (pre, mult) =
    scaling.scale(norms + eps) (scale_math.scale_from_norm), and `fine` (a
    boolean tensor) where every norm is finite and every pre is 1 (no mult
    below the smallest normal), so that g' = g * mult."""
    pre, mult = scaling.scale(norms + scale_math._eps(None))
    return mult, torch.isfinite(norms).all() & (pre == 1).all()


def _whole_plan(plan, grads):
    """(ord, ((accumulation dtype, member indices), ...)) where every group
    of `plan` is one whole, non-empty tensor of `grads`, all of one norm
    of ORDS, normalized or clipped; else None."""
    if type(plan.scaling) not in (scale_math.Normalize, scale_math.Clip) or not plan.groups:
        return None
    if any(len(g.members) != 1 or g.merged or g.axes is not None for g in plan.groups):
        return None
    entries = [plan.entries[g.members[0]] for g in plan.groups]
    names = {e.norm for e in entries}
    members = [g.members[0] for g in plan.groups]
    if len(names) != 1 or any(grads[i].numel() == 0 for i in members):
        return None
    (name,) = names
    if normalizations.custom_function(name) is not None:
        return None
    ord_ = ORDS.get(normalizations.canonical_name(name))
    if ord_ is None:
        return None
    by_acc = scale_math.group_indices(_accumulation(grads[i]) for i in members)
    return ord_, tuple((acc, [members[j] for j in js]) for acc, js in by_acc.items())


def _dense(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_sparse


def _foreach_mul_out(xs, mults, out):
    """out[i] = xs[i] * mults[i], in one call (torch._foreach_mul writing
    into `out`)."""
    torch.ops.aten._foreach_mul.List_out(xs, mults, out=out)


def _scaled_all(grads, mults, dtype, buffers=None):
    """[g * m] formed in `dtype` and cast back to each g's dtype. A product
    in g's own dtype of at least KEEP_FROM elements is written into
    `buffers[k]` (k: g's index here), kept from the step before where it
    fits (`buffers`, a dict, receives the new ones); the others are fresh,
    in one `torch._foreach_mul`."""
    buffers = {} if buffers is None else buffers
    out = [None] * len(grads)
    for gdtype, idx in scale_math.group_indices(g.dtype for g in grads).items():
        same = gdtype == dtype
        xs = [grads[i] if same else grads[i].to(dtype) for i in idx]
        kept = [j for j, x in enumerate(xs) if same and x.numel() >= KEEP_FROM]
        ys = [None] * len(xs)
        if kept:
            for j in kept:
                ys[j] = _buffer(buffers, idx[j], xs[j])
            _foreach_mul_out([xs[j] for j in kept], [mults[idx[j]] for j in kept],
                             [ys[j] for j in kept])
        fresh = [j for j in range(len(xs)) if ys[j] is None]
        if fresh:
            products = torch._foreach_mul([xs[j] for j in fresh], [mults[idx[j]] for j in fresh])
            for j, y in zip(fresh, products):
                ys[j] = y
        for i, y in zip(idx, ys):
            out[i] = y if same else y.to(gdtype)
    return out


def _buffer(buffers, k, x):
    """buffers[k] where it has x's shape, dtype and device, else a new one
    kept there."""
    kept = buffers.get(k)
    if kept is None or kept.shape != x.shape or kept.dtype != x.dtype or kept.device != x.device:
        kept = buffers[k] = torch.empty_like(x)
    return kept


FOREACH = ForeachTensors()
