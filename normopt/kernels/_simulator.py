"""A fix for Numba's CUDA simulator, applied by numba_cuda when simulated.

The simulator creates a block's `cuda.shared.array` on first use, keyed by
the calling source line, without a lock: two threads of a block can each
create their own copy, and a block reduction then reads the wrong one (seen
as a rare wrong `std` under CPU load). `lock_shared_arrays` replaces that
lookup with the same one under a lock, which is what CUDA guarantees.
"""

import sys
import threading

import numpy as np


def lock_shared_arrays():
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    if getattr(original, "normopt_locked", False):
        return
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one buffer, no lookup
            return original(self, shape, dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            if key not in self._allocations:
                if not isinstance(dtype, (np.dtype, type)):
                    dtype = numpy_support.as_dtype(dtype)
                self._allocations[key] = np.empty(shape, dtype)
            return self._allocations[key]

    array.normopt_locked = True
    kernelapi.FakeCUDAShared.array = array
