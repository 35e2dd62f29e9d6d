"""Everything the fused path reads of a Keras optimizer's internals.

One adapter per inner optimizer class maps it onto an update rule of
csrc/normopt/update_rules.h: the rule's name, the slot variables in the
rule's order, and its hyperparameters after lr and t. The module-level
functions hold the reads every optimizer shares (weight decay, the variable
index, the iteration counter, EMA). Nothing else in normopt touches a
private Keras attribute; `READS` lists them, and tests/test_keras_adapters.py
checks each against the installed Keras, naming the one a release renamed.
`INDEXED_SLICES` says, per rule, whether Keras's update of a sparse gradient
moves every row or only the indexed ones (from what Keras's own update
does with one; checked against the installed Keras there too).

For an optimizer of the tf-keras package (Keras 2) each function marked
`@for_tf_keras` runs its namesake in `normopt.ops.tf_keras_adapters`
instead, so the plan and the executors read any optimizer through here.

    SGD      sgd | sgd_momentum | sgd_nesterov   momentums           mu
    Adam     adam | adam_amsgrad                 _momentums, _velocities,
    AdamW                                        [_velocity_hats]    b1, b2, eps
    RMSprop  rmsprop[_centered][_momentum]       _velocities,
                                                 [_average_gradients],
                                                 [_momentums]        rho, eps, [mu]
    Adagrad  adagrad                             _accumulators       eps
    Adamax   adamax                              _m, _u              b1, b2, eps
    Nadam    nadam                               _momentums, _velocities
                                                 b1, b2, eps, u_product
    Adadelta adadelta                            _accumulated_grads,
                                                 _accumulated_delta_vars  rho, eps
    Ftrl     ftrl, ftrl_sqrt (lr_power -0.5)     _accumulators, _linears
                            lr_power, l1, l2, l2_shrinkage, beta
    Lion     lion                                _momentums          b1, b2
    Lamb     lamb                                _momentums, _velocities
                                                                     b1, b2, eps
    ScheduleFreeAdamW  schedule_free_adamw       _momentums, _velocities
                                                 b1, b2, eps, warmup_steps
"""

import functools

import keras
from keras import ops

from normopt.header_tables import EVERY_ROW, INDEXED_ROWS, RULES
from normopt.ops import scale_math

# (owner, attribute): the private Keras attributes read here. owner "*" is
# keras.optimizers.Optimizer, read on every inner optimizer.
READS = (
    ("*", "_iterations"),
    ("*", "_use_weight_decay"),
    ("*", "_get_variable_index"),
    ("*", "_model_variables_moving_average"),
    ("Adam", "_momentums"),
    ("Adam", "_velocities"),
    ("Adam", "_velocity_hats"),
    ("AdamW", "_momentums"),
    ("AdamW", "_velocities"),
    ("AdamW", "_velocity_hats"),
    ("RMSprop", "_velocities"),
    ("RMSprop", "_average_gradients"),
    ("RMSprop", "_momentums"),
    ("Adagrad", "_accumulators"),
    ("Adamax", "_m"),
    ("Adamax", "_u"),
    ("Nadam", "_momentums"),
    ("Nadam", "_velocities"),
    ("Nadam", "_u_product"),
    ("Adadelta", "_accumulated_grads"),
    ("Adadelta", "_accumulated_delta_vars"),
    ("Ftrl", "_accumulators"),
    ("Ftrl", "_linears"),
    ("Lion", "_momentums"),
    ("Lamb", "_momentums"),
    ("Lamb", "_velocities"),
    ("ScheduleFreeAdamW", "_momentums"),
    ("ScheduleFreeAdamW", "_velocities"),
)


def _is_tf_keras(inner):
    """Whether `inner` is an optimizer of the tf-keras package (Keras 2)."""
    if isinstance(inner, keras.optimizers.Optimizer):
        return False
    return any(c.__module__.split(".")[0] == "tf_keras" for c in type(inner).__mro__)


def for_tf_keras(fn):
    """`fn(inner, ...)` for a Keras 3 optimizer; for a tf_keras one the
    function of the same name in normopt.ops.tf_keras_adapters (imported
    only then: normopt runs without the tf-keras package)."""

    @functools.wraps(fn)
    def dispatch(inner, *args):
        if _is_tf_keras(inner):
            from normopt.ops import tf_keras_adapters

            return getattr(tf_keras_adapters, fn.__name__)(inner, *args)
        return fn(inner, *args)

    return dispatch


