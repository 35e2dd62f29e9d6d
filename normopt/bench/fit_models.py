"""The reference models of `normopt bench fit`, and synthetic batches for any model.

    mlp30        the experiments' 30-layer MLP: 784 -> 30 x [Dense(128, relu),
                 BatchNorm, Dropout] -> Dense(10); 588,298 trainable
                 parameters; batch 128
    wide_mlp     1024 -> 4 x Dense(2048, relu) -> Dense(10); 14,708,746
                 parameters; batch 32
    cnn          the experiments' small CNN on 32x32x3: 2 x [2 x (Conv3x3,
                 BatchNorm, ReLU), MaxPool] (32, 64 filters) -> Dense(128) ->
                 Dense(10); batch 64
    transformer  token ids (64 per example, vocabulary 20,000) -> Embedding(128)
                 -> one encoder block (4-head self-attention, two LayerNorms,
                 feed-forward 128 -> 512 -> 128) -> mean over tokens ->
                 Dense(10); batch 32. The Embedding's gradient is IndexedSlices.
    lstm         32 steps of 64 features -> LSTM(256) -> Dense(10); batch 64
    embedding    token ids (32 per example, vocabulary 100,000) -> Embedding(64)
                 -> mean over tokens -> Dense(64, relu) -> Dense(10); batch 64;
                 6,404,810 parameters, nearly all in the Embedding: a
                 bag-of-words text classifier, whose step is mostly the
                 optimizer's

`scale="tiny"` builds the same architectures a few hundred times smaller
(for smoke tests); `scale="reference"` the sizes above. Every model ends in
logits for CLASSES classes and trains with sparse categorical cross-entropy.
Data is synthetic and made in memory (nothing is downloaded).
"""

import collections

import numpy as np

MODELS = ("mlp30", "wide_mlp", "cnn", "transformer", "lstm", "embedding")
SCALES = ("reference", "tiny")
CLASSES = 10

# One reference model: a builder returning a fresh (uncompiled) model, and the
# batch size it is timed with.
ModelCase = collections.namedtuple("ModelCase", ["name", "build", "batch_size", "note"])


def _mlp30(tiny):
    from normopt.experiments.models import deep_mlp

    if tiny:
        return deep_mlp((32,), CLASSES, depth=3, width=16)
    return deep_mlp((784,), CLASSES, depth=30, width=128)


def _wide_mlp(tiny):
    import keras

    width, inputs, depth = (64, 32, 2) if tiny else (2048, 1024, 4)
    layers = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
    layers.append(keras.layers.Dense(CLASSES))
    return keras.Sequential(layers, name="wide_mlp")


def _cnn(tiny):
    from normopt.experiments.models import small_cnn

    if tiny:
        return small_cnn((8, 8, 3), CLASSES, filters=(4,), dense=8)
    return small_cnn((32, 32, 3), CLASSES)


