// Multi-tensor norm kernels: per-chunk statistics, then a per-tensor finish.
//
//   chunk_stats         one block per chunk (grid-stride over chunks): each
//                       thread gathers sum|g|, sum g^2, sum g, max|g|, min|g|
//                       over its elements (16-byte loads when aligned), a
//                       fixed-order tree in shared memory combines them, and
//                       for norms reading the moments a second pass over the
//                       chunk (still in L2) sums (g - chunk mean)^2. Thread 0
//                       writes the chunk's NormStats via `from_block_sums`.
//   finish              one thread per tensor merges its chunks' NormStats in
//                       chunk order (`merge_stats`) and writes the norm
//                       (`finalize_norm`) and scale (`scale_from_norm`, a
//                       TensorScale {pre, mult}). A tensor whose plain norm
//                       overflowed with finite elements is read again by
//                       that thread (`serial_rescue`, norm_stats.h). With
//                       `grad_norms` it also writes each tensor's L2 norm
//                       sqrt(sum g^2) from the same statistics (rescued the
//                       same way), for the recorded gradient norms.
//
// These are device bodies; entry_points.cuh wraps them in extern "C"
// kernels (blocks of kThreads threads for chunk_stats).
//
// No float atomics anywhere: the result depends only on the chunk size and
// kThreads, so per-tensor norms are bitwise identical run to run. max/min
// keep a NaN (`max_keep_nan`), so a NaN element gives a NaN norm as on the
// CPU and TF paths.
#ifndef NORMOPT_CUDA_NORM_KERNELS_CUH_
#define NORMOPT_CUDA_NORM_KERNELS_CUH_

#include "cuda/tensor_list.cuh"
#include "normopt/dtype_codes.h"

namespace normopt {
namespace cuda {

// Sizes CuPy uses to allocate the chunk-statistics workspace.
static_assert(sizeof(NormStats<float>) == 32, "NormStats<float> layout");
static_assert(sizeof(NormStats<double>) == 56, "NormStats<double> layout");

// Fixed-order tree sum over the block (kThreads entries of `sh`); the result
// is in sh[0]. Callers __syncthreads() before reading it.
template <typename A>
__device__ __forceinline__ void block_sum(A* sh) {
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) sh[threadIdx.x] += sh[threadIdx.x + stride];
    __syncthreads();
  }
}

template <typename T>
__device__ __forceinline__ void chunk_stats(
    const T* const* tensors, const int64_t* sizes, const int32_t* chunk_tensor,
    const int64_t* chunk_start, int64_t num_chunks, int64_t chunk_size,
    unsigned needed, NormStats<Acc<T>>* out) {
  using A = Acc<T>;
  constexpr int W = Pack<T>::kWidth;
  __shared__ A sh_abs[kThreads], sh_sq[kThreads], sh_sum[kThreads];
  __shared__ A sh_max[kThreads], sh_min[kThreads];
  const int tid = threadIdx.x;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k = chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size);
    const T* p = tensors[k.t] + k.lo;
    A s_abs = A(0), s_sq = A(0), total = A(0), mx = A(0);
    A mn = positive_infinity(A(0));
    auto visit = [&](A x) {
      const A a = x < A(0) ? -x : x;
      s_abs += a;
      s_sq += x * x;
      total += x;
      mx = max_keep_nan(a, mx);
      mn = min_keep_nan(a, mn);
    };
    int64_t tail = 0;
    if (aligned16(p)) {
      const int64_t packs = k.n / W;
      for (int64_t q = tid; q < packs; q += kThreads) {
        const Pack<T> v = load_pack(p + q * W);
#pragma unroll
        for (int j = 0; j < W; ++j) visit(to_acc(v.v[j]));
      }
      tail = packs * W;
    }
    for (int64_t i = tail + tid; i < k.n; i += kThreads) visit(to_acc(p[i]));

    sh_abs[tid] = s_abs;
    sh_sq[tid] = s_sq;
    sh_sum[tid] = total;
    sh_max[tid] = mx;
    sh_min[tid] = mn;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
      if (tid < stride) {
        sh_abs[tid] += sh_abs[tid + stride];
        sh_sq[tid] += sh_sq[tid + stride];
        sh_sum[tid] += sh_sum[tid + stride];
        sh_max[tid] = max_keep_nan(sh_max[tid], sh_max[tid + stride]);
        sh_min[tid] = min_keep_nan(sh_min[tid], sh_min[tid + stride]);
      }
      __syncthreads();
    }
    const A block_total = sh_sum[0];
    A centered = A(0);
    if (needed & kStatMoments) {
      const A mean = block_total / A(k.n);
      A local = A(0);
      for (int64_t i = tid; i < k.n; i += kThreads) {
        const A d = to_acc(p[i]) - mean;
        local += d * d;
      }
      __syncthreads();  // every thread has read sh_sum[0]
      sh_sum[tid] = local;
      block_sum(sh_sum);
      centered = sh_sum[0];
    }
    if (tid == 0) {
      out[c] = from_block_sums<A>(k.n, sh_abs[0], sh_sq[0], sh_max[0],
                                          sh_min[0], block_total, centered);
    }
    __syncthreads();  // shared memory is reused by the next chunk
  }
}

