"""The step plan: what one wrapper step does, decided once, at trace time.

`plan_step` reads the wrapper's settings, the inner optimizer and the step's
`Context` (one `Gradient` fact sheet per gradient, and where the step runs:
op library, XLA, tf.distribute strategy, devices; the backend module,
`normopt.ops.tf_backend`, gathers it) and returns a `StepPlan`:

1. the path (`normopt.ops.paths`) and, for `tf`, every reason, in order
   (on a Keras backend other than TensorFlow, `Context.backend`, the path is
   `keras`, the reason that backend, or fused=False; fused=True is refused):
   - fused=False;
   - the step cannot run any compiled op (`_blockers`: library, XLA,
     strategy, devices, dtypes, a gradient overwriting its variable);
   - the inner optimizer has options its fused rule lacks;
   - a sparse gradient the compiled path cannot take (`_sparse_blockers`);
   - the wrapper's scaling is beyond the op here (`_beyond_compiled`).
   With fused=True any reason is raised as `FusedPathUnavailable` (`refusal`,
   the one place the text is written). A global norm over gradients of
   several dtypes is measured by TensorFlow and handed to the op
   (`shared_norm`; the path fused_tf_norms or fused_scale says why);
2. per gradient an `Entry`: its role (scaled, excluded, no gradient,
   overwrites its variable), its form (dense, sparse read as rows, sparse
   scattered into a dense tensor for the op) and its scale group;
3. the scale groups, granularity as data: one group per tensor ("tensor"),
   per tensor reducing over all axes but the last ("unit"), or one group
   merging every scaled gradient ("global").

Both paths execute the same plan: the compiled one hands the op the entries'
forms and the excluded indices, the pure one (`scale_math`) measures and
scales each group.
"""

import dataclasses

from normopt import header_tables
from normopt.ops import keras_adapters, paths
from normopt.ops.paths import StepPath

GRANULARITIES = ("tensor", "unit", "global")
# Those the compiled ops take (their `granularity` attr); a granularity only
# the pure path runs is added to GRANULARITIES and `scale_groups` alone.
OP_GRANULARITIES = ("tensor", "unit", "global")

# What happens to a gradient.
SCALED = "scaled"          # measured and scaled by its group's norm
EXCLUDED = "excluded"      # exclude_from_normalization: passes unscaled
NO_GRADIENT = "none"       # None or no elements: nothing to measure
OVERWRITE = "overwrite"    # the variable is overwritten with it: passes

# How a gradient reaches the step.
DENSE = "dense"
ROWS = "rows"              # sparse, read as its deduplicated rows
DENSIFIED = "densified"    # sparse, scattered once into the dense tensor

# Strategies under which the compiled op runs (besides no strategy): the
# replica-context, all-reduce-then-update ones. The op runs once per local
# device on the all-reduced gradients.
FUSED_STRATEGIES = ("MirroredStrategy", "MultiWorkerMirroredStrategy")

COMPILED_DTYPES = ("float16", "bfloat16", "float32", "float64")

# StepPath.reason of a compiled step whose global norm, over gradients of
# several dtypes, TensorFlow measures (`several_dtypes_global`).
SEVERAL_DTYPES_REASON = (
    "a global norm over gradients of several dtypes: TensorFlow measures it "
    "(statistics in float64 where any gradient is float64), the compiled op "
    "scales each dtype's gradients by it"
)


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


def refusal(reason, backend="tensorflow"):
    """The error fused=True raises when the compiled path cannot run."""
    fallback = ("pure TensorFlow" if backend == "tensorflow"
                else "the keras.ops path (`last_path` 'keras')")
    return FusedPathUnavailable(
        f"fused=True but the compiled path cannot run: {reason}. "
        f"Use fused=None to fall back to {fallback}."
    )


