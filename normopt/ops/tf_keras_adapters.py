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

    legacy (tf_keras.optimizers.legacy.*): slots by variable, get_slot(v, name)

    SGD     sgd | sgd_momentum | sgd_nesterov   "momentum" (only with
                                                momentum > 0)    mu
    Adam    adam | adam_amsgrad                 "m", "v", ["vhat"]
                                                                 b1, b2, eps

The fused rules are Keras 3's update rules; these tf_keras updates are the
same formulas (legacy ones through TF's ResourceApplyKerasMomentum and
ResourceApplyAdam[WithAmsgrad] kernels, whose rounding order differs
slightly). Legacy `decay` and learning-rate schedules are in the learning
rate the op gets (`learning_rate`). Every other optimizer runs its own
update after the gradients are scaled (path fused_scale or tf).
"""

import tensorflow as tf
import tf_keras
from tf_keras.src.mixed_precision import loss_scale_optimizer as _lso
from tf_keras.src.optimizers import utils as _optimizer_utils

# (owner, attribute): the private tf_keras attributes read here. owner
# "new:*" is tf_keras.optimizers.Optimizer and "legacy:*"
# tf_keras.optimizers.legacy.Optimizer, read on every inner optimizer of
# that family; "new:Adam" is tf_keras.optimizers.Adam, "legacy:SGD"
# tf_keras.optimizers.legacy.SGD, ...
READS = (
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


class Adapter:
    """How one tf_keras optimizer class runs as a fused update rule (the
    interface of keras_adapters.Adapter)."""

    optimizer = None

    def rule(self, inner):
        raise NotImplementedError

    def slots(self, inner, keys):
        """Slot-major lists of slot variables of the variables with `keys`
        (`variable_indices`)."""
        raise NotImplementedError

    def hyper(self, inner):
        raise NotImplementedError

    def before_update(self, inner):
        return None

    def restore(self, inner):
        return None


def _pick(slot_list, index):
    return [slot_list[i] for i in index]


class NewAdapter(Adapter):
    def before_update(self, inner):
        # A schedule's current value, as tf_keras's apply_gradients sets it.
        inner._compute_current_learning_rate()


class NewSgdAdapter(NewAdapter):
    optimizer = tf_keras.optimizers.SGD

    def rule(self, inner):
        return "sgd_nesterov" if inner.nesterov and inner.momentum else "sgd_momentum"

    def slots(self, inner, index):
        return [_pick(inner.momentums, index)]

    def hyper(self, inner):
        return [inner.momentum]


class NewAdamAdapter(NewAdapter):
    optimizer = tf_keras.optimizers.Adam

    def rule(self, inner):
        return "adam_amsgrad" if inner.amsgrad else "adam"

    def slots(self, inner, index):
        found = [_pick(inner._momentums, index), _pick(inner._velocities, index)]
        if inner.amsgrad:
            found.append(_pick(inner._velocity_hats, index))
        return found

    def hyper(self, inner):
        return [inner.beta_1, inner.beta_2, inner.epsilon]


class NewAdamWAdapter(NewAdamAdapter):
    optimizer = tf_keras.optimizers.AdamW


def _slots_of(inner, variables, names):
    return [[inner.get_slot(v, name) for v in variables] for name in names]


def _hyper(inner, name):
    # A float, a float32 variable, or a callable: as the legacy update reads it.
    return inner._get_hyper(name, tf.float64)


class LegacySgdAdapter(Adapter):
    optimizer = tf_keras.optimizers.legacy.SGD

    def rule(self, inner):
        if not inner._momentum:
            return "sgd"
        return "sgd_nesterov" if inner.nesterov else "sgd_momentum"

    def slots(self, inner, variables):
        return _slots_of(inner, variables, ["momentum"] if inner._momentum else [])

    def hyper(self, inner):
        return [_hyper(inner, "momentum")] if inner._momentum else []


class LegacyAdamAdapter(Adapter):
    optimizer = tf_keras.optimizers.legacy.Adam

    def rule(self, inner):
        return "adam_amsgrad" if inner.amsgrad else "adam"

    def slots(self, inner, variables):
        return _slots_of(inner, variables, ["m", "v"] + (["vhat"] if inner.amsgrad else []))

    def hyper(self, inner):
        return [_hyper(inner, "beta_1"), _hyper(inner, "beta_2"), inner.epsilon]


ADAPTERS = {
    a.optimizer: a
    for a in (NewSgdAdapter(), NewAdamAdapter(), NewAdamWAdapter(),
              LegacySgdAdapter(), LegacyAdamAdapter())
}


def adapter_for(inner):
    """The Adapter of `inner`'s exact class, or None (no fused rule)."""
    return ADAPTERS.get(type(inner))


def restore_unsaved_state(inner):
    return None


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


def advance_iterations(inner):
    inner._iterations.assign_add(1)


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
