"""Choosing and running the compiled path of one wrapper step.

`choose_path` decides, at trace time, which of the paths in `normopt.ops.paths`
a step takes; `run_fused_update` and `run_fused_scale` run the compiled ones
through the raw ops in `normopt.ops.fused`. The inner optimizer's own slot
variables and iteration counter hold all state, so a model can switch between
paths (or be saved under one and loaded under another) at any step.

A sparse (tf.IndexedSlices) gradient takes the fused path under every
fused rule. The op (its CPU and its GPU kernel) reads its deduplicated rows
as the dense tensor they stand for, without building it (`op_gradient`), and
under SGD and Adagrad, whose Keras updates write only the indexed rows,
updates only those (keras_adapters.INDEXED_SLICES). At granularity "unit" a
rule that moves every row gets it scattered once into that dense tensor
(`dense_gradient`); SGD and Adagrad there, and an inner optimizer without a
fused rule, keep the pure-TF path, which keeps it sparse.
"""

import collections
import dataclasses

import keras
import tensorflow as tf

from normopt import normalizations
from normopt.ops import keras_adapters, library, paths
from normopt.ops.paths import StepPath


class FusedPathUnavailable(RuntimeError):
    """Raised for `fused=True` when the compiled path cannot run.

    Catchable as itself from eager code, from inside a `tf.function` (with or
    without autograph, with `jit_compile=True`) and from `model.fit`.
    """

    # AutoGraph re-raises an error from converted code as the same type only
    # when it can rebuild it from one message: exactly when `__init__` is
    # Exception's (tensorflow/python/autograph/pyct/error_utils.py); any other
    # RuntimeError subclass arrives as autograph's StagingError.
    __init__ = Exception.__init__


# Strategies under which the compiled op runs (besides no strategy): the
# replica-context, all-reduce-then-update ones. The op runs once per local
# device on the all-reduced gradients.
FUSED_STRATEGIES = ("MirroredStrategy", "MultiWorkerMirroredStrategy")


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


def _fused_strategy(strategy):
    return isinstance(
        strategy,
        (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy),
    )


def update_kernel(inner):
    """The fused update rule for `inner`'s class and options, else None."""
    adapter = keras_adapters.adapter_for(inner)
    return adapter.rule(inner) if adapter is not None else None


GPU_OPT_IN_ENV = library.GPU_OPT_IN_ENV  # the GPU kernels are opt-in


def _kernel_devices():
    """Device types the loaded op library has kernels for, and may use."""
    devices = set(library.registered_kernels()["NormoptApply"])
    if not library.gpu_ops_enabled():
        devices.discard("GPU")
    return devices


def _why_no_gpu_kernels():
    """Why the op library's GPU kernels are not used, for a path's reason."""
    if "GPU" in library.registered_kernels()["NormoptApply"]:
        return (f"its GPU kernels need {GPU_OPT_IN_ENV}=1: they are not yet "
                "validated on a GPU")
    from normopt.ops import build

    summary = build.cuda_summary(library.details().get("built_for"))
    return f"it has no GPU kernels: CUDA kernels {summary or 'not recorded'}"


def device_type(variable):
    """'GPU', 'CPU', ... of the device a (Keras or tf) variable lives on."""
    device = getattr(getattr(variable, "value", variable), "device", "") or ""
    return tf.DeviceSpec.from_string(device).device_type or "CPU"


def _blockers(grads, variables, in_step=True):
    """Reasons no compiled op can run this step at all (empty when it can).

    `in_step=False` (at construction) leaves out what depends on where the
    step will run (XLA, replica context): only the step can tell.
    """
    from normopt.ops import library

    status = library.status()
    found = []
    if not status["loaded"]:
        found.append(f"the op library is not loaded: {status['reason']}")
    if in_step and paths.in_xla_context():
        found.append(
            "the step is being compiled by XLA (jit_compile=True) and the "
            "compiled op has no XLA kernel"
        )
    if in_step and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
        if tf.distribute.in_cross_replica_context():
            found.append("apply() was called in a cross-replica context")
        elif not _fused_strategy(strategy):
            found.append(
                f"{strategy_name(strategy)} is active (the compiled path runs "
                f"under {' and '.join(FUSED_STRATEGIES)} only)"
            )
    if status["loaded"] and variables:
        devices = _kernel_devices()
        elsewhere = sorted({device_type(v) for v in variables} - devices)
        if elsewhere:
            why = f" ({_why_no_gpu_kernels()})" if "GPU" in elsewhere else ""
            found.append(
                f"variables live on {', '.join(elsewhere)} and the op library "
                f"has kernels for {', '.join(sorted(devices))} only{why}"
            )
    for g, v in zip(grads, variables):
        # An IndexedSlices gradient's dtype is that of its values; whether
        # its rule takes it is choose_path's (`_sparse_blockers`).
        if g.dtype != tf.as_dtype(v.dtype):
            found.append(
                f"the gradient of {v.name} is {g.dtype.name} but the "
                f"variable is {tf.as_dtype(v.dtype).name}"
            )
        elif g.dtype not in (tf.float16, tf.bfloat16, tf.float32, tf.float64):
            found.append(f"dtype {g.dtype.name} has no compiled kernel")
        if getattr(v, "overwrite_with_gradient", False):
            found.append(f"{v.name} is overwritten with its gradient")
    return found


