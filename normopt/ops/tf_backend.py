"""Everything of a wrapper step that is TensorFlow's alone.

- the step's context for `step_plan` (`step_context`): op library, XLA,
  tf.distribute strategy, devices, and each gradient's facts;
- sparse gradients (tf.IndexedSlices): deduplication, their norms as the
  dense tensors they stand for, their forms for the op (`op_gradient`);
- tf.distribute: the cross-replica sum, each replica's share for the inner
  optimizer, the skip-if-not-finite step in cross-replica context;
- the executors of a `StepPlan`: `run_fused_update` (the compiled op does
  the whole step), `run_inner_step` (the gradients scaled by the compiled
  scale op or by `scale_math`, then the inner optimizer's own update);
- the recorded gradient norms.

The inner optimizer's own slot variables and iteration counter hold all
state, so a model can switch between paths (or be saved under one and
loaded under another) at any step.

A sparse gradient takes the fused path under every fused rule. The op (its
CPU and its GPU kernel) reads its deduplicated rows as the dense tensor they
stand for, without building it, and under SGD and Adagrad, whose Keras
updates write only the indexed rows, updates only those
(keras_adapters.INDEXED_SLICES). At granularity "unit" a rule that moves
every row gets it scattered once into that dense tensor (`dense_gradient`);
SGD and Adagrad there, and an inner optimizer without a fused rule, keep
the pure-TF path, which keeps it sparse.
"""

import keras
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

from normopt import normalizations
from normopt.ops import keras_adapters, keras_step, paths, scale_math, step_plan

# ------------------------------------------------------------ context


def in_xla_context():
    """True while tracing a function that XLA will compile (jit_compile=True)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


def strategy_name(strategy):
    """The name under which the user created `strategy` (tf.distribute's
    public name, e.g. MultiWorkerMirroredStrategy for TF's internal
    CollectiveAllReduceStrategy), else its class name."""
    for cls in type(strategy).__mro__:
        for module in (tf.distribute, tf.distribute.experimental):
            for name in dir(module):
                if name.endswith("Strategy") and getattr(module, name) is cls:
                    return name
    return type(strategy).__name__


def _kernel_devices():
    """Device types the loaded op library has kernels for, and may use."""
    from normopt.ops import library

    devices = set(library.registered_kernels()["NormoptApply"])
    if not library.gpu_ops_enabled():
        devices.discard("GPU")
    return frozenset(devices)


def _why_no_gpu_kernels():
    """Why the loaded op library's GPU kernels are not used (for a reason)."""
    from normopt.ops import build, library

    if "GPU" in library.registered_kernels()["NormoptApply"]:
        return (f"its GPU kernels need {library.GPU_OPT_IN_ENV}=1: they are not "
                "yet validated on a GPU")
    summary = build.cuda_summary(library.details().get("built_for"))
    return f"it has no GPU kernels: CUDA kernels {summary or 'not recorded'}"


def tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (`.value`), or a tf
    variable itself (tf_keras's, whose `value` is a method)."""
    value = getattr(variable, "value", variable)
    return variable if callable(value) else value


def device_type(variable):
    """'GPU', 'CPU', ... of the device a (Keras or tf) variable lives on."""
    device = getattr(tf_variable(variable), "device", "") or ""
    return tf.DeviceSpec.from_string(device).device_type or "CPU"


def gradient_facts(grad, variable, excluded):
    """The step_plan.Gradient of one pair."""
    values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
    empty = isinstance(grad, tf.Tensor) and grad.shape.num_elements() == 0
    return step_plan.Gradient(
        name=variable.name,
        dtype=values.dtype.name,
        variable_dtype=tf.as_dtype(variable.dtype).name,
        sparse=isinstance(grad, tf.IndexedSlices),
        empty=empty,
        overwrite=bool(getattr(variable, "overwrite_with_gradient", False)),
        excluded=excluded,
        rank=values.shape.rank,
        device=device_type(variable),
    )


def plan_key(grads, variables, excluded):
    """None: every step is planned (step_plan.PlanCache); the path here
    reads the op library, the strategy, XLA and the inner optimizer."""
    return None


def step_context(grads=(), variables=(), excluded=(), in_step=True, compiled=True):
    """The step_plan.Context of a step over `grads` (the pairs with a
    gradient); in_step=False: at construction; compiled=False (fused=False):
    the op library is not consulted (nor loaded)."""
    from normopt.ops import library

    status = library.status() if compiled else {"loaded": False, "reason": "fused=False"}
    loaded = bool(status["loaded"])
    strategy = None
    fused_strategy = cross_replica = False
    if in_step and tf.distribute.has_strategy():
        active = tf.distribute.get_strategy()
        strategy = strategy_name(active)
        cross_replica = tf.distribute.in_cross_replica_context()
        fused_strategy = isinstance(
            active, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy))
    facts = tuple(gradient_facts(g, v, x) for g, v, x in zip(grads, variables, excluded))
    devices = _kernel_devices() if loaded and variables else frozenset()
    return step_plan.Context(
        gradients=facts,
        library_loaded=loaded,
        library_reason=status["reason"],
        kernel_devices=devices,
        no_gpu_kernels=(_why_no_gpu_kernels()
                        if "GPU" not in devices and "GPU" in {f.device for f in facts}
                        else ""),
        in_step=in_step,
        xla=in_step and in_xla_context(),
        strategy=strategy,
        strategy_fused=fused_strategy,
        cross_replica=cross_replica,
    )


