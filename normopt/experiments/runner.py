"""Training loops with progress bars: the quadratic and the classifiers.

Both return plain Python curves (lists of floats, non-finite values kept as
float('nan') / float('inf')) plus the step path the optimizer took.
"""

import math

from normopt.experiments.specs import path_of

QUADRATIC_CHUNK = 100  # steps per tf.function call: one progress update each


def run_quadratic(problem, spec, iterations, bar=None):
    """Minimises `problem` with `spec.build()` for `iterations` steps.

    Returns {"loss": [L(w_0), ..., L(w_T)], "path": ...}: T + 1 values, the
    loss after each completed step, computed in float64 by TensorFlow from
    the gradient tape's forward pass (the last one with a separate call).
    """
    import keras
    import tensorflow as tf

    q = tf.constant(problem.Q, dtype=tf.float64)
    b = tf.constant(problem.b, dtype=tf.float64)
    w = keras.Variable(problem.w0, dtype="float64", name="w")
    optimizer = spec.build()
    optimizer.build([w])

    def loss_fn():
        return 0.5 * tf.tensordot(w, tf.linalg.matvec(q, w), 1) - tf.tensordot(b, w, 1)

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def steps(n):
        losses = tf.TensorArray(tf.float64, size=n)
        for i in tf.range(n):
            with tf.GradientTape() as tape:
                loss = loss_fn()
            grad = tape.gradient(loss, w)
            optimizer.apply([grad], [w])
            losses = losses.write(i, loss)
        return losses.stack()

    curve = []
    done = 0
    logger = tf.get_logger()
    level = logger.level
    # Each run traces its own function (own variable and optimizer), which
    # TF would otherwise report as "excessive retracing".
    logger.setLevel("ERROR")
    try:
        while done < iterations:
            n = min(QUADRATIC_CHUNK, iterations - done)
            curve.extend(steps(tf.constant(n)).numpy().tolist())
            done += n
            if bar is not None:
                bar.update(n)
    finally:
        logger.setLevel(level)
    curve.append(float(loss_fn().numpy()))
    return {"loss": curve, "path": path_of(optimizer)}


def first_nonfinite(values):
    """Index of the first NaN/inf in `values`, or None."""
    for i, v in enumerate(values):
        if not math.isfinite(v):
            return i
    return None


class _EpochProgress:
    def __init__(self, bar):
        import keras

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if bar is not None:
                    bar.update(1)

        self.callback = Callback()


class _LayerGradientProbe:
    """Per-layer L2 gradient norms of a fixed probe batch at each epoch's end.

    The gradient of the training loss on the first `size` training examples,
    in inference mode (no dropout draw, no batch-norm update: the probe
    leaves training exactly as it would be without it), once before
    training and after every epoch. A layer's norm is the L2 norm over its
    trainable variables. `norms[e][l]`: epoch e (0 = before training), layer l.
    """

    def __init__(self, model, loss, x, y, size=256):
        import keras
        import tensorflow as tf

        self.layers = [layer.name for layer in model.layers if layer.trainable_variables]
        owner = [i for i, layer in enumerate(
            [layer for layer in model.layers if layer.trainable_variables])
            for _ in layer.trainable_variables]
        x, y = x[:size], y[:size]
        variables = [v for layer in model.layers for v in layer.trainable_variables]
        self.norms = []

        @tf.function
        def probe():
            with tf.GradientTape() as tape:
                value = loss(y, model(x, training=False))
            grads = tape.gradient(value, variables)
            squares = [tf.reduce_sum(tf.square(tf.cast(g, tf.float64))) for g in grads]
            return tf.stack([tf.sqrt(tf.add_n([sq for sq, o in zip(squares, owner) if o == i]))
                             for i in range(len(self.layers))])

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                outer.norms.append([float(v) for v in probe().numpy()])

            def on_epoch_end(self, epoch, logs=None):
                outer.norms.append([float(v) for v in probe().numpy()])

        self.callback = Callback()

    def result(self):
        return {"layers": self.layers, "norms": self.norms}


def train_classifier(build_model, data, spec, epochs, batch_size, seed, bar=None,
                     probe_gradients=False):
    """Trains `build_model()` on `data` with `spec.build()`.

    The model is built after `keras.utils.set_random_seed(seed)`, so every
    optimizer starts from the same weights and sees the same batch order.
    Curves per epoch: training loss/accuracy as Keras reports them (running
    mean over the epoch, dropout active) and test loss/accuracy (inference
    mode, whole test set). With `probe_gradients`, also per-layer gradient
    norms of a probe batch per epoch (`_LayerGradientProbe`).
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model()
    optimizer = spec.build()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    callbacks = [_EpochProgress(bar).callback]
    probe = None
    if probe_gradients:
        probe = _LayerGradientProbe(model, loss, data.x_train, data.y_train)
        callbacks.append(probe.callback)
    history = model.fit(
        data.x_train,
        data.y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(data.x_test, data.y_test),
        verbose=0,
        callbacks=callbacks,
    )
    h = history.history
    extra = {} if probe is None else {"layer_grad_norms": probe.result()}
    return {
        **extra,
        "train_loss": [float(v) for v in h["loss"]],
        "train_accuracy": [float(v) for v in h["accuracy"]],
        "test_loss": [float(v) for v in h["val_loss"]],
        "test_accuracy": [float(v) for v in h["val_accuracy"]],
        "path": path_of(optimizer),
        "parameters": int(model.count_params()),
    }

