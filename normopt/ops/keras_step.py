"""A wrapper step on any Keras backend, in keras.ops: the executor of a
`StepPlan` off TensorFlow (JAX, PyTorch), and the group loop every executor
shares.

- `Tensors`: how an executor reads gradients: a gradient's explicit values
  and element count, its norm (built-in or custom), the per-tensor norms of
  many gradients at once (`tensor_norms`: the one call per step for every
  per-tensor group, and for the recorded L2 norms the step did not take
  already; a backend may override it with a multi-tensor kernel, with the
  same numbers), the scales of many groups at once (`scaled`), a scale
  applied.
  `normopt.ops.tf_backend` subclasses it for tf.IndexedSlices.
- `scale_groups(plan, grads, variables, tensors)`: every scale group of a
  plan measured and its gradients scaled (`scale_math`): the group loop.
- The executor, under tf_backend's names and arguments: `step_context`,
  `unscale_all`, `replicas_in_sync`, `all_finite`, `step_if_finite`,
  `run_inner_step`, `norms_variable`, `record_norms`, `norms_value`.

Stateless steps (JAX): every value a step changes is a Keras variable the
step assigns: the model's, the inner optimizer's (slots, iterations), the
wrapper's `skipped_steps` and its recorded gradient norms, all in
`wrapper.variables`, so `optimizer.stateless_apply` under `jax.jit` returns
them. A step skipped for non-finite gradients is a functional cond: each
branch runs in its own StatelessScope and returns the new values of that
state, which are then assigned (`step_if_finite`); no Python value decides.

Nothing here imports TensorFlow.
"""

import numbers

import keras
import numpy as np
from keras import ops

from normopt import normalizations
from normopt.ops import scale_math, spectral_math, step_plan

# ------------------------------------------------------------ tensors


