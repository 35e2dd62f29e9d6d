"""The two networks: the original wrapper's deep MLP and a small CNN.

Both take images (height, width, channels) and return logits for
`classes` classes; the MLP flattens its input first.
"""


def deep_mlp(input_shape, classes, depth=30, width=128, dropout=0.2, l2=1e-4):
    """depth x [Dense(width, relu, L2(l2) kernel penalty) -> BatchNorm -> Dropout(dropout)] -> Dense(classes)."""
    import keras

    layers = [keras.Input(input_shape), keras.layers.Flatten()]
    for _ in range(depth):
        layers += [
            keras.layers.Dense(
                width, activation="relu", kernel_regularizer=keras.regularizers.L2(l2)
            ),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(dropout),
        ]
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers, name=f"mlp{depth}x{width}")


def small_cnn(input_shape, classes, filters=(32, 64), dense=128, dropout=0.3):
    """Per entry f of `filters`: 2 x [Conv3x3(f) -> BatchNorm -> ReLU] -> MaxPool2;
    then Flatten -> Dense(dense, relu) -> Dropout(dropout) -> Dense(classes)."""
    import keras

    layers = [keras.Input(input_shape)]
    for f in filters:
        for _ in range(2):
            layers += [
                keras.layers.Conv2D(f, 3, padding="same", use_bias=False),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
            ]
        layers.append(keras.layers.MaxPooling2D(2))
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(dense, activation="relu"),
        keras.layers.Dropout(dropout),
        keras.layers.Dense(classes),
    ]
    return keras.Sequential(layers, name="small_cnn")