# ------------------------------------------------------ sparse gradients


def deduplicate(slices):
    """(values, indices) of an IndexedSlices with duplicate indices summed."""
    unique, position = tf.unique(slices.indices)
    values = tf.math.unsorted_segment_sum(slices.values, position, tf.shape(unique)[0])
    return values, unique


def deduplicated(grad):
    """An IndexedSlices with duplicate indices summed (others as they are)."""
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    values, indices = deduplicate(grad)
    return tf.IndexedSlices(values, indices, grad.dense_shape)


def values_and_count(grad):
    """(explicit values, dense element count or None) of a gradient."""
    if isinstance(grad, tf.IndexedSlices):
        values, _ = deduplicate(grad)
        return values, tf.reduce_prod(tf.cast(grad.dense_shape, tf.int64))
    return grad, None


def unit_count(grad):
    """Units of `grad` for granularity "unit": the size of its last axis, or
    None (one unit) for a tensor of at most one axis."""
    shape = grad.values.shape if isinstance(grad, tf.IndexedSlices) else grad.shape
    return int(shape[-1]) if shape.rank is not None and shape.rank >= 2 else None


def dense_gradient(grad, variable):
    """The dense tensor an IndexedSlices gradient stands for, duplicate
    indices summed (one unsorted_segment_sum of its rows into zeros of the
    variable's shape); any other gradient as it is.

    The one place the fused path densifies: only for rules whose Keras update
    moves every row anyway (keras_adapters.INDEXED_SLICES: EVERY_ROW), and
    only where the op cannot read the rows (`step_plan.DENSIFIED`). The op
    then measures, scales and applies it as any dense gradient, so its norm
    and its recorded L2 norm are those of the dense tensor.
    """
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    shape = tf.TensorShape(variable.shape)
    rows = shape[0] if shape[0] is not None else grad.dense_shape[0]
    dense = tf.math.unsorted_segment_sum(grad.values, grad.indices, rows)
    return tf.ensure_shape(dense, shape)


def op_gradient(grad, variable, entry):
    """`grad` as the fused update op takes it: a sparse one stays sparse
    where the plan reads rows, else `dense_gradient`."""
    if entry.form == step_plan.DENSIFIED:
        return dense_gradient(grad, variable)
    return grad


def _unscale(grad, factor):
    """grad / factor, keeping IndexedSlices sparse."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(
            grad.values / tf.cast(factor, grad.values.dtype), grad.indices, grad.dense_shape)
    return grad / tf.cast(factor, grad.dtype)


def _times(grad, factor):
    """grad * factor, keeping IndexedSlices sparse."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * factor, grad.indices, grad.dense_shape)
    return grad * factor


def unscale_all(grads, variables, factor):
    """Gradients of a loss scaled by `factor`, unscaled (a gradient that
    overwrites its variable is no gradient of the loss: it passes)."""
    return [
        g if getattr(v, "overwrite_with_gradient", False) else _unscale(g, factor)
        for g, v in zip(grads, variables)
    ]


def all_finite(grads):
    """One boolean: every element of every gradient is finite."""
    checks = []
    for g in grads:
        values = g.values if isinstance(g, tf.IndexedSlices) else g
        checks.append(tf.reduce_all(tf.math.is_finite(values)))
    return tf.reduce_all(tf.stack(checks))


