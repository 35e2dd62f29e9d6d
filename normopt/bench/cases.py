"""What is benchmarked: layer sizes for the norms, variable sets for a step.

Each step-benchmark set is the list of trainable-variable shapes of a real
Keras model (or of plain large tensors), so the per-variable overheads match
what training sees:

    mlp          784 -> 30 x [Dense(128) + BatchNorm] -> Dense(10):
                 122 variables, 588,298 parameters
    resnet       small ResNet-style CNN on 32x32x3: 3x3 stem, three stages of
                 two basic blocks (16/32/64 channels, BatchNorm, 1x1
                 projections), Dense(10)
    transformer  one encoder block, width 512: 8-head self-attention,
                 two LayerNorms, feed-forward 512 -> 2048 -> 512
    big          one 4096 x 4096 tensor
    eight_1k     eight 1024 x 1024 tensors
    tiny         a 32 -> 16 -> 4 dense net's four variables (tests; not in
                 the default list)
"""

import math

STEP_SETS = ("mlp", "resnet", "transformer", "big", "eight_1k")
# every set --sets accepts: the defaults and the tests' small one
KNOWN_SETS = STEP_SETS + ("tiny",)


def layer_sizes(min_exp, max_exp, step=1):
    """[2**min_exp, ..., 2**max_exp] every `step` exponents (max included)."""
    exps = list(range(min_exp, max_exp + 1, step))
    if exps[-1] != max_exp:
        exps.append(max_exp)
    return [2**e for e in exps]


def _mlp():
    import keras

    layers = [keras.Input((784,))]
    for _ in range(30):
        layers += [keras.layers.Dense(128), keras.layers.BatchNormalization()]
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


def _resnet():
    import keras
    from keras import layers

    def block(x, channels, stride):
        shortcut = x
        y = layers.Conv2D(channels, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(channels, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        if stride != 1 or shortcut.shape[-1] != channels:
            shortcut = layers.Conv2D(channels, 1, strides=stride, use_bias=False)(x)
            shortcut = layers.BatchNormalization()(shortcut)
        return layers.ReLU()(layers.Add()([y, shortcut]))

    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for channels, stride in ((16, 1), (32, 2), (64, 2)):
        x = block(x, channels, stride)
        x = block(x, channels, 1)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def _transformer(width=512, heads=8, hidden=2048, tokens=16):
    import keras
    from keras import layers

    inputs = keras.Input((tokens, width))
    attended = layers.MultiHeadAttention(heads, width // heads)(inputs, inputs)
    x = layers.LayerNormalization()(layers.Add()([inputs, attended]))
    y = layers.Dense(hidden, activation="relu")(x)
    y = layers.Dense(width)(y)
    x = layers.LayerNormalization()(layers.Add()([x, y]))
    return keras.Model(inputs, x)


_MODELS = {"mlp": _mlp, "resnet": _resnet, "transformer": _transformer}


def step_shapes(name):
    """Trainable-variable shapes of set `name`, in the model's order."""
    if name == "big":
        return [(4096, 4096)]
    if name == "eight_1k":
        return [(1024, 1024)] * 8
    if name == "tiny":
        return [(32, 16), (16,), (16, 4), (4,)]
    if name not in _MODELS:
        raise KeyError(f"unknown variable set {name!r}; known: {KNOWN_SETS}")
    model = _MODELS[name]()
    return [tuple(int(d) for d in v.shape) for v in model.trainable_variables]


def parameter_count(shapes):
    return sum(math.prod(s) for s in shapes)
