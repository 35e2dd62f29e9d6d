"""Everything the wrappers read of a tf_keras (Keras 2) optimizer's internals.

The tf_keras counterpart of `normopt.ops.keras_adapters`, which dispatches
here for any optimizer of the `tf-keras` package (`keras_adapters.for_tf_keras`):
the same functions (rule, slots, hyperparameters, weight decay, variable
keys, iterations, unsupported options), and the few a wrapper needs to
drive a tf_keras optimizer at all (build it, its variables, its learning
rate, its own update). Nothing else in normopt touches a private tf_keras
attribute; `READS` lists them and tests/test_tf_keras_adapters.py checks
each against the installed tf_keras, naming the one a release renamed.

Two families, one adapter per exact class with a fused rule:

    new-style (tf_keras.optimizers.*): slots are lists indexed by the
    variable's position, `_index_dict[_var_key(v)]`

    SGD     sgd_momentum | sgd_nesterov   momentums (always built, so a
                                          momentum of 0 is sgd_momentum
                                          with mu = 0, which writes m as
                                          tf_keras does)         mu
    Adam    adam | adam_amsgrad           _momentums, _velocities,
    AdamW                                 [_velocity_hats]       b1, b2, eps
    RMSprop rmsprop[_centered][_momentum] _velocities, [_average_gradients],
                                          [_momentums]           rho, eps, [mu]
    Adagrad adagrad                       _accumulators          eps
    Adamax  adamax                        _m, _u                 b1, b2, eps
    Lion    lion                          momentums              b1, b2

    legacy (tf_keras.optimizers.legacy.*): slots by variable, get_slot(v, name)

    SGD     sgd | sgd_momentum | sgd_nesterov   "momentum" (only with
                                                momentum > 0)    mu
    Adam    adam | adam_amsgrad                 "m", "v", ["vhat"]
                                                                 b1, b2, eps

Each adapter subclasses Keras 3's adapter of the same optimizer
(keras_adapters), where a rule's slot lists and hyperparameters are written
once in Keras 3's names; here is only how tf_keras names and reads them
(`renamed`, `NewStyle`, `Legacy`) and when its SGD keeps a momentum.

The fused rules are Keras 3's update rules; these tf_keras updates are the
same formulas (legacy ones through TF's ResourceApplyKerasMomentum and
ResourceApplyAdam[WithAmsgrad] kernels, whose rounding order differs
slightly). Legacy `decay` and learning-rate schedules are in the learning
rate the op gets (`learning_rate`). Every other optimizer (new-style
Nadam, Adadelta, Ftrl, Adafactor; legacy RMSprop, Adagrad, ...: no adapter,
their parity with a fused rule unchecked) runs its own update after the
gradients are scaled (path fused_scale or tf).
"""

import tensorflow as tf
import tf_keras
from tf_keras.src.mixed_precision import loss_scale_optimizer as _lso
from tf_keras.src.optimizers import utils as _optimizer_utils

from normopt.ops import keras_adapters

# (owner, attribute): the private tf_keras attributes read here. owner
# "new:*" is tf_keras.optimizers.Optimizer and "legacy:*"
# tf_keras.optimizers.legacy.Optimizer, read on every inner optimizer of
# that family; "new:Adam" is tf_keras.optimizers.Adam, "legacy:SGD"
# tf_keras.optimizers.legacy.SGD, ...
READS = (
    # (_iterations, and the new-style slot lists: read by keras_adapters)
    ("new:*", "_iterations"),
    ("new:*", "_index_dict"),
    ("new:*", "_var_key"),
    ("new:*", "_use_weight_decay"),
    ("new:*", "_compute_current_learning_rate"),
    ("new:*", "_mesh"),
    ("new:SGD", "momentums"),
    ("new:Adam", "_momentums"),
    ("new:Adam", "_velocities"),
    ("new:Adam", "_velocity_hats"),
    ("new:Adam", "adaptive_epsilon"),
    ("new:AdamW", "_momentums"),
    ("new:AdamW", "_velocities"),
    ("new:AdamW", "_velocity_hats"),
    ("new:RMSprop", "_velocities"),
    ("new:RMSprop", "_average_gradients"),
    ("new:RMSprop", "_momentums"),
    ("new:Adagrad", "_accumulators"),
    ("new:Adamax", "_m"),
    ("new:Adamax", "_u"),
    ("new:Lion", "momentums"),
    ("legacy:*", "_iterations"),
    ("legacy:*", "_create_all_weights"),
    ("legacy:*", "_decayed_lr"),
    ("legacy:*", "_get_hyper"),
    ("legacy:SGD", "_momentum"),
)

NEW = tf_keras.optimizers.Optimizer
LEGACY = tf_keras.optimizers.legacy.Optimizer


def is_optimizer(obj):
    """Whether `obj` is a tf_keras optimizer (new-style or legacy)."""
    return isinstance(obj, (NEW, LEGACY))


def is_legacy(inner):
    return isinstance(inner, LEGACY)


def is_loss_scale_optimizer(obj):
    return isinstance(obj, (_lso.LossScaleOptimizer, _lso.LossScaleOptimizerV3))


class NewStyle:
    """tf_keras.optimizers.*: slot lists indexed by the variable's position,
    as Keras 3's."""

    def before_update(self, inner):
        # A schedule's current value, as tf_keras's apply_gradients sets it.
        inner._compute_current_learning_rate()


class Legacy:
    """tf_keras.optimizers.legacy.*: a slot by variable and name,
    `get_slot(v, renamed[slot list])`; the hyperparameters that can be
    variables or callables through `_get_hyper`."""

    hypers = ("momentum", "beta_1", "beta_2")

    def slot(self, inner, name, variables):
        return [inner.get_slot(v, self.renamed[name]) for v in variables]

    def option(self, inner, name):
        if name in self.hypers:
            # A float, a float32 variable, or a callable: as the legacy update reads it.
            return inner._get_hyper(name, tf.float64)
        return getattr(inner, name)