class Tensors:
    """How the group loop reads dense gradients (keras.ops, any backend)."""

    def values_and_count(self, grad):
        """(explicit values, dense element count or None) of a gradient."""
        return grad, None

    def unit_count(self, grad):
        """The size of the last axis for granularity "unit", or None (one
        unit) for a tensor of at most one axis."""
        shape = tuple(grad.shape)
        return int(shape[-1]) if len(shape) >= 2 else None

    def norm(self, grad, name, eps=None, per_unit=False):
        """norm(grad) by name (built-in or registered), in the accumulation
        dtype; with `per_unit` one built-in norm per index of the last axis."""
        fn = normalizations.custom_function(name)
        if fn is not None:
            return self.custom_norm(name, fn, grad)
        units = self.unit_count(grad) if per_unit else None
        values, total = self.values_and_count(grad)
        return scale_math.builtin_norm(values, name, eps, total, units)

    def tensor_norms(self, grads, name, eps=None):
        """[norm(g) for g in grads], one norm per whole tensor.

        The hook for "the norms of many tensors at once": a backend with a
        multi-tensor norm kernel overrides it (same numbers, accumulation
        and overflow rescue included) and falls back here for the rest.
        Built-in norms: `scale_math.builtin_norms` (one rescue cond for all).
        """
        if normalizations.custom_function(name) is not None:
            return [self.norm(g, name, eps) for g in grads]
        return scale_math.builtin_norms([self.values_and_count(g) for g in grads], name, eps)

    def custom_norm(self, name, fn, grad):
        """fn(grad) as a scalar of the accumulation dtype. A function that
        fails on this backend's tensors, or returns another framework's
        tensor (tf.* on JAX), is a TypeError naming the normalization."""
        backend = keras.backend.backend()
        try:
            norm = fn(grad)
        except (TypeError, ValueError, AttributeError, NotImplementedError) as exc:
            raise TypeError(
                f"The custom normalization {name!r} failed on a {backend} "
                f"gradient ({type(exc).__name__}: {_first_line(exc)}). {_KERAS_OPS_HINT}"
            ) from exc
        if not (ops.is_tensor(norm) or isinstance(norm, (numbers.Real, np.ndarray, np.generic))):
            raise TypeError(
                f"The custom normalization {name!r} returned a "
                f"{type(norm).__module__}.{type(norm).__name__}, not a {backend} "
                f"tensor. {_KERAS_OPS_HINT}"
            )
        norm = ops.convert_to_tensor(norm)
        if len(norm.shape) != 0:
            raise ValueError(
                f"The normalization {name!r} returned a tensor of shape "
                f"{tuple(norm.shape)} for a gradient of shape {tuple(grad.shape)}; "
                "a norm must be a scalar (one number per gradient tensor, e.g. "
                "keras.ops.sum(...))."
            )
        return ops.cast(norm, scale_math.accumulation_dtype(grad.dtype))

    def spectral_norm(self, grad, vector):
        """spectral_math.spectral_norm of a gradient (or weight) of two or
        more axes, from and into its persistent `vector` (a variable,
        assigned the new estimate). Measured on its explicit values: a
        sparse gradient's absent rows, zero, do not change the singular
        values."""
        values, _ = self.values_and_count(grad)
        norm, new_vector, _ = spectral_math.spectral_norm(values, ops.convert_to_tensor(vector))
        vector.assign(ops.cast(new_vector, vector.dtype))
        return norm

    def stack(self, values):
        """One tensor of `values` (tensors of one dtype and shape) stacked
        along a new first axis: `ops.stack`, which a backend may override
        with its own where Keras's costs (normopt.ops.torch_norms: Keras's
        torch stack flattens its list as a tree, ~50 us per tensor)."""
        return ops.stack(values)

    def unstack(self, vector):
        """[vector[0], vector[1], ...]: the entries of a vector."""
        return [vector[j] for j in range(int(vector.shape[0]))]

    def apply_scale(self, grad, scale, branch_large):
        return scale_math.apply_scale(grad, scale, branch_large)

    def scaled(self, plan, grads, norms, weight_norms):
        """`grads` with the members of each group of `plan` scaled by the
        group's norm (and weight norm): (pre, mult) = plan.scaling.scale(...),
        then `apply_scale`. The hook for "the scaling of many tensors at
        once" (normopt.ops.torch_norms: one `torch._foreach_mul`).

        The scales of scalar norms of one dtype are taken together, from
        the vector of those norms (the same elementwise math): a few ops
        per step rather than a few per tensor."""
        out = list(grads)
        by_dtype = scale_math.group_indices(
            keras.backend.standardize_dtype(norm.dtype)
            if len(norm.shape) == 0 and (w is None or len(w.shape) == 0) else None
            for norm, w in zip(norms, weight_norms))
        single = set()
        for ks in by_dtype.values():
            if len(ks) < 2:
                continue
            single.update(ks)
            weight = (None if weight_norms[ks[0]] is None
                      else self.stack([weight_norms[k] for k in ks]))
            pre, mult = plan.scaling.scale(self.stack([norms[k] for k in ks]), weight)
            for j, k in enumerate(ks):
                for i in plan.groups[k].members:
                    out[i] = self.apply_scale(grads[i], (pre[j], mult[j]),
                                              branch_large=not plan.xla)
        for k, (group, norm, weight_norm) in enumerate(zip(plan.groups, norms, weight_norms)):
            if k not in single:
                self.scale_group(plan, group, norm, weight_norm, grads, out)
        return out

    def scale_all(self, plan, grads, vectors, measured):
        """What `scale_groups` returns (and `measured` receives), taken in
        one go where a backend can, else None (the group loop runs): the
        hook for a plan of whole-tensor groups only
        (normopt.ops.torch_norms)."""
        return None

    def scale_group(self, plan, group, norm, weight_norm, grads, out):
        """out[i] = grads[i] scaled by the group's scale, for its members."""
        scale = plan.scaling.scale(norm, weight_norm)
        for i in group.members:
            out[i] = self.apply_scale(grads[i], scale, branch_large=not plan.xla)

    def weight(self, variable):
        """A variable's current value (adaptive clipping's norm(w))."""
        return ops.convert_to_tensor(variable)


def _first_line(exc):
    return (str(exc).strip().splitlines() or [""])[0]


