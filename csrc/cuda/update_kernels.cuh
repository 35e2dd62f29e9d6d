// Multi-tensor element-wise kernels that apply the per-tensor scale on the
// fly, g' = (g * pre) * mult (`apply_scale`, norm_stats.h); one block per
// chunk, grid-stride over chunks, 16-byte accesses when every pointer of the
// chunk is aligned, scalar tail otherwise:
//
//   scale_chunks       out = g'
//   apply_rule_chunks  one step of an update rule of normopt/update_rules.h
//                      on every variable and its slots in place: decoupled
//                      decay w -= w * decay[t] * lr, then the rule with g'
//                      (`phase` 0). A trust-ratio rule takes two launches
//                      and a finish between them:
//     phase 1          reads every chunk, stores nothing: its sums of w^2
//                      and u^2 (per thread, then a fixed-order tree over the
//                      block, as norm_kernels.cuh) into chunk_sums[c]
//     trust_sums       one thread per tensor adds its chunks' sums in chunk
//                      order into tensor_sums[t] (no atomics)
//     phase 2          phase 1's element steps again, then the variable
//                      with the rule's ratio of tensor_sums[t] (formed by
//                      every thread); the variables and slots stored
//
// `state` is one pointer table of (1 + kSlots) * N entries, slot-major:
// state[t] is variable t, state[(1 + q) * N + t] its slot q. `args` (device
// memory) holds [lr, t, hyper...] as doubles; every thread forms the rule's
// step scalars from it (the rule's constructor), so no host code repeats a
// rule's formulas.
//
// A chunk of a sparse gradient's absent rows (Chunk::g < 0, chunk_grad in
// tensor_list.cuh) has a zero gradient, which is not read: a rule that keeps
// its state for a zero gradient (kZeroGradientKeepsState: sgd, adagrad) only
// decays w there, as Keras's update of an IndexedSlices gradient writes the
// indexed rows only; every other rule runs on it with g = 0, as the CPU
// kernel does.
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

#include "cuda/norm_kernels.cuh"
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

// What the apply bodies read of chunk k: w = variable t's chunk, g its
// gradient's (null: all zeros), s[q] its slot q's (slot-major table, as
// apply_rule_chunks takes it), whether every pointer allows 16-byte
// accesses, the variable's decay and where its scales start.
template <typename T, int K>
struct ChunkState {
  T* w;
  const T* g;
  T* s[K > 0 ? K : 1];
  bool vec;
  Acc<T> wd;
  const TensorScale<Acc<T>>* scales;
  int64_t units, lo;

  // The scale of element i of the chunk.
  __device__ __forceinline__ TensorScale<Acc<T>> scale(int64_t i) const {
    return scale_at(scales, units, lo + i);
  }
};

template <typename T, int K>
__device__ __forceinline__ ChunkState<T, K> chunk_state(
    const Chunk& k, T* const* state, int num_tensors, const T* const* grads,
    const ScaleTable<Acc<T>>& table, const Acc<T>* decay) {
  ChunkState<T, K> cs;
  cs.w = state[k.t] + k.lo;
  cs.g = k.g < 0 ? nullptr : grads[k.t] + k.g;
  cs.vec = aligned16(cs.w) && (cs.g == nullptr || aligned16(cs.g));
#pragma unroll
  for (int q = 0; q < K; ++q) {
    cs.s[q] = state[(1 + q) * int64_t{num_tensors} + k.t] + k.lo;
    cs.vec = cs.vec && aligned16(cs.s[q]);
  }
  cs.wd = decay[k.t];
  cs.scales = table.of_tensor(k.t);
  cs.units = table.units_of(k.t);
  cs.lo = k.lo;
  return cs;
}