def backend_reason(backend):
    """Why no compiled op runs on a Keras backend other than TensorFlow."""
    return (f"the Keras backend is {backend}: the compiled op is TensorFlow's "
            "(a TensorFlow custom op)")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the plan reads of a wrapper: `scaling` is its kind's scaler
    (scale_math.Normalize, Clip or Adaptive); `custom` whether the
    normalization is a registered Python function; `norms`: the norm of
    each gradient of the step, in order (`normalization_map`), or empty
    when every gradient takes `normalization`."""

    fused: object
    normalization: str
    granularity: str
    scaling: object
    custom: bool = False
    norms: tuple = ()

    def norm_list(self, count):
        """The norm of each of `count` gradients."""
        return list(self.norms) if self.norms else [self.normalization] * count


@dataclasses.dataclass(frozen=True)
class Gradient:
    """Facts of one (gradient, variable) pair. dtype: the gradient's (a sparse
    one's values'), by name; rank: the gradient's static rank or None;
    device: the variable's device type ('CPU', 'GPU')."""

    name: str
    dtype: str
    variable_dtype: str
    sparse: bool = False
    empty: bool = False
    overwrite: bool = False
    excluded: bool = False
    rank: object = None
    device: str = "CPU"


@dataclasses.dataclass(frozen=True)
class Context:
    """Where a step runs. `in_step=False`: at construction, before any step
    (no gradients; XLA and the strategy are not known yet)."""

    gradients: tuple = ()
    library_loaded: bool = False
    library_reason: str = ""
    kernel_devices: frozenset = frozenset()
    no_gpu_kernels: str = ""       # why the op's GPU kernels are not used
    in_step: bool = True
    xla: bool = False
    strategy: object = None        # the active strategy's public name
    strategy_fused: bool = False   # one of FUSED_STRATEGIES
    cross_replica: bool = False
    backend: str = "tensorflow"    # keras.backend.backend()


@dataclasses.dataclass(frozen=True)
class Group:
    """Gradients (by index) measured by one norm. axes: the axes each norm
    reduces over (None: all, one norm; else all but the last, one norm per
    index of the last axis); merged: one norm over all members together."""

    members: tuple
    axes: object = None
    merged: bool = False


@dataclasses.dataclass(frozen=True)
class Entry:
    role: str
    form: str = DENSE
    group: object = None
    norm: object = None  # its norm's name (Settings.norm_list)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    path: StepPath
    entries: tuple
    groups: tuple
    settings: Settings
    xla: bool = False
    shared_norm: bool = False   # TF measures the global norm the op uses

    @property
    def name(self):
        return self.path.name

    @property
    def updates_variables(self):
        """Whether the compiled op runs the inner optimizer's update too."""
        return self.path.name in (paths.FUSED, paths.FUSED_TF_NORMS)

    @property
    def scaling(self):
        return self.settings.scaling

    def indices(self, *roles):
        return [i for i, e in enumerate(self.entries) if e.role in roles]


def plan_step(settings, inner, context):
    """The StepPlan of one step; raises FusedPathUnavailable for fused=True
    when the compiled path cannot run."""
    path = choose_path(settings, inner, context)
    facts = context.gradients
    roles = [_role(f) for f in facts]
    groups = scale_groups(settings.granularity, roles, facts)
    group_of = {i: k for k, g in enumerate(groups) for i in g.members}
    norms = settings.norm_list(len(facts))
    entries = tuple(
        Entry(role, _form(f, path, settings.granularity), group_of.get(i), norms[i])
        for i, (role, f) in enumerate(zip(roles, facts))
    )
    shared = path.name in paths.COMPILED and several_dtypes_global(settings.granularity, facts)
    return StepPlan(path, entries, groups, settings, context.xla, shared)