_KERAS_OPS_HINT = (
    "Off TensorFlow a custom normalization must be written with keras.ops "
    "(e.g. lambda g: keras.ops.sqrt(keras.ops.sum(keras.ops.square(g))) + "
    "keras.config.epsilon()), which runs on every backend, not with tf.* "
    "or another framework's functions."
)

DENSE = Tensors()


def backend_tensors(backend=None):
    """The Tensors this executor uses on `backend` (default: Keras's): the
    place to plug in a backend's multi-tensor norms (`tensor_norms`).
    PyTorch: `torch._foreach_norm` (normopt.ops.torch_norms)."""
    if (backend or keras.backend.backend()) == "torch":
        from normopt.ops import torch_norms

        return torch_norms.FOREACH
    return DENSE


def scale_groups(plan, grads, variables, tensors=DENSE, vectors=None, measured=None):
    """The gradients with every scale group of `plan` scaled by its norm
    (the others as they are), in keras.ops math (`scale_math`).

    Per group: norm = norm(g) (per tensor, per unit, or merged over the
    group; each entry's own norm, `normalization_map`), for adaptive
    clipping also norm(w) of the variables, then g' = (g * pre) * mult with
    (pre, mult) = plan.scaling.scale(norm, ...). `vectors`: {index:
    (gradient's vector, weight's vector or None)} of the matrices the
    spectral norm measures (`Tensors.spectral_norm`). `measured`, a dict,
    receives {index: (gradient, its L2 norm without eps)} of the gradients
    measured by a whole-tensor l2 norm (`record_norms` reuses them).
    """
    scaling = plan.scaling
    vectors = vectors or {}
    whole = tensors.scale_all(plan, grads, vectors, measured)
    if whole is not None:
        return whole
    names = [plan.settings.normalization if g.merged else plan.entries[g.members[0]].norm
             for g in plan.groups]
    matrices = [vectors.get(g.members[0], (None, None)) for g in plan.groups]
    norms = _group_norms(plan.groups, grads, names, tensors, [m[0] for m in matrices],
                         measured)
    weight_norms = [None] * len(plan.groups)
    if scaling.reads_weights:
        weights = {i: tensors.weight(variables[i]) for g in plan.groups for i in g.members}
        weight_norms = _group_norms(plan.groups, weights, names, tensors,
                                    [m[1] for m in matrices])
    return tensors.scaled(plan, grads, norms, weight_norms)


def _group_norms(groups, values, names, tensors, vectors, measured=None):
    """The norm of each group of `values` (gradients or weights, by index)
    by its norm `names[k]`: the whole-tensor groups in one `tensor_norms`
    call per norm, a matrix with a persistent vector (`vectors[k]`) by its
    spectral norm. Whole-tensor l2 norms are measured without eps, eps
    added after (the same sum: sqrt(sum g^2) + eps), so that `measured`
    (a dict, when given) receives {index: (value, L2 norm)}."""
    norms = [None] * len(groups)
    whole = scale_math.group_indices(
        names[k] if not g.merged and g.axes is None and vectors[k] is None else None
        for k, g in enumerate(groups))
    for name, ks in whole.items():
        members = [values[groups[k].members[0]] for k in ks]
        l2 = (normalizations.custom_function(name) is None
              and normalizations.canonical_name(name) == "l2")
        got = tensors.tensor_norms(members, name, 0.0 if l2 else None)
        if l2:
            if measured is not None:
                measured.update((groups[k].members[0], (value, norm))
                                for k, value, norm in zip(ks, members, got))
            got = _plus_eps(got, tensors)
        for k, norm in zip(ks, got):
            norms[k] = norm
    for k, group in enumerate(groups):
        if vectors[k] is not None:
            norms[k] = tensors.spectral_norm(values[group.members[0]], vectors[k])
        elif group.merged:
            parts = [tensors.values_and_count(values[i]) for i in group.members]
            norms[k] = scale_math.merged_norm(parts, names[k], None)
        elif group.axes is not None:
            norms[k] = tensors.norm(values[group.members[0]], names[k], per_unit=True)
    return norms


