"""The per-tensor norms of many gradients in one `torch._foreach_norm` call
(Keras's torch backend): the torch override of `keras_step.Tensors.tensor_norms`.

    l1   sum |g| + eps        ord 1
    l2   sqrt(sum g^2) + eps  ord 2
    max  max |g| + eps        ord inf

returned in the accumulation dtype of `scale_math` (float32 for 16-bit and
float32 gradients, float64 for float64) and reduced in float64, in two calls
per accumulation dtype (`chunked_norms`): one over every chunk of CHUNK
elements of every gradient, one over each gradient's chunk norms. Torch's
CPU norm kernels accumulate each reduction serially, in the dtype they are
given: one float32 call over a 4096 x 4096 tensor is off by 4e-3 (l1) and
8e-4 (l2) relative, and float32 chunks still by up to 3e-6, against 5e-9
for float64 chunks and 1e-7 for the keras.ops path's pairwise float32 sums
(measured, torch 2.14). So these are the keras.ops path's norms rounded
better, not worse; max is exact in any dtype and reduced in its own. A
step's recorded L2 norms right after its l2 normalization reuse that pass
(`ForeachTensors._chunked`). Overflow: where a norm of finite elements is
not finite, the keras.ops norm with its rescue
pass replaces it (`scale_math.builtin_norm`); whether any is not finite is
one host read per call, where the keras.ops path reads one per tensor.

The scaling of the gradients of whole-tensor groups (`scaled`): the scales
of all of them at once (`plan.scaling.scale` on the vector of their norms,
the same elementwise math as one scalar at a time), then, where every
`pre` is 1 (one host read), g' = g * mult for all in one
`torch._foreach_mul` per gradient dtype, the product formed in the scale's
dtype and cast back as `scale_math.apply_scale` does, and written into the
memory of the same plan's last step (`_buffers_of`: one gradient-sized
buffer per whole-tensor gradient, kept between steps); otherwise, and for
unit-wise and global groups, `keras_step.Tensors.scaled`.

`foreach_norms(False)` (a context manager) turns both off for a block: the
benchmark times the wrapper with and without them in one process.
"""

import contextlib
import math
import weakref

import torch

from normopt import normalizations
from normopt.ops import keras_step, scale_math

ORDS = {"l1": 1.0, "l2": 2.0, "max": math.inf}
# Elements per reduction of the first call: a 4096 x 4096 tensor is 1024
# chunks (with 2^12 the list's length costs more than the float64 sums).
CHUNK = 1 << 14
_ACC = {"float64": torch.float64}
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


def _accumulation(tensor):
    return _ACC.get(str(tensor.dtype).replace("torch.", ""), torch.float32)


class ForeachTensors(keras_step.Tensors):
    """keras_step.Tensors with the l1/l2/max norms of whole tensors from
    `torch._foreach_norm`."""

    def __init__(self):
        self._last = None
        self._buffers = (None, {})

    def _chunked(self, tensors, ord_, acc):
        """chunked_norms(...), or the norms of the call just before when it
        had the same tensors, unchanged since (their `_version`), and the
        same ord: a step's recorded L2 norms after its l2 normalization's
        cost no second pass. Kept for that one next call only."""
        key = (ord_, acc, tuple((id(t), t._version) for t in tensors))
        last, self._last = self._last, None
        if last is not None and last[0] == key:
            return last[2]
        norms = chunked_norms(tensors, ord_, acc)
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
        groups = {}
        for i, g in enumerate(grads):
            if _dense(g) and g.numel() > 0:
                groups.setdefault(_accumulation(g), []).append(i)
            else:
                norms[i] = self.norm(g, name, eps)
        for acc, members in groups.items():
            measured = self._chunked([grads[i] for i in members], ord_, acc)
            if eps:
                # one add on their vector: the same sums, without a kernel
                # per norm
                measured = list((torch.stack(measured) + eps).unbind())
            for i, n in zip(members, measured):
                norms[i] = n
            self._rescue(grads, members, norms, name, eps)
        return norms

    def stack(self, values):
        return torch.stack(values)

    def unstack(self, vector):
        return list(vector.unbind())

    def scaled(self, plan, grads, norms, weight_norms):
        whole = [k for k, group in enumerate(plan.groups)
                 if len(group.members) == 1 and not group.merged and group.axes is None
                 and _dense(grads[group.members[0]])]
        if not _state["enabled"] or not whole:
            return super().scaled(plan, grads, norms, weight_norms)
        out, rest = list(grads), set(range(len(plan.groups))) - set(whole)
        buffers = self._buffers_of(plan)
        by_dtype = {}
        for k in whole:
            by_dtype.setdefault(norms[k].dtype, []).append(k)
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


def _dense(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_sparse


def _foreach_mul_out(xs, mults, out):
    """out[i] = xs[i] * mults[i], in one call (torch._foreach_mul writing
    into `out`)."""
    torch.ops.aten._foreach_mul.List_out(xs, mults, out=out)


def _scaled_all(grads, mults, dtype, buffers=None):
    """[g * m] formed in `dtype` and cast back to each g's dtype. A product
    in g's own dtype is written into `buffers[k]` (k: g's index here), kept
    from the step before where it fits (`buffers`, a dict, receives the
    new ones)."""
    buffers = {} if buffers is None else buffers
    out = [None] * len(grads)
    by_dtype = {}
    for i, g in enumerate(grads):
        by_dtype.setdefault(g.dtype, []).append(i)
    for gdtype, idx in by_dtype.items():
        xs = [grads[i] if gdtype == dtype else grads[i].to(dtype) for i in idx]
        ys = []
        for i, x in zip(idx, xs):
            kept = buffers.get(i) if gdtype == dtype else None
            if kept is None or kept.shape != x.shape or kept.dtype != x.dtype or (
                    kept.device != x.device):
                kept = torch.empty_like(x)
                if gdtype == dtype:
                    buffers[i] = kept
            ys.append(kept)
        _foreach_mul_out(xs, [mults[i] for i in idx], ys)
        for i, y in zip(idx, ys):
            out[i] = y if gdtype == dtype else y.to(gdtype)
    return out


FOREACH = ForeachTensors()
