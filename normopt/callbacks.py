"""Keras callbacks that read what a normopt wrapper records during training.

    model.compile(optimizer=NormalizedOptimizer(keras.optimizers.Adam()), ...)
    model.fit(x, y, callbacks=[GradientNormMonitor(log_dir="logs/grads"),
                               keras.callbacks.TensorBoard("logs")])

The wrapper records the L2 norm of every raw gradient at each step
(`wrapper.gradient_norms`); these callbacks only read it, so they cost one
small device-to-host copy per logged batch.
"""

import math

import keras
import numpy as np


def find_wrapper(optimizer):
    """The normopt wrapper that is, or is inside, `optimizer`.

    Looks through a keras.optimizers.LossScaleOptimizer (mixed precision);
    raises ValueError naming what it found otherwise.
    """
    from normopt.optimizers import _GradientNormWrapper

    seen = optimizer
    while seen is not None:
        if isinstance(seen, _GradientNormWrapper):
            return seen
        seen = getattr(seen, "inner_optimizer", None)
    raise ValueError(
        "GradientNormMonitor needs a normopt wrapper as the model's optimizer "
        "(NormalizedOptimizer, ClippedOptimizer, ...), which records the "
        f"gradient norms; got {type(optimizer).__name__}. Wrap it, e.g. "
        f"NormalizedOptimizer(keras.optimizers.{type(optimizer).__name__}(...))."
    )


def layer_of(path):
    """The layer part of a variable path: 'block/dense/kernel' -> 'block/dense'."""
    return path.rsplit("/", 1)[0] if "/" in path else path


def global_norm(norms):
    """L2 norm over all variables: sqrt(sum_i norm_i^2)."""
    return float(math.sqrt(float(np.sum(np.square(np.asarray(norms, np.float64))))))


def layer_norms(norms, names):
    """{layer: L2 norm over the layer's variables}, in first-seen order."""
    squares = {}
    for norm, name in zip(np.asarray(norms, np.float64), names):
        layer = layer_of(name)
        squares[layer] = squares.get(layer, 0.0) + norm * norm
    return {layer: math.sqrt(sq) for layer, sq in squares.items()}


def _require_tensorboard():
    import importlib.util

    # The writer is tf.summary's, as for keras.callbacks.TensorBoard: on JAX
    # or PyTorch it needs TensorFlow installed (imported on first write).
    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(
            "GradientNormMonitor(log_dir=...) writes TensorBoard scalars with "
            "tf.summary, which needs TensorFlow installed (as "
            "keras.callbacks.TensorBoard does on every backend): pip install "
            "tensorflow-cpu. Without log_dir it needs neither."
        )
    if importlib.util.find_spec("tensorboard") is None:
        raise ImportError(
            "GradientNormMonitor(log_dir=...) writes TensorBoard scalars, which "
            "needs the tensorboard package: pip install tensorboard."
        )


class GradientNormMonitor(keras.callbacks.Callback):
    """Puts the global gradient norm into the logs; optionally per layer into TensorBoard.

    `grad_norm` = sqrt(sum over variables of |g_v|^2), the L2 norm of all raw
    gradients together (before normalization or clipping, unscaled), is set
    in the batch logs every `every` batches (batches 0, every, 2 * every, ...
    of each epoch) and in the epoch logs as the
    mean over the epoch's logged batches, so it shows in the progress bar,
    `History`, `CSVLogger` and Keras's TensorBoard callback (list this
    callback before those). With `log_dir`, each layer's norm (the L2 norm
    over its variables) is written as the TensorBoard scalar
    `grad_norm/<layer>` at the optimizer's step.

    With `steps_per_execution` > 1 Keras calls the callback once per
    execution, after its last batch: a call logs the norm of that batch when
    the execution held a batch to log, so there is a record every `every`
    batches where `every` is a multiple of `steps_per_execution`, and one
    per call where `every` is smaller.

    Args:
        every: log every `every`-th batch (>= 1).
        log_dir: None, or a directory for per-layer TensorBoard scalars.
    """

    def __init__(self, every=1, log_dir=None):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"`every` must be an integer >= 1, got {every!r}.")
        if log_dir is not None:
            _require_tensorboard()
        self.every = every
        self.log_dir = log_dir
        self._wrapper = None
        self._writer = None
        self._epoch_values = []
        self._last_batch = -1

    def on_train_begin(self, logs=None):
        self._wrapper = find_wrapper(self.model.optimizer)
        if self.log_dir is not None and self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(str(self.log_dir))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_values = []
        self._last_batch = -1

    def _due(self, batch):
        """Whether the batches since the last call, (last, batch], hold a
        multiple of `every` (`batch`: the last batch of the execution)."""
        due = batch // self.every > self._last_batch // self.every
        self._last_batch = batch
        return due

    def on_train_batch_end(self, batch, logs=None):
        if not self._due(batch):
            return
        # On JAX, reading `self.model` brings the state of the latest step
        # back to the variables (Keras keeps it apart during an epoch).
        _ = self.model
        if self._wrapper.gradient_norms is None:
            return
        norms = keras.ops.convert_to_numpy(self._wrapper.gradient_norms)
        value = global_norm(norms)
        self._epoch_values.append(value)
        if logs is not None:
            logs["grad_norm"] = value
        if self._writer is not None:
            self._write_layers(norms)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._epoch_values:
            logs["grad_norm"] = float(np.mean(self._epoch_values))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def _write_layers(self, norms):
        import tensorflow as tf

        step = int(keras.ops.convert_to_numpy(self._wrapper.iterations))
        with self._writer.as_default(step=step):
            for layer, value in layer_norms(norms, self._wrapper.gradient_norm_names).items():
                tf.summary.scalar(f"grad_norm/{layer}", value)
