"""The Keras internals the fused path reads, against the installed Keras.

normopt.ops.keras_adapters is the only module that reads private attributes
of a Keras optimizer; its READS lists them. Each is checked on a built
optimizer with every option that creates slots switched on, so a Keras
release that renames one fails here, naming it, instead of sending every
step silently down another path.
"""

import io
import logging
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras
import normopt
from helpers import unfused_inner
from normopt.ops import keras_adapters

# Options that make an optimizer create all the slots an adapter may read.
ALL_SLOTS = {
    "SGD": dict(momentum=0.5),
    "Adam": dict(amsgrad=True),
    "AdamW": dict(amsgrad=True),
    "RMSprop": dict(momentum=0.5, centered=True),
}


def built(name, **options):
    opt = getattr(keras.optimizers, name)(**ALL_SLOTS.get(name, {}), **options)
    opt.build([keras.Variable([1.0, 2.0])])
    return opt


@pytest.mark.parametrize("owner, attribute", keras_adapters.READS)
def test_read_attribute_exists(owner, attribute):
    names = ["SGD"] if owner == "*" else [owner]
    for name in names:
        # use_ema: the EMA variables exist only then.
        opt = built(name, use_ema=owner == "*")
        assert hasattr(opt, attribute), (
            f"keras.optimizers.{name} (Keras {keras.__version__}) has no attribute "
            f"{attribute!r}, which normopt/ops/keras_adapters.py reads")


@pytest.mark.parametrize("name", sorted({a.optimizer.__name__ for a in keras_adapters.ADAPTERS.values()}))
def test_adapter_slots_are_the_optimizers_variables(name):
    """Every slot an adapter hands the op is one of the optimizer's own
    variables, in shape and dtype of the variable it belongs to."""
    opt = built(name)
    adapter = keras_adapters.adapter_for(opt)
    assert adapter is not None and adapter.rule(opt)
    slots = adapter.slots(opt, [0])
    own = {id(v) for v in opt.variables}
    for slot in slots:
        assert len(slot) == 1 and id(slot[0]) in own
        assert tuple(slot[0].shape) == (2,)
    assert all(isinstance(h, (int, float)) or hasattr(h, "dtype") for h in adapter.hyper(opt))


def test_subclass_gets_no_adapter():
    class Mine(keras.optimizers.Adam):
        pass

    assert keras_adapters.adapter_for(Mine()) is None
    assert keras_adapters.adapter_for(unfused_inner()) is None


def _keras_writes(optimizer, gradient, variable):
    """The kinds of value ('sparse' for IndexedSlices, else 'dense') each
    write of `optimizer`'s own update_step gets for `gradient`."""
    import tensorflow as tf

    writes = []
    for method in ("assign", "assign_add", "assign_sub"):
        original = getattr(optimizer, method)

        def spy(target, value, original=original):
            writes.append("sparse" if isinstance(value, tf.IndexedSlices) else "dense")
            return original(target, value)

        setattr(optimizer, method, spy)
    optimizer.apply([gradient], [variable])
    return writes


@pytest.mark.parametrize("rule", sorted(keras_adapters.INDEXED_SLICES))
def test_indexed_slices_table_matches_keras(rule):
    """keras_adapters.INDEXED_SLICES against the installed Keras: a rule is
    INDEXED_ROWS exactly when every write of Keras's own update with an
    IndexedSlices gradient is a scatter, and then the rows it does not index
    keep their values in the variable and every slot (the op writes only
    the present rows)."""
    import numpy as np
    import tensorflow as tf

    import reference as R

    optimizer = R.RULE_KERAS[rule](keras.optimizers)
    adapter = keras_adapters.adapter_for(optimizer)
    assert adapter.rule(optimizer) == rule
    start = np.linspace(-1.0, 1.0, 18).reshape(6, 3).astype(np.float32)
    variable = keras.Variable(start)
    optimizer.build([variable])
    slots = [slot[0] for slot in adapter.slots(optimizer, [0])]
    before = [s.numpy() for s in slots]
    gradient = tf.IndexedSlices(tf.constant([[0.5, -0.25, 1.0], [2.0, 0.125, -1.5]]),
                                tf.constant([4, 1]), tf.constant([6, 3]))
    writes = _keras_writes(optimizer, gradient, variable)
    assert writes, f"Keras's {rule} update made no write through Optimizer.assign*"
    scatter_only = set(writes) == {"sparse"}
    want = keras_adapters.INDEXED_ROWS if scatter_only else keras_adapters.EVERY_ROW
    assert keras_adapters.sparse_gradients(rule) == want, (rule, writes)
    if scatter_only:
        absent = [0, 2, 3, 5]
        decay = 1.0 - float(optimizer.weight_decay or 0.0) * float(optimizer.learning_rate)
        np.testing.assert_allclose(variable.numpy()[absent], start[absent] * decay, rtol=1e-7)
        for slot, old in zip(slots, before):
            np.testing.assert_array_equal(slot.numpy()[absent], old[absent])



def _user_step(opt, var, options):
    def step(grad):
        opt.apply([grad], [var])

    return tf.function(step, experimental_autograph_options=options)


@pytest.mark.parametrize("call", ["apply", "apply_gradients"])
def test_the_step_is_traced_as_written_in_a_users_tf_function(custom_norm, call):
    """AutoGraph converts the functions a user's tf.function calls, unless
    told not to; the wrapper's step is not converted (as Keras's optimizers
    are not), so the custom normalization it calls runs as written here."""
    files = []

    def l2_here(g):
        files.append(sys._getframe().f_code.co_filename)
        return tf.norm(g) + 1e-7

    custom_norm("l2_here", l2_here)
    var = keras.Variable(np.ones((3, 2), np.float32))
    opt = normopt.NormalizedOptimizer(keras.optimizers.SGD(0.1), "l2_here")

    @tf.function
    def step(grad):
        if call == "apply":
            opt.apply([grad], [var])
        else:
            opt.apply_gradients([(grad, var)])

    step(tf.fill((3, 2), 2.0))
    assert files and set(files) == {__file__}
    np.testing.assert_allclose(var.numpy(), 1 - 0.1 * 2 / (np.sqrt(6 * 4) + 1e-7), rtol=1e-6)


def test_no_autograph_warning_in_a_users_tf_function():
    """A user's tf.function around opt.apply: AutoGraph converts every
    normopt function it calls and logs a warning for one it cannot convert
    (an empty body once it drops the docstring). It remembers a failed
    function per set of conversion options and warns once: options no other
    test uses make it convert them anew here."""
    options = (tf.autograph.experimental.Feature.NAME_SCOPES,)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        for name in ("adam", "sgd"):
            var = keras.Variable(np.ones((3, 2), np.float32))
            opt = normopt.NormalizedOptimizer(name)
            _user_step(opt, var, options)(tf.ones((3, 2)))
            # the step ran through the adapter's hooks
            assert opt.last_path.name == "fused"
    finally:
        logger.removeHandler(handler)
    assert "AutoGraph could not transform" not in stream.getvalue(), stream.getvalue()


def test_every_adapter_hook_converts_with_autograph():
    """The hooks every step calls convert (to_graph raises where they do not,
    whatever was converted before)."""
    for adapter in keras_adapters.ADAPTERS.values():
        for hook in (adapter.before_update, adapter.restore):
            tf.autograph.to_graph(hook)