class Adapter:
    """How one Keras optimizer class runs as a fused update rule.

    A rule's inputs are written once, in Keras 3's names: `slot_lists` (the
    optimizer's attributes holding them) and `options` (its hyperparameter
    attributes). An adapter of another Keras (normopt.ops.tf_keras_adapters)
    subclasses one of these and changes only how a name is read: `renamed`,
    `slot` and `option`."""

    optimizer = None  # the exact Keras class (a subclass may change update_step)
    name = None  # the update rule, where the options do not choose it
    slot_lists = ()  # attributes of the slot lists, in the rule's order
    options = ()  # the rule's hyperparameters after lr and t, in its order
    renamed = {}  # this optimizer's own name of a slot list above, where it differs

    def rule(self, inner):
        """The update rule's name for `inner`'s options."""
        return self.name

    def slot_lists_of(self, inner):
        """The `slot_lists` `inner`'s options create."""
        return self.slot_lists

    def options_of(self, inner):
        """The `options` `inner`'s rule takes."""
        return self.options

    def slots(self, inner, keys):
        """Slot-major lists of slot variables of the variables with `keys`
        (`variable_indices`)."""
        return [self.slot(inner, name, keys) for name in self.slot_lists_of(inner)]

    def slot(self, inner, name, keys):
        """The variables with `keys` (their positions) in the slot list `name`."""
        slot_list = getattr(inner, self.renamed.get(name, name))
        return [slot_list[i] for i in keys]

    def hyper(self, inner):
        """The rule's hyperparameters after lr and t (floats or tensors)."""
        return [self.option(inner, name) for name in self.options_of(inner)]

    def option(self, inner, name):
        """The hyperparameter `name` of `inner`."""
        return getattr(inner, name)

    # The two hooks below do nothing by default. Each has a statement after
    # its docstring: AutoGraph, converting them inside a user's tf.function,
    # strips the docstring and fails on an empty body (with a warning).

    def before_update(self, inner):
        """State Keras advances once per step before the variable updates
        (called where variables can be assigned: outside a replica context)."""
        return None

    def restore(self, inner):
        """Brings back state Keras does not save (called at every step, on
        every path, before the update)."""
        return None


class SgdAdapter(Adapter):
    optimizer = keras.optimizers.SGD

    def momentum_on(self, inner):
        """Whether `inner`'s momentum is on (not 0)."""
        return bool(inner.momentum)

    def keeps_momentum(self, inner):
        """Whether `inner` has momentum slots (and the rule takes mu)."""
        return self.momentum_on(inner)

    def rule(self, inner):
        if not self.keeps_momentum(inner):
            return "sgd"
        return "sgd_nesterov" if inner.nesterov and self.momentum_on(inner) else "sgd_momentum"

    def slot_lists_of(self, inner):
        return ("momentums",) if self.keeps_momentum(inner) else ()

    def options_of(self, inner):
        return ("momentum",) if self.keeps_momentum(inner) else ()


class AdamAdapter(Adapter):
    optimizer = keras.optimizers.Adam
    options = ("beta_1", "beta_2", "epsilon")

    def rule(self, inner):
        return "adam_amsgrad" if inner.amsgrad else "adam"

    def slot_lists_of(self, inner):
        return ("_momentums", "_velocities") + (("_velocity_hats",) if inner.amsgrad else ())


class AdamWAdapter(AdamAdapter):
    optimizer = keras.optimizers.AdamW


class RmspropAdapter(Adapter):
    optimizer = keras.optimizers.RMSprop

    def rule(self, inner):
        return ("rmsprop" + ("_centered" if inner.centered else "")
                + ("_momentum" if inner.momentum > 0 else ""))

    def slot_lists_of(self, inner):
        return (("_velocities",) + (("_average_gradients",) if inner.centered else ())
                + (("_momentums",) if inner.momentum > 0 else ()))

    def options_of(self, inner):
        return ("rho", "epsilon") + (("momentum",) if inner.momentum > 0 else ())


class AdagradAdapter(Adapter):
    optimizer = keras.optimizers.Adagrad
    name = "adagrad"
    slot_lists = ("_accumulators",)
    options = ("epsilon",)


class AdamaxAdapter(Adapter):
    optimizer = keras.optimizers.Adamax
    name = "adamax"
    slot_lists = ("_m", "_u")
    options = ("beta_1", "beta_2", "epsilon")


