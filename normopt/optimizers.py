"""NormalizedOptimizer, ClippedOptimizer and AdaptiveClippedOptimizer:
Keras 3 optimizer wrappers.

For each gradient tensor g, with norm(g) one of `normopt.normalizations`:

    NormalizedOptimizer:       g' = g / norm(g)
    ClippedOptimizer:          g' = g * clipnorm / norm(g)  if norm(g) >= clipnorm
                               g' = g                       otherwise
    AdaptiveClippedOptimizer:  t = clip_factor * max(norm(w), eps)
                               g' = g * t / norm(g)  if norm(g) > t, else g

(norm(g) per tensor, per unit of the last axis, or over all gradients:
`granularity`)

then the inner optimizer's own update with g'. The inner optimizer owns every
slot variable and the iteration counter (`normopt.keras_wrapper`). Each step
runs a plan (`normopt.ops.step_plan`): the gradients scaled in keras.ops
math (`normopt.ops.scale_math`) or by a compiled op, which may run the whole
step (`normopt.ops.tf_backend`). The Keras backend's executor runs the plan
(`normopt.ops.executors`: tf_backend on TensorFlow, `normopt.ops.keras_step`
on JAX and PyTorch, where no TensorFlow is imported). Each wrapper kind says
how it scales (`_scaling`: scale_math.Normalize, Clip or Adaptive).
"""

import dataclasses
import numbers
import re
import sys

import keras
import numpy as np
from keras import ops
from keras.src.utils import tracking

from normopt import normalization_map as norm_map
from normopt import normalizations
from normopt.keras_wrapper import InnerOptimizerWrapper, check_base_options, resolve_inner
from normopt.ops import executors, keras_adapters, scale_math, spectral_math, step_plan

GRANULARITIES = step_plan.GRANULARITIES


def _check_fused(fused):
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"`fused` must be None, True or False, got {fused!r}.")
    return fused


