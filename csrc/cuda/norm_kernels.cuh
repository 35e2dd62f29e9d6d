// Multi-tensor norm kernels: per-chunk statistics, then a per-tensor finish.
//
//   chunk_stats         one block per chunk (grid-stride over chunks): each
//                       thread gathers sum|g|, sum g^2, sum g, max|g|, min|g|
//                       over its elements (16-byte loads when aligned), a
//                       fixed-order tree in shared memory combines them, and
//                       for norms reading the moments a second pass over the
//                       chunk (still in L2) sums (g - chunk mean)^2. Thread 0
//                       writes the chunk's NormStats via `from_block_sums`;
//                       a chunk of a sparse gradient's absent rows reads
//                       nothing and writes `zero_stats`.
//   finish              one thread per tensor merges its chunks' NormStats in
//                       chunk order (`merge_stats`) and writes the norm
//                       (`finalize_norm`) and scale (`scale_from_norm`, a
//                       TensorScale {pre, mult}). A tensor whose plain norm
//                       overflowed with finite elements is read again by
//                       that thread (`serial_rescue`, norm_stats.h; a sparse
//                       gradient's values, then its zeros[t] zeros). With
//                       `grad_norms` it also writes each tensor's L2 norm
//                       sqrt(sum g^2) from the same statistics (rescued the
//                       same way), for the recorded gradient norms.
//
//   global_finish       one thread: the norm of a list of member tensors
//                       together (granularity "global"), their chunks'
//                       NormStats merged in member then chunk order.
//   unit_stats          granularity "unit": one block per task (kThreads
//                       consecutive units of a tensor over a block of rows),
//                       one thread per unit walking its rows (adjacent
//                       threads read adjacent elements); writes the task's
//                       NormStats of every unit.
//   unit_finish         one thread per unit: merges its tasks in row order
//                       and writes the unit's norm.
//   scales_from_norms   scales of M norms (normalize, clip, or adaptive:
//                       clip with threshold clipnorm * max(weight norm,
//                       weight_eps)); entries from num_scaled on get scale 1
//                       (excluded tensors).
// The rescue of a unit or global norm is serial in its finishing thread,
// like finish's.
//
// These are device bodies; entry_points.cuh wraps them in extern "C"
// kernels (blocks of kThreads threads for chunk_stats and unit_stats).
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
    const int64_t* chunk_start, const int64_t* chunk_grad, int64_t num_chunks,
    int64_t chunk_size, unsigned needed, NormStats<Acc<T>>* out) {
  using A = Acc<T>;
  constexpr int W = Pack<T>::kWidth;
  __shared__ A sh_abs[kThreads], sh_sq[kThreads], sh_sum[kThreads];
  __shared__ A sh_max[kThreads], sh_min[kThreads];
  const int tid = threadIdx.x;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk k =
        chunk_at(c, chunk_tensor, chunk_start, sizes, chunk_size, chunk_grad);
    if (k.g < 0) {  // the same for every thread of the block
      if (tid == 0) out[c] = zero_stats<A>(k.n);
      continue;
    }
    const T* p = tensors[k.t] + k.g;
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
                                        A eps, int64_t zeros) {
  if constexpr (sizeof(A) == 8) {
    const double* p = static_cast<const double*>(data);
    return serial_rescue<A>(kind, norm, max_abs,
                            [p](int64_t i) { return p[i]; }, n, eps, zeros);
  } else {
    switch (dtype) {
      case kDtypeFloat16: {
        const __half* p = static_cast<const __half*>(data);
        return serial_rescue<A>(kind, norm, max_abs,
                                [p](int64_t i) { return to_acc(p[i]); }, n, eps,
                                zeros);
      }
      case kDtypeBFloat16: {
        const __nv_bfloat16* p = static_cast<const __nv_bfloat16*>(data);
        return serial_rescue<A>(kind, norm, max_abs,
                                [p](int64_t i) { return to_acc(p[i]); }, n, eps,
                                zeros);
      }
      default: {
        const float* p = static_cast<const float*>(data);
        return serial_rescue<A>(kind, norm, max_abs,
                                [p](int64_t i) { return p[i]; }, n, eps, zeros);
      }
    }
  }
}

// The implicit zeros of tensor t: zeros[t], none where `zeros` is null.
__device__ __forceinline__ int64_t zeros_of(const int64_t* zeros, int t) {
  return zeros == nullptr ? 0 : zeros[t];
}

