"""The tf_keras internals the wrappers read, against the installed tf_keras.

normopt.ops.tf_keras_adapters is the only module that reads private
attributes of a tf_keras optimizer; its READS lists them. Each is checked on
a built optimizer with every option that creates slots switched on, so a
tf_keras release that renames one fails here, naming it. The sparse
behaviour each adapter claims (the rule's INDEXED_SLICES entry, or a
refusal) is checked against what tf_keras's own update does.
"""

import numpy as np
import pytest
import tensorflow as tf

tf_keras = pytest.importorskip("tf_keras")

from normopt.ops import keras_adapters  # noqa: E402
from normopt.ops import tf_keras_adapters as adapters  # noqa: E402

ALL_SLOTS = {"SGD": dict(momentum=0.5), "Adam": dict(amsgrad=True), "AdamW": dict(amsgrad=True)}


def _class(owner):
    family, name = owner.split(":")
    module = tf_keras.optimizers.legacy if family == "legacy" else tf_keras.optimizers
    return getattr(module, "SGD" if name == "*" else name)


def built(cls, **options):
    opt = cls(**ALL_SLOTS.get(cls.__name__, {}), **options)
    adapters.build(opt, [tf.Variable([1.0, 2.0])])
    return opt


@pytest.mark.parametrize("owner, attribute", adapters.READS)
def test_read_attribute_exists(owner, attribute):
    cls = _class(owner)
    opt = built(cls)
    assert hasattr(opt, attribute), (
        f"{cls.__module__}.{cls.__name__} (tf_keras {tf_keras.__version__}) has no "
        f"attribute {attribute!r}, which normopt/ops/tf_keras_adapters.py reads")


@pytest.mark.parametrize("cls", list(adapters.ADAPTERS), ids=lambda c: c.__module__ + "." + c.__name__)
def test_adapter_slots_are_the_optimizers_variables(cls):
    opt = cls(**ALL_SLOTS.get(cls.__name__, {}))
    variable = tf.Variable([1.0, 2.0])
    adapters.build(opt, [variable])
    adapter = keras_adapters.adapter_for(opt)
    assert adapter is adapters.ADAPTERS[cls] and adapter.rule(opt)
    slots = adapter.slots(opt, keras_adapters.variable_indices(opt, [variable]))
    assert slots, "every adapted optimizer here has slots with these options"
    own = {id(v) for v in adapters.optimizer_variables(opt)}
    for slot in slots:
        assert len(slot) == 1 and id(slot[0]) in own and tuple(slot[0].shape) == (2,)
    assert len(adapter.hyper(opt)) >= 1


def test_dispatch_and_no_adapter_for_a_subclass():
    class Mine(tf_keras.optimizers.Adam):
        pass

    assert keras_adapters.adapter_for(Mine()) is None
    assert keras_adapters.adapter_for(tf_keras.optimizers.RMSprop()) is None
    assert keras_adapters.unsupported_options(tf_keras.optimizers.legacy.Adam(clipvalue=1.0)) == [
        "clipvalue"]
    assert keras_adapters.sums_across_replicas(Mine()) is False


SPARSE_CASES = {
    "new SGD momentum": lambda: tf_keras.optimizers.SGD(0.1, momentum=0.5),
    "new SGD": lambda: tf_keras.optimizers.SGD(0.1),
    "new Adam": lambda: tf_keras.optimizers.Adam(0.1),
    "legacy SGD": lambda: tf_keras.optimizers.legacy.SGD(0.1),
    "legacy SGD momentum": lambda: tf_keras.optimizers.legacy.SGD(0.1, momentum=0.5),
    "legacy Adam": lambda: tf_keras.optimizers.legacy.Adam(0.1, amsgrad=True),
}


@pytest.mark.parametrize("name", list(SPARSE_CASES))
def test_sparse_claims_match_tf_keras(name):
    """An adapter whose rule touches only the indexed rows under a sparse
    gradient (INDEXED_ROWS), or that refuses sparse gradients, is exactly
    one whose tf_keras update leaves the other rows of the variable and
    every slot alone (after a dense step, so the slots are not zero)."""
    opt = SPARSE_CASES[name]()
    start = np.linspace(-1.0, 1.0, 18).reshape(6, 3).astype(np.float32)
    variable = tf.Variable(start)
    adapters.build(opt, [variable])
    adapter = keras_adapters.adapter_for(opt)
    opt.apply_gradients([(tf.constant(np.full((6, 3), 0.5, np.float32)), variable)])
    state = [variable] + adapters.optimizer_variables(opt)[1:]
    before = [s.numpy() for s in state]
    sparse = tf.IndexedSlices(tf.constant([[0.5, -0.25, 1.0], [2.0, 0.125, -1.5]]),
                              tf.constant([4, 1]), tf.constant([6, 3]))
    opt.apply_gradients([(sparse, variable)])
    absent = [0, 2, 3, 5]
    rows_only = all(np.array_equal(s.numpy()[absent], b[absent]) for s, b in zip(state, before))
    rule = adapter.rule(opt)
    claims_rows_only = (keras_adapters.sparse_gradients(rule) == keras_adapters.INDEXED_ROWS
                        or bool(keras_adapters.sparse_refusals(opt, ["w"])))
    assert rows_only == claims_rows_only, (name, rule)
