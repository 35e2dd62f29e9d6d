// Device helpers shared by the multi-tensor kernels (plain CUDA, no
// TensorFlow): accumulation types, conversions, 16-byte packs and the chunk
// a block works on.
//
// A multi-tensor launch receives, in device memory:
//   tensors[N]      one pointer per tensor (one table per role: grads, weights...)
//   sizes[N]        element counts (int64: tensors may exceed 2^31 elements)
//   chunk_tensor[C], chunk_start[C]   the chunk table (csrc/cuda/chunk_table.h)
//   chunk_grad[2C]  null when every gradient is dense; else, for a list with
//                   sparse gradients, chunk c's gradient offset and length
//                   (chunk_table.h: build_sparse_chunk_table)
// and each block walks chunks c = blockIdx.x, blockIdx.x + gridDim.x, ...
#ifndef NORMOPT_CUDA_TENSOR_LIST_CUH_
#define NORMOPT_CUDA_TENSOR_LIST_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "normopt/norm_stats.h"

namespace normopt {
namespace cuda {

// Threads per block of every chunked kernel (the reductions assume it; a
// power of two). Overridable at compile time only for the host emulation
// tests, which run blocks as std::threads.
#ifndef NORMOPT_CUDA_BLOCK_THREADS
#define NORMOPT_CUDA_BLOCK_THREADS 256
#endif
constexpr int kThreads = NORMOPT_CUDA_BLOCK_THREADS;
static_assert(kThreads > 0 && (kThreads & (kThreads - 1)) == 0,
              "kThreads must be a power of two");

// float accumulation for 16- and 32-bit data, double for double.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using Acc = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_acc(Acc<T> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float positive_infinity(float) {
  return __int_as_float(0x7f800000);
}
__device__ __forceinline__ double positive_infinity(double) {
  return __longlong_as_double(0x7ff0000000000000LL);
}

// 16 bytes of T, loaded and stored as one vector access.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kWidth = 16 / sizeof(T);
  T v[kWidth];
};

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& v) {
  *reinterpret_cast<Pack<T>*>(p) = v;
}

// The chunk a block works on: tensor t, elements [lo, lo + n) of it (of the
// variable and slots, and of the dense gradient), whose gradient elements
// start at element g of gradient t's array; g < 0: they are all zeros (a
// sparse gradient's absent rows), and nothing of the gradient is read.
struct Chunk {
  int t;
  int64_t lo;
  int64_t n;
  int64_t g;
};

// Chunk c of the table; `chunk_grad` null: every gradient dense (g = lo,
// n = chunk_size or what is left of the tensor), else g and n are
// chunk_grad[2c] and chunk_grad[2c + 1].
__device__ __forceinline__ Chunk chunk_at(int64_t c, const int32_t* chunk_tensor,
                                          const int64_t* chunk_start,
                                          const int64_t* sizes,
                                          int64_t chunk_size,
                                          const int64_t* chunk_grad = nullptr) {
  Chunk k;
  k.t = chunk_tensor[c];
  k.lo = chunk_start[c];
  if (chunk_grad != nullptr) {
    k.g = chunk_grad[2 * c];
    k.n = chunk_grad[2 * c + 1];
    return k;
  }
  const int64_t left = sizes[k.t] - k.lo;
  k.n = left < chunk_size ? left : chunk_size;
  k.g = k.lo;
  return k;
}

}  // namespace cuda
}  // namespace normopt

#endif  // NORMOPT_CUDA_TENSOR_LIST_CUH_
