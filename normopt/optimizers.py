"""NormalizedOptimizer and ClippedOptimizer: Keras 3 optimizer wrappers.

For each gradient tensor g, with norm(g) one of `normopt.normalizations`:

    NormalizedOptimizer:  g' = g / norm(g)
    ClippedOptimizer:     g' = g * clipnorm / norm(g)  if norm(g) >= clipnorm
                          g' = g                       otherwise

then the inner optimizer's own update with g'. The inner optimizer owns every
slot variable and the iteration counter; the wrapper only transforms the
gradients (pure TF), or hands the whole step to a fused compiled op when one
exists for the inner optimizer (see `normopt.ops.fused_step`).
"""

import numbers
import re
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras.src.utils import tracking

from normopt import normalizations
from normopt.ops import fused_step, keras_adapters, paths
from normopt.ops.tf_reference import ADAPTIVE, CLIP, NORMALIZE, scale_gradients


def _resolve_inner(optimizer):
    if isinstance(optimizer, _GradientNormWrapper):
        raise TypeError(
            "The inner optimizer is already a normopt wrapper; wrap a plain "
            "Keras optimizer instead."
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "The inner optimizer must not be a LossScaleOptimizer: the wrapper "
            "would measure loss-scaled gradients. Put the loss scaling outside, "
            "LossScaleOptimizer(NormalizedOptimizer(...)) (model.compile does "
            "this itself under a mixed_float16 policy)."
        )
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    if isinstance(optimizer, (str, dict)):
        try:
            resolved = keras.optimizers.get(optimizer)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"Could not build a Keras optimizer from {optimizer!r}: {exc}"
            ) from None
        if isinstance(resolved, keras.optimizers.Optimizer):
            return resolved
    raise TypeError(
        "`optimizer` must be a Keras 3 optimizer instance (e.g. "
        "keras.optimizers.Adam()) or an identifier keras.optimizers.get "
        f"accepts (e.g. 'adam'); got {type(optimizer).__name__}: "
        f"{optimizer!r}."
    )


def _replicas_in_sync():
    """Replica count when apply() runs per replica under tf.distribute, else 1."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return 1
    return tf.distribute.get_strategy().num_replicas_in_sync


def _all_finite(grads):
    """One boolean: every element of every gradient is finite."""
    checks = []
    for g in grads:
        values = g.values if isinstance(g, tf.IndexedSlices) else g
        checks.append(tf.reduce_all(tf.math.is_finite(values)))
    return tf.reduce_all(tf.stack(checks))


GRANULARITIES = ("tensor", "unit", "global")


def _check_granularity(granularity):
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"`granularity` must be one of {', '.join(map(repr, GRANULARITIES))}, "
            f"got {granularity!r}."
        )


def _check_fused(fused):
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"`fused` must be None, True or False, got {fused!r}.")
    return fused


# Base-optimizer options that belong to the inner optimizer: the wrapper reads
# and sets the inner optimizer's (`opt.weight_decay = 0.1` sets the inner's),
# and refuses them as its own constructor arguments unless at their defaults
# (as keras.optimizers.LossScaleOptimizer does).
INNER_OPTIONS = {
    "weight_decay": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "gradient_accumulation_steps": None,
}
# Gradient clipping the wrapper would misread: it would clip the gradients the
# wrapper then rescales. Refused on the wrapper (ClippedOptimizer's own
# `clipnorm` is its threshold); the inner optimizer may clip its input.
CLIP_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm")


def _check_base_options(cls_name, kwargs):
    """Refuses base-optimizer keyword arguments the wrapper must not take."""
    for name, default in INNER_OPTIONS.items():
        value = kwargs.pop(name, default)
        if value != default:
            raise ValueError(
                f"{cls_name} does not take `{name}`: it belongs to the inner "
                f"optimizer. Set it there, e.g. {cls_name}(keras.optimizers."
                f"AdamW(..., {name}=...)); `wrapper.{name}` reads and sets the "
                "inner optimizer's."
            )
    for name in CLIP_OPTIONS:
        if kwargs.pop(name, None) is not None:
            raise ValueError(_clip_refusal(cls_name, name))
    if kwargs:
        raise ValueError(f"Argument(s) not recognized: {kwargs}")


def _clip_refusal(cls_name, name):
    return (
        f"{cls_name} does not support `{name}`: it would clip gradients that "
        "the wrapper then rescales. Use ClippedOptimizer(optimizer, "
        f"normalization, clipnorm=...) to clip by a norm, or set `{name}` on "
        "the inner optimizer to clip the gradients it receives."
    )


def _inner_option(name):
    """A property that reads and sets the inner optimizer's `name`."""

    def get(self):
        return getattr(self.inner_optimizer, name)

    def set_(self, value):
        # keras.Optimizer.__init__ assigns its defaults before the inner
        # optimizer is attached: those are not the user's.
        if "inner_optimizer" in self.__dict__:
            setattr(self.inner_optimizer, name, value)

    return property(get, set_, doc=f"The inner optimizer's `{name}`.")