# ---------------------------------------------------------------- norms


def norm_of(grad, name, eps=None, per_unit=False):
    """norm(grad) by name (built-in or registered), in the accumulation dtype.

    An IndexedSlices is measured as the dense tensor it represents (duplicate
    indices summed first). Custom functions see a dense tensor. With
    `per_unit`, a built-in norm is a vector: one norm per index of the last
    axis, over all other axes (a scalar for a tensor of at most one axis).
    """
    eps = keras.config.epsilon() if eps is None else eps
    fn = normalizations.custom_function(name)
    if fn is not None:
        return _custom_norm(name, fn, tf.convert_to_tensor(grad))
    units = unit_count(grad) if per_unit else None
    values, total = values_and_count(grad)
    return scale_math.builtin_norm(values, name, eps, total, units)


def _custom_norm(name, fn, grad):
    """fn(grad) as a scalar of the accumulation dtype; a norm of any other
    shape is an error."""
    norm = tf.convert_to_tensor(fn(grad))
    if norm.shape.rank is not None and norm.shape.rank != 0:
        raise ValueError(
            f"The normalization {name!r} returned a tensor of shape "
            f"{norm.shape} for a gradient of shape {grad.shape}; a norm must "
            "be a scalar (one number per gradient tensor, e.g. "
            "tf.reduce_sum(...))."
        )
    return tf.cast(tf.ensure_shape(norm, []), scale_math.accumulation_dtype(grad.dtype))


def _apply_scale(grad, scale, branch_large):
    """scale_math.apply_scale, keeping IndexedSlices sparse (deduplicated)."""
    if isinstance(grad, tf.IndexedSlices):
        values, indices = deduplicate(grad)
        return tf.IndexedSlices(
            _apply_scale(values, scale, branch_large), indices, grad.dense_shape)
    return scale_math.apply_scale(grad, scale, branch_large)


class TfTensors(keras_step.Tensors):
    """The group loop's reads of TensorFlow gradients: an IndexedSlices
    counts as the dense tensor it stands for (`norm_of`; its deduplicated
    rows for the spectral norm) and stays sparse when scaled
    (`_apply_scale`)."""

    def values_and_count(self, grad):
        return values_and_count(grad)

    def unit_count(self, grad):
        return unit_count(grad)

    def norm(self, grad, name, eps=None, per_unit=False):
        return norm_of(grad, name, eps, per_unit)

    def apply_scale(self, grad, scale, branch_large):
        return _apply_scale(grad, scale, branch_large)

    def weight(self, variable):
        return tf.convert_to_tensor(variable)


TF_TENSORS = TfTensors()


def scale_pure(plan, grads, variables, vectors=None, measured=None):
    """The gradients with every scale group scaled by its norm (the others
    as they are), in keras.ops math: keras_step.scale_groups, the one group
    loop, over TensorFlow gradients (`TfTensors`); `vectors` and `measured`
    as there."""
    return keras_step.scale_groups(plan, grads, variables, TF_TENSORS, vectors, measured)


def scale_gradient(grad, normalization, mode, clipnorm=1.0, eps=None):
    """One gradient normalized or clipped by its own norm (the pure path)."""
    scaling = scale_math.Normalize() if mode == scale_math.NORMALIZE else scale_math.Clip(clipnorm)
    norm = norm_of(grad, normalization, eps)
    return _apply_scale(grad, scaling.scale(norm), branch_large=not in_xla_context())


# ---------------------------------------------------------- AutoGraph


def unconverted(fn):
    """`fn`, called as written inside a user's tf.function: AutoGraph
    converts every function such a function calls, unless its module is
    one it leaves alone (Keras's, TensorFlow's), and converting the
    wrapper's step costs ~10 s at the first trace in a process and ~1 s at
    each later one. The step needs no conversion: it branches on no
    tensor in Python (the same code runs on JAX and PyTorch), so it is
    traced as Keras's own optimizers are."""
    return tf.autograph.experimental.do_not_convert(fn)


# ---------------------------------------------------------- tf.distribute


