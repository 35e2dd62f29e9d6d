"""NormalizedOptimizer, ClippedOptimizer and AdaptiveClippedOptimizer for
tf_keras (Keras 2).

For each gradient tensor g, with norm(g) one of `normopt.normalizations`:

    NormalizedOptimizer:       g' = g / norm(g)
    ClippedOptimizer:          g' = g * clipnorm / norm(g)  if norm(g) >= clipnorm, else g
    AdaptiveClippedOptimizer:  t = clip_factor * max(norm(w), eps)
                               g' = g * t / norm(g)  if norm(g) > t, else g

then the inner optimizer's own update with g' (or the fused op's, which does
both). A wrapper is a new-style tf_keras optimizer whatever it wraps, so
`model.compile`, `fit`, LossScaleOptimizer and the saved formats take it;
the inner optimizer, new-style or legacy, holds every slot, the iteration
counter and the learning rate, and is saved under `inner_optimizer`.

Everything a step does is shared with the Keras 3 wrappers
(`normopt.optimizers`): the step plan (`normopt.ops.step_plan`), the math
(`normopt.ops.scale_math`), its TensorFlow executors
(`normopt.ops.tf_backend`), and the methods that take them, in the mixins
both Kerases' wrappers are made of (`normopt.optimizers.GradientNormMixin`,
`ClipMixin`, `AdaptiveMixin`; `normopt.keras_wrapper.InnerDelegation`),
which read nothing of either Keras. What differs, the tf_keras optimizer's
internals, is in `normopt.ops.tf_keras_adapters`.
"""

import copy

import keras
import tensorflow as tf
import tf_keras
from tf_keras.src.optimizers.optimizer import CallableList

from normopt import keras_wrapper, normalizations
from normopt import optimizers as keras3
from normopt.ops import scale_math, step_plan, tf_backend
from normopt.ops import tf_keras_adapters as adapters

# Plain Python state, no checkpoint dependency (tf's tracking would wrap a
# tuple or list in a trackable proxy).
_UNTRACKED = frozenset({
    "last_path", "_exclusion_names", "_exclusion_pattern", "_excluded_keys",
    "_trainable_variables", "_gradient_norms",
})


def _resolve_inner(optimizer):
    """The tf_keras optimizer `optimizer` names, refusing what cannot be wrapped."""
    if isinstance(optimizer, _TfKerasWrapper):
        raise TypeError(
            "The inner optimizer is already a normopt wrapper; wrap a plain "
            "tf_keras optimizer instead."
        )
    if isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            f"{type(optimizer).__name__} is a Keras 3 optimizer: wrap it with "
            "normopt.NormalizedOptimizer & co. (`from normopt import ...`); "
            "normopt.tf_keras wraps tf_keras (Keras 2) optimizers such as "
            "tf_keras.optimizers.Adam() or tf_keras.optimizers.legacy.Adam()."
        )
    if adapters.is_loss_scale_optimizer(optimizer):
        raise ValueError(keras_wrapper.LOSS_SCALED_INNER)
    if isinstance(optimizer, (str, dict)):
        try:
            optimizer = tf_keras.optimizers.get(optimizer)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"Could not build a tf_keras optimizer from {optimizer!r}: {exc}"
            ) from None
    if adapters.is_optimizer(optimizer):
        return optimizer
    raise TypeError(
        "`optimizer` must be a tf_keras optimizer instance (e.g. "
        "tf_keras.optimizers.SGD() or tf_keras.optimizers.legacy.SGD()) or an "
        "identifier tf_keras.optimizers.get accepts (e.g. 'sgd'); got "
        f"{type(optimizer).__name__}: {optimizer!r}."
    )