// element(i, w, slots, g) on every element i of a chunk of n elements, its
// values loaded into A (16-byte packs where `vec`; g null: every g is 0);
// with Store, w and the K slots are written back in T, each rounded once.
template <typename T, int K, bool Store, typename Element>
__device__ __forceinline__ void visit_elements(int64_t n, bool vec, T* w,
                                               T* const* s, const T* g,
                                               Element element) {
  using A = Acc<T>;
  constexpr int KS = K > 0 ? K : 1;
  constexpr int W = Pack<T>::kWidth;
  for_each_in_chunk<W>(
      n, vec,
      [&](int64_t p) {
        const int64_t i = p * W;
        Pack<T> wv = load_pack(w + i);
        Pack<T> gv;
        if (g != nullptr) {
          gv = load_pack(g + i);
        } else {
#pragma unroll
          for (int j = 0; j < W; ++j) gv.v[j] = from_acc<T>(A(0));
        }
        Pack<T> sv[KS];
#pragma unroll
        for (int q = 0; q < K; ++q) sv[q] = load_pack(s[q] + i);
#pragma unroll
        for (int j = 0; j < W; ++j) {
          A wa = to_acc(wv.v[j]);
          A sa[KS];
#pragma unroll
          for (int q = 0; q < K; ++q) sa[q] = to_acc(sv[q].v[j]);
          element(i + j, wa, sa, to_acc(gv.v[j]));
          if constexpr (Store) {
            wv.v[j] = from_acc<T>(wa);
#pragma unroll
            for (int q = 0; q < K; ++q) sv[q].v[j] = from_acc<T>(sa[q]);
          }
        }
        if constexpr (Store) {
          store_pack(w + i, wv);
#pragma unroll
          for (int q = 0; q < K; ++q) store_pack(s[q] + i, sv[q]);
        }
      },
      [&](int64_t i) {
        A wa = to_acc(w[i]);
        A sa[KS];
#pragma unroll
        for (int q = 0; q < K; ++q) sa[q] = to_acc(s[q][i]);
        element(i, wa, sa, g != nullptr ? to_acc(g[i]) : A(0));
        if constexpr (Store) {
          w[i] = from_acc<T>(wa);
#pragma unroll
          for (int q = 0; q < K; ++q) s[q][i] = from_acc<T>(sa[q]);
        }
      });
}

// Phase 1 of trust-ratio rule Rule (update_rules.h), nothing stored: each
// chunk's TrustSums of the decayed w and of the direction u of the updated
// slots.
template <typename T, typename Rule>
__device__ __forceinline__ void trust_sums_chunks(
    const Rule& rule, T* const* state, int num_tensors, const T* const* grads,
    const int64_t* sizes, const int32_t* chunk_tensor,
    const int64_t* chunk_start, const int64_t* chunk_grad, int64_t num_chunks,
    int64_t chunk_size, ScaleTable<Acc<T>> table, const Acc<T>* decay,
    Acc<T> lr, TrustSums<Acc<T>>* chunk_sums) {
  using A = Acc<T>;
  constexpr int K = Rule::kSlots;
  __shared__ A sh_w[kThreads], sh_u[kThreads];
  const int tid = threadIdx.x;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k =
        chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size, chunk_grad);
    const ChunkState<T, K> cs =
        chunk_state<T, K>(k, state, num_tensors, grads, table, decay);
    A w_sq = A(0), u_sq = A(0);
    // Element i of the chunk (nothing stored).
    visit_elements<T, K, false>(k.n, cs.vec, cs.w, cs.s, cs.g, [&](int64_t i, A& wa, A* sa, A ga) {
      wa = decayed<true>(wa, cs.wd, lr);
      rule.moments(sa, apply_scale(ga, cs.scale(i)));
      const A u = rule.direction(sa);
      w_sq += wa * wa;
      u_sq += u * u;
    });
    sh_w[tid] = w_sq;
    sh_u[tid] = u_sq;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
      if (tid < stride) {
        sh_w[tid] += sh_w[tid + stride];
        sh_u[tid] += sh_u[tid + stride];
      }
      __syncthreads();
    }
    if (tid == 0) chunk_sums[c] = TrustSums<A>{sh_w[0], sh_u[0]};
    __syncthreads();  // shared memory is reused by the next chunk
  }
}

// Between the phases: tensor_sums[t] = its chunks' sums added in chunk
// order, one thread per tensor (an empty tensor gets zeros).
template <typename A>
__device__ __forceinline__ void trust_sums(const TrustSums<A>* chunk_sums,
                                           const int64_t* first_chunk,
                                           int num_tensors,
                                           TrustSums<A>* tensor_sums) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= num_tensors) return;
  TrustSums<A> sum{A(0), A(0)};
  for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) {
    sum.w_sq += chunk_sums[c].w_sq;
    sum.u_sq += chunk_sums[c].u_sq;
  }
  tensor_sums[t] = sum;
}

