"""A Keras optimizer that wraps another: delegation, variables, save/load.

`InnerOptimizerWrapper` is what every normopt wrapper is as a Keras
optimizer, whatever it does to the gradients: the inner optimizer owns
every slot variable, the iteration counter, the learning rate and its
options (`weight_decay`, `use_ema`, ... read and set through the wrapper);
the wrapper owns `skipped_steps` and an unsaved vector of recorded gradient
norms. Saved files hold the wrapper's variables and, under
`inner_optimizer/`, the inner optimizer's; files of normopt 0.1.0 hold a copy
of the inner optimizer's after the wrapper's, which loads from there.
"""

import warnings

import keras
from keras.src.utils import tracking

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


LOSS_SCALED_INNER = (
    "The inner optimizer must not be a LossScaleOptimizer: the wrapper "
    "would measure loss-scaled gradients. Put the loss scaling outside, "
    "LossScaleOptimizer(NormalizedOptimizer(...)) (model.compile does "
    "this itself under a mixed_float16 policy)."
)


def resolve_inner(optimizer, wrapper_class):
    """The Keras optimizer `optimizer` names, refusing what cannot be wrapped."""
    if isinstance(optimizer, wrapper_class):
        raise TypeError(
            "The inner optimizer is already a normopt wrapper; wrap a plain "
            "Keras optimizer instead."
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(LOSS_SCALED_INNER)
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


def check_base_options(cls_name, kwargs):
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


class InnerDelegation:
    """What a wrapper of either Keras (this module's, normopt.tf_keras's)
    reads and sets on its inner optimizer: the learning rate, the iteration
    counter and the base-optimizer options; the base class's gradient
    clipping refused."""

    weight_decay = _inner_option("weight_decay")
    use_ema = _inner_option("use_ema")
    ema_momentum = _inner_option("ema_momentum")
    ema_overwrite_frequency = _inner_option("ema_overwrite_frequency")
    clipnorm = _refused_option("clipnorm")
    clipvalue = _refused_option("clipvalue")
    global_clipnorm = _refused_option("global_clipnorm")

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list):
        # (a legacy tf_keras optimizer has none)
        finalize = getattr(self.inner_optimizer, "finalize_variable_values", None)
        if finalize is not None:
            finalize(var_list)


class InnerOptimizerWrapper(InnerDelegation, keras.optimizers.Optimizer):
    """A Keras optimizer whose inner optimizer holds the state and options.

    Subclasses transform the gradients in `apply`; `_new_norms_variable(n)`
    makes the (unsaved) vector of recorded gradient norms.
    """

    def __init__(self, inner, name=None, loss_scale_factor=None):
        super().__init__(learning_rate=0.0, loss_scale_factor=loss_scale_factor, name=name)
        self.inner_optimizer = inner

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
        self.__dict__["_gradient_norms"] = self._new_norms_variable(len(var_list))
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

    gradient_accumulation_steps = _inner_option("gradient_accumulation_steps")

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """The inner optimizer's `exclude_from_weight_decay`."""
        self.inner_optimizer.exclude_from_weight_decay(
            var_list=var_list, var_names=var_names
        )

    @property
    def _model_variables_moving_average(self):
        # keras.callbacks.SwapEMAWeights looks one level into a
        # LossScaleOptimizer and finds the wrapper: point it at the EMA.
        from normopt.ops import keras_adapters

        return keras_adapters.model_variables_moving_average(self.inner_optimizer)

    @property
    def variables(self):
        # The wrapper's saved variables, the inner optimizer's, then state a
        # step changes but no file holds (`_unsaved_variables`): listed so
        # that a stateless step (JAX's stateless_apply) returns it, last so
        # that the saved ones keep their indices.
        return self._variables + self.inner_optimizer.variables + self._unsaved_variables()

    def _unsaved_variables(self):
        """Keras variables a step assigns that are no part of the saved
        state (none by default)."""
        return []

    def scale_loss(self, loss):
        loss = self.inner_optimizer.scale_loss(loss)
        if self.loss_scale_factor is not None:
            loss = loss * self.loss_scale_factor
        return loss

    def apply_gradients(self, grads_and_vars):
        grads, trainable_variables = zip(*grads_and_vars)
        self.apply(grads, trainable_variables)
        return self.iterations

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

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "loss_scale_factor": self.loss_scale_factor,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)