class PlanCache:
    """One wrapper's last StepPlan, reused by a step with the same key and
    settings: the plan of a step is `plan_step(settings, inner, context)`,
    and off TensorFlow `choose_path` reads nothing of the inner optimizer,
    so there it is a function of the settings and the context alone. `key`
    (the executor's `plan_key`) stands for the context: None plans anew
    (TensorFlow: the path also reads the inner optimizer's options, the op
    library, the strategy and XLA). Kept for one key: a model's steps
    repeat theirs."""

    def __init__(self):
        self._last = None

    def plan(self, settings, inner, key, make_context):
        """The plan for `settings` and the context `make_context()` builds
        (called only when no plan is reused)."""
        last = self._last
        if key is not None and last is not None and last[0] == key and last[1] == settings:
            return last[2]
        self._last = None
        context = make_context()
        plan = plan_step(settings, inner, context)
        if key is not None and context.backend != "tensorflow":
            self._last = (key, settings, plan)
        return plan


def check_construction(settings, inner, context):
    """fused=True: fails at construction for what is known already."""
    choose_path(settings, inner, context)


def choose_path(settings, inner, context):
    """The StepPath (see the module docstring for the order of reasons)."""
    if context.backend != "tensorflow":
        # Every step there is the keras.ops path; only fused=True refuses.
        if settings.fused:
            raise refusal(backend_reason(context.backend), context.backend)
        reason = "fused=False" if settings.fused is False else backend_reason(context.backend)
        return StepPath(paths.KERAS, reason)
    if settings.fused is False:
        return StepPath(paths.TF, "fused=False")
    facts = context.gradients
    reasons = _blockers(facts, context)
    kernel = update_kernel(inner)
    options = keras_adapters.unsupported_options(inner)
    if not reasons and kernel is not None and options:
        reasons.append(
            f"the fused {kernel} rule does not implement the inner "
            f"optimizer's {', '.join(options)}"
        )
    if not reasons:
        reasons.extend(_sparse_blockers(kernel, facts, settings.granularity))
    if not reasons and kernel is not None:
        reasons.extend(keras_adapters.sparse_refusals(inner, [f.name for f in facts if f.sparse]))
    if not reasons:
        if kernel is None:
            name = paths.FUSED_SCALE
        else:
            name = paths.FUSED_TF_NORMS if settings.custom else paths.FUSED
        beyond = _beyond_compiled(settings, name, facts)
        if beyond is None:
            if several_dtypes_global(settings.granularity, facts):
                name = paths.FUSED_SCALE if name == paths.FUSED_SCALE else paths.FUSED_TF_NORMS
                return StepPath(name, SEVERAL_DTYPES_REASON)
            return StepPath(name, None)
        reasons.append(beyond)
    if settings.fused:
        raise refusal("; ".join(reasons))
    return StepPath(paths.TF, "; ".join(reasons))


def check_granularity(granularity, normalization, custom, mapped=None):
    """Refuses a granularity that is none of GRANULARITIES, or one a custom
    normalization or a matrix norm (spectral: functions of a whole tensor)
    cannot measure, or "global" with a `normalization_map` (`mapped`, its
    dict; one norm over all gradients has one kind)."""
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"`granularity` must be one of {', '.join(map(repr, GRANULARITIES))}, "
            f"got {granularity!r}."
        )
    if granularity != "tensor" and custom:
        raise ValueError(
            f"The custom normalization {normalization!r} measures whole "
            f"tensors: granularity={granularity!r} needs a built-in norm."
        )
    names = [normalization] + list((mapped or {}).values())
    matrix = [n for n in names if is_matrix_norm(n)]
    if granularity != "tensor" and matrix:
        raise ValueError(
            f"The {matrix[0]!r} normalization measures a whole tensor as a "
            f"matrix: it takes granularity='tensor', got {granularity!r}."
        )
    if mapped and merges_all(granularity):
        raise ValueError(
            "`normalization_map` gives variables norms of their own, which "
            "granularity='global' (one norm over all gradients) cannot "
            "take: use granularity='tensor' or 'unit'."
        )


def is_matrix_norm(name):
    """Whether built-in `name` is measured on a tensor's matrix view
    (spectral: STAT_MATRIX in the header's norm table)."""
    return header_tables.ALIASES.get(name, name) in header_tables.MATRIX_NORMS