def _plus_eps(norms, tensors=DENSE):
    """[n + epsilon for n in norms], added to the norms of one dtype as one
    vector (a compiled step then holds one add, not one per tensor)."""
    out = list(norms)
    for dtype, idx in scale_math.group_indices(n.dtype for n in norms).items():
        eps = scale_math.as_scalar(scale_math._eps(None), keras.backend.standardize_dtype(dtype))
        summed = tensors.stack([norms[i] for i in idx]) + eps
        for i, value in zip(idx, tensors.unstack(summed)):
            out[i] = value
    return out


# ------------------------------------------------------------ context


def gradient_facts(grad, variable, excluded):
    """The step_plan.Gradient of one dense pair (static shapes)."""
    shape = tuple(grad.shape)
    return step_plan.Gradient(
        name=variable.name,
        dtype=keras.backend.standardize_dtype(grad.dtype),
        variable_dtype=keras.backend.standardize_dtype(variable.dtype),
        empty=any(d == 0 for d in shape),
        overwrite=bool(getattr(variable, "overwrite_with_gradient", False)),
        excluded=excluded,
        rank=len(shape),
    )


def plan_key(grads, variables, excluded):
    """What the Context of a step over these pairs depends on, cheap to
    compare (step_plan.PlanCache): per pair the variable (its name, dtype
    and the backend are fixed), the gradient's dtype and shape, the
    exclusion and overwrite flags. The variables themselves are held in
    the key, so their ids stay theirs while it is kept; compared by
    identity (a tuple compares its items by `is` first, and `_Pinned`
    compares nothing else)."""
    try:
        return tuple(
            (_Pinned(v), g.dtype, tuple(g.shape), bool(x),
             bool(getattr(v, "overwrite_with_gradient", False)))
            for g, v, x in zip(grads, variables, excluded))
    except (AttributeError, TypeError):  # no static dtype or shape: plan anew
        return None


