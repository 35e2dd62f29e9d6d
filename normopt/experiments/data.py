"""Image classification data for the mlp and cnn experiments.

    digits    scikit-learn's bundled 8x8 handwritten digits (1797 images, no
              download), pixels / 16, a fixed 80/20 train/test split
    mnist     keras.datasets.mnist (28x28x1), pixels / 255
    cifar10   keras.datasets.cifar10 (32x32x3), pixels / 255

The Keras sets load from the local cache (~/.keras/datasets) or download;
when neither works, `load_dataset` raises `DatasetUnavailable` with a message
saying what failed and what to do instead.
"""

import dataclasses

import numpy as np

DATASETS = ("digits", "mnist", "cifar10")
KERAS_DATASETS = {"mnist": "mnist.npz", "cifar10": "cifar-10-batches-py"}


class DatasetUnavailable(RuntimeError):
    """A dataset that has to come from keras.datasets could not be loaded."""


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # float32, (n, height, width, channels)
    y_train: np.ndarray  # int64, (n,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10

    @property
    def image_shape(self):
        return tuple(self.x_train.shape[1:])

    def subset(self, train, test):
        """The first `train` / `test` examples (the splits are already shuffled)."""
        return Dataset(
            self.name,
            self.x_train[:train],
            self.y_train[:train],
            self.x_test[:test],
            self.y_test[:test],
            self.num_classes,
        )

    def describe(self):
        return {
            "name": self.name,
            "train_examples": int(len(self.x_train)),
            "test_examples": int(len(self.x_test)),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
        }


def load_digits(seed=0):
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    order = np.random.RandomState(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return Dataset("digits", x[:cut], y[:cut], x[cut:], y[cut:])


def load_keras_dataset(name):
    """keras.datasets.<name>.load_data(), scaled to [0, 1], or DatasetUnavailable."""
    import keras

    try:
        (x, y), (xt, yt) = getattr(keras.datasets, name).load_data()
    except Exception as exc:  # download/cache errors come in many types
        raise DatasetUnavailable(
            f"could not load {name!r} through keras.datasets.{name}.load_data() "
            f"({type(exc).__name__}: {exc}). It needs the cached copy "
            f"~/.keras/datasets/{KERAS_DATASETS[name]} or network access to "
            "download it. Use --dataset digits (bundled with scikit-learn, "
            "no download) instead."
        ) from exc
    x = np.asarray(x, dtype="float32") / 255.0
    xt = np.asarray(xt, dtype="float32") / 255.0
    if x.ndim == 3:  # mnist: add the channel axis
        x, xt = x[..., None], xt[..., None]
    y = np.asarray(y, dtype="int64").reshape(-1)
    yt = np.asarray(yt, dtype="int64").reshape(-1)
    return Dataset(name, x, y, xt, yt)


def load_dataset(name, seed=0):
    if name == "digits":
        return load_digits(seed)
    if name in KERAS_DATASETS:
        return load_keras_dataset(name)
    raise ValueError(f"unknown dataset {name!r}; one of {DATASETS}")