def choose_path(fused, normalization, inner, grads, variables, in_step=True,
                granularity="tensor"):
    """The StepPath of one step; raises FusedPathUnavailable for fused=True.

    `grads`/`variables` hold only the pairs with a gradient.
    """
    if fused is False:
        return StepPath(paths.TF, "fused=False")
    reasons = _blockers(grads, variables, in_step)
    kernel = update_kernel(inner)
    options = keras_adapters.unsupported_options(inner)
    if not reasons and kernel is not None and options:
        reasons.append(
            f"the fused {kernel} rule does not implement the inner "
            f"optimizer's {', '.join(options)}"
        )
    if not reasons:
        reasons.extend(_sparse_blockers(kernel, grads, variables, granularity))
    if reasons:
        if fused:
            raise FusedPathUnavailable(
                "fused=True but the compiled path cannot run: "
                + "; ".join(reasons)
                + ". Use fused=None to fall back to pure TensorFlow."
            )
        return StepPath(paths.TF, "; ".join(reasons))
    custom = normalizations.custom_function(normalization) is not None
    if kernel is not None:
        return StepPath(paths.FUSED_TF_NORMS if custom else paths.FUSED, None)
    return StepPath(paths.FUSED_SCALE, None)


def _sparse_blockers(kernel, grads, variables, granularity):
    """Why IndexedSlices gradients keep this step off the compiled path:
    with no fused update at all (the scale-only op would hand the inner
    optimizer a dense gradient), or under a rule whose Keras update writes
    only the indexed rows where the op cannot read rows (granularity "unit";
    keras_adapters.INDEXED_SLICES)."""
    sparse = [v.name for g, v in zip(grads, variables) if isinstance(g, tf.IndexedSlices)]
    if not sparse:
        return []
    which = (f"the gradient of {sparse[0]} is" if len(sparse) == 1
             else f"the gradients of {', '.join(sparse)} are")
    if kernel is None:
        return [
            f"{which} sparse (IndexedSlices) and the inner optimizer has no "
            "fused update (the scale-only op would hand it a dense gradient)"
        ]
    writes = keras_adapters.sparse_gradients(kernel)
    if writes is None:
        return [f"{which} sparse (IndexedSlices) and the {kernel} rule has no "
                "entry in keras_adapters.INDEXED_SLICES"]
    if writes == keras_adapters.INDEXED_ROWS:
        if not _op_reads_rows(granularity):
            return [
                f"{which} sparse (IndexedSlices) and Keras's {kernel} update "
                "touches only the indexed rows, which the op reads at "
                "granularity 'tensor' or 'global' only, not 'unit': the "
                "pure-TF path keeps it sparse"
            ]
    return []


def _op_reads_rows(granularity):
    """Whether the op reads a sparse gradient's rows (fused.sparse_rows): at
    granularity "tensor" or "global", on either device (the GPU kernel takes
    per-tensor norms only, `optimizers` keeps other steps off it)."""
    return granularity != "unit"


def op_gradient(grad, variable, scaling):
    """`grad` as the fused update op takes it: an IndexedSlices stays sparse
    where the op reads rows (`_op_reads_rows`), else `dense_gradient`."""
    if isinstance(grad, tf.IndexedSlices) and _op_reads_rows(scaling.granularity):
        return grad
    return dense_gradient(grad, variable)


def dense_gradient(grad, variable):
    """The dense tensor an IndexedSlices gradient stands for, duplicate
    indices summed (one unsorted_segment_sum of its rows into zeros of the
    variable's shape); any other gradient as it is.

    The one place the fused path densifies: only for rules whose Keras update
    moves every row anyway (keras_adapters.INDEXED_SLICES: EVERY_ROW), and
    only where the op cannot read the rows (`op_gradient`). The op then measures,
    scales and applies it as any dense gradient, so its norm and its
    recorded L2 norm are those of the dense tensor.
    """
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    shape = tf.TensorShape(variable.shape)
    rows = shape[0] if shape[0] is not None else grad.dense_shape[0]
    dense = tf.math.unsorted_segment_sum(grad.values, grad.indices, rows)
    return tf.ensure_shape(dense, shape)


