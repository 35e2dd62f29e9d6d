"""Small shared test utilities (no library logic: references live in reference.py)."""

import functools
import os
import shutil
import subprocess

import numpy as np
import pytest

import reference as R

# Relative/absolute tolerances per dtype for one-step comparisons against the
# float64 NumPy reference.
TOL = {
    "float64": dict(rtol=1e-10, atol=1e-12),
    "float32": dict(rtol=2e-5, atol=2e-6),
    "bfloat16": dict(rtol=2e-2, atol=2e-2),
    "float16": dict(rtol=4e-3, atol=4e-3),
}

SHAPES = [(), (1,), (7, 13), (0,), (3, 4, 5)]


def make_grads(shapes, seed=0, scale=None):
    rng = np.random.RandomState(seed)
    out = []
    for i, shape in enumerate(shapes):
        s = scale[i] if scale is not None else 10.0 ** rng.uniform(-2, 1)
        out.append(rng.standard_normal(shape) * s)
    return out


# Hyperparameters exactly representable in float32: Keras casts Python floats
# through float32 in places, so float64 parity needs values that survive it.
MOMENTUM = 0.875
BETA_1 = 0.875
BETA_2 = 0.998046875
WEIGHT_DECAY = 0.00390625


def reference_inner(kind, lr, weight_decay=None):
    if kind == "sgd":
        return R.SGD(lr, weight_decay=weight_decay)
    if kind == "momentum":
        return R.SGD(lr, momentum=MOMENTUM, weight_decay=weight_decay)
    if kind == "nesterov":
        return R.SGD(lr, momentum=MOMENTUM, nesterov=True, weight_decay=weight_decay)
    if kind == "adam":
        return R.Adam(lr, BETA_1, BETA_2, weight_decay=weight_decay)
    if kind == "amsgrad":
        return R.Adam(lr, BETA_1, BETA_2, amsgrad=True, weight_decay=weight_decay)
    if kind == "adamw":
        return R.Adam(lr, BETA_1, BETA_2, weight_decay=WEIGHT_DECAY)
    raise KeyError(kind)


def keras_inner(kind, lr):
    import keras

    if kind == "sgd":
        return keras.optimizers.SGD(lr)
    if kind == "momentum":
        return keras.optimizers.SGD(lr, momentum=MOMENTUM)
    if kind == "nesterov":
        return keras.optimizers.SGD(lr, momentum=MOMENTUM, nesterov=True)
    if kind == "adam":
        return keras.optimizers.Adam(lr, BETA_1, BETA_2)
    if kind == "amsgrad":
        return keras.optimizers.Adam(lr, BETA_1, BETA_2, amsgrad=True)
    if kind == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=WEIGHT_DECAY, beta_1=BETA_1, beta_2=BETA_2)
    raise KeyError(kind)


INNER_KINDS = ["sgd", "momentum", "nesterov", "adam", "amsgrad", "adamw"]


@functools.lru_cache(maxsize=None)
def _unfused_sgd():
    import keras

    class UnfusedSGD(keras.optimizers.Optimizer):
        """Plain SGD, w -= lr * g, as a Keras optimizer of its own: no adapter
        takes it (keras_adapters match exact Keras classes), so a wrapper
        around it runs the fused_scale path, whichever Keras optimizers get a
        fused rule."""

        def update_step(self, gradient, variable, learning_rate):
            lr = keras.ops.cast(learning_rate, variable.dtype)
            gradient = keras.ops.cast(gradient, variable.dtype)
            self.assign_sub(variable, keras.ops.multiply(gradient, lr))

    return UnfusedSGD


def unfused_inner(learning_rate=1e-3):
    """An inner optimizer without a fused rule (the fused_scale path)."""
    return _unfused_sgd()(learning_rate)


def sparse_gradients(grads, sparse):
    """(dense, given): `grads` with every row of gradient i outside the
    indices sparse[i] zeroed, and what K.apply takes for them: a
    cupy_kernels.SparseRows of those rows (in the order of the indices) for
    each i of `sparse`, the other gradients as they are."""
    from normopt.kernels.cupy_kernels import SparseRows

    dense, given = [], []
    for i, g in enumerate(grads):
        if i not in sparse:
            dense.append(g)
            given.append(g)
            continue
        indices = np.asarray(sparse[i], np.int64)
        d = np.zeros_like(g)
        d[indices] = g[indices]
        dense.append(d)
        given.append(SparseRows(np.ascontiguousarray(g[indices]), indices))
    return dense, given


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def header_probe():
    """Path of the compiled csrc/cuda/tools/header_probe.cpp (None: no C++ compiler)."""
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        return None
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"normopt_header_probe_{os.getpid()}")
    subprocess.run([cxx, "-std=c++17", "-O1", "-I", os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "csrc", "cuda", "tools", "header_probe.cpp"), "-o", out],
                   check=True, capture_output=True, text=True)
    return out


def run_probe(lines):
    probe = header_probe()
    if probe is None:
        pytest.skip("no C++ compiler (g++/c++/clang++) on PATH to build the header probe")
    done = subprocess.run([probe], input="\n".join(lines) + "\n", check=True,
                          capture_output=True, text=True)
    return done.stdout.splitlines()


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def strict_json(path):
    """Loads JSON, failing on NaN/Infinity (the files must be strict JSON)."""
    import json

    def reject(constant):
        raise AssertionError(f"non-strict JSON constant {constant} in {path}")

    with open(path) as f:
        return json.load(f, parse_constant=reject)


def assert_png(path, min_bytes=5000):
    """`path` is a PNG file of at least `min_bytes` (a plot, not an empty figure)."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > min_bytes


def run_json_script(python, script, env, cwd, timeout):
    """Runs `script` with the interpreter `python` (another environment's);
    returns (the JSON object on its last stdout line, its stderr)."""
    import json

    proc = subprocess.run([python, "-c", script], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr
