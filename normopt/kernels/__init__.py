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
    apply_sgd(weights, grads, momenta=None, *, lr, momentum=0.0,
              nesterov=False, decay=None, kind, mode, clipnorm, eps, ...)
        -> norms; updates weights (and momenta) in place. Momenta given:
        the momentum rule (even with momentum 0, as the TF op with slots);
        None: plain SGD (momentum must be 0)
    apply_adam(weights, grads, m, v, vhat=None, *, lr, step, beta_1=0.9,
               beta_2=0.999, adam_epsilon=1e-7, decay=None, kind, mode,
               clipnorm, eps, ...)
        -> norms; updates weights, m, v (and vhat: amsgrad) in place

kind: "l1", "l2", "l1_l2", "avg_l1", "avg_l2", "avg_l1_l2", "max" (alias
"linf"), "min_max", "std" (definitions: csrc/normopt/norm_stats.h). mode:
"normalize" or "clip". decay: None, a scalar or one value per tensor
(decoupled weight decay, w -= w * decay * lr before the step). step: the
1-based Adam step t (iterations + 1). Update rules are Keras 3's:

    SGD       w -= lr*g'; momentum m = mu*m - lr*g', w += m;
              nesterov m = mu*m - lr*g', w += mu*m - lr*g'
    Adam      alpha = lr*sqrt(1-b2^t)/(1-b1^t) (formed in the accumulation
              type, as Keras does); m += (g'-m)(1-b1);
              v += (g'^2-v)(1-b2); amsgrad vhat = max(vhat, v) replaces v;
              w -= alpha*m/(sqrt(v)+adam_epsilon)

with g' = g * scale[t]. Every module computes chunk statistics, merges them
per tensor in chunk order (deterministic) and finalizes with the header's
formulas (`_finalize` for Numba, the header itself for CuPy).
"""

MODULES = ("numba_cpu", "numba_cuda", "cupy_kernels")