class NadamAdapter(Adapter):
    optimizer = keras.optimizers.Nadam
    name = "nadam"
    slot_lists = ("_momentums", "_velocities")
    options = ("beta_1", "beta_2", "epsilon")

    def hyper(self, inner):
        return Adapter.hyper(self, inner) + [inner._u_product.value]

    @staticmethod
    def _advanced(inner, u_product, step):
        # Keras's Nadam._backend_update_step, in the same ops and dtype:
        # u_product *= beta_1 * (1 - 0.5 * 0.96^t).
        dtype = inner._u_product.dtype
        return u_product * inner.beta_1 * (
            1.0 - 0.5 * keras.ops.power(0.96, keras.ops.cast(step, dtype)))

    def before_update(self, inner):
        inner._u_product.assign(
            self._advanced(inner, inner._u_product, inner.iterations + 1))

    def restore(self, inner):
        """Keras does not save `_u_product` (it is no optimizer variable), so
        a loaded Nadam restarts it at 1 while `iterations` resumes. It is 1
        only before the first step; at iterations > 0 it is recomputed here,
        step by step in the same ops and order as Keras accumulated it, so a
        resumed run continues bit for bit."""
        u_product = inner._u_product
        iterations = inner.iterations

        def recomputed():
            def advance(step, value):
                return step + 1, self._advanced(inner, value, step)

            _, value = ops.while_loop(
                lambda step, _: step <= iterations, advance,
                (ops.ones([], iterations.dtype), ops.ones([], u_product.dtype)))
            return value

        def assign():
            lost = ops.logical_and(iterations > 0, ops.equal(u_product.value, 1.0))
            u_product.assign(scale_math.cond(lost, recomputed, lambda: ops.copy(u_product.value)))

        _outside_replicas(assign)


class AdadeltaAdapter(Adapter):
    optimizer = keras.optimizers.Adadelta
    name = "adadelta"
    slot_lists = ("_accumulated_grads", "_accumulated_delta_vars")
    options = ("rho", "epsilon")


class FtrlAdapter(Adapter):
    optimizer = keras.optimizers.Ftrl
    slot_lists = ("_accumulators", "_linears")
    options = ("learning_rate_power", "l1_regularization_strength", "l2_regularization_strength",
               "l2_shrinkage_regularization_strength", "beta")

    def rule(self, inner):
        # x^0.5 is sqrt: a rule of its own, whose loop vectorizes
        return "ftrl_sqrt" if inner.learning_rate_power == -0.5 else "ftrl"


class LionAdapter(Adapter):
    optimizer = keras.optimizers.Lion
    name = "lion"
    slot_lists = ("_momentums",)
    options = ("beta_1", "beta_2")


class LambAdapter(Adapter):
    optimizer = keras.optimizers.Lamb
    name = "lamb"
    slot_lists = ("_momentums", "_velocities")
    options = ("beta_1", "beta_2", "epsilon")


class ScheduleFreeAdamWAdapter(Adapter):
    optimizer = keras.optimizers.ScheduleFreeAdamW
    name = "schedule_free_adamw"
    slot_lists = ("_momentums", "_velocities")
    options = ("beta_1", "beta_2", "epsilon", "warmup_steps")


# How each rule takes a sparse (tf.IndexedSlices) gradient g, after what
# Keras's own update_step does with one (tests/test_keras_adapters.py checks
# the table against the installed Keras). Either way the gradient stands for
# its dense tensor, duplicate indices summed, and its norm is that tensor's;
# at granularity "tensor" or "global" the fused op (CPU or GPU kernel) reads
# the deduplicated rows and their indices and never builds that tensor
# (raw_ops.sparse_rows).
#
#   EVERY_ROW     Keras's update reads and writes every element anyway (a
#                 slot decays everywhere: Adam's m and v, RMSprop's
#                 velocity, ...; its ops turn g into the dense tensor it
#                 stands for), so the op runs the rule on every element,
#                 zeros where g has no row. Per unit, g is scattered once
#                 into zeros first (tf_backend.op_gradient).
#   INDEXED_ROWS  Keras's update writes only the indexed rows (SGD:
#                 w.scatter_sub(lr g); Adagrad: acc.scatter_add(g^2), then
#                 w.scatter_sub(lr g / sqrt(acc + eps)) on the same rows,
#                 although it forms sqrt(acc + eps) over the whole table).
#                 The rule keeps w and its slots for a zero gradient
#                 (zero_gradient_keeps_state of normopt.header_tables.RULES,
#                 kZeroGradientKeepsState in csrc/normopt/update_rules.h:
#                 the table below is read from it), so the op updates the
#                 present rows only (every row where
#                 the variable decays, as Keras's decay does). Per unit,
#                 the step stays on the pure-TF path, which keeps g
#                 sparse end to end: a dense g there would cost reads
#                 and writes of every row against k rows (normalized SGD, 64
#                 columns, 4096 indices, on 2 CPU cores: 1.1x the sparse step
#                 at 50000 rows and 6x at 400000 rows).
#
#   rule                                     Keras's update of a sparse g   fused op
#   sgd                                      scatter into w                 INDEXED_ROWS
#   adagrad                                  scatter into acc and w         INDEXED_ROWS
#   sgd_momentum, sgd_nesterov               m decays everywhere            EVERY_ROW
#   adam, adam_amsgrad, adamax, nadam        m, v (u) decay everywhere      EVERY_ROW
#   rmsprop, rmsprop_centered                velocity (and average g)       EVERY_ROW
#                                            decay everywhere; w: a scatter
#   rmsprop_momentum,                        every slot everywhere, w too   EVERY_ROW
#     rmsprop_centered_momentum
#   adadelta                                 both accumulators decay        EVERY_ROW
#                                            everywhere; w: a scatter
#   ftrl, ftrl_sqrt                          w recomputed from the slots    EVERY_ROW
#   lion                                     m everywhere, w by sign(...)   EVERY_ROW
#   lamb                                     m, v decay everywhere; w by    EVERY_ROW
#                                            the whole tensor's ratio
#   schedule_free_adamw                      v decays everywhere; w moves   EVERY_ROW
#                                            toward the average everywhere
#
# Keras applies weight decay to every element whatever the gradient; the
# table is by rule alone.
INDEXED_SLICES = {name: facts.sparse for name, facts in RULES.items()}


