// Multi-tensor element-wise kernels that apply the per-tensor scale on the
// fly, g' = (g * pre) * mult (`apply_scale`, norm_stats.h); one block per
// chunk, grid-stride over chunks, 16-byte accesses when every pointer of the
// chunk is aligned, scalar tail otherwise:
//
//   scale_chunks       out = g'
//   apply_rule_chunks  one step of an update rule of normopt/update_rules.h
//                      on every variable and its slots in place: decoupled
//                      decay w -= w * decay[t] * lr, then the rule with g'
//
// `state` is one pointer table of (1 + kSlots) * N entries, slot-major:
// state[t] is variable t, state[(1 + q) * N + t] its slot q. `args` (device
// memory) holds [lr, t, hyper...] as doubles; every thread forms the rule's
// step scalars from it (the rule's constructor), so no host code repeats a
// rule's formulas.
//
// Each element's scale comes from a ScaleTable: one per tensor, or one per
// unit of its last axis (granularity "unit", norm_kernels.cuh), or shared
// (granularity "global": every tensor's entry points at one scale).
//
// Device bodies, run by blocks of kThreads threads; entry_points.cuh wraps
// them in extern "C" kernels. Arithmetic in Acc<T> (float for 16-bit data);
// variables and slots are stored in T, as Keras keeps them.
#ifndef NORMOPT_CUDA_UPDATE_KERNELS_CUH_
#define NORMOPT_CUDA_UPDATE_KERNELS_CUH_

#include "cuda/tensor_list.cuh"
#include "normopt/update_rules.h"

namespace normopt {
namespace cuda {

// Where element i of tensor t finds its scale: scales[t] when `first` is
// null (one scale per tensor, in order), else scales[first[t] + i % units[t]]
// (units[t] == 1: one scale for the tensor, which tensors may share).
template <typename A>
struct ScaleTable {
  const TensorScale<A>* scales;
  const int64_t* first;
  const int64_t* units;

  __device__ __forceinline__ const TensorScale<A>* of_tensor(int t) const {
    return scales + (first == nullptr ? t : first[t]);
  }
  __device__ __forceinline__ int64_t units_of(int t) const {
    return first == nullptr ? 1 : units[t];
  }
};

// The scale of element i of a tensor whose scales start at `base`, `u` units.
template <typename A>
__device__ __forceinline__ TensorScale<A> scale_at(const TensorScale<A>* base,
                                                   int64_t u, int64_t i) {
  return u > 1 ? base[i % u] : base[0];
}

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
    int64_t chunk_size, ScaleTable<Acc<T>> table) {
  constexpr int W = Pack<T>::kWidth;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k = chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size);
    const T* g = grads[k.t] + k.lo;
    T* o = outs[k.t] + k.lo;
    const TensorScale<Acc<T>>* base = table.of_tensor(k.t);
    const int64_t u = table.units_of(k.t);
    for_each_in_chunk<W>(
        k.n, aligned16(g) && aligned16(o),
        [&](int64_t q) {
          Pack<T> v = load_pack(g + q * W);
#pragma unroll
          for (int j = 0; j < W; ++j) {
            v.v[j] = from_acc<T>(
                apply_scale(to_acc(v.v[j]), scale_at(base, u, k.lo + q * W + j)));
          }
          store_pack(o + q * W, v);
        },
        [&](int64_t i) {
          o[i] = from_acc<T>(apply_scale(to_acc(g[i]), scale_at(base, u, k.lo + i)));
        });
  }
}

template <typename T, template <typename> class RuleT>
__device__ __forceinline__ void apply_rule_chunks(
    T* const* state, int num_tensors, const T* const* grads,
    const int64_t* sizes, const int32_t* chunk_tensor,
    const int64_t* chunk_start, int64_t num_chunks, int64_t chunk_size,
    ScaleTable<Acc<T>> table, const Acc<T>* decay, const double* args) {
  using A = Acc<T>;
  using Rule = RuleT<A>;
  constexpr int K = Rule::kSlots;
  constexpr int KS = K > 0 ? K : 1;
  constexpr int W = Pack<T>::kWidth;
  const Rule rule(args);
  const A lr = A(args[0]);
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k = chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size);
    T* w = state[k.t] + k.lo;
    const T* g = grads[k.t] + k.lo;
    T* s[KS];
    bool vec = aligned16(w) && aligned16(g);
#pragma unroll
    for (int q = 0; q < K; ++q) {
      s[q] = state[(1 + q) * int64_t{num_tensors} + k.t] + k.lo;
      vec = vec && aligned16(s[q]);
    }
    const A wd = decay[k.t];
    const TensorScale<A>* base = table.of_tensor(k.t);
    const int64_t u = table.units_of(k.t);
    for_each_in_chunk<W>(
        k.n, vec,
        [&](int64_t p) {
          const int64_t i = p * W;
          Pack<T> wv = load_pack(w + i);
          const Pack<T> gv = load_pack(g + i);
          Pack<T> sv[KS];
#pragma unroll
          for (int q = 0; q < K; ++q) sv[q] = load_pack(s[q] + i);
#pragma unroll
          for (int j = 0; j < W; ++j) {
            A wa = to_acc(wv.v[j]);
            A sa[KS];
#pragma unroll
            for (int q = 0; q < K; ++q) sa[q] = to_acc(sv[q].v[j]);
            update_element<true>(rule, lr, wd, scale_at(base, u, k.lo + i + j), wa,
                                 sa, to_acc(gv.v[j]));
            wv.v[j] = from_acc<T>(wa);
#pragma unroll
            for (int q = 0; q < K; ++q) sv[q].v[j] = from_acc<T>(sa[q]);
          }
          store_pack(w + i, wv);
#pragma unroll
          for (int q = 0; q < K; ++q) store_pack(s[q] + i, sv[q]);
        },
        [&](int64_t i) {
          A wa = to_acc(w[i]);
          A sa[KS];
#pragma unroll
          for (int q = 0; q < K; ++q) sa[q] = to_acc(s[q][i]);
          update_element<true>(rule, lr, wd, scale_at(base, u, k.lo + i), wa, sa,
                               to_acc(g[i]));
          w[i] = from_acc<T>(wa);
#pragma unroll
          for (int q = 0; q < K; ++q) s[q][i] = from_acc<T>(sa[q]);
        });
  }
}

}  // namespace cuda
}  // namespace normopt

#endif  // NORMOPT_CUDA_UPDATE_KERNELS_CUH_
