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


def train_classifier(build_model, data, spec, epochs, batch_size, seed, bar=None):
    """Trains `build_model()` on `data` with `spec.build()`.

    The model is built after `keras.utils.set_random_seed(seed)`, so every
    optimizer starts from the same weights and sees the same batch order.
    Curves per epoch: training loss/accuracy as Keras reports them (running
    mean over the epoch, dropout active) and test loss/accuracy (inference
    mode, whole test set).
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model()
    optimizer = spec.build()
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        data.x_train,
        data.y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(data.x_test, data.y_test),
        verbose=0,
        callbacks=[_EpochProgress(bar).callback],
    )
    h = history.history
    return {
        "train_loss": [float(v) for v in h["loss"]],
        "train_accuracy": [float(v) for v in h["accuracy"]],
        "test_loss": [float(v) for v in h["val_loss"]],
        "test_accuracy": [float(v) for v in h["val_accuracy"]],
        "path": path_of(optimizer),
        "parameters": int(model.count_params()),
    }