def replicas_in_sync():
    """Replica count when apply() runs per replica under tf.distribute, else 1."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_reduce_sum(grads):
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)


def _replica_share(grad, replicas, first):
    """What one of `replicas` replicas hands an inner optimizer that sums
    the gradients across replicas again. Dense: 1/R of it (exact for a
    power-of-two R). IndexedSlices: all of it on the first replica (`first`,
    a boolean tensor), zero rows elsewhere: that sum concatenates the
    slices, and 1/R shares would be duplicate rows, which Keras's nonlinear
    updates (Adam's v += g^2, Adagrad's acc += g^2) square apart."""
    if isinstance(grad, tf.IndexedSlices):
        values = tf.where(first, grad.values, tf.zeros_like(grad.values))
        return tf.IndexedSlices(values, grad.indices, grad.dense_shape)
    return _unscale(grad, replicas)


def step_if_finite(step, skip, grads, args, replicas, state=()):
    """step(*args) where every gradient is finite, else skip() (both return
    a boolean tensor); under a strategy through a merge_call (a cond whose
    branch calls merge_call, as the inner apply does, must run in
    cross-replica context), which hands each replica its own `args`.
    `state` (the variables a step may assign) is for the stateless
    backends' executor (keras_step.step_if_finite): tf.cond needs none."""
    del state
    if replicas == 1:
        tf.cond(all_finite(grads), lambda: step(*args), skip)
        return

    def merged(distribution, finite, *args):
        # Every replica holds the same all-reduced gradients, hence the same
        # verdict: take the first.
        finite = distribution.experimental_local_results(finite)[0]

        def run():
            distribution.extended.call_for_each_replica(step, args=args)
            return tf.constant(True)

        tf.cond(finite, run, skip)

    tf.distribute.get_replica_context().merge_call(
        merged, args=(all_finite(grads),) + tuple(args))


# ---------------------------------------------------------------- executors


def run_inner_step(inner, plan, grads, variables, replicas, vectors=None):
    """The gradients scaled by the compiled scale op (path fused_scale) or
    by `scale_pure` (`vectors` as there), then the inner optimizer's own
    update. Returns the op's L2 norms of the scaled gradients as parts,
    else None."""
    factor = keras_adapters.loss_scale_factor(inner)
    if factor is not None:
        # The inner optimizer unscales after us: measure the norm of the
        # true gradient, then hand back a scaled result.
        grads = [_unscale(g, factor) for g in grads]
    measured = None
    if plan.name == paths.FUSED_SCALE:
        keep = plan.indices(step_plan.SCALED, step_plan.NO_GRADIENT)
        scaled, measured = run_fused_scale(plan, [grads[i] for i in keep],
                                           [variables[i] for i in keep], keep)
        out = list(grads)
        for i, s in zip(keep, scaled):
            out[i] = s
    else:
        # the whole-tensor L2 norms the group loop takes are the recorded
        # ones (of these gradients only where nothing unscaled them)
        measured = {} if factor is None else None
        out = scale_pure(plan, grads, variables, vectors, measured)
    # Excluded IndexedSlices go on as the dense tensor they stand for, as
    # scaled ones do: duplicate indices summed (Keras's nonlinear updates,
    # Adam's v += g^2, would square each duplicate row apart), so both
    # paths give the numbers of that dense tensor.
    for i in plan.indices(step_plan.EXCLUDED):
        out[i] = deduplicated(out[i])
    if factor is not None:
        out = [_times(g, factor) for g in out]
    if replicas > 1 and keras_adapters.sums_across_replicas(inner):
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        out = [_replica_share(g, replicas, first) for g in out]
    keras_adapters.apply_gradients(inner, out, variables)
    return measured


def _norm_args(names, grads):
    """(kind, norms, kinds) for the raw ops from each gradient's norm name:
    one built-in for all (kinds None), a built-in each (`kinds`, one op
    call), or, where any is a registered custom norm, the norms measured
    here ("precomputed")."""
    if any(normalizations.custom_function(n) is not None for n in names):
        return "precomputed", tf.stack([norm_of(g, n) for g, n in zip(grads, names)]), None
    canonical = [normalizations.canonical_name(n) for n in names]
    if len(set(canonical)) == 1:
        return canonical[0], None, None
    return canonical[0], None, canonical


def _shared_norm(plan, grads, excluded=()):
    """The global norm of `grads` but the `excluded` indices, in the widest
    accumulation dtype, where the plan has TF measure it (a global norm over
    several dtypes: `plan.shared_norm`), else None."""
    if not plan.shared_norm:
        return None
    kept = [values_and_count(g) for i, g in enumerate(grads) if i not in excluded]
    return scale_math.merged_norm(kept, plan.settings.normalization, keras.config.epsilon())