def _refused_option(name):
    """A property that is None and refuses any other value."""

    def get(self):
        return None

    def set_(self, value):
        if value is not None:
            raise ValueError(_clip_refusal(type(self).__name__, name))

    return property(get, set_, doc=f"Always None: see `{name}` refusal.")


def _unscale(grad, factor):
    """grad / factor, keeping IndexedSlices sparse."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(
            grad.values / tf.cast(factor, grad.values.dtype),
            grad.indices,
            grad.dense_shape,
        )
    return grad / tf.cast(factor, grad.dtype)


def _times(grad, factor):
    """grad * factor, keeping IndexedSlices sparse."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * factor, grad.indices, grad.dense_shape)
    return grad * factor


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


def _deduplicated(grad):
    """An IndexedSlices with duplicate indices summed (others as they are)."""
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    values, indices = normalizations.deduplicate(grad)
    return tf.IndexedSlices(values, indices, grad.dense_shape)


class _GradientNormWrapper(keras.optimizers.Optimizer):
    """Shared machinery of the two wrappers; `_mode` says which one."""

    _mode = None

    def __init__(
        self,
        optimizer,
        normalization="l2",
        fused=None,
        skip_nonfinite=False,
        name=None,
        loss_scale_factor=None,
        granularity="tensor",
        **kwargs,
    ):
        inner = _resolve_inner(optimizer)
        normalizations.check_normalization(normalization)
        _check_granularity(granularity)
        if granularity != "tensor" and normalizations.custom_function(normalization):
            raise ValueError(
                f"The custom normalization {normalization!r} measures whole "
                f"tensors: granularity={granularity!r} needs a built-in norm."
            )
        _check_fused(fused)
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(
                f"`skip_nonfinite` must be True or False, got {skip_nonfinite!r}."
            )
        _check_base_options(type(self).__name__, kwargs)
        super().__init__(
            learning_rate=0.0, loss_scale_factor=loss_scale_factor, name=name
        )
        self.inner_optimizer = inner
        self.normalization = normalization
        self.granularity = granularity
        self.fused = fused
        self.skip_nonfinite = skip_nonfinite
        self.last_path = None
        if fused:
            self._check_fused_possible()

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

    def _beyond_compiled(self, path, grads, variables):
        """Why the compiled op cannot do this wrapper's scaling on `path`,
        or None. The CPU op takes every granularity, exclusions and adaptive
        clipping; adaptive clipping needs the variables (the update op, not
        the scale-only one), a built-in norm and, globally, gradients of one
        dtype (the op takes a global norm over several dtypes measured in TF,
        fused_step.several_dtypes_global, in the normalize and clip modes
        only); the op's GPU kernel takes per-tensor norms of every gradient.
        """
        found = []
        adaptive = self._mode == ADAPTIVE
        if adaptive and path == paths.FUSED_SCALE:
            found.append(
                "adaptive clipping with an inner optimizer that has no fused "
                "update (the scale-only op does not read the variables)"
            )
        if adaptive and normalizations.custom_function(self.normalization):
            found.append("adaptive clipping with a custom normalization")
        if adaptive and self._several_dtypes_global(grads, variables):
            found.append(
                "adaptive clipping with a global norm over gradients of "
                "several dtypes"
            )
        beyond_tensor = (
            self.granularity != "tensor"
            or adaptive
            or any(self._is_excluded(v) for v in variables)
        )
        if beyond_tensor and any(
            fused_step.device_type(v) == "GPU" for v in variables
        ):
            found.append(
                "variables on a GPU (the TF op's GPU kernel takes per-tensor "
                "norms of every gradient only)"
            )
        if not found:
            return None
        return "the compiled op cannot scale here: " + "; ".join(found)

    def _excluded_ids(self, variables):
        return frozenset(id(v) for v in variables if self._is_excluded(v))

    def _several_dtypes_global(self, grads, variables):
        return fused_step.several_dtypes_global(
            self.granularity, self._excluded_ids(variables), grads, variables
        )

    def _scaling(self, variables):
        """The fused_step.Scaling of this wrapper for `variables`."""
        adaptive = self._mode == ADAPTIVE
        return fused_step.Scaling(
            normalization=self.normalization,
            mode=self._mode,
            clipnorm=self.clip_factor if adaptive else self._clipnorm_value(),
            granularity=self.granularity,
            excluded=self._excluded_ids(variables),
            weight_eps=self.eps if adaptive else 0.0,
        )

    def _check_fused_possible(self):
        """fused=True: fail at construction for what is known already."""
        path = fused_step.choose_path(
            True, self.normalization, self.inner_optimizer, [], [], in_step=False
        )
        beyond = self._beyond_compiled(path.name, [], [])
        if beyond:
            raise fused_step.FusedPathUnavailable(
                f"fused=True but the compiled path cannot run: {beyond}. "
                "Use fused=None to fall back to pure TensorFlow."
            )

    # Registry access under the names users of the old Keras 2 wrapper know.
    @staticmethod
    def set_normalization_function(name, fn, override=False):
        """Registers `fn(grad) -> norm` (eps included) under `name`."""
        normalizations.register_normalization(name, fn, override=override)

    @staticmethod
    def get_normalization_functions():
        """Sorted names of all available normalizations."""
        return normalizations.normalization_names()

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        # Always created, so the saved variable list does not depend on
        # skip_nonfinite.
        self.skipped_steps = self.add_variable(
            shape=(),
            dtype="int",
            initializer="zeros",
            aggregation="only_first_replica",
            name="skipped_steps",
        )
        self.inner_optimizer.build(var_list)
        # Not a Keras variable and not tracked: the recorded norms are no part
        # of the saved optimizer state, so files keep their variable count.
        self.__dict__["_gradient_norms"] = tf.Variable(
            tf.zeros([len(var_list)], tf.float32),
            trainable=False,
            name="gradient_norms",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        # keras.Optimizer.build would read the delegated use_ema and
        # gradient_accumulation_steps and give the wrapper EMA and
        # accumulator slots of its own: the inner optimizer holds those. The
        # wrapper keeps only the variable index (for unknown-variable checks).
        self._trainable_variables_indices = {
            self._var_key(v): i for i, v in enumerate(var_list)
        }
        self._trainable_variables = list(var_list)
        self.built = True

    def __setattr__(self, name, value):
        # `loss_scale_factor` set from outside after construction: the outer
        # optimizer takes over the loss scaling (LossScaleOptimizer sets
        # None on its inner optimizer, MultiOptimizer its own factor), so
        # the inner optimizer must not unscale by a factor of its own too;
        # Keras clears it only one level down, on the wrapper. (Here, not in
        # a property setter: Keras's tracking skips the assignment of the
        # value an attribute already has, None over None included.)
        if name == "loss_scale_factor" and "inner_optimizer" in self.__dict__:
            if self.inner_optimizer.loss_scale_factor is not None:
                self.inner_optimizer.loss_scale_factor = None
        super().__setattr__(name, value)

    weight_decay = _inner_option("weight_decay")
    use_ema = _inner_option("use_ema")
    ema_momentum = _inner_option("ema_momentum")
    ema_overwrite_frequency = _inner_option("ema_overwrite_frequency")
    gradient_accumulation_steps = _inner_option("gradient_accumulation_steps")
    clipnorm = _refused_option("clipnorm")
    clipvalue = _refused_option("clipvalue")
    global_clipnorm = _refused_option("global_clipnorm")

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """The inner optimizer's `exclude_from_weight_decay`."""
        self.inner_optimizer.exclude_from_weight_decay(
            var_list=var_list, var_names=var_names
        )

    @property
    def _model_variables_moving_average(self):
        # keras.callbacks.SwapEMAWeights looks one level into a
        # LossScaleOptimizer and finds the wrapper: point it at the EMA.
        return keras_adapters.model_variables_moving_average(self.inner_optimizer)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

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
        return None if norms is None else tf.convert_to_tensor(norms)

    @property
    def gradient_norm_names(self):
        """The paths of the variables `gradient_norms` refers to, in order."""
        return [
            getattr(v, "path", v.name) for v in getattr(self, "_trainable_variables", [])
        ]

    def _record_gradient_norms(self, grads, variables, measured=None):
        """Stores the L2 norms of the raw gradients `grads` of `variables`.

        `measured`: the norms the compiled op took from the statistics it
        reads anyway (of the gradients unscaled), as parts (variables,
        vector); the norms of gradients in no part are taken here in TF.
        Ops per step: a cast (and a concat and a scatter where the parts do
        not cover the variables in order) and the assign.
        """
        parts = list(measured or [])
        covered = {self._var_key(v) for part, _ in parts for v in part}
        rest = [(g, v) for g, v in zip(grads, variables) if self._var_key(v) not in covered]
        if rest:
            factor = self.inner_optimizer.loss_scale_factor
            norms = []
            for g, _ in rest:
                norm = normalizations.tf_norm(g, "l2", eps=0.0)
                if factor is not None:
                    norm = norm / tf.cast(factor, norm.dtype)
                norms.append(tf.cast(norm, tf.float32))
            parts.append(([v for _, v in rest], tf.stack(norms)))
        vectors = [tf.cast(vector, tf.float32) for _, vector in parts]
        values = vectors[0] if len(vectors) == 1 else tf.concat(vectors, 0)
        order = [self._var_key(v) for part, _ in parts for v in part]
        keys = [self._var_key(v) for v in self._trainable_variables]
        if order != keys:
            # some variables had no gradient (0), or the parts are in another order
            index = {k: i for i, k in enumerate(keys)}
            values = tf.scatter_nd(
                [[index[k]] for k in order], values, [len(keys)]
            )
        self._gradient_norms.assign(values)

    def save_own_variables(self, store):
        """Saves the wrapper's own variables only.

        The inner optimizer is a child of the wrapper in a saved file and
        saves its own state under `inner_optimizer/`.
        """
        for i, variable in enumerate(self._variables):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        if not self.built:
            # The inner optimizer is not built either and says so itself.
            return
        own = self._variables
        saved = len(store.keys())
        # Files of normopt 0.1.0 hold the wrapper's variables followed by a
        # copy of the inner optimizer's, which loads from inner_optimizer/.
        legacy = len(own) + len(self.inner_optimizer.variables)
        if saved in (len(own), legacy):
            for i, variable in enumerate(own):
                variable.assign(store[str(i)])
            return
        warnings.warn(
            f"Skipping variable loading for optimizer '{self.name}', because "
            f"it has {len(own)} variables whereas the saved optimizer has "
            f"{saved} variables.",
            stacklevel=2,
        )

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def _clipnorm_value(self):
        return 1.0

    def scale_loss(self, loss):
        loss = self.inner_optimizer.scale_loss(loss)
        if self.loss_scale_factor is not None:
            loss = loss * self.loss_scale_factor
        return loss

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def apply_gradients(self, grads_and_vars):
        grads, trainable_variables = zip(*grads_and_vars)
        self.apply(grads, trainable_variables)
        return self.iterations

    def apply(self, grads, trainable_variables=None):
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
        factor = self.loss_scale_factor
        if factor is not None:
            # Set on the wrapper (as keras.optimizers.MultiOptimizer does):
            # gradients of a loss scaled by scale_loss, unscaled before the
            # norm is measured.
            gs = [
                g if getattr(v, "overwrite_with_gradient", False) else _unscale(g, factor)
                for g, v in zip(gs, vs)
            ]
        # Under tf.distribute the norm is that of the cross-replica sum: the
        # gradient of the global batch, as one replica would see it.
        replicas = _replicas_in_sync()
        if replicas > 1:
            gs = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, gs
            )
        with keras.name_scope(self.name, caller=self):
            # Chosen before any skip: `last_path` names the path of a skipped
            # step too (the one it would have taken), in eager mode as when
            # traced.
            path = self._step_path(gs, vs)
            self.last_path = path
            if not self.skip_nonfinite:
                self._record_gradient_norms(gs, vs, self._step(gs, vs, replicas, path))
                return
            # The step may not run: the norms are taken before it, in TF.
            self._record_gradient_norms(gs, vs)
            if replicas > 1:
                # A cond whose branch calls merge_call (as the inner apply
                # does) must run in cross-replica context.
                tf.distribute.get_replica_context().merge_call(
                    self._distributed_step_if_finite,
                    args=(gs, vs, replicas, _all_finite(gs), path),
                )
            else:
                tf.cond(
                    _all_finite(gs),
                    lambda: self._finite_step(gs, vs, path),
                    self._skip_step,
                )

    def _distributed_step_if_finite(self, distribution, gs, vs, replicas, finite, path):
        # Every replica holds the same all-reduced gradients, hence the same
        # verdict: take the first.
        finite = distribution.experimental_local_results(finite)[0]

        def step():
            distribution.extended.call_for_each_replica(
                self._step, args=(gs, vs, replicas, path)
            )
            return tf.constant(True)

        tf.cond(finite, step, self._skip_step)

    def _finite_step(self, gs, vs, path):
        self._step(gs, vs, 1, path)
        return tf.constant(True)

    def _skip_step(self):
        self.skipped_steps.assign_add(1)
        return tf.constant(False)

    def _step_path(self, gs, vs):
        """The StepPath of a step on `gs` (fused_step.choose_path, then what
        the compiled op cannot scale); raises FusedPathUnavailable for
        fused=True where the op cannot run."""
        path = fused_step.choose_path(
            self.fused, self.normalization, self.inner_optimizer, gs, vs,
            granularity=self.granularity,
        )
        if path.name not in paths.COMPILED:
            return path
        beyond = self._beyond_compiled(path.name, gs, vs)
        if beyond:
            if self.fused:
                raise fused_step.FusedPathUnavailable(
                    f"fused=True but the compiled path cannot run: {beyond}. "
                    "Use fused=None to fall back to pure TensorFlow."
                )
            return paths.StepPath(paths.TF, beyond)
        if self._several_dtypes_global(gs, vs):
            name = paths.FUSED_SCALE if path.name == paths.FUSED_SCALE else paths.FUSED_TF_NORMS
            return paths.StepPath(name, fused_step.SEVERAL_DTYPES_REASON)
        return path

    def _step(self, gs, vs, replicas, path):
        """One step on gradients already summed across replicas, on `path`
        (`_step_path`); returns the L2 norms the compiled op measured
        (parts, `_record_gradient_norms`), else None."""
        inner = self.inner_optimizer
        keras_adapters.restore_unsaved_state(inner)
        if path.name in (paths.FUSED, paths.FUSED_TF_NORMS):
            return fused_step.run_fused_update(inner, self._scaling(vs), gs, vs)
        factor = inner.loss_scale_factor
        if factor is not None:
            # The inner optimizer unscales after us: measure the norm of the
            # true gradient, then hand back a scaled result.
            gs = [_unscale(g, factor) for g in gs]
        # Gradients overwriting their variable, and excluded ones, pass.
        keep = [
            i
            for i, v in enumerate(vs)
            if not getattr(v, "overwrite_with_gradient", False)
            and not self._is_excluded(v)
        ]
        kept_gs = [gs[i] for i in keep]
        kept_vs = [vs[i] for i in keep]
        measured = None
        if not keep:
            scaled_kept = []
        elif path.name == paths.FUSED_SCALE:
            scaled_kept, measured = fused_step.run_fused_scale(
                self._scaling([]), kept_gs, kept_vs
            )
            # (the op measured the kept gradients, unscaled; the others are
            # measured in _record_gradient_norms)
        else:
            scaled_kept = scale_gradients(
                kept_gs,
                self.normalization,
                self._mode,
                self._clipnorm_value(),
                granularity=self.granularity,
                weights=kept_vs,
                clip_factor=getattr(self, "clip_factor", None),
                weight_eps=getattr(self, "eps", None),
            )
        # Excluded IndexedSlices go on as the dense tensor they stand for,
        # as scaled ones do: duplicate indices summed (Keras's nonlinear
        # updates, Adam's v += g^2, would square each duplicate row apart),
        # so both paths give the numbers of that dense tensor.
        scaled = [
            _deduplicated(g)
            if self._is_excluded(v) and not getattr(v, "overwrite_with_gradient", False)
            else g
            for g, v in zip(gs, vs)
        ]
        for i, s in zip(keep, scaled_kept):
            scaled[i] = s
        if factor is not None:
            scaled = [_times(g, factor) for g in scaled]
        if replicas > 1:
            first = tf.equal(
                tf.distribute.get_replica_context().replica_id_in_sync_group, 0
            )
            scaled = [_replica_share(g, replicas, first) for g in scaled]
        inner.apply(scaled, vs)
        return measured

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer
            ),
            "normalization": self.normalization,
            "granularity": self.granularity,
            "fused": self.fused,
            "skip_nonfinite": self.skip_nonfinite,
            "loss_scale_factor": self.loss_scale_factor,
            "exclude_from_normalization": list(getattr(self, "_exclusion_names", [])),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        excluded = config.pop("exclude_from_normalization", None)
        optimizer = cls(inner, **config)
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

    Options of the inner optimizer (`weight_decay`, `use_ema`, ...) are read
    and set through the wrapper; `clipnorm`, `clipvalue` and
    `global_clipnorm` are refused on it.
    """

    _mode = NORMALIZE


@keras.saving.register_keras_serializable(package="normopt")
class ClippedOptimizer(_GradientNormWrapper):
    """Rescales each gradient whose norm reaches `clipnorm` down to it.

        g' = g * clipnorm / norm(g)  if norm(g) >= clipnorm, else g

    Args:
        optimizer: a Keras 3 optimizer, or an identifier such as "adam".
        normalization: norm used for the comparison (default "l2").
        clipnorm: positive number, the largest norm a gradient keeps.
        fused, skip_nonfinite, loss_scale_factor: as for NormalizedOptimizer.
        name: the wrapper's name.
    """

    _mode = CLIP

    def __init__(
        self,
        optimizer,
        normalization="l2",
        clipnorm=1.0,
        fused=None,
        skip_nonfinite=False,
        name=None,
        loss_scale_factor=None,
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
            **kwargs,
        )
        self.clipnorm = clipnorm

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

    def _clipnorm_value(self):
        return self.clipnorm

    def get_config(self):
        config = super().get_config()
        config["clipnorm"] = self.clipnorm
        return config


def _check_clipnorm(clipnorm):
    """A finite clipnorm > 0 as a float, else ValueError."""
    return _check_finite(clipnorm, "clipnorm", "ClippedOptimizer", low=0.0, strict=True)


@keras.saving.register_keras_serializable(package="normopt")
class AdaptiveClippedOptimizer(_GradientNormWrapper):
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
        normalization: the norm of g and w (default "l2").
        granularity: "unit" (default: one norm per index of the last axis),
            "tensor" or "global".
        fused, skip_nonfinite, name, loss_scale_factor: as for
            NormalizedOptimizer.
    """

    _mode = ADAPTIVE

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
            **kwargs,
        )
        self.clip_factor = clip_factor
        self.eps = eps

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        if self.granularity == "global" and not [
            v for v in var_list if not self._is_excluded(v)
        ]:
            raise ValueError(
                "AdaptiveClippedOptimizer(granularity='global') needs at least "
                f"one variable to clip; got {len(var_list)} variables, all "
                "excluded from normalization."
                if var_list
                else "AdaptiveClippedOptimizer(granularity='global') needs at "
                "least one variable to clip; it was built with none."
            )
        super().build(var_list)

    def get_config(self):
        config = super().get_config()
        config["clip_factor"] = self.clip_factor
        config["eps"] = self.eps
        return config


def _concrete_number(value, name, owner):
    """A scalar tf.Tensor with a value now (eager) or a NumPy scalar, as a
    float; any other tensor or variable is a ValueError, as every bad value
    of these arguments (a Python number is needed: the wrapper keeps the
    value, not a tensor it could read later)."""
    if isinstance(value, (tf.Variable, keras.Variable)):
        raise ValueError(
            f"{owner}: `{name}` must be a Python number, got a variable "
            f"({value!r}); its later values would not be seen. Pass its "
            "value as a number."
        )
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "fiu":
        return float(value)
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