def spectral_indices(norms, facts):
    """The gradients a matrix norm measures as matrices: those of two or
    more axes whose norm is one, not excluded (the others' spectral norm is
    their l2 norm); in order."""
    return [i for i, (name, f) in enumerate(zip(norms, facts))
            if is_matrix_norm(name) and not f.excluded and f.rank is not None
            and f.rank >= 2]


def check_clippable(granularity, var_list, is_excluded):
    """AdaptiveClippedOptimizer at granularity "global" refuses to be built
    without a variable to clip (its threshold is a norm of the weights)."""
    if not merges_all(granularity) or any(not is_excluded(v) for v in var_list):
        return
    raise ValueError(
        "AdaptiveClippedOptimizer(granularity='global') needs at least one "
        f"variable to clip; got {len(var_list)} variables, all excluded from "
        "normalization."
        if var_list
        else "AdaptiveClippedOptimizer(granularity='global') needs at least "
        "one variable to clip; it was built with none."
    )


def merges_all(granularity):
    """Whether one norm measures all scaled gradients together."""
    return granularity == "global"


def several_dtypes_global(granularity, facts):
    """Whether a step takes one global norm over gradients of more than one
    dtype (those not excluded): the op, one call per dtype, cannot merge
    their statistics, so TensorFlow measures that norm."""
    if not merges_all(granularity):
        return False
    return len({f.dtype for f in facts if not f.excluded}) > 1


def update_kernel(inner):
    """The fused update rule for `inner`'s class and options, else None."""
    adapter = keras_adapters.adapter_for(inner)
    return adapter.rule(inner) if adapter is not None else None


def _blockers(facts, context):
    """Reasons no compiled op can run this step at all (empty when it can)."""
    found = []
    if not context.library_loaded:
        found.append(f"the op library is not loaded: {context.library_reason}")
    if context.xla:
        found.append(
            "the step is being compiled by XLA (jit_compile=True) and the "
            "compiled op has no XLA kernel"
        )
    if context.strategy is not None:
        if context.cross_replica:
            found.append("apply() was called in a cross-replica context")
        elif not context.strategy_fused:
            found.append(
                f"{context.strategy} is active (the compiled path runs "
                f"under {' and '.join(FUSED_STRATEGIES)} only)"
            )
    if context.library_loaded and facts:
        devices = context.kernel_devices
        elsewhere = sorted({f.device for f in facts} - devices)
        if elsewhere:
            why = f" ({context.no_gpu_kernels})" if "GPU" in elsewhere else ""
            found.append(
                f"variables live on {', '.join(elsewhere)} and the op library "
                f"has kernels for {', '.join(sorted(devices))} only{why}"
            )
    for f in facts:
        if f.dtype != f.variable_dtype:
            found.append(
                f"the gradient of {f.name} is {f.dtype} but the "
                f"variable is {f.variable_dtype}"
            )
        elif f.dtype not in COMPILED_DTYPES:
            found.append(f"dtype {f.dtype} has no compiled kernel")
        if f.overwrite:
            found.append(f"{f.name} is overwritten with its gradient")
    return found


def op_reads_rows(granularity):
    """Whether the op reads a sparse gradient's rows (raw_ops.sparse_rows):
    at granularity "tensor" or "global", on either device (the GPU kernel
    takes per-tensor norms only, `_beyond_compiled` keeps other steps off
    it)."""
    return granularity != "unit"


def _sparse_blockers(kernel, facts, granularity):
    """Why sparse gradients keep this step off the compiled path: with no
    fused update at all (the scale-only op would hand the inner optimizer a
    dense gradient), or under a rule whose Keras update writes only the
    indexed rows where the op cannot read rows (granularity "unit";
    keras_adapters.INDEXED_SLICES)."""
    sparse = [f.name for f in facts if f.sparse]
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
    if writes == keras_adapters.INDEXED_ROWS and not op_reads_rows(granularity):
        return [
            f"{which} sparse (IndexedSlices) and Keras's {kernel} update "
            "touches only the indexed rows, which the op reads at "
            "granularity 'tensor' or 'global' only, not 'unit': the "
            "pure-TF path keeps it sparse"
        ]
    return []