def _call_norm_args(plan, group, gs, shared):
    """(kind, norms, granularity, kinds) of one op call over the gradients
    `gs` (indices `group` of the plan) of one dtype: the built-in (or
    TF-measured custom) norms of each at the plan's granularity, or, given
    `shared` (a global norm over several dtypes), that norm as every
    tensor's precomputed norm."""
    if shared is None:
        kind, norms, kinds = _norm_args([plan.entries[i].norm for i in group], gs)
        return kind, norms, plan.settings.granularity, kinds
    acc = scale_math.accumulation_dtype(gs[0].dtype)
    return "precomputed", tf.fill([len(gs)], tf.cast(shared, acc)), "tensor", None


def run_fused_scale(plan, grads, variables, keep=None):
    """(gradients scaled by the compiled op, in the order given; the op's L2
    norms of the gradients as parts: one (variables, vector) per op call). A
    global norm over several dtypes is measured in TF (`_shared_norm`).
    `keep`: the plan's index of each of `grads` (default: the same)."""
    keep = list(range(len(grads))) if keep is None else keep
    from normopt.ops import raw_ops

    settings = plan.settings
    shared = _shared_norm(plan, grads)
    scaled, parts = {}, []
    for group in scale_math.group_indices(g.dtype for g in grads).values():
        gs = [grads[i] for i in group]
        kind, norms, granularity, kinds = _call_norm_args(
            plan, [keep[i] for i in group], gs, shared)
        out, l2 = raw_ops.scale_and_norms(
            gs, kind, settings.scaling.mode, settings.scaling.threshold,
            keras.config.epsilon(), norms=norms, granularity=granularity, kinds=kinds)
        scaled.update(zip(group, out))
        parts.append(([variables[i] for i in group], l2))
    return [scaled[i] for i in range(len(grads))], parts


def run_fused_update(inner, plan, grads, variables, vectors=None):
    """One whole inner-optimizer step through the fused update kernel
    (`vectors` as in `scale_pure`: the op reads and the step assigns them).

    Under MirroredStrategy and MultiWorkerMirroredStrategy (replica context,
    gradients already summed across all replicas of all workers) the op runs
    once per local device on that device's copies of the variables and
    slots, the way Keras's own distributed update does; no collective runs
    inside, so every worker does the same local work on the same sums.

    Returns the op's L2 norms of the gradients as parts, one (variables,
    vector) per op call (under a strategy those of the first local device,
    whose gradients every device shares).
    """
    adapter = keras_adapters.adapter_for(inner)
    # Here, in the replica context, each replica prepares its own copy.
    grads = [op_gradient(g, v, e) for g, v, e in zip(grads, variables, plan.entries)]
    if not tf.distribute.has_strategy():
        adapter.before_update(inner)
        grad_norms = _update_variables(inner, plan, grads, variables, vectors=vectors)
        _finish_step(inner, variables)
        return grad_norms

    def update(distribution, grads):
        adapter.before_update(inner)
        local_grads = [distribution.experimental_local_results(g) for g in grads]
        per_device = []
        for i, device in enumerate(distribution.extended.worker_devices):

            def on_device(v, i=i):
                return distribution.experimental_local_results(tf_variable(v))[i]

            with tf.device(device):
                per_device.append(_update_variables(
                    inner, plan, [g[i] for g in local_grads], variables, on_device,
                    vectors))
        _finish_step(inner, variables)
        return per_device[0]

    return tf.distribute.get_replica_context().merge_call(update, args=(grads,))