class _TfKerasWrapper(keras3.GradientNormMixin, keras_wrapper.InnerDelegation,
                      tf_keras.optimizers.Optimizer):
    """Shared machinery of the tf_keras wrappers; a subclass says how it
    scales (`_kind`, `_scaling()`), as in normopt.optimizers."""

    def __init__(
        self,
        optimizer,
        normalization="l2",
        fused=None,
        skip_nonfinite=False,
        name=None,
        granularity="tensor",
        **kwargs,
    ):
        inner = _resolve_inner(optimizer)
        normalizations.check_normalization(normalization)
        if step_plan.is_matrix_norm(normalization):
            raise ValueError(
                f"The {normalization!r} normalization keeps a vector per "
                "variable in the optimizer's state, which the tf_keras "
                "wrappers do not hold: use it with the Keras 3 wrappers "
                "(from normopt import NormalizedOptimizer)."
            )
        self._check_arguments(normalization, granularity, fused, skip_nonfinite, kwargs)
        super().__init__(name=name or type(self).__name__)
        self.inner_optimizer = inner
        # The inner counter, also as the base class's `_iterations` child: a
        # SavedModel revives any tf_keras optimizer as one with that variable.
        self._iterations = inner.iterations
        self._set_arguments(normalization, granularity, fused, skip_nonfinite)

    def __setattr__(self, name, value):
        if name in _UNTRACKED:
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    def _create_iteration_variable(self):
        # The inner optimizer's counter is the wrapper's (`iterations`).
        pass

    @property
    def built(self):
        return getattr(self, "_built", False)

    @keras_wrapper.InnerDelegation.iterations.setter
    def iterations(self, variable):
        self.inner_optimizer.iterations = variable
        self._iterations = self.inner_optimizer.iterations

    @property
    def variables(self):
        """The wrapper's own variables (`skipped_steps`), then the inner
        optimizer's, in its order."""
        inner = adapters.optimizer_variables(self.inner_optimizer)
        return CallableList(list(self._variables) + inner)

    def set_weights(self, weights):
        if not self.built:
            raise ValueError(
                "You are calling `set_weights()` on an optimizer that has not "
                "yet been built. Please call `optimizer.build(trainable_variables)` "
                "to create the optimizer weights before calling `set_weights()`."
            )
        own = list(self._variables)
        weights = list(weights)
        for variable, weight in zip(own, weights):
            variable.assign(weight)
        adapters.set_weights(self.inner_optimizer, weights[len(own):])

    def build(self, var_list):
        if self.built:
            return
        # Not the base class's build, which would give the wrapper EMA
        # variables of its own for an inner optimizer's use_ema.
        self._build_index_dict(var_list)
        with tf.init_scope():
            # Always created, so the saved variable list does not depend on
            # skip_nonfinite.
            self.skipped_steps = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="skipped_steps",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self._variables.append(self.skipped_steps)
        adapters.build(self.inner_optimizer, var_list)
        self._gradient_norms = tf_backend.norms_variable(len(var_list))
        self._trainable_variables = list(var_list)
        self._built = True

    def _check_variables_are_known(self, variables):
        for v in variables:
            if self._var_key(v) not in self._index_dict:
                raise ValueError(
                    f"Unknown variable: {v}. This optimizer can only be called "
                    "for the variables it was originally built with. When "
                    "working with a new set of variables, you should recreate "
                    "a new optimizer instance."
                )

    @tf.autograph.experimental.do_not_convert  # as Keras 3's (tf_backend.unconverted)
    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                        **kwargs):
        """Scales the gradients (one plan, `normopt.ops.step_plan`), then
        the inner optimizer's update; returns `iterations`. Under a
        tf.distribute strategy the gradients are summed across replicas
        first, unless `skip_gradients_aggregation` (or the legacy
        `experimental_aggregate_gradients=False`) says they are."""
        aggregate = kwargs.pop("experimental_aggregate_gradients", True)
        if kwargs:
            raise TypeError(f"apply_gradients() got unexpected arguments {sorted(kwargs)}")
        pairs = list(grads_and_vars)
        if not pairs:
            return self.iterations
        with tf.name_scope(name or self.name):
            with tf.init_scope():
                self.build([v for _, v in pairs])
            self._check_variables_are_known([v for _, v in pairs])
            pairs = adapters.filter_empty_gradients(pairs)
            gs = [g for g, _ in pairs]
            vs = [v for _, v in pairs]
            replicas = tf_backend.replicas_in_sync()
            if replicas > 1 and aggregate and not skip_gradients_aggregation:
                gs = tf_backend.all_reduce_sum(gs)
            plan = self._plan(gs, vs)
            self.last_path = plan.path
            if not self.skip_nonfinite:
                self._record_gradient_norms(gs, vs, self._step(gs, vs, replicas, plan))
            else:
                self._record_gradient_norms(gs, vs)
                tf_backend.step_if_finite(
                    self._finite_step, self._skip_step, gs, (gs, vs, replicas, plan), replicas)
        return self.iterations

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": tf_keras.optimizers.serialize(self.inner_optimizer),
            "normalization": self.normalization,
            "granularity": self.granularity,
            "fused": self.fused,
            "skip_nonfinite": self.skip_nonfinite,
            "exclude_from_normalization": list(getattr(self, "_exclusion_names", [])),
            "is_legacy_optimizer": False,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config.pop("is_legacy_optimizer", None)
        excluded = config.pop("exclude_from_normalization", None)
        # deserialize rewrites the dict it reads (class names in lower case)
        inner = tf_keras.optimizers.deserialize(
            copy.deepcopy(config.pop("optimizer")), custom_objects=custom_objects)
        optimizer = cls(inner, **config)
        if excluded:
            optimizer.exclude_from_normalization(var_names=excluded)
        return optimizer


