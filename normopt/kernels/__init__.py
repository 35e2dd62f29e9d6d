"""Reference kernels outside TensorFlow: Numba CPU, Numba CUDA and CuPy.

Three modules expose the same functions, so benchmarks and validation treat
them alike (import the one you need; this package imports none of them, and
none of them imports TensorFlow):

    normopt.kernels.numba_cpu    NumPy arrays, @njit(parallel=True)
    normopt.kernels.numba_cuda   NumPy or Numba device arrays, @cuda.jit
                                 (runs under NUMBA_ENABLE_CUDASIM=1)
    normopt.kernels.cupy_kernels CuPy arrays, compiles csrc/cuda with CuPy

Functions (arrays: a list of N arrays of one dtype, float16, bfloat16,
float32 or float64; 16-bit inputs accumulate in float32, float64 in float64):

    norms(arrays, kind="l2", eps=1e-7, chunk_size=...) -> array[N]
    scales(arrays, kind="l2", mode="normalize", clipnorm=1.0, eps=1e-7, ...)
        -> array[N]: 1/norm, or clipnorm/norm where norm >= clipnorm, else 1
    scale(arrays, kind, mode, clipnorm, eps, ...) -> list of g * scale[t]
    apply(rule, weights, grads, slots, *, lr, step=1, hyper=(), decay=None,
          kind, mode, clipnorm, eps, ...)
        -> norms; one step of update rule `rule` (table below), in place on
        the weights and slots. slots: the rule's K slot lists, slot-major
        (slots[q][t] is slot q of weight t, shaped and typed like it; [] or
        None for K = 0); hyper: its hyperparameters in order (floats);
        step: t = iterations + 1 >= 1. Bad rule names, slot counts or
        shapes, hyper lengths and steps are ValueErrors naming the rule
    apply_sgd(weights, grads, momenta=None, *, lr, momentum=0.0,
              nesterov=False, decay=None, kind, mode, clipnorm, eps, ...)
        -> norms; `apply` with rule sgd (momenta None: momentum must be 0),
        sgd_momentum or sgd_nesterov (momenta given: the momentum rule even
        with momentum 0, as the TF op with slots)
    apply_adam(weights, grads, m, v, vhat=None, *, lr, step, beta_1=0.9,
               beta_2=0.999, adam_epsilon=1e-7, decay=None, kind, mode,
               clipnorm, eps, ...)
        -> norms; `apply` with rule adam, or adam_amsgrad when vhat is given

kind: "l1", "l2", "l1_l2", "avg_l1", "avg_l2", "avg_l1_l2", "max" (alias
"linf"), "min_max", "std" (definitions: csrc/normopt/norm_stats.h). mode:
"normalize" or "clip". decay: None, a scalar or one value per tensor
(decoupled weight decay, w = w - w * decay * lr before the rule, in the
accumulation type A: float32 for 16/32-bit data, float64 for float64). Each
update loads its elements into A, computes there and rounds each stored
value once to the element type. Update rules are Keras 3's update_steps
(keras/src/optimizers/*.py). Their names, slots (in order) and
hyperparameters (in order) are the table `_updates.RULES`, their formulas
the docstrings of `_updates`'s element and `*_scalars` functions (the Numba
reference, shared by numba_cpu and numba_cuda), and, compiled, the table
NORMOPT_UPDATE_RULES in csrc/normopt/update_rules.h. The generic `apply`
is in every module.

g' = g * scale[t], applied as (g * pre[t]) * mult[t]. Every module
computes chunk statistics, merges them per tensor in chunk order
(deterministic) and finalizes with the header's formulas (`_finalize` for
Numba, the header itself for CuPy).
"""

MODULES = ("numba_cpu", "numba_cuda", "cupy_kernels")