def _update_variables(inner, plan, grads, variables, on_device=None, vectors=None):
    """The fused op over `variables` (Keras variables) and their slots, and
    the persistent spectral `vectors` ({index: (gradient's, weight's)}, the
    op's order: step_plan.spectral_indices); returns the op's L2 norms of
    the gradients, one (variables, vector) per op call.

    `on_device` maps a Keras variable to the copy the op updates (one
    device's component of a mirrored variable); by default the variable.
    """
    from normopt.ops import raw_ops

    local = on_device or (lambda v: v)
    settings = plan.settings
    adapter = keras_adapters.adapter_for(inner)
    rule = adapter.rule(inner)
    hyper = adapter.hyper(inner)
    lr = keras_adapters.learning_rate(inner)
    step = tf.cast(inner.iterations + 1, tf.float64)
    excluded = set(plan.indices(step_plan.EXCLUDED))
    shared = _shared_norm(plan, grads, excluded)
    parts = []
    for group in scale_math.group_indices(g.dtype for g in grads).values():
        gs = [grads[i] for i in group]
        vs = [variables[i] for i in group]
        kind, norms, granularity, kinds = _call_norm_args(plan, group, gs, shared)
        acc = scale_math.accumulation_dtype(gs[0].dtype)
        decay = tf.constant([keras_adapters.weight_decay(inner, v) for v in vs], dtype=acc)
        slots = adapter.slots(inner, keras_adapters.variable_indices(inner, vs))
        matrices = [vectors[i] for i in group if vectors and i in vectors]
        held = [local(g) for g, _ in matrices]
        if settings.scaling.reads_weights:
            held += [local(w) for _, w in matrices]
        l2, new_vectors = raw_ops.apply_step(
            rule,
            [local(v) for v in vs],
            [[local(s) for s in slot] for slot in slots],
            gs,
            lr=lr,
            step=step,
            hyper=hyper,
            decay=decay,
            kind=kind,
            mode=settings.scaling.mode,
            clipnorm=settings.scaling.threshold,
            epsilon=keras.config.epsilon(),
            norms=norms,
            granularity=granularity,
            excluded=[k for k, i in enumerate(group) if i in excluded],
            weight_eps=settings.scaling.weight_eps,
            kinds=kinds,
            spectral_vectors=[tf.convert_to_tensor(v) for v in held],
        )
        for variable, value in zip(held, new_vectors):
            variable.assign(value)
        parts.append((vs, l2))
    return parts


def _finish_step(inner, variables):
    """What Keras does after the update: constraints, then iterations += 1."""
    for v in variables:
        if v.constraint is not None:
            v.assign(v.constraint(v))
    keras_adapters.advance_iterations(inner)


# -------------------------------------------------------- recorded norms


def norms_variable(count):
    """The (unsaved, untracked) float32 vector of recorded gradient norms."""
    return tf.Variable(
        tf.zeros([count], tf.float32),
        trainable=False,
        name="gradient_norms",
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


def norms_value(target):
    """The recorded norms as a tensor."""
    return tf.convert_to_tensor(target)


def record_norms(target, keys, grads, variables, measured, factor, key_of):
    """Assigns `target` the L2 norms of the raw gradients `grads` of
    `variables` in the order of `keys` (0 for a key with no gradient;
    `key_of(variable)` is a variable's key).

    `measured`: the L2 norms the step took. From the compiled op, the
    norms it took from the statistics it reads anyway (of the gradients
    unscaled), as parts (variables, vector); the norms of gradients in no
    part are taken here. Otherwise (the pure path, or None)
    `keras_step.record_norms`' {index: (gradient, norm)}: the same math as
    every backend's. `factor`: the inner optimizer's loss scale factor, or
    None. Ops per step on the compiled path: a cast (and a concat and a
    scatter where the parts do not cover the keys in order) and the assign.
    """
    if not isinstance(measured, list):
        keras_step.record_norms(target, keys, grads, variables, measured, factor, key_of,
                                TF_TENSORS)
        return
    parts = list(measured)
    covered = {key_of(v) for part, _ in parts for v in part}
    rest = [(g, v) for g, v in zip(grads, variables) if key_of(v) not in covered]
    if rest:
        # one multi-tensor norm (one rescue cond for all, not one per tensor)
        norms = []
        for norm in TF_TENSORS.tensor_norms([g for g, _ in rest], "l2", eps=0.0):
            if factor is not None:
                norm = norm / tf.cast(factor, norm.dtype)
            norms.append(tf.cast(norm, tf.float32))
        parts.append(([v for _, v in rest], tf.stack(norms)))
    vectors = [tf.cast(vector, tf.float32) for _, vector in parts]
    values = vectors[0] if len(vectors) == 1 else tf.concat(vectors, 0)
    order = [key_of(v) for part, _ in parts for v in part]
    if order != keys:
        # some variables had no gradient (0), or the parts are in another order
        index = {k: i for i, k in enumerate(keys)}
        values = tf.scatter_nd([[index[k]] for k in order], values, [len(keys)])
    target.assign(values)