def _beyond_compiled(settings, path_name, facts):
    """Why the compiled op cannot do this wrapper's scaling on `path_name`,
    or None. The CPU op takes every granularity, exclusions and adaptive
    clipping; adaptive clipping needs the variables (the update op, not the
    scale-only one), a built-in norm and, globally, gradients of one dtype
    (the op takes a global norm over several dtypes measured in TF,
    `several_dtypes_global`, in the normalize and clip modes only); the op's
    GPU kernel takes per-tensor norms of every gradient.
    """
    found = []
    if settings.granularity not in OP_GRANULARITIES:
        found.append(f"granularity {settings.granularity!r}")
    adaptive = settings.scaling.reads_weights
    if adaptive and path_name == paths.FUSED_SCALE:
        found.append(
            "adaptive clipping with an inner optimizer that has no fused "
            "update (the scale-only op does not read the variables)"
        )
    if adaptive and settings.custom:
        found.append("adaptive clipping with a custom normalization")
    if adaptive and several_dtypes_global(settings.granularity, facts):
        found.append(
            "adaptive clipping with a global norm over gradients of "
            "several dtypes"
        )
    norms = settings.norm_list(len(facts))
    matrices = spectral_indices(norms, facts)
    if matrices and path_name == paths.FUSED_SCALE:
        found.append(
            "the spectral norm with an inner optimizer that has no fused "
            "update (the scale-only op has no spectral pass)"
        )
    if matrices and settings.custom:
        found.append(
            "the spectral norm beside a custom normalization (measured in "
            "TensorFlow, handed to the op as precomputed norms)"
        )
    sparse = [facts[i].name for i in matrices if facts[i].sparse]
    if sparse:
        found.append(
            f"the sparse gradient of {sparse[0]} under the spectral norm (the "
            "op's spectral pass reads dense matrices)"
        )
    on_gpu = any(f.device == "GPU" for f in facts)
    beyond_tensor = (
        settings.granularity != "tensor"
        or adaptive
        or any(f.excluded for f in facts)
    )
    if beyond_tensor and on_gpu:
        found.append(
            "variables on a GPU (the TF op's GPU kernel takes per-tensor "
            "norms of every gradient only)"
        )
    elif on_gpu and (len(set(norms)) > 1 or any(is_matrix_norm(n) for n in norms)):
        found.append(
            "variables on a GPU (the TF op's GPU kernel takes one statistics "
            "norm for every gradient: not the spectral norm, nor a "
            "normalization_map)"
        )
    if not found:
        return None
    return "the compiled op cannot scale here: " + "; ".join(found)


def _role(fact):
    if fact.overwrite:
        return OVERWRITE
    if fact.excluded:
        return EXCLUDED
    if fact.empty:
        return NO_GRADIENT
    return SCALED


def _form(fact, path, granularity):
    """Dense, or how a sparse gradient is read: the update op reads rows
    where it can and otherwise gets the dense tensor (only for rules whose
    Keras update moves every row, `_sparse_blockers`); the pure path keeps
    rows."""
    if not fact.sparse:
        return DENSE
    if path.name in (paths.FUSED, paths.FUSED_TF_NORMS) and not op_reads_rows(granularity):
        return DENSIFIED
    return ROWS


def scale_groups(granularity, roles, facts):
    """The scale groups of the scaled gradients: granularity as data."""
    scaled = tuple(i for i, role in enumerate(roles) if role == SCALED)
    if merges_all(granularity):
        return (Group(scaled, None, merged=True),) if scaled else ()
    unit = granularity == "unit"
    return tuple(Group((i,), _unit_axes(facts[i].rank) if unit else None) for i in scaled)


def _unit_axes(rank):
    """All axes but the last (one norm per index of it); a tensor of at
    most one axis is one unit (None: all axes)."""
    return tuple(range(rank - 1)) if rank is not None and rank >= 2 else None