class GradientNormMixin:
    """What the wrappers of both Kerases (this module's and
    normopt.tf_keras's) do alike, reading nothing of either Keras: the
    settings, exclusions, the step (plan, then the backend's executor runs
    it), a skipped step and the recorded norms. A subclass says how it
    scales (`_kind`, `_scaling()`), and keeps the recorded norms in
    `_gradient_norms` and the variables it was built with in
    `_trainable_variables`."""

    # A norm per variable (None: `normalization` for every variable).
    normalization_map = None

    # How this kind scales: a scale_math.Normalize, Clip or Adaptive class,
    # and `_scaling()` the instance with this wrapper's current arguments.
    _kind = scale_math.Normalize

    def _scaling(self):
        return self._kind()

    def _check_arguments(self, normalization, granularity, fused, skip_nonfinite, kwargs,
                         mapping=None):
        """Refuses what either Keras's wrapper refuses alike, before the base
        class is set up (`normalization` is checked already)."""
        step_plan.check_granularity(
            granularity, normalization, normalizations.custom_function(normalization) is not None,
            mapping)
        _check_fused(fused)
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(
                f"`skip_nonfinite` must be True or False, got {skip_nonfinite!r}."
            )
        check_base_options(type(self).__name__, kwargs)

    def _set_arguments(self, normalization, granularity, fused, skip_nonfinite):
        """Sets the checked arguments, once `inner_optimizer` is set."""
        self.normalization = normalization
        self.granularity = granularity
        self.fused = fused
        self.skip_nonfinite = skip_nonfinite
        self.last_path = None
        if fused:
            # What is known already fails now (a kind's own arguments are
            # not set yet: the plan reads only what its `_kind` says).
            step_plan.check_construction(
                self._settings(self._kind), self.inner_optimizer,
                executors.current().step_context(in_step=False))

    def _settings(self, scaling=None):
        return step_plan.Settings(
            fused=self.fused,
            normalization=self.normalization,
            granularity=self.granularity,
            scaling=scaling or self._scaling(),
            custom=normalizations.custom_function(self.normalization) is not None,
        )

    def exclude_from_normalization(self, var_list=None, var_names=None):
        """Leaves variables' gradients to the inner optimizer unchanged.

        As keras.optimizers.Optimizer.exclude_from_weight_decay: call it
        before the optimizer is built; `var_list` names variables, and a
        variable is also excluded when any of `var_names` matches its name
        (`re.search`). Excluded gradients are not normalized or clipped and
        do not count in a global norm. `var_names` are saved in the config.
        `var_names` is a list of patterns: a string alone is refused (its
        characters would be the patterns).
        """
        if self.built:
            raise ValueError(
                "`exclude_from_normalization()` can only be configured before "
                "the optimizer is built."
            )
        if isinstance(var_names, str):
            raise TypeError(
                "`var_names` must be a list of strings (regular expressions), "
                f"got the string {var_names!r}. Pass [{var_names!r}] to "
                "exclude the variables whose name it matches."
            )
        self._excluded_keys = {self._var_key(v) for v in var_list or ()}
        names = list(var_names or ())
        for name in names:
            if not isinstance(name, str):
                raise TypeError(
                    f"`var_names` must be strings (regular expressions), got {name!r}."
                )
        self._exclusion_names = names
        self._exclusion_pattern = re.compile("|".join(names)) if names else None

    def _is_excluded(self, variable):
        if self._var_key(variable) in getattr(self, "_excluded_keys", ()):
            return True
        pattern = getattr(self, "_exclusion_pattern", None)
        return pattern is not None and pattern.search(variable.name) is not None

    # Registry access under the names users of the old Keras 2 wrapper know.
    @staticmethod
    def set_normalization_function(name, fn, override=False):
        """Registers `fn(grad) -> norm` (eps included) under `name`."""
        normalizations.register_normalization(name, fn, override=override)

    @staticmethod
    def get_normalization_functions():
        """Sorted names of all available normalizations."""
        return normalizations.normalization_names()

    def _finite_step(self, gs, vs, replicas, plan):
        self._step(gs, vs, replicas, plan)
        return ops.convert_to_tensor(True)

    def _skip_step(self):
        self.skipped_steps.assign_add(1)
        return ops.convert_to_tensor(False)

    def _plan(self, gs, vs):
        """The StepPlan of a step on `gs` (raises FusedPathUnavailable for
        fused=True where the compiled path cannot run)."""
        run = executors.current()
        excluded = [self._is_excluded(v) for v in vs]
        settings = self._settings()
        if self.normalization_map:
            norms = self.__dict__["_variable_norms"]
            settings = dataclasses.replace(
                settings, norms=tuple(norms[self._var_key(v)] for v in vs))
        cache = self.__dict__.setdefault("_plan_cache", step_plan.PlanCache())
        return cache.plan(
            settings, self.inner_optimizer, run.plan_key(gs, vs, excluded),
            lambda: run.step_context(gs, vs, excluded, compiled=self.fused is not False))

    def _step(self, gs, vs, replicas, plan):
        """One step on gradients already summed across replicas, by `plan`.
        Returns the L2 norms the compiled op measured (parts,
        `_record_gradient_norms`), else None."""
        inner = self.inner_optimizer
        keras_adapters.restore_unsaved_state(inner)
        run = executors.current()
        vectors = self._step_vectors(vs)
        if plan.updates_variables:
            return run.run_fused_update(inner, plan, gs, vs, vectors=vectors)
        return run.run_inner_step(inner, plan, gs, vs, replicas, vectors=vectors)

    def _step_vectors(self, vs):
        """{index in vs: (gradient's vector, weight's vector or None)} of the
        matrices the spectral norm measures (none for a wrapper without
        them, normopt.tf_keras's included)."""
        vectors = self.__dict__.get("_spectral_vectors")
        if not vectors:
            return {}
        return {i: vectors[self._var_key(v)] for i, v in enumerate(vs)
                if self._var_key(v) in vectors}

    @property
    def gradient_norms(self):
        """L2 norm of each variable's raw gradient at the latest step.

        A float32 vector, one entry per variable the optimizer was built
        with (in that order, see `gradient_norm_names`): the gradient before
        normalization or clipping, unscaled under loss scaling, after the
        cross-replica sum; 0 for a variable whose gradient was None. None
        before the optimizer is built. Not saved with the optimizer.
        """
        norms = self.__dict__.get("_gradient_norms")
        return None if norms is None else executors.current().norms_value(norms)

    @property
    def gradient_norm_names(self):
        """The paths of the variables `gradient_norms` refers to, in order."""
        return [
            getattr(v, "path", v.name) for v in getattr(self, "_trainable_variables", [])
        ]

    def _record_gradient_norms(self, grads, variables, measured=None):
        """Stores the L2 norms of the raw gradients `grads` of `variables`
        (`measured`: the parts the compiled op took, tf_backend.record_norms)."""
        executors.current().record_norms(
            self._gradient_norms,
            [self._var_key(v) for v in self._trainable_variables],
            grads, variables, measured,
            keras_adapters.loss_scale_factor(self.inner_optimizer), self._var_key)