// Statistics of the n elements p[offset + i * stride] (as dtype code `dtype`)
// times `pre`, in this thread (serial_scaled_stats through the element type).
template <typename A>
__device__ NormStats<A> strided_stats(const void* data, int dtype,
                                      int64_t offset, int64_t stride,
                                      int64_t n, A pre, bool moments) {
  if constexpr (sizeof(A) == 8) {
    const double* p = static_cast<const double*>(data) + offset;
    return serial_scaled_stats<A>([=](int64_t i) { return p[i * stride]; }, n,
                                  pre, moments);
  } else {
    switch (dtype) {
      case kDtypeFloat16: {
        const __half* p = static_cast<const __half*>(data) + offset;
        return serial_scaled_stats<A>(
            [=](int64_t i) { return to_acc(p[i * stride]); }, n, pre, moments);
      }
      case kDtypeBFloat16: {
        const __nv_bfloat16* p = static_cast<const __nv_bfloat16*>(data) + offset;
        return serial_scaled_stats<A>(
            [=](int64_t i) { return to_acc(p[i * stride]); }, n, pre, moments);
      }
      default: {
        const float* p = static_cast<const float*>(data) + offset;
        return serial_scaled_stats<A>([=](int64_t i) { return p[i * stride]; },
                                      n, pre, moments);
      }
    }
  }
}

// `tensors`, `sizes`, `zeros` and `dtype` are read only by the rescue pass:
// tensor t's array holds sizes[t] - zeros[t] elements, the rest of it are
// zeros (`zeros` null: none). chunk_stats gathers every statistic, so the
// merged max_abs is there to decide it.
template <typename A>
__device__ __forceinline__ void finish(const NormStats<A>* stats,
                                       const int64_t* first_chunk,
                                       int num_tensors, int kind, int mode,
                                       A clipnorm, A eps,
                                       const void* const* tensors,
                                       const int64_t* sizes,
                                       const int64_t* zeros, int dtype,
                                       A* norms, TensorScale<A>* scales,
                                       A* grad_norms) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= num_tensors) return;
  NormStats<A> s = NormStats<A>::empty();
  for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) {
    s = merge_stats(s, stats[c]);
  }
  const NormKind k = static_cast<NormKind>(kind);
  const int64_t z = zeros_of(zeros, t);
  A norm = finalize_norm(k, s, eps);
  if (needs_rescue(norm)) {
    norm = rescue_tensor<A>(k, norm, s.max_abs, tensors[t], sizes[t] - z,
                            dtype, eps, z);
  }
  norms[t] = norm;
  scales[t] = scale_from_norm(static_cast<ScaleMode>(mode), norm, clipnorm);
  if (grad_norms != nullptr) {
    A l2 = finalize_norm(NormKind::kL2, s, A(0));
    if (needs_rescue(l2)) {
      l2 = rescue_tensor<A>(NormKind::kL2, l2, s.max_abs, tensors[t],
                            sizes[t] - z, dtype, A(0), z);
    }
    grad_norms[t] = l2;
  }
}

// Scales from norms: entry t < num_scaled gets scale_from_norm(mode,
// norms[t], threshold), threshold = clipnorm, or with `weight_norms` (the
// adaptive mode: mode is clip) clipnorm * max(weight_norms[t], weight_eps);
// entries num_scaled .. num_total get scale 1.
template <typename A>
__device__ __forceinline__ void scales_from_norms(
    const A* norms, const A* weight_norms, int num_scaled, int num_total,
    int mode, A clipnorm, A weight_eps, TensorScale<A>* scales) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= num_total) return;
  if (t >= num_scaled) {
    scales[t] = TensorScale<A>{A(1), A(1)};
    return;
  }
  const A threshold = weight_norms != nullptr
                        ? adaptive_threshold(clipnorm, weight_norms[t], weight_eps)
                        : clipnorm;
  scales[t] = scale_from_norm(static_cast<ScaleMode>(mode), norms[t], threshold);
}

// One thread: norms[0] = the norm of the `num_members` tensors members[] as
// if concatenated, from their chunks' NormStats (chunk_stats gathers every
// statistic, so the merged max_abs decides the rescue; `zeros` as finish's).
template <typename A>
__device__ __forceinline__ void global_finish(
    const NormStats<A>* stats, const int64_t* first_chunk,
    const int32_t* members, int num_members, int kind, A eps,
    const void* const* tensors, const int64_t* sizes, const int64_t* zeros,
    int dtype, A* norms) {
  if (blockIdx.x * blockDim.x + threadIdx.x != 0) return;
  NormStats<A> s = NormStats<A>::empty();
  for (int m = 0; m < num_members; ++m) {
    const int t = members[m];
    for (int64_t c = first_chunk[t]; c < first_chunk[t + 1]; ++c) {
      s = merge_stats(s, stats[c]);
    }
  }
  const NormKind k = static_cast<NormKind>(kind);
  A norm = finalize_norm(k, s, eps);
  if (needs_rescue(norm) && is_finite(s.max_abs)) {
    const int e = rescue_exponent(s.max_abs);
    const bool moments = (stats_needed(k) & kStatMoments) != 0;
    NormStats<A> r = NormStats<A>::empty();
    for (int m = 0; m < num_members; ++m) {
      const int t = members[m];
      const int64_t z = zeros_of(zeros, t);
      r = merge_stats(r, strided_stats<A>(tensors[t], dtype, 0, 1, sizes[t] - z,
                                          pow2<A>(-e), moments));
      r = merge_stats(r, zero_stats<A>(z));
    }
    norm = rescued_norm(k, r, e, eps);
  }
  norms[0] = norm;
}

