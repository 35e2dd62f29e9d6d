// Multi-tensor element-wise kernels that apply the per-tensor scale on the
// fly (g * scale[t] below is `apply_scale`: (g * pre) * mult, norm_stats.h) (one block per chunk, grid-stride over chunks, 16-byte accesses when
// every pointer of the chunk is aligned, scalar tail otherwise):
//
//   scale_chunks  out = g * scale[t]
//   sgd_chunks    Keras 3 SGD with g' = g * scale[t], decoupled decay first:
//                   w -= w * decay[t] * lr
//                   plain     w -= lr * g'                      (momenta null)
//                   momentum  m = mu * m - lr * g';  w += m
//                   nesterov  m = mu * m - lr * g';  w += mu * m - lr * g'
//                 (momenta given: the momentum rule even with mu = 0, as the
//                 CPU op does when given slots)
//   adam_chunks   Keras 3 Adam/AdamW/amsgrad, t = step:
//                   w -= w * decay[t] * lr
//                   m += (g' - m)(1 - b1);  v += (g'^2 - v)(1 - b2)
//                   amsgrad: vhat = max(vhat, v), used in place of v
//                   w -= alpha * m / (sqrt(v) + eps),
//                 with alpha, 1 - b1 and 1 - b2 formed on the host
//                 (normopt/update_scalars.h)
//
// Device bodies, run by blocks of kThreads threads; entry_points.cuh wraps
// them in extern "C" kernels. Arithmetic in Acc<T> (float for 16-bit data); variables and slots are
// stored in T, as Keras keeps them.
#ifndef NORMOPT_CUDA_UPDATE_KERNELS_CUH_
#define NORMOPT_CUDA_UPDATE_KERNELS_CUH_

#include "cuda/tensor_list.cuh"

namespace normopt {
namespace cuda {

// Runs `f(i)` for element i of a chunk of n elements, or `fv(q)` for pack q
// (elements q*W .. q*W+W-1) when `vec`; threads of the block share the work.
template <int W, typename PackFn, typename ElemFn>
__device__ __forceinline__ void for_each_in_chunk(int64_t n, bool vec,
                                                  PackFn fv, ElemFn f) {
  int64_t tail = 0;
  if (vec) {
    const int64_t packs = n / W;
    for (int64_t q = threadIdx.x; q < packs; q += kThreads) fv(q);
    tail = packs * W;
  }
  for (int64_t i = tail + threadIdx.x; i < n; i += kThreads) f(i);
}

template <typename T>
__device__ __forceinline__ void scale_chunks(
    const T* const* grads, T* const* outs, const int64_t* sizes,
    const int32_t* chunk_tensor, const int64_t* chunk_start, int64_t num_chunks,
    int64_t chunk_size, const TensorScale<Acc<T>>* scales) {
  constexpr int W = Pack<T>::kWidth;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k = chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size);
    const T* g = grads[k.t] + k.lo;
    T* o = outs[k.t] + k.lo;
    const TensorScale<Acc<T>> s = scales[k.t];
    for_each_in_chunk<W>(
        k.n, aligned16(g) && aligned16(o),
        [&](int64_t q) {
          Pack<T> v = load_pack(g + q * W);
#pragma unroll
          for (int j = 0; j < W; ++j) v.v[j] = from_acc<T>(apply_scale(to_acc(v.v[j]), s));
          store_pack(o + q * W, v);
        },
        [&](int64_t i) { o[i] = from_acc<T>(apply_scale(to_acc(g[i]), s)); });
  }
}

template <typename A>
struct SgdStep {
  A lr, mu, wd;
  TensorScale<A> s;
  bool use_momentum, nesterov;
  template <typename T>
  __device__ __forceinline__ void operator()(T& w, T& m, T g) const {
    const A gs = apply_scale(to_acc(g), s);
    A wi = to_acc(w);
    if (wd != A(0)) wi -= wi * wd * lr;
    if (use_momentum) {
      const A mi = mu * to_acc(m) - lr * gs;
      m = from_acc<T>(mi);
      wi += nesterov ? mu * mi - lr * gs : mi;
    } else {
      wi -= lr * gs;
    }
    w = from_acc<T>(wi);
  }
};