def sparse_gradients(rule):
    """EVERY_ROW or INDEXED_ROWS: what Keras's update of `rule` writes for an
    IndexedSlices gradient (a rule missing from INDEXED_SLICES: None, and
    sparse gradients keep the pure-TF path)."""
    return INDEXED_SLICES.get(rule)


ADAPTERS = {
    a.optimizer: a
    for a in (SgdAdapter(), AdamAdapter(), AdamWAdapter(), RmspropAdapter(),
              AdagradAdapter(), AdamaxAdapter(), NadamAdapter(), AdadeltaAdapter(),
              FtrlAdapter(), LionAdapter(), LambAdapter(), ScheduleFreeAdamWAdapter())
}


@for_tf_keras
def adapter_for(inner):
    """The Adapter of `inner`'s exact class, or None (no fused rule)."""
    return ADAPTERS.get(type(inner))


def _outside_replicas(fn):
    """fn(), through a merge_call when in a replica context: a mirrored
    variable is assigned in the cross-replica context (tf.distribute: on
    TensorFlow only)."""
    if keras.backend.backend() != "tensorflow":
        fn()
        return
    import tensorflow as tf

    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        tf.distribute.get_replica_context().merge_call(lambda _: fn())
    else:
        fn()


def restore_unsaved_state(inner):
    """What `inner` lost in a save/load, brought back before a step (a
    tf_keras optimizer through its adapter too)."""
    adapter = adapter_for(inner)
    if adapter is not None:
        adapter.restore(inner)


@for_tf_keras
def unsupported_options(inner):
    """Inner-optimizer options the fused rules do not implement."""
    found = []
    if inner.use_ema:
        found.append("use_ema")
    if inner.gradient_accumulation_steps:
        found.append("gradient_accumulation_steps")
    for name in ("clipnorm", "clipvalue", "global_clipnorm", "loss_scale_factor"):
        if getattr(inner, name, None) is not None:
            found.append(name)
    return found


@for_tf_keras
def weight_decay(inner, variable):
    """The decoupled weight decay `inner` applies to `variable` (0 for none)."""
    if inner.weight_decay and inner._use_weight_decay(variable):
        return float(inner.weight_decay)
    return 0.0


@for_tf_keras
def variable_indices(inner, variables):
    """Each variable's index in `inner`'s slot lists."""
    return [inner._get_variable_index(v) for v in variables]


def advance_iterations(inner):
    """iterations += 1, as Keras does after a step (tf_keras as well)."""
    inner._iterations.assign_add(1)


def model_variables_moving_average(inner):
    """`inner`'s EMA of the model variables (SwapEMAWeights reads it)."""
    return inner._model_variables_moving_average


@for_tf_keras
def sparse_refusals(inner, sparse_names):
    """Why sparse gradients of `sparse_names` keep `inner` off the fused
    update beyond its rule's INDEXED_SLICES entry (none for Keras 3)."""
    return []


@for_tf_keras
def learning_rate(inner):
    """The learning rate of this step, as a float64 tensor."""
    return ops.cast(inner.learning_rate, "float64")


@for_tf_keras
def loss_scale_factor(inner):
    """The factor `inner` unscales its gradients by, or None."""
    return inner.loss_scale_factor


@for_tf_keras
def sums_across_replicas(inner):
    """Whether `inner`'s own update sums the gradients across replicas again
    (Keras 3's apply does: each replica hands it its share)."""
    return True


@for_tf_keras
def apply_gradients(inner, grads, variables):
    """`inner`'s own update with `grads`."""
    inner.apply(grads, variables)