class ClipMixin:
    """ClippedOptimizer's threshold, of either Keras."""

    _kind = scale_math.Clip

    @property
    def clipnorm(self):
        """The largest norm a gradient keeps."""
        return self.__dict__.get("_threshold")

    @clipnorm.setter
    def clipnorm(self, value):
        # keras.Optimizer.__init__ sets clipnorm=None before the wrapper has
        # its threshold.
        if value is None and "_threshold" not in self.__dict__:
            return
        self.__dict__["_threshold"] = _check_clipnorm(value)

    def _scaling(self):
        return scale_math.Clip(self.clipnorm)

    def get_config(self):
        config = super().get_config()
        config["clipnorm"] = self.clipnorm
        return config


class AdaptiveMixin:
    """AdaptiveClippedOptimizer's clip_factor and eps, of either Keras."""

    _kind = scale_math.Adaptive

    def _scaling(self):
        return scale_math.Adaptive(self.clip_factor, self.eps)

    def get_config(self):
        config = super().get_config()
        config["clip_factor"] = self.clip_factor
        config["eps"] = self.eps
        return config


class _GradientNormWrapper(GradientNormMixin, InnerOptimizerWrapper):
    """Shared machinery of the wrappers: configuration, exclusions, the step
    (plan, then run it) and the recorded norms. A subclass says how it
    scales in `_scaling()`."""

    def __init__(
        self,
        optimizer,
        normalization="l2",
        fused=None,
        skip_nonfinite=False,
        name=None,
        loss_scale_factor=None,
        granularity="tensor",
        normalization_map=None,
        **kwargs,
    ):
        inner = resolve_inner(optimizer, _GradientNormWrapper)
        normalizations.check_normalization(normalization)
        mapping = norm_map.check_map(normalization_map, type(self).__name__)
        self._check_arguments(normalization, granularity, fused, skip_nonfinite, kwargs, mapping)
        super().__init__(inner, name=name, loss_scale_factor=loss_scale_factor)
        # Not tracked: Keras would wrap a dict attribute in its own type.
        self.__dict__["normalization_map"] = mapping
        self._set_arguments(normalization, granularity, fused, skip_nonfinite)

    def _new_norms_variable(self, count):
        return executors.current().norms_variable(count)

    def _unsaved_variables(self):
        # Off TensorFlow the recorded norms are a Keras variable a step
        # assigns: listed in `variables` for stateless steps, never saved.
        norms = self.__dict__.get("_gradient_norms")
        return [norms] if isinstance(norms, keras.Variable) else []

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        super().build(var_list)
        self._build_variable_norms(var_list)

    def _build_variable_norms(self, var_list):
        """Each variable's norm (`normalization_map`), and the persistent
        vectors of the matrices the spectral norm measures, after
        `skipped_steps` in the saved variables: per such variable in
        `var_list` order, `<path>_spectral_grad` (the estimate of its
        gradient's top right singular vector) and, for a wrapper that
        measures the weights too, `<path>_spectral_weight`. A wrapper
        without the spectral norm adds none, so its saved layout is that
        of earlier versions."""
        norms, vectors = {}, {}
        reads_weights = self._kind.reads_weights
        for v in var_list:
            path = norm_map.variable_path(v)
            name = norm_map.norm_for(self.normalization_map, path, self.normalization)
            norms[self._var_key(v)] = name
            if not (step_plan.is_matrix_norm(name) and spectral_math.has_matrix(v.shape)
                    and not self._is_excluded(v)):
                continue
            made = []
            for role in ("grad", "weight") if reads_weights else ("grad",):
                made.append(self.add_variable(
                    shape=(spectral_math.vector_size(v.shape),),
                    dtype=scale_math.accumulation_dtype(v.dtype),
                    initializer="zeros",
                    aggregation="only_first_replica",
                    name=f"{path.replace('/', '_')}_spectral_{role}",
                ))
            vectors[self._var_key(v)] = (made[0], made[1] if reads_weights else None)
        self.__dict__["_variable_norms"] = norms
        self.__dict__["_spectral_vectors"] = vectors


    def apply(self, grads, trainable_variables=None):
        # Inside a user's tf.function, traced without AutoGraph
        # (tf_backend.unconverted), as Keras's own optimizers are.
        return executors.current().unconverted(self._apply)(grads, trainable_variables)

    def _apply(self, grads, trainable_variables):
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer "
                    "must already be built; call `optimizer.build(vars)`."
                )
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"Got {len(grads)} gradients for {len(trainable_variables)} "
                "variables."
            )
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        else:
            self._check_variables_are_known(trainable_variables)
        # Keras's own rules: all None raises, some None warns.
        gs, vs = self._filter_empty_gradients(grads, trainable_variables)
        run = executors.current()
        if self.loss_scale_factor is not None:
            # Set on the wrapper (as keras.optimizers.MultiOptimizer does):
            # gradients of a loss scaled by scale_loss, unscaled before the
            # norm is measured.
            gs = run.unscale_all(gs, vs, self.loss_scale_factor)
        # Under tf.distribute the norm is that of the cross-replica sum: the
        # gradient of the global batch, as one replica would see it (under
        # keras.distribution on JAX the gradients are that sum already).
        replicas = run.replicas_in_sync()
        if replicas > 1:
            gs = run.all_reduce_sum(gs)
        with keras.name_scope(self.name, caller=self):
            # Planned before any skip: `last_path` names the path of a
            # skipped step too (the one it would have taken), in eager mode
            # as when traced.
            plan = self._plan(gs, vs)
            self.last_path = plan.path
            if not self.skip_nonfinite:
                self._record_gradient_norms(gs, vs, self._step(gs, vs, replicas, plan))
                return
            # The step may not run: the norms are taken before it.
            self._record_gradient_norms(gs, vs)
            run.step_if_finite(
                self._finite_step, self._skip_step, gs, (gs, vs, replicas, plan), replicas,
                state=self.variables + list(self._trainable_variables))

    def get_config(self):
        config = super().get_config()
        return {
            "name": config["name"],
            "optimizer": config["optimizer"],
            "normalization": self.normalization,
            "granularity": self.granularity,
            "fused": self.fused,
            "skip_nonfinite": self.skip_nonfinite,
            "loss_scale_factor": config["loss_scale_factor"],
            "exclude_from_normalization": list(getattr(self, "_exclusion_names", [])),
            "normalization_map": (None if self.normalization_map is None
                                  else dict(self.normalization_map)),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        excluded = config.pop("exclude_from_normalization", None)
        optimizer = super().from_config(config, custom_objects=custom_objects)
        if excluded:
            optimizer.exclude_from_normalization(var_names=excluded)
        return optimizer


@keras.saving.register_keras_serializable(package="normopt")
class NormalizedOptimizer(_GradientNormWrapper):
    """Normalizes each gradient by its own norm before the inner update.

        g' = g / norm(g)

    Args:
        optimizer: a Keras 3 optimizer, or an identifier such as "adam".
        normalization: a built-in norm name (see
            `get_normalization_functions()`) or a registered custom one.
        fused: None picks the compiled op when it can run, else pure TF;
            True requires the compiled op (clear error when it cannot run);
            False always uses pure TF.
        skip_nonfinite: False (default) passes inf/NaN gradients on as the
            inner optimizer would get them; True skips any step whose
            gradients hold an inf or NaN (no variable or slot changes) and
            counts it in `skipped_steps`, which is saved with the model.
            `last_path` then names the path the skipped step would have
            taken (in eager mode as under tf.function, which traces both).
        name: the wrapper's name.
        loss_scale_factor: None, or the factor `scale_loss` multiplies the
            loss by; gradients are divided by it before their norms are
            measured (keras.optimizers.MultiOptimizer sets it). A factor
            set on the wrapper after construction, as MultiOptimizer and
            LossScaleOptimizer (None) do, replaces the inner optimizer's,
            which is cleared, as Keras clears that of an optimizer it wraps.
        granularity: "tensor" (default: one norm per gradient tensor),
            "unit" (one norm per index of the last axis, over all other
            axes) or "global" (one norm over every non-excluded gradient,
            as if concatenated). The spectral norm takes "tensor" only.
        normalization_map: None, or a dict {pattern: norm} giving
            variables norms of their own (built-in names, "spectral"
            included), matched on `variable.path` as keras.optimizers'
            OptimizerMap does: an exact path first, then `re.fullmatch` of
            each pattern; a variable matching several patterns is a
            ValueError when the optimizer is built; unmatched variables
            use `normalization`. Saved in the config. Not with
            granularity "global".

    Options of the inner optimizer (`weight_decay`, `use_ema`, ...) are read
    and set through the wrapper; `clipnorm`, `clipvalue` and
    `global_clipnorm` are refused on it.
    """

    _kind = scale_math.Normalize


@keras.saving.register_keras_serializable(package="normopt")
class ClippedOptimizer(ClipMixin, _GradientNormWrapper):
    """Rescales each gradient whose norm reaches `clipnorm` down to it.

        g' = g * clipnorm / norm(g)  if norm(g) >= clipnorm, else g

    Args:
        optimizer: a Keras 3 optimizer, or an identifier such as "adam".
        normalization: norm used for the comparison (default "l2").
        clipnorm: positive number, the largest norm a gradient keeps.
        fused, skip_nonfinite, loss_scale_factor, granularity,
            normalization_map: as for NormalizedOptimizer.
        name: the wrapper's name.
    """

    def __init__(
        self,
        optimizer,
        normalization="l2",
        clipnorm=1.0,
        fused=None,
        skip_nonfinite=False,
        name=None,
        loss_scale_factor=None,
        normalization_map=None,
        **kwargs,
    ):
        _check_clipnorm(clipnorm)
        super().__init__(
            optimizer,
            normalization,
            fused=fused,
            skip_nonfinite=skip_nonfinite,
            name=name,
            loss_scale_factor=loss_scale_factor,
            normalization_map=normalization_map,
            **kwargs,
        )
        self.clipnorm = clipnorm


def _check_clipnorm(clipnorm):
    """A finite clipnorm > 0 as a float, else ValueError."""
    return _check_finite(clipnorm, "clipnorm", "ClippedOptimizer", low=0.0, strict=True)


@keras.saving.register_keras_serializable(package="normopt")
class AdaptiveClippedOptimizer(AdaptiveMixin, _GradientNormWrapper):
    """Adaptive gradient clipping (NFNets): clips relative to the weights' norm.

    Per unit (or per tensor, or globally, by `granularity`), with `norm` the
    chosen normalization and w the variable's current value:

        wn = max(norm(w), eps),  gn = norm(g)
        g' = g * clip_factor * wn / gn   if gn > clip_factor * wn
        g' = g                           otherwise

    Args:
        optimizer: a Keras 3 optimizer, or an identifier such as "adam".
        clip_factor: finite number > 0, the largest gradient-to-weight norm
            ratio a unit keeps.
        eps: finite number >= 0, the smallest weight norm used (so units
            whose weights are zero still get a threshold).
        normalization: the norm of g and w (default "l2"); with "spectral"
            (granularity "tensor") w's norm is its spectral norm too.
        granularity: "unit" (default: one norm per index of the last axis),
            "tensor" or "global".
        fused, skip_nonfinite, name, loss_scale_factor, normalization_map:
            as for NormalizedOptimizer.
    """

    def __init__(
        self,
        optimizer,
        clip_factor=0.01,
        eps=1e-3,
        normalization="l2",
        granularity="unit",
        fused=None,
        skip_nonfinite=False,
        name=None,
        loss_scale_factor=None,
        normalization_map=None,
        **kwargs,
    ):
        self_name = type(self).__name__
        clip_factor = _check_finite(clip_factor, "clip_factor", self_name, low=0.0, strict=True)
        eps = _check_finite(eps, "eps", self_name, low=0.0, strict=False)
        super().__init__(
            optimizer,
            normalization,
            fused=fused,
            skip_nonfinite=skip_nonfinite,
            name=name,
            loss_scale_factor=loss_scale_factor,
            granularity=granularity,
            normalization_map=normalization_map,
            **kwargs,
        )
        self.clip_factor = clip_factor
        self.eps = eps

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        step_plan.check_clippable(self.granularity, var_list, self._is_excluded)
        super().build(var_list)


def _is_variable(value):
    if isinstance(value, keras.Variable):
        return True
    tf = sys.modules.get("tensorflow")  # a tf.Variable exists only if TF is loaded
    return tf is not None and isinstance(value, tf.Variable)


def _concrete_number(value, name, owner):
    """A scalar tensor with a value now (eager) or a NumPy scalar, as a
    float; any other tensor or variable is a ValueError, as every bad value
    of these arguments (a Python number is needed: the wrapper keeps the
    value, not a tensor it could read later)."""
    if _is_variable(value):
        raise ValueError(
            f"{owner}: `{name}` must be a Python number, got a variable "
            f"({value!r}); its later values would not be seen. Pass its "
            "value as a number."
        )
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "fiu":
        return float(value)
    if keras.backend.backend() != "tensorflow":
        return _concrete_backend_number(value, name, owner)
    import tensorflow as tf

    if tf.is_tensor(value) and (value.dtype.is_floating or value.dtype.is_integer):
        if not hasattr(value, "numpy"):
            raise ValueError(
                f"{owner}: `{name}` must be a Python number, got the symbolic "
                f"tensor {value!r} (a tensor is taken only where it has a "
                "value, in eager mode)."
            )
        if value.shape.rank != 0:
            raise ValueError(
                f"{owner}: `{name}` must be a Python number, got a tensor of "
                f"shape {value.shape}."
            )
        return float(value.numpy())
    return value


def _concrete_backend_number(value, name, owner):
    """`_concrete_number` for a JAX or PyTorch tensor: a concrete real
    scalar as a float; a traced one (under jax.jit) or one of another shape
    is a ValueError."""
    if not ops.is_tensor(value):
        return value
    dtype = keras.backend.standardize_dtype(value.dtype)
    if not (dtype.startswith(("float", "bfloat", "int", "uint"))):
        return value
    try:
        array = ops.convert_to_numpy(value)
    except Exception:  # a tracer has no value: any failure says so
        raise ValueError(
            f"{owner}: `{name}` must be a Python number, got the symbolic "
            f"tensor {value!r} (a tensor is taken only where it has a value, "
            "in eager mode)."
        ) from None
    if array.shape != ():
        raise ValueError(
            f"{owner}: `{name}` must be a Python number, got a tensor of "
            f"shape {tuple(array.shape)}."
        )
    return float(array)


def _check_finite(value, name, owner, low, strict):
    """`value` (a number, or a concrete scalar tensor: `_concrete_number`)
    as a float if finite and > low (strict) or >= low, else ValueError."""
    value = _concrete_number(value, name, owner)
    ok = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and value == value
        and value != float("inf")
        and (value > low if strict else value >= low)
    )
    if not ok:
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ValueError(f"{owner}: `{name}` must be a finite number {bound}, got {value!r}.")
    return float(value)