class _Pinned:
    """A variable in a key, equal only to itself."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Pinned) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


def unconverted(fn):
    """`fn` as it is (TensorFlow's executor keeps AutoGraph out of it)."""
    return fn


def step_context(grads=(), variables=(), excluded=(), in_step=True, compiled=True):
    """The step_plan.Context of a step on this Keras backend: no op library
    (it is TensorFlow's); on JAX every step is compiled by XLA or runs op
    by op, so large tensors take both products of a scale without a cond."""
    del compiled  # nothing to load: the backend alone decides
    backend = keras.backend.backend()
    return step_plan.Context(
        gradients=tuple(gradient_facts(g, v, x) for g, v, x in zip(grads, variables, excluded)),
        library_loaded=False,
        library_reason=step_plan.backend_reason(backend),
        in_step=in_step,
        xla=in_step and backend == "jax",
        backend=backend,
    )


# ---------------------------------------------------------- gradients


def unscale_all(grads, variables, factor):
    """Gradients of a loss scaled by `factor`, unscaled (a gradient that
    overwrites its variable is no gradient of the loss: it passes)."""
    return [
        g if getattr(v, "overwrite_with_gradient", False) else g / ops.cast(factor, g.dtype)
        for g, v in zip(grads, variables)
    ]


def replicas_in_sync():
    """1: under keras.distribution (JAX) a step's gradients are already
    those of the global batch (the sum XLA inserts), and no replica calls
    apply() on its own."""
    return 1


def all_finite(grads):
    """One boolean tensor: every element of every gradient is finite."""
    return ops.all(ops.stack([ops.all(ops.isfinite(g)) for g in grads]))


def step_if_finite(step, skip, grads, args, replicas=1, state=()):
    """step(*args) where every gradient is finite, else skip().

    JAX under jit: a functional cond. Each branch runs in a StatelessScope
    mapping `state` (every variable either may assign) to its current
    values and returns their new values; the chosen values are assigned
    after, so the step also runs inside `stateless_apply` under `jax.jit`.
    Elsewhere (JAX op by op, PyTorch: a Python branch on the value) the
    chosen branch assigns directly.
    """
    del replicas
    finite = all_finite(grads)
    if scale_math.has_value(finite):
        # a value now: one branch runs, assigning as it goes
        step(*args) if bool(finite) else skip()
        return
    state = list(state)
    current = [v.value for v in state]

    def run(fn, *fn_args):
        with keras.StatelessScope(state_mapping=list(zip(state, current))) as scope:
            fn(*fn_args)
        return [scope.get_current_value(v) for v in state]

    new = ops.cond(finite, lambda: run(step, *args), lambda: run(skip))
    for variable, value in zip(state, new):
        variable.assign(value)


# ---------------------------------------------------------- executor


def run_inner_step(inner, plan, grads, variables, replicas=1, tensors=None, vectors=None):
    """The gradients scaled by `scale_groups` (`vectors` as there), then the
    inner optimizer's own update. Returns the L2 norms scale_groups took of
    the gradients as given (`record_norms`' `measured`), or None."""
    del replicas
    factor = inner.loss_scale_factor
    measured = {}
    if factor is not None:
        # The inner optimizer unscales after us: measure the norm of the
        # true gradient, then hand back a scaled result.
        grads = [g / ops.cast(factor, g.dtype) for g in grads]
        measured = None  # norms of other tensors than the recorded ones
    out = scale_groups(plan, grads, variables, tensors or backend_tensors(), vectors,
                       measured)
    if factor is not None:
        out = [g * ops.cast(factor, g.dtype) for g in out]
    inner.apply(out, variables)
    return measured


# -------------------------------------------------------- recorded norms


def norms_variable(count):
    """The float32 vector of recorded gradient norms: a Keras variable (the
    wrapper lists it in `variables`, so a stateless step returns it, and
    saves it nowhere)."""
    return keras.Variable(
        initializer="zeros",
        shape=(count,),
        dtype="float32",
        trainable=False,
        name="gradient_norms",
        aggregation="only_first_replica",
    )


def record_norms(target, keys, grads, variables, measured, factor, key_of, tensors=None):
    """Assigns `target` the L2 norms of the raw gradients `grads` of
    `variables` in the order of `keys` (0 for a key with no gradient;
    `key_of(variable)` is a variable's key), divided by `factor` (the inner
    optimizer's loss scale factor) unless None. `measured`: {index in
    `grads`: (that gradient, its L2 norm)} of the norms the step took
    (`run_inner_step`), reused; the others are measured here."""
    if not keys:
        return
    grads = list(grads)
    measured = measured or {}
    known = {i: m[1] for i, m in measured.items() if i < len(grads) and m[0] is grads[i]}
    rest = [i for i in range(len(grads)) if i not in known]
    if rest:
        taken = (tensors or backend_tensors()).tensor_norms([grads[i] for i in rest], "l2",
                                                            eps=0.0)
        known.update(zip(rest, taken))
    tensors = tensors or backend_tensors()
    by_key = {key_of(v): known[i] for i, v in enumerate(variables)}
    norms = [by_key.get(key) for key in keys]
    # one vector per dtype of the norms (a step of one dtype: one stack,
    # one cast), divided and cast as a whole (the same elementwise math)
    by_dtype = scale_math.group_indices(None if norm is None else norm.dtype
                                        for norm in norms)
    vectors = []
    for idx in by_dtype.values():
        vector = tensors.stack([norms[j] for j in idx])
        if factor is not None:
            vector = vector / ops.cast(factor, vector.dtype)
        vectors.append((idx, ops.cast(vector, "float32")))
    if len(vectors) == 1 and len(vectors[0][0]) == len(keys):
        target.assign(vectors[0][1])
        return
    values = [ops.zeros([], "float32")] * len(keys)
    for idx, vector in vectors:
        for j, k in enumerate(idx):
            values[k] = vector[j]
    target.assign(tensors.stack(values))


def norms_value(target):
    """The recorded norms as a backend tensor (a copy: on PyTorch the
    variable's value is the Parameter itself)."""
    return ops.copy(target.value)