class NewSgdAdapter(NewStyle, keras_adapters.SgdAdapter):
    optimizer = tf_keras.optimizers.SGD

    def keeps_momentum(self, inner):
        # built whatever the momentum: sgd_momentum with mu = 0 writes m as tf_keras does
        return True


class NewAdamAdapter(NewStyle, keras_adapters.AdamAdapter):
    optimizer = tf_keras.optimizers.Adam


class NewAdamWAdapter(NewStyle, keras_adapters.AdamWAdapter):
    optimizer = tf_keras.optimizers.AdamW


class NewRmspropAdapter(NewStyle, keras_adapters.RmspropAdapter):
    optimizer = tf_keras.optimizers.RMSprop


class NewAdagradAdapter(NewStyle, keras_adapters.AdagradAdapter):
    optimizer = tf_keras.optimizers.Adagrad


class NewAdamaxAdapter(NewStyle, keras_adapters.AdamaxAdapter):
    optimizer = tf_keras.optimizers.Adamax


class NewLionAdapter(NewStyle, keras_adapters.LionAdapter):
    optimizer = tf_keras.optimizers.Lion
    renamed = {"_momentums": "momentums"}


class LegacySgdAdapter(Legacy, keras_adapters.SgdAdapter):
    optimizer = tf_keras.optimizers.legacy.SGD
    renamed = {"momentums": "momentum"}

    def momentum_on(self, inner):
        # momentum > 0, or a tensor or callable (then a variable: no bool in a graph)
        return inner._momentum


class LegacyAdamAdapter(Legacy, keras_adapters.AdamAdapter):
    optimizer = tf_keras.optimizers.legacy.Adam
    renamed = {"_momentums": "m", "_velocities": "v", "_velocity_hats": "vhat"}


ADAPTERS = {
    a.optimizer: a
    for a in (NewSgdAdapter(), NewAdamAdapter(), NewAdamWAdapter(), NewRmspropAdapter(),
              NewAdagradAdapter(), NewAdamaxAdapter(), NewLionAdapter(),
              LegacySgdAdapter(), LegacyAdamAdapter())
}


def adapter_for(inner):
    """The Adapter of `inner`'s exact class, or None (no fused rule)."""
    return ADAPTERS.get(type(inner))


def unsupported_options(inner):
    """Inner-optimizer options the fused rules do not implement."""
    found = [name for name in ("clipnorm", "clipvalue", "global_clipnorm")
             if getattr(inner, name, None) is not None]
    if not is_legacy(inner):
        if inner.use_ema:
            found.append("use_ema")
        if getattr(inner, "adaptive_epsilon", False):
            found.append("adaptive_epsilon")
        if inner._mesh is not None:
            found.append("mesh (DTensor)")
    return found


def sparse_refusals(inner, sparse_names):
    """Why sparse gradients of the variables `sparse_names` keep `inner` off
    the fused update: legacy SGD with momentum updates the momentum of the
    indexed rows only (ResourceSparseApplyKerasMomentum), where the fused
    rule decays it everywhere."""
    if sparse_names and type(inner) is LegacySgdAdapter.optimizer and inner._momentum:
        return [
            f"sparse (IndexedSlices) gradients of {', '.join(sparse_names)}: "
            "the legacy tf_keras SGD updates the momentum of the indexed rows "
            "only, which the fused sgd_momentum rule does not"
        ]
    return []


def weight_decay(inner, variable):
    """The decoupled weight decay `inner` applies to `variable` (0 for none;
    legacy optimizers have none)."""
    if is_legacy(inner):
        return 0.0
    if inner.weight_decay and inner._use_weight_decay(variable):
        return float(inner.weight_decay)
    return 0.0


def variable_indices(inner, variables):
    """What `Adapter.slots` finds each variable's slots by: its index in the
    slot lists (new-style), the variable itself (legacy)."""
    if is_legacy(inner):
        return list(variables)
    return [inner._index_dict[inner._var_key(v)] for v in variables]


def learning_rate(inner):
    """The learning rate of this step, as a float64 tensor. Legacy: with
    `decay` and a schedule applied, in float32 as the legacy update forms it
    for float32 variables."""
    if is_legacy(inner):
        return tf.cast(inner._decayed_lr(tf.float32), tf.float64)
    return tf.cast(inner.learning_rate, tf.float64)


def loss_scale_factor(inner):
    """tf_keras optimizers have none (loss scaling is LossScaleOptimizer's)."""
    return None


def sums_across_replicas(inner):
    """False: `apply_gradients` is told the gradients are summed already."""
    return False


def apply_gradients(inner, grads, variables):
    """`inner`'s own update with `grads` (summed across replicas already)."""
    pairs = list(zip(grads, variables))
    if is_legacy(inner):
        inner.apply_gradients(pairs, experimental_aggregate_gradients=False)
    else:
        inner.apply_gradients(pairs, skip_gradients_aggregation=True)


def build(inner, var_list):
    """Creates `inner`'s slots (and iterations, hyperparameters) for `var_list`."""
    if is_legacy(inner):
        with tf.init_scope():
            inner._create_all_weights(var_list)
    else:
        inner.build(var_list)


def optimizer_variables(inner):
    """`inner`'s saved variables in its own order (iterations and slots)."""
    return list(inner.variables() if is_legacy(inner) else inner.variables)


def set_weights(inner, weights):
    inner.set_weights(weights)


def filter_empty_gradients(grads_and_vars):
    """tf_keras's own rule: all None raises ValueError, some None warn."""
    return _optimizer_utils.filter_empty_gradients(grads_and_vars)
