"""Which optimizer a run uses: an inner Keras optimizer, optionally wrapped.

`OptimizerSpec("sgd", 0.1, "l2").build()` is
`NormalizedOptimizer(SGD(0.1, momentum=0.9, nesterov=True), "l2")`; with
`normalization=None` it is the plain inner optimizer. The wrappers use their
default `fused=None`, so the compiled op runs where it exists (`fused` can
force either path); the path taken is recorded per run (`path_of`).
"""

import dataclasses

INNER = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    inner: str
    learning_rate: float
    normalization: str = None
    fused: object = None  # the wrappers' `fused`: None (auto), True, False

    @property
    def label(self):
        name = {"sgd": "SGD-nesterov", "adam": "Adam"}[self.inner]
        if self.normalization is None:
            return f"{name} lr={self.learning_rate:g}"
        return f"Normalized {name} ({self.normalization}) lr={self.learning_rate:g}"

    def build(self):
        import keras

        from normopt import NormalizedOptimizer

        if self.inner == "sgd":
            inner = keras.optimizers.SGD(self.learning_rate, momentum=0.9, nesterov=True)
        elif self.inner == "adam":
            inner = keras.optimizers.Adam(self.learning_rate)
        else:
            raise ValueError(f"unknown inner optimizer {self.inner!r}; one of {INNER}")
        if self.normalization is None:
            return inner
        return NormalizedOptimizer(inner, self.normalization, fused=self.fused)

    def as_dict(self):
        return {
            "label": self.label,
            "inner": self.inner,
            "learning_rate": self.learning_rate,
            "normalization": self.normalization,
            "fused": self.fused,
        }


def path_of(optimizer):
    """The step path a normopt wrapper took (`fused`, `tf`, ...); `keras` for a plain optimizer."""
    path = getattr(optimizer, "last_path", None)
    if path is None:
        return "keras" if not hasattr(optimizer, "last_path") else "unknown"
    return path.name
