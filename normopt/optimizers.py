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

import keras
import tensorflow as tf
from keras.src.utils import tracking

from normopt import normalizations
from normopt.ops import fused_step, paths
from normopt.ops.tf_reference import CLIP, NORMALIZE, scale_gradients


def _resolve_inner(optimizer):
    if isinstance(optimizer, _GradientNormWrapper):
        raise TypeError(
            "The inner optimizer is already a normopt wrapper; wrap a plain "
            "Keras optimizer instead."
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


def _check_fused(fused):
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"`fused` must be None, True or False, got {fused!r}.")
    return fused


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
    ):
        inner = _resolve_inner(optimizer)
        normalizations.check_normalization(normalization)
        _check_fused(fused)
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(
                f"`skip_nonfinite` must be True or False, got {skip_nonfinite!r}."
            )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner
        self.normalization = normalization
        self.fused = fused
        self.skip_nonfinite = skip_nonfinite
        self.last_path = None
        if fused:
            self._check_fused_possible()

    def _check_fused_possible(self):
        """fused=True: fail at construction for what is known already."""
        fused_step.choose_path(
            True, self.normalization, self.inner_optimizer, [], [], in_step=False
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
        super().build(var_list)

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

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
        return self.inner_optimizer.scale_loss(loss)

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
        pairs = [(g, v) for g, v in zip(grads, trainable_variables) if g is not None]
        if not pairs:
            return
        gs = [g for g, _ in pairs]
        vs = [v for _, v in pairs]
        # Under tf.distribute the norm is that of the cross-replica sum: the
        # gradient of the global batch, as one replica would see it.
        replicas = _replicas_in_sync()
        if replicas > 1:
            gs = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, gs
            )
        with keras.name_scope(self.name, caller=self):
            if not self.skip_nonfinite:
                self._step(gs, vs, replicas)
            elif replicas > 1:
                # A cond whose branch calls merge_call (as the inner apply
                # does) must run in cross-replica context.
                tf.distribute.get_replica_context().merge_call(
                    self._distributed_step_if_finite,
                    args=(gs, vs, replicas, _all_finite(gs)),
                )
            else:
                tf.cond(
                    _all_finite(gs),
                    lambda: self._step(gs, vs, replicas) or tf.constant(True),
                    self._skip_step,
                )

    def _distributed_step_if_finite(self, distribution, gs, vs, replicas, finite):
        # Every replica holds the same all-reduced gradients, hence the same
        # verdict: take the first.
        finite = distribution.experimental_local_results(finite)[0]

        def step():
            distribution.extended.call_for_each_replica(
                self._step, args=(gs, vs, replicas)
            )
            return tf.constant(True)

        tf.cond(finite, step, self._skip_step)

    def _skip_step(self):
        self.skipped_steps.assign_add(1)
        return tf.constant(False)

    def _step(self, gs, vs, replicas):
        """One step on gradients already summed across replicas."""
        inner = self.inner_optimizer
        path = fused_step.choose_path(
            self.fused, self.normalization, inner, gs, vs
        )
        self.last_path = path
        if path.name in (paths.FUSED, paths.FUSED_TF_NORMS):
            fused_step.run_fused_update(
                inner,
                self.normalization,
                self._mode,
                self._clipnorm_value(),
                gs,
                vs,
            )
            return
        factor = inner.loss_scale_factor
        if factor is not None:
            # The inner optimizer unscales after us: measure the norm of the
            # true gradient, then hand back a scaled result.
            gs = [g / factor for g in gs]
        if path.name == paths.FUSED_SCALE:
            scaled = fused_step.run_fused_scale(
                self.normalization, self._mode, self._clipnorm_value(), gs, vs
            )
        else:
            scaled = scale_gradients(
                gs, self.normalization, self._mode, self._clipnorm_value()
            )
        scaled = [
            g if getattr(v, "overwrite_with_gradient", False) else s
            for g, s, v in zip(gs, scaled, vs)
        ]
        if factor is not None:
            scaled = [g * factor for g in scaled]
        if replicas > 1:
            # The inner optimizer sums across replicas again: hand it 1/R of
            # the result on each (exact for a power-of-two replica count).
            scaled = [g / replicas for g in scaled]
        inner.apply(scaled, vs)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer
            ),
            "normalization": self.normalization,
            "fused": self.fused,
            "skip_nonfinite": self.skip_nonfinite,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)


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
        name: the wrapper's name.
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
        fused, skip_nonfinite: as for NormalizedOptimizer.
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
    ):
        if (
            isinstance(clipnorm, bool)
            or not isinstance(clipnorm, numbers.Real)
            or not clipnorm > 0
            or clipnorm == float("inf")
        ):
            raise ValueError(
                f"`clipnorm` must be a finite number > 0, got {clipnorm!r}."
            )
        super().__init__(
            optimizer,
            normalization,
            fused=fused,
            skip_nonfinite=skip_nonfinite,
            name=name,
        )
        self.clipnorm = float(clipnorm)

    def _clipnorm_value(self):
        return self.clipnorm

    def get_config(self):
        config = super().get_config()
        config["clipnorm"] = self.clipnorm
        return config