// `momenta` null: plain SGD; otherwise the momentum rule, whatever `momentum`.
template <typename T>
__device__ __forceinline__ void sgd_chunks(
    T* const* weights, T* const* momenta, const T* const* grads,
    const int64_t* sizes, const int32_t* chunk_tensor,
    const int64_t* chunk_start, int64_t num_chunks, int64_t chunk_size,
    const TensorScale<Acc<T>>* scales, const Acc<T>* decay, Acc<T> lr, Acc<T> momentum,
    int nesterov) {
  using A = Acc<T>;
  constexpr int W = Pack<T>::kWidth;
  const bool use_momentum = momenta != nullptr;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k = chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size);
    T* w = weights[k.t] + k.lo;
    T* m = use_momentum ? momenta[k.t] + k.lo : nullptr;
    const T* g = grads[k.t] + k.lo;
    const SgdStep<A> op{lr, momentum, decay[k.t], scales[k.t], use_momentum,
                        nesterov != 0};
    const bool vec = aligned16(w) && aligned16(g) && (!m || aligned16(m));
    for_each_in_chunk<W>(
        k.n, vec,
        [&](int64_t q) {
          Pack<T> wv = load_pack(w + q * W);
          const Pack<T> gv = load_pack(g + q * W);
          Pack<T> mv = m ? load_pack(m + q * W) : wv;
#pragma unroll
          for (int j = 0; j < W; ++j) op(wv.v[j], mv.v[j], gv.v[j]);
          store_pack(w + q * W, wv);
          if (m) store_pack(m + q * W, mv);
        },
        [&](int64_t i) {
          T unused = w[i];
          op(w[i], m ? m[i] : unused, g[i]);
        });
  }
}

template <typename A>
struct AdamStep {
  A lr, alpha, one_minus_b1, one_minus_b2, eps, wd;
  TensorScale<A> s;
  bool amsgrad;
  template <typename T>
  __device__ __forceinline__ void operator()(T& w, T& m, T& v, T& vhat,
                                             T g) const {
    const A gs = apply_scale(to_acc(g), s);
    A wi = to_acc(w);
    if (wd != A(0)) wi -= wi * wd * lr;
    A mi = to_acc(m);
    A vi = to_acc(v);
    mi += (gs - mi) * one_minus_b1;
    vi += (gs * gs - vi) * one_minus_b2;
    m = from_acc<T>(mi);
    v = from_acc<T>(vi);
    if (amsgrad) {
      const A vh = to_acc(vhat);
      vi = vh > vi ? vh : vi;
      vhat = from_acc<T>(vi);
    }
    w = from_acc<T>(wi - alpha * mi / (sqrt(vi) + eps));
  }
};

// `vhats` may be null when amsgrad == 0.
template <typename T>
__device__ __forceinline__ void adam_chunks(
    T* const* weights, T* const* ms, T* const* vs, T* const* vhats,
    const T* const* grads, const int64_t* sizes, const int32_t* chunk_tensor,
    const int64_t* chunk_start, int64_t num_chunks, int64_t chunk_size,
    const TensorScale<Acc<T>>* scales, const Acc<T>* decay, Acc<T> lr, Acc<T> alpha,
    Acc<T> one_minus_beta_1, Acc<T> one_minus_beta_2, Acc<T> epsilon,
    int amsgrad) {
  using A = Acc<T>;
  constexpr int W = Pack<T>::kWidth;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k = chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size);
    T* w = weights[k.t] + k.lo;
    T* m = ms[k.t] + k.lo;
    T* v = vs[k.t] + k.lo;
    T* vh = amsgrad ? vhats[k.t] + k.lo : nullptr;
    const T* g = grads[k.t] + k.lo;
    const AdamStep<A> op{lr,      alpha,      one_minus_beta_1, one_minus_beta_2,
                         epsilon, decay[k.t], scales[k.t],      amsgrad != 0};
    const bool vec = aligned16(w) && aligned16(m) && aligned16(v) &&
                     aligned16(g) && (!vh || aligned16(vh));
    for_each_in_chunk<W>(
        k.n, vec,
        [&](int64_t q) {
          const int64_t i = q * W;
          Pack<T> wv = load_pack(w + i), mv = load_pack(m + i);
          Pack<T> vv = load_pack(v + i);
          Pack<T> hv = vh ? load_pack(vh + i) : vv;
          const Pack<T> gv = load_pack(g + i);
#pragma unroll
          for (int j = 0; j < W; ++j) op(wv.v[j], mv.v[j], vv.v[j], hv.v[j], gv.v[j]);
          store_pack(w + i, wv);
          store_pack(m + i, mv);
          store_pack(v + i, vv);
          if (vh) store_pack(vh + i, hv);
        },
        [&](int64_t i) {
          T unused = v[i];
          op(w[i], m[i], v[i], vh ? vh[i] : unused, g[i]);
        });
  }
}

}  // namespace cuda
}  // namespace normopt

#endif  // NORMOPT_CUDA_UPDATE_KERNELS_CUH_
