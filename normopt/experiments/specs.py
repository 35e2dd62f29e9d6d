"""Which optimizer a run uses: an inner Keras optimizer, optionally wrapped.

`OptimizerSpec("sgd", 0.1, "l2").build()` is
`NormalizedOptimizer(SGD(0.1, momentum=0.9, nesterov=True), "l2")`; with
`normalization=None` it is the plain inner optimizer. `granularity="unit"`
normalizes per unit (one norm per index of the last axis) instead of per
tensor, and `wrapper="adaptive_clip"` builds an `AdaptiveClippedOptimizer`
(adaptive gradient clipping; `normalization` is then its norm, "l2" by
default, and `clip_factor`/`eps` its settings). The wrappers use their
default `fused=None`, so the compiled op runs where it exists (`fused` can
force either path); the path taken is recorded per run (`path_of`).
"""

import dataclasses

INNER = ("sgd", "adam")
WRAPPERS = ("normalized", "adaptive_clip")
# AdaptiveClippedOptimizer's defaults, the values an "adaptive_clip" spec
# without its own settings uses (and its label leaves out).
AGC_DEFAULTS = {"clip_factor": 0.01, "eps": 1e-3, "normalization": "l2",
                "granularity": "unit"}


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    inner: str
    learning_rate: float
    normalization: str = None
    fused: object = None  # the wrappers' `fused`: None (auto), True, False
    wrapper: str = "normalized"  # "normalized" or "adaptive_clip"
    granularity: str = None  # None: the wrapper's default ("tensor" / "unit")
    clip_factor: float = None  # adaptive_clip only; None: its default 0.01
    eps: float = None  # adaptive_clip only; None: its default 1e-3

    def __post_init__(self):
        if self.inner not in INNER:
            raise ValueError(f"unknown inner optimizer {self.inner!r}; one of {INNER}")
        if self.wrapper not in WRAPPERS:
            raise ValueError(f"unknown wrapper {self.wrapper!r}; one of {WRAPPERS}")
        agc = self.wrapper == "adaptive_clip"
        if agc and self.normalization is None:
            object.__setattr__(self, "normalization", AGC_DEFAULTS["normalization"])
        if self.normalization is None and self.granularity is not None:
            raise ValueError("a plain optimizer (normalization=None) has no granularity")
        if not agc and (self.clip_factor is not None or self.eps is not None):
            raise ValueError("clip_factor and eps belong to wrapper='adaptive_clip'")
        if self.normalization is not None and self.granularity is None:
            object.__setattr__(self, "granularity",
                               AGC_DEFAULTS["granularity"] if agc else "tensor")
        if agc:
            for key in ("clip_factor", "eps"):
                if getattr(self, key) is None:
                    object.__setattr__(self, key, AGC_DEFAULTS[key])

    @property
    def wrapped(self):
        return self.normalization is not None

    @property
    def label(self):
        name = {"sgd": "SGD-nesterov", "adam": "Adam"}[self.inner]
        lr = f"lr={self.learning_rate:g}"
        if not self.wrapped:
            return f"{name} {lr}"
        if self.wrapper == "adaptive_clip":
            parts = [f"clip {self.clip_factor:g}"]
            if self.normalization != AGC_DEFAULTS["normalization"]:
                parts.append(self.normalization)
            if self.granularity != AGC_DEFAULTS["granularity"]:
                parts.append(self.granularity)
            if self.eps != AGC_DEFAULTS["eps"]:
                parts.append(f"eps {self.eps:g}")
            return f"AGC {name} ({', '.join(parts)}) {lr}"
        parts = [self.normalization]
        if self.granularity != "tensor":
            parts.append(self.granularity)
        return f"Normalized {name} ({', '.join(parts)}) {lr}"

    def build(self):
        import keras

        from normopt import AdaptiveClippedOptimizer, NormalizedOptimizer

        if self.inner == "sgd":
            inner = keras.optimizers.SGD(self.learning_rate, momentum=0.9, nesterov=True)
        else:
            inner = keras.optimizers.Adam(self.learning_rate)
        if not self.wrapped:
            return inner
        if self.wrapper == "adaptive_clip":
            return AdaptiveClippedOptimizer(
                inner, clip_factor=self.clip_factor, eps=self.eps,
                normalization=self.normalization, granularity=self.granularity,
                fused=self.fused)
        return NormalizedOptimizer(inner, self.normalization, fused=self.fused,
                                   granularity=self.granularity)

    def as_dict(self):
        return {
            "label": self.label,
            "inner": self.inner,
            "learning_rate": self.learning_rate,
            "wrapper": self.wrapper if self.wrapped else None,
            "normalization": self.normalization,
            "granularity": self.granularity,
            "clip_factor": self.clip_factor,
            "eps": self.eps,
            "fused": self.fused,
        }


def path_of(optimizer):
    """The step path a normopt wrapper took (`fused`, `tf`, ...); `keras` for a plain optimizer."""
    path = getattr(optimizer, "last_path", None)
    if path is None:
        return "keras" if not hasattr(optimizer, "last_path") else "unknown"
    return path.name