@dataclasses.dataclass(frozen=True)
class Scaling:
    """How a wrapper scales the gradients (the ops' scale arguments).

    mode: "normalize", "clip" or "adaptive"; clipnorm: the clip threshold,
    or the clip factor in the adaptive mode, whose weight norms are floored
    at weight_eps. granularity: "tensor", "unit" or "global". excluded: the
    variables (by id) whose gradients pass unscaled.
    """

    normalization: str
    mode: str
    clipnorm: float = 1.0
    granularity: str = "tensor"
    excluded: frozenset = frozenset()
    weight_eps: float = 0.0

    def excluded_in(self, variables):
        """Indices of the excluded ones among `variables`."""
        return [k for k, v in enumerate(variables) if id(v) in self.excluded]


def _by_dtype(grads, variables):
    groups = collections.OrderedDict()
    for g, v in zip(grads, variables):
        groups.setdefault(g.dtype, []).append((g, v))
    return groups.values()


def _norm_args(normalization, grads):
    """(kind, norms) for the raw ops: built-in name, or TF-computed norms."""
    if normalizations.custom_function(normalization) is None:
        return normalizations.canonical_name(normalization), None
    return "precomputed", tf.stack(
        [normalizations.tf_norm(g, normalization) for g in grads]
    )


def run_fused_scale(scaling, grads, variables):
    """(gradients scaled by the compiled op, in the order given; the op's L2
    norms of the gradients as parts: one (variables, vector) per op call). A
    global norm needs one dtype (one op call): the wrapper sees to it."""
    from normopt.ops import fused

    eps = keras.config.epsilon()
    scaled, parts = {}, []
    for group in _by_dtype(grads, variables):
        gs = [g for g, _ in group]
        kind, norms = _norm_args(scaling.normalization, gs)
        out, l2 = fused.scale_and_norms(
            gs, kind, scaling.mode, scaling.clipnorm, eps, norms=norms,
            granularity=scaling.granularity,
            excluded=scaling.excluded_in([v for _, v in group]))
        for (_, v), s in zip(group, out):
            scaled[id(v)] = s
        parts.append(([v for _, v in group], l2))
    return [scaled[id(v)] for v in variables], parts


def run_fused_update(inner, scaling, grads, variables):
    """One whole inner-optimizer step through the fused update kernel.

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
    grads = [op_gradient(g, v, scaling) for g, v in zip(grads, variables)]
    if not tf.distribute.has_strategy():
        adapter.before_update(inner)
        grad_norms = _update_variables(inner, scaling, grads, variables)
        _finish_step(inner, variables)
        return grad_norms

    def update(distribution, grads):
        adapter.before_update(inner)
        local_grads = [distribution.experimental_local_results(g) for g in grads]
        per_device = []
        for i, device in enumerate(distribution.extended.worker_devices):

            def on_device(v, i=i):
                return distribution.experimental_local_results(v.value)[i]

            with tf.device(device):
                per_device.append(
                    _update_variables(
                        inner,
                        scaling,
                        [g[i] for g in local_grads],
                        variables,
                        on_device,
                    )
                )
        _finish_step(inner, variables)
        return per_device[0]

    return tf.distribute.get_replica_context().merge_call(update, args=(grads,))


def _update_variables(inner, scaling, grads, variables, on_device=None):
    """The fused op over `variables` (Keras variables) and their slots;
    returns the op's L2 norms of the gradients, one (variables, vector) per
    op call.

    `on_device` maps a Keras variable to the copy the op updates (one
    device's component of a mirrored variable); by default the variable.
    """
    from normopt.ops import fused

    local = on_device or (lambda v: v)
    adapter = keras_adapters.adapter_for(inner)
    rule = adapter.rule(inner)
    hyper = adapter.hyper(inner)
    eps = keras.config.epsilon()
    lr = tf.cast(inner.learning_rate, tf.float64)
    step = tf.cast(inner.iterations + 1, tf.float64)
    parts = []
    for group in _by_dtype(grads, variables):
        gs = [g for g, _ in group]
        vs = [v for _, v in group]
        kind, norms = _norm_args(scaling.normalization, gs)
        acc = normalizations.accumulation_dtype(gs[0].dtype)
        decay = tf.constant([keras_adapters.weight_decay(inner, v) for v in vs], dtype=acc)
        slots = adapter.slots(inner, keras_adapters.variable_indices(inner, vs))
        l2 = fused.apply(
            rule,
            [local(v) for v in vs],
            [[local(s) for s in slot] for slot in slots],
            gs,
            lr=lr,
            step=step,
            hyper=hyper,
            decay=decay,
            kind=kind,
            mode=scaling.mode,
            clipnorm=scaling.clipnorm,
            epsilon=eps,
            norms=norms,
            granularity=scaling.granularity,
            excluded=scaling.excluded_in(vs),
            weight_eps=scaling.weight_eps,
        )
        parts.append((vs, l2))
    return parts


def _finish_step(inner, variables):
    """What Keras does after the update: constraints, then iterations += 1."""
    for v in variables:
        if v.constraint is not None:
            v.assign(v.constraint(v))
    keras_adapters.advance_iterations(inner)