def _transformer(tiny):
    import keras
    from keras import layers

    vocab, tokens, width, heads, hidden = (
        (50, 8, 16, 2, 32) if tiny else (20_000, 64, 128, 4, 512)
    )
    ids = keras.Input((tokens,), dtype="int32")
    x = layers.Embedding(vocab, width)(ids)
    attended = layers.MultiHeadAttention(heads, width // heads)(x, x)
    x = layers.LayerNormalization()(layers.Add()([x, attended]))
    y = layers.Dense(hidden, activation="relu")(x)
    y = layers.Dense(width)(y)
    x = layers.LayerNormalization()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(ids, layers.Dense(CLASSES)(x), name="transformer")


def _lstm(tiny):
    import keras

    steps, features, units = (4, 8, 8) if tiny else (32, 64, 256)
    return keras.Sequential(
        [keras.Input((steps, features)), keras.layers.LSTM(units),
         keras.layers.Dense(CLASSES)],
        name="lstm",
    )


def _embedding(tiny):
    import keras
    from keras import layers

    vocab, tokens, width = (50, 8, 8) if tiny else (100_000, 32, 64)
    return keras.Sequential(
        [keras.Input((tokens,), dtype="int32"), layers.Embedding(vocab, width),
         layers.GlobalAveragePooling1D(), layers.Dense(width, activation="relu"),
         layers.Dense(CLASSES)],
        name="embedding",
    )


_BUILDERS = {
    "mlp30": (_mlp30, 128, "many small tensors (122 variables)"),
    "wide_mlp": (_wide_mlp, 32, "many parameters per example"),
    "cnn": (_cnn, 64, "convolutions: forward/backward heavy"),
    "transformer": (_transformer, 32, "Embedding: IndexedSlices gradient"),
    "lstm": (_lstm, 64, "recurrent: forward/backward heavy"),
    "embedding": (_embedding, 64, "large Embedding: optimizer heavy, IndexedSlices"),
}


def reference_model(name, scale="reference"):
    """The ModelCase of reference model `name` at `scale`."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if scale not in SCALES:
        raise KeyError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    builder, batch, note = _BUILDERS[name]
    tiny = scale == "tiny"
    return ModelCase(name, lambda: builder(tiny), 8 if tiny else batch, note)


DEFAULT_INT_BOUND = 100   # int inputs of a model without an Embedding layer
DEFAULT_UNKNOWN_DIM = 16  # a None dimension other than the batch


def embedding_sizes(layer):
    """input_dim of every Embedding layer in `layer` (depth first, itself included)."""
    import keras

    stack, sizes = [layer], []
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, keras.layers.Embedding):
            sizes.append(int(layer.input_dim))
        stack = list(getattr(layer, "layers", [])) + stack
    return sizes


def _embeddings_fed_by(model, tensor):
    """input_dims of the Embedding layers that `tensor` reaches in `model`'s
    layer graph (through any layers; all of a nested model's Embeddings),
    or None where the graph cannot be read (a subclassed model)."""
    import keras

    operations = getattr(model, "_operations", None)
    if not operations:
        return None
    reached, sizes, changed = {id(tensor)}, [], True
    while changed:  # until nothing new is reached; graphs are small
        changed = False
        for op in operations:
            for node in getattr(op, "_inbound_nodes", ()):
                outputs = [id(t) for t in node.output_tensors]
                if set(outputs) <= reached or not any(
                        id(t) in reached for t in node.input_tensors):
                    continue
                reached.update(outputs)
                changed = True
                if isinstance(op, (keras.layers.Embedding, keras.Model)):
                    sizes += embedding_sizes(op)
    return sizes


def int_bounds(model):
    """Per input of `model.inputs`: indices valid for every Embedding layer it
    feeds, i.e. the smallest input_dim among them; DEFAULT_INT_BOUND for an
    input that feeds none. Where the graph cannot be read, the smallest
    input_dim of all the model's Embedding layers for every input."""
    every = embedding_sizes(model)
    bounds = []
    for tensor in model.inputs:
        try:
            fed = _embeddings_fed_by(model, tensor)
        except (AttributeError, TypeError):  # a graph this code cannot walk
            fed = None
        sizes = every if fed is None else fed
        bounds.append(min(sizes) if sizes else DEFAULT_INT_BOUND)
    return bounds


def input_structure(model):
    """The model's inputs as it takes them: one KerasTensor, a list or a dict
    (a functional model's `input`; `inputs` of a Sequential one)."""
    try:
        structure = model.input
    except (AttributeError, ValueError):  # a Sequential model never called
        structure = model.inputs
    if isinstance(structure, (list, tuple)) and len(structure) == 1:
        return structure[0]
    return structure


def input_specs(model, batch_size, vocabulary=None):
    """[(shape, dtype name, int upper bound or None)] of each of `model.inputs`.

    Unknown dimensions past the batch become DEFAULT_UNKNOWN_DIM; integer
    inputs draw from [0, vocabulary), by default from [0, bound) of
    `int_bounds` (valid indices of the Embedding layers each feeds).
    """
    bounds = [vocabulary] * len(model.inputs) if vocabulary else int_bounds(model)
    specs = []
    for tensor, bound in zip(model.inputs, bounds):
        shape = (batch_size,) + tuple(
            DEFAULT_UNKNOWN_DIM if d is None else int(d) for d in tensor.shape[1:]
        )
        dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
        is_int = np.issubdtype(np.dtype(dtype), np.integer) if dtype not in (
            "bfloat16",) else False
        specs.append((shape, dtype, bound if is_int else None))
    return specs


def synthetic_inputs(specs, seed=0, structure=None):
    """One batch for `input_specs`, packed as `structure` (`input_structure`:
    one array, a tuple for a list, a dict); without it one array for one
    input, else a tuple. Tuples, not lists: tf.data takes a list for one
    tensor."""
    import keras

    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype, bound in specs:
        if bound is not None:
            arrays.append(rng.integers(0, bound, size=shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    if structure is None:
        return arrays[0] if len(arrays) == 1 else tuple(arrays)
    return keras.tree.lists_to_tuples(keras.tree.pack_sequence_as(structure, arrays))


def synthetic_targets(model, batch_size, classification, seed=1):
    """Class ids for `classification`, else normal targets of each output's shape."""
    rng = np.random.default_rng(seed)
    if classification:
        return rng.integers(0, CLASSES, size=(batch_size,)).astype("int32")
    targets = [
        rng.standard_normal(
            (batch_size,) + tuple(DEFAULT_UNKNOWN_DIM if d is None else int(d)
                                  for d in t.shape[1:])
        ).astype("float32")
        for t in model.outputs
    ]
    return targets[0] if len(targets) == 1 else tuple(targets)