// The rescue pass (norm_stats.h) of one tensor, in the finish thread: the
// elements are read through their dtype code (normopt/dtype_codes.h), since
// finish exists per accumulation type. Serial, and only for a tensor whose
// plain norm overflowed with finite elements.
template <typename A>
__device__ A rescue_tensor(NormKind kind, A norm, A max_abs,
                                        const void* data, int64_t n, int dtype,
                                        A eps) {
  if constexpr (sizeof(A) == 8) {
    const double* p = static_cast<const double*>(data);
    return serial_rescue<A>(kind, norm, max_abs,
                            [p](int64_t i) { return p[i]; }, n, eps);
  } else {
    switch (dtype) {
      case kDtypeFloat16: {
        const __half* p = static_cast<const __half*>(data);
        return serial_rescue<A>(kind, norm, max_abs,
                                [p](int64_t i) { return to_acc(p[i]); }, n, eps);
      }
      case kDtypeBFloat16: {
        const __nv_bfloat16* p = static_cast<const __nv_bfloat16*>(data);
        return serial_rescue<A>(kind, norm, max_abs,
                                [p](int64_t i) { return to_acc(p[i]); }, n, eps);
      }
      default: {
        const float* p = static_cast<const float*>(data);
        return serial_rescue<A>(kind, norm, max_abs,
                                [p](int64_t i) { return p[i]; }, n, eps);
      }
    }
  }
}

// `tensors`, `sizes` and `dtype` are read only by the rescue pass. chunk_stats
// gathers every statistic, so the merged max_abs is there to decide it.
template <typename A>
__device__ __forceinline__ void finish(const NormStats<A>* stats,
                                       const int64_t* first_chunk,
                                       int num_tensors, int kind, int mode,
                                       A clipnorm, A eps,
                                       const void* const* tensors,
                                       const int64_t* sizes, int dtype,
                                       A* norms, TensorScale<A>* scales,
                                       A* grad_norms) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= num_tensors) return;
  NormStats<A> s = NormStats<A>::empty();
  for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) {
    s = merge_stats(s, stats[c]);
  }
  const NormKind k = static_cast<NormKind>(kind);
  A norm = finalize_norm(k, s, eps);
  if (needs_rescue(norm)) {
    norm = rescue_tensor<A>(k, norm, s.max_abs, tensors[t], sizes[t], dtype,
                            eps);
  }
  norms[t] = norm;
  scales[t] = scale_from_norm(static_cast<ScaleMode>(mode), norm, clipnorm);
  if (grad_norms != nullptr) {
    A l2 = finalize_norm(NormKind::kL2, s, A(0));
    if (needs_rescue(l2)) {
      l2 = rescue_tensor<A>(NormKind::kL2, l2, s.max_abs, tensors[t], sizes[t],
                            dtype, A(0));
    }
    grad_norms[t] = l2;
  }
}

// Scales from norms computed elsewhere (custom normalizations).
template <typename A>
__device__ __forceinline__ void scales_from_norms(const A* norms,
                                                  int num_tensors, int mode,
                                                  A clipnorm,
                                                  TensorScale<A>* scales) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= num_tensors) return;
  scales[t] = scale_from_norm(static_cast<ScaleMode>(mode), norms[t], clipnorm);
}

}  // namespace cuda
}  // namespace normopt

#endif  // NORMOPT_CUDA_NORM_KERNELS_CUH_