@tf_keras.saving.register_keras_serializable(package="normopt")
class NormalizedOptimizer(_TfKerasWrapper):
    """Normalizes each gradient by its own norm before the inner update.

        g' = g / norm(g)

    Args:
        optimizer: a tf_keras optimizer (`tf_keras.optimizers.*` or
            `tf_keras.optimizers.legacy.*`), or an identifier such as "sgd".
        normalization: a built-in norm name (see
            `get_normalization_functions()`) or one registered with
            `set_normalization_function(name, fn)`.
        fused, skip_nonfinite, granularity: as for normopt.NormalizedOptimizer.
        name: the wrapper's name.
    """

    _kind = scale_math.Normalize


@tf_keras.saving.register_keras_serializable(package="normopt")
class ClippedOptimizer(keras3.ClipMixin, _TfKerasWrapper):
    """Rescales each gradient whose norm reaches `clipnorm` down to it.

        g' = g * clipnorm / norm(g)  if norm(g) >= clipnorm, else g

    Args:
        optimizer, normalization, fused, skip_nonfinite, name, granularity:
            as for NormalizedOptimizer.
        clipnorm: positive number, the largest norm a gradient keeps.
    """

    def __init__(self, optimizer, normalization="l2", clipnorm=1.0, fused=None,
                 skip_nonfinite=False, name=None, **kwargs):
        keras3._check_clipnorm(clipnorm)
        super().__init__(optimizer, normalization, fused=fused,
                         skip_nonfinite=skip_nonfinite, name=name, **kwargs)
        self.clipnorm = clipnorm


@tf_keras.saving.register_keras_serializable(package="normopt")
class AdaptiveClippedOptimizer(keras3.AdaptiveMixin, _TfKerasWrapper):
    """Adaptive gradient clipping (NFNets): clips relative to the weights' norm.

        wn = max(norm(w), eps),  gn = norm(g)
        g' = g * clip_factor * wn / gn   if gn > clip_factor * wn, else g

    per unit (default), tensor or globally (`granularity`). Arguments as for
    normopt.AdaptiveClippedOptimizer, `optimizer` a tf_keras optimizer.
    """

    def __init__(self, optimizer, clip_factor=0.01, eps=1e-3, normalization="l2",
                 granularity="unit", fused=None, skip_nonfinite=False, name=None, **kwargs):
        owner = type(self).__name__
        clip_factor = keras3._check_finite(clip_factor, "clip_factor", owner, low=0.0, strict=True)
        eps = keras3._check_finite(eps, "eps", owner, low=0.0, strict=False)
        super().__init__(optimizer, normalization, fused=fused, skip_nonfinite=skip_nonfinite,
                         name=name, granularity=granularity, **kwargs)
        self.clip_factor = clip_factor
        self.eps = eps

    def build(self, var_list):
        if not self.built:
            step_plan.check_clippable(self.granularity, var_list, self._is_excluded)
        super().build(var_list)


# Also under the plain class names, as the original wrapper registered
# them: tf_keras finds an optimizer nested in another's config (a
# LossScaleOptimizer's in an .h5 file) by that name alone.
for _cls in (NormalizedOptimizer, ClippedOptimizer, AdaptiveClippedOptimizer):
    tf_keras.utils.get_custom_objects().setdefault(_cls.__name__, _cls)