// Phase 2 of trust-ratio rule Rule: phase 1's element steps again, then the
// variable with the ratio of its tensor's sums; w and the slots stored.
template <typename T, typename Rule>
__device__ __forceinline__ void trust_update_chunks(
    const Rule& rule, T* const* state, int num_tensors, const T* const* grads,
    const int64_t* sizes, const int32_t* chunk_tensor,
    const int64_t* chunk_start, const int64_t* chunk_grad, int64_t num_chunks,
    int64_t chunk_size, ScaleTable<Acc<T>> table, const Acc<T>* decay,
    Acc<T> lr, const TrustSums<Acc<T>>* tensor_sums) {
  using A = Acc<T>;
  constexpr int K = Rule::kSlots;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k =
        chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size, chunk_grad);
    const ChunkState<T, K> cs =
        chunk_state<T, K>(k, state, num_tensors, grads, table, decay);
    const TrustSums<A> sums = tensor_sums[k.t];
    const A r = rule.ratio(sums.w_sq, sums.u_sq);
    visit_elements<T, K, true>(k.n, cs.vec, cs.w, cs.s, cs.g, [&](int64_t i, A& wa, A* sa, A ga) {
      wa = decayed<true>(wa, cs.wd, lr);
      rule.moments(sa, apply_scale(ga, cs.scale(i)));
      rule(wa, sa, r);
    });
  }
}

// One step of a one-phase rule.
template <typename T, typename Rule>
__device__ __forceinline__ void apply_one_phase_chunks(
    T* const* state, int num_tensors, const T* const* grads,
    const int64_t* sizes, const int32_t* chunk_tensor,
    const int64_t* chunk_start, const int64_t* chunk_grad, int64_t num_chunks,
    int64_t chunk_size, ScaleTable<Acc<T>> table, const Acc<T>* decay,
    const double* args) {
  using A = Acc<T>;
  constexpr int K = Rule::kSlots;
  const Rule rule(args);
  const A lr = A(args[0]);
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k =
        chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size, chunk_grad);
    const ChunkState<T, K> cs =
        chunk_state<T, K>(k, state, num_tensors, grads, table, decay);
    if constexpr (kZeroGradientKeepsState<Rule>) {
      if (cs.g == nullptr) {  // absent rows: only decayed, no slot read
        if (cs.wd != A(0)) {
          visit_elements<T, 0, true>(k.n, aligned16(cs.w), cs.w, cs.s, nullptr,
                                     [&](int64_t, A& wa, A*, A) {
                                       wa = decayed<true>(wa, cs.wd, lr);
                                     });
        }
        continue;
      }
    }
    visit_elements<T, K, true>(k.n, cs.vec, cs.w, cs.s, cs.g, [&](int64_t i, A& wa, A* sa, A ga) {
      update_element<true>(rule, lr, cs.wd, cs.scale(i), wa, sa, ga);
    });
  }
}

// The apply entry points' body: a one-phase rule's whole step (phase 0), or
// phase 1 or 2 of a trust-ratio rule (chunk_sums written by phase 1,
// tensor_sums read by phase 2; both unused otherwise).
template <typename T, template <typename> class RuleT>
__device__ __forceinline__ void apply_rule_chunks(
    T* const* state, int num_tensors, const T* const* grads,
    const int64_t* sizes, const int32_t* chunk_tensor,
    const int64_t* chunk_start, const int64_t* chunk_grad, int64_t num_chunks,
    int64_t chunk_size, ScaleTable<Acc<T>> table, const Acc<T>* decay,
    const double* args, int phase, TrustSums<Acc<T>>* chunk_sums,
    const TrustSums<Acc<T>>* tensor_sums) {
  using A = Acc<T>;
  using Rule = RuleT<A>;
  if constexpr (kIsTrustRatio<Rule>) {
    const Rule rule(args);
    const A lr = A(args[0]);
    if (phase == 1) {
      trust_sums_chunks<T>(rule, state, num_tensors, grads, sizes,
                           chunk_tensor, chunk_start, chunk_grad, num_chunks,
                           chunk_size, table, decay, lr, chunk_sums);
    } else {
      trust_update_chunks<T>(rule, state, num_tensors, grads, sizes,
                             chunk_tensor, chunk_start, chunk_grad, num_chunks,
                             chunk_size, table, decay, lr, tensor_sums);
    }
  } else {
    (void)phase, (void)chunk_sums, (void)tensor_sums;
    apply_one_phase_chunks<T, Rule>(state, num_tensors, grads, sizes,
                                    chunk_tensor, chunk_start, chunk_grad,
                                    num_chunks, chunk_size, table, decay, args);
  }
}

}  // namespace cuda
}  // namespace normopt

#endif  // NORMOPT_CUDA_UPDATE_KERNELS_CUH_
