"""normopt: gradient-normalized and norm-clipped Keras 3 optimizers.

    from normopt import NormalizedOptimizer, ClippedOptimizer
    opt = NormalizedOptimizer(keras.optimizers.Adam(1e-3), normalization="l2")
"""

from normopt.normalizations import (
    BUILTIN_NORMALIZATIONS,
    normalization_names,
    register_normalization,
    unregister_normalization,
)
from normopt.ops.fused_step import FusedPathUnavailable
from normopt.optimizers import ClippedOptimizer, NormalizedOptimizer

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_NORMALIZATIONS",
    "ClippedOptimizer",
    "FusedPathUnavailable",
    "NormalizedOptimizer",
    "normalization_names",
    "register_normalization",
    "unregister_normalization",
]
