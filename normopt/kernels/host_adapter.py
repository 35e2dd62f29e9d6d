"""NumPy-in, NumPy-out view of the CuPy kernels, for tests and validation.

`CupyOnHost()` has the `normopt.kernels` functions, taking and returning
NumPy arrays (bfloat16 as ml_dtypes.bfloat16): it uploads, calls
`cupy_kernels`, and downloads, writing updated arrays back in place, so the
same checks run against numba_cpu, numba_cuda and CuPy.
"""

import numpy as np

from normopt.kernels import cupy_kernels


def _is_bf16(array):
    return np.dtype(array.dtype).name == "bfloat16"


class CupyOnHost:
    def __init__(self):
        cupy_kernels._require()
        self.cp = cupy_kernels.cp

    def _up(self, arrays):
        arrays = [np.asarray(a) for a in arrays]
        dtype = "bfloat16" if arrays and _is_bf16(arrays[0]) else None
        raw = [a.view(np.uint16) if _is_bf16(a) else a for a in arrays]
        return [self.cp.asarray(np.ascontiguousarray(a)) for a in raw], dtype

    def _down(self, device, like):
        host = device.get()
        return host.view(like.dtype) if _is_bf16(like) else host

    def _write_back(self, targets, devices):
        for a, d in zip(targets, devices):
            a[...] = self._down(d, a)

    def norms(self, arrays, kind="l2", eps=1e-7, **kw):
        dev, dtype = self._up(arrays)
        return cupy_kernels.norms(dev, kind, eps, dtype=dtype, **kw).get()

    def scales(self, arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7, **kw):
        dev, dtype = self._up(arrays)
        return cupy_kernels.scales(dev, kind, mode, clipnorm, eps, dtype=dtype, **kw).get()

    def scale(self, arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7, **kw):
        dev, dtype = self._up(arrays)
        outs = cupy_kernels.scale(dev, kind, mode, clipnorm, eps, dtype=dtype, **kw)
        return [self._down(o, a).reshape(np.shape(a)) for o, a in zip(outs, arrays)]

    def apply(self, rule, weights, grads, slots, **kw):
        """cupy_kernels.apply; a gradient may be a cupy_kernels.SparseRows
        of NumPy values and indices."""
        sparse = {i: g for i, g in enumerate(grads) if isinstance(g, cupy_kernels.SparseRows)}
        g, dtype = self._up([g.values if i in sparse else g for i, g in enumerate(grads)])
        g = [cupy_kernels.SparseRows(d, sparse[i].indices) if i in sparse else d
             for i, d in enumerate(g)]
        w, _ = self._up(weights)
        dslots = [self._up(slot)[0] for slot in slots]
        n = cupy_kernels.apply(rule, w, g, dslots, dtype=dtype, **kw)
        self._write_back(weights, w)
        for targets, devices in zip(slots, dslots):
            self._write_back(targets, devices)
        return None if isinstance(n, tuple) else n.get()  # a scale table: no norms

    def apply_sgd(self, weights, grads, momenta=None, **kw):
        g, dtype = self._up(grads)
        w, _ = self._up(weights)
        m = self._up(momenta)[0] if momenta is not None else None
        n = cupy_kernels.apply_sgd(w, g, m, dtype=dtype, **kw)
        self._write_back(weights, w)
        if m is not None:
            self._write_back(momenta, m)
        return n.get()

    def apply_adam(self, weights, grads, m, v, vhat=None, **kw):
        g, dtype = self._up(grads)
        w, dm, dv = self._up(weights)[0], self._up(m)[0], self._up(v)[0]
        dvh = self._up(vhat)[0] if vhat is not None else None
        n = cupy_kernels.apply_adam(w, g, dm, dv, dvh, dtype=dtype, **kw)
        for targets, devices in ((weights, w), (m, dm), (v, dv), (vhat, dvh)):
            if devices is not None:
                self._write_back(targets, devices)
        return n.get()
