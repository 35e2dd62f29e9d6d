"""normopt.kernels.numba_cuda under Numba's CUDA simulator, in a child
process, called from a test process that has imported Numba already (the
simulator must be chosen before Numba is imported).

    with SimulatedKernels() as K:
        K.norms(arrays, "l2", 1e-7, chunk_size=8, threads=4)
        K.apply_sgd(weights, grads, momenta, lr=0.1, ...)  # in place, as numba_cuda

Each call pickles its arguments to the child, which runs numba_cuda's function
of that name on them and sends back the result and the arguments as the call
left them; the NumPy arrays given are then overwritten with the child's
(the functions update weights and slots in place). The child imports neither
Keras nor TensorFlow (normopt/__init__.py would import both): a test process
that has TensorFlow can hold the simulated kernels to the TF op without a
second TensorFlow import.
"""

import os
import pickle
import subprocess
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _serve():
    sys.setswitchinterval(1e-5)  # the simulator busy-waits on its block threads
    pkg = types.ModuleType("normopt")
    pkg.__path__ = [os.path.join(ROOT, "normopt")]
    sys.modules["normopt"] = pkg
    from normopt.kernels import numba_cuda

    assert numba_cuda.SIMULATED, "numba.cuda is not the simulator"
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # the pipe carries pickles only
    pickle.dump(("ready", "tensorflow" in sys.modules or "keras" in sys.modules), wr)
    wr.flush()
    while True:
        try:
            name, args, kwargs = pickle.load(rd)
        except EOFError:
            return
        try:
            reply = ("ok", getattr(numba_cuda, name)(*args, **kwargs), args, kwargs)
        except Exception as error:  # noqa: BLE001 - sent back, raised there
            reply = ("error", error, None, None)
        pickle.dump(reply, wr)
        wr.flush()


def _copy_back(given, returned):
    import numpy as np

    if isinstance(given, np.ndarray):
        given[...] = returned
    elif isinstance(given, (list, tuple)):
        for a, b in zip(given, returned):
            _copy_back(a, b)
    elif isinstance(given, dict):
        for key in given:
            _copy_back(given[key], returned[key])


class SimulatedKernels:
    def __init__(self):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
        env["NUMBA_ENABLE_CUDASIM"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], cwd=ROOT,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        status, heavy = pickle.load(self.proc.stdout)
        assert status == "ready" and not heavy, "the simulator child imported Keras/TensorFlow"
        self.calls = 0

    def _call(self, name, args, kwargs):
        pickle.dump((name, args, kwargs), self.proc.stdin)
        self.proc.stdin.flush()
        status, result, args_after, kwargs_after = pickle.load(self.proc.stdout)
        if status == "error":
            raise result
        _copy_back(args, args_after)
        _copy_back(kwargs, kwargs_after)
        self.calls += 1
        return result

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    _serve()