// Task k covers units [task_u0[k], + kThreads) of tensor task_tensor[k] (of
// units[t] units, sizes[t] / units[t] rows) over rows [task_r0[k], +
// rows_per_task); thread j gathers unit task_u0[k] + j (when it exists) into
// out[k * kThreads + j].
template <typename T>
__device__ __forceinline__ void unit_stats(
    const T* const* tensors, const int64_t* sizes, const int64_t* units,
    const int32_t* task_tensor, const int64_t* task_u0, const int64_t* task_r0,
    int64_t num_tasks, int64_t rows_per_task, unsigned needed,
    NormStats<Acc<T>>* out) {
  using A = Acc<T>;
  for (int64_t k = blockIdx.x; k < num_tasks; k += gridDim.x) {
    const int t = task_tensor[k];
    const int64_t nu = units[t];
    const int64_t u = task_u0[k] + threadIdx.x;
    if (u >= nu) continue;
    const int64_t rows = sizes[t] / nu;
    const int64_t r0 = task_r0[k];
    const int64_t r1 = r0 + rows_per_task < rows ? r0 + rows_per_task : rows;
    const T* p = tensors[t] + u;
    A s_abs = A(0), s_sq = A(0), total = A(0), mx = A(0);
    A mn = positive_infinity(A(0));
    for (int64_t r = r0; r < r1; ++r) {
      const A x = to_acc(p[r * nu]);
      const A a = x < A(0) ? -x : x;
      s_abs += a;
      s_sq += x * x;
      total += x;
      mx = max_keep_nan(a, mx);
      mn = min_keep_nan(a, mn);
    }
    A centered = A(0);
    if (needed & kStatMoments) {
      const A mean = total / A(r1 - r0);
      for (int64_t r = r0; r < r1; ++r) {
        const A d = to_acc(p[r * nu]) - mean;
        centered += d * d;
      }
    }
    out[k * kThreads + threadIdx.x] =
        from_block_sums<A>(r1 - r0, s_abs, s_sq, mx, mn, total, centered);
  }
}

// One thread per unit g of the unit list (unit_tensor[g], unit_index[g]):
// merges the unit's tasks (tensor t's tasks start at task_first[t], one per
// unit block per row block, row blocks innermost: row_blocks[t] of them) in
// row order, and writes norms[scale_first[t] + unit].
template <typename A>
__device__ __forceinline__ void unit_finish(
    const NormStats<A>* stats, const int32_t* unit_tensor,
    const int64_t* unit_index, int64_t num_units, const int64_t* task_first,
    const int64_t* row_blocks, const int64_t* scale_first, int kind, A eps,
    const void* const* tensors, const int64_t* sizes, const int64_t* units,
    int dtype, A* norms) {
  const int64_t g = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (g >= num_units) return;
  const int t = unit_tensor[g];
  const int64_t u = unit_index[g];
  const int64_t blocks = row_blocks[t];
  const int64_t first = task_first[t] + (u / kThreads) * blocks;
  NormStats<A> s = NormStats<A>::empty();
  for (int64_t b = 0; b < blocks; ++b) {
    s = merge_stats(s, stats[(first + b) * kThreads + u % kThreads]);
  }
  const NormKind k = static_cast<NormKind>(kind);
  A norm = finalize_norm(k, s, eps);
  if (needs_rescue(norm) && is_finite(s.max_abs)) {
    const int e = rescue_exponent(s.max_abs);
    const NormStats<A> r = strided_stats<A>(
        tensors[t], dtype, u, units[t], sizes[t] / units[t], pow2<A>(-e),
        (stats_needed(k) & kStatMoments) != 0);
    norm = rescued_norm(k, r, e, eps);
  }
  norms[scale_first[t] + u] = norm;
}

}  // namespace cuda
}  // namespace normopt

#endif  // NORMOPT_CUDA_NORM_KERNELS_CUH_
