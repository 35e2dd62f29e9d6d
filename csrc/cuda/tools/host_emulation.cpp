// Runs the CUDA kernels of csrc/cuda on the CPU, for machines without a GPU.
//
// Built by the tests with a host C++ compiler (g++ -std=c++20 -shared), not
// nvcc: CUDA's keywords become plain C++, each block runs as blockDim.x
// std::threads, __syncthreads() is a std::barrier, __shared__ is a static
// (blocks run one after another), and threadIdx is thread_local. The entry
// points of entry_points.cuh are called unchanged, so the kernels' indexing,
// chunking, vector/tail paths, block reductions and per-tensor finish are
// exercised with real data. (Warp timing and memory-model effects are not.)
//
// The emu_* functions take host pointers and mirror launchers.h, step scalars
// included (normopt/update_scalars.h); emu_kernel gives a launcher of any
// entry point by name, for a CuPy stand-in.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

struct EmuDim3 {
  unsigned x = 1, y = 1, z = 1;
};
thread_local EmuDim3 threadIdx;
EmuDim3 blockIdx, blockDim, gridDim;
std::barrier<>* emu_block_barrier = nullptr;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline float __int_as_float(int bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline double __longlong_as_double(long long bits) {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)

#include "cuda/entry_table.cuh"
#include "normopt/update_scalars.h"

namespace {

// `size` persistent threads that run one block at a time: the caller and
// the workers meet at `start`, the workers run the kernel (synchronising among
// themselves on `block`), and everyone meets again at `done`.
class BlockPool {
 public:
  explicit BlockPool(unsigned size) : start_(size + 1), done_(size + 1), block_(size) {
    for (unsigned t = 0; t < size; ++t) {
      workers_.emplace_back([this, t] {
        threadIdx.x = t;
        for (;;) {
          start_.arrive_and_wait();
          if (stop_) return;
          emu_block_barrier = &block_;
          (*kernel_)();
          done_.arrive_and_wait();
        }
      });
    }
  }
  ~BlockPool() {
    stop_ = true;
    start_.arrive_and_wait();
    for (auto& w : workers_) w.join();
  }
  void run(const std::function<void()>& kernel) {
    kernel_ = &kernel;
    start_.arrive_and_wait();
    done_.arrive_and_wait();
  }

 private:
  std::barrier<> start_, done_, block_;
  std::vector<std::thread> workers_;
  const std::function<void()>* kernel_ = nullptr;
  bool stop_ = false;
};

// Runs `kernel` on a grid of `grid` blocks of `block` threads, block by block.
void launch(unsigned grid, unsigned block, const std::function<void()>& kernel) {
  static std::vector<std::unique_ptr<BlockPool>> pools(1025);
  if (!pools[block]) pools[block] = std::make_unique<BlockPool>(block);
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    pools[block]->run(kernel);
  }
}

constexpr unsigned kThreads = normopt::cuda::kThreads;
constexpr unsigned kFinishThreads = 128;

using normopt::cuda::dispatch;
using normopt::cuda::Entry;

unsigned grid_for(int64_t num_chunks) { return static_cast<unsigned>(num_chunks); }

// Launch(grid, block, args...) of one entry point, for emu_kernel.
template <typename Fn>
struct Launcher;
template <typename... Args>
struct Launcher<void (*)(Args...)> {
  template <void (*Kernel)(Args...)>
  static void Launch(unsigned grid, unsigned block, Args... args) {
    launch(grid, block, [&] { Kernel(args...); });
  }
};

#define EMU_KERNEL(NAME) \
  {#NAME, reinterpret_cast<void*>(&Launcher<decltype(&NAME)>::Launch<&NAME>)}
#define EMU_KERNELS(SUF)                                                   \
  EMU_KERNEL(normopt_chunk_stats_##SUF), EMU_KERNEL(normopt_scale_##SUF), \
      EMU_KERNEL(normopt_sgd_##SUF), EMU_KERNEL(normopt_adam_##SUF)

}  // namespace

// Built with -fvisibility=hidden: only the emu_* functions are exported, so
// two builds (different block sizes) loaded in one process cannot bind to
// each other's globals or template instances.
#define EMU_EXPORT __attribute__((visibility("default")))

extern "C" {

// The launcher of entry point `name` (entry_points.cuh), called as
// launcher(grid, block, <the kernel's arguments>) with host pointers, as
// CuPy launches the kernel by name (tests/emulated_cupy.py); null if unknown.
EMU_EXPORT void* emu_kernel(const char* name) {
  static const std::map<std::string, void*> kKernels = {
      EMU_KERNELS(f16), EMU_KERNELS(bf16), EMU_KERNELS(f32), EMU_KERNELS(f64),
      EMU_KERNEL(normopt_finish_f32), EMU_KERNEL(normopt_finish_f64),
      EMU_KERNEL(normopt_scales_from_norms_f32),
      EMU_KERNEL(normopt_scales_from_norms_f64),
  };
  const auto it = kKernels.find(name);
  return it == kKernels.end() ? nullptr : it->second;
}

EMU_EXPORT int emu_norms(int dtype, const void* const* tensors, const int64_t* sizes,
              int num_tensors, const int32_t* chunk_tensor,
              const int64_t* chunk_start, const int64_t* first_chunk,
              int64_t num_chunks, int64_t chunk_size, int kind, int mode,
              double clipnorm, double eps, void* norms, void* scales) {
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    using A = normopt::cuda::Acc<T>;
    std::vector<normopt::NormStats<A>> stats(num_chunks > 0 ? num_chunks : 1);
    const unsigned needed =
        normopt::stats_needed(static_cast<normopt::NormKind>(kind));
    if (num_chunks > 0) {
      launch(grid_for(num_chunks), kThreads, [&] {
        Entry<T>::chunk_stats(reinterpret_cast<const T* const*>(tensors), sizes,
                              chunk_tensor, chunk_start, num_chunks, chunk_size,
                              needed, stats.data());
      });
    }
    if (num_tensors > 0) {
      launch((num_tensors + kFinishThreads - 1) / kFinishThreads, kFinishThreads, [&] {
        Entry<T>::finish(stats.data(), first_chunk, num_tensors, kind, mode,
                         A(clipnorm), A(eps), static_cast<A*>(norms),
                         static_cast<A*>(scales));
      });
    }
    return 0;
  });
}

EMU_EXPORT int emu_scale(int dtype, const void* const* grads, void* const* outs,
              const int64_t* sizes, const int32_t* chunk_tensor,
              const int64_t* chunk_start, int64_t num_chunks,
              int64_t chunk_size, const void* scales) {
  if (num_chunks <= 0) return 0;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    launch(grid_for(num_chunks), kThreads, [&] {
      Entry<T>::scale(reinterpret_cast<const T* const*>(grads),
                      reinterpret_cast<T* const*>(outs), sizes, chunk_tensor,
                      chunk_start, num_chunks, chunk_size,
                      static_cast<const normopt::cuda::Acc<T>*>(scales));
    });
    return 0;
  });
}

EMU_EXPORT int emu_sgd(int dtype, void* const* weights, void* const* momenta,
            const void* const* grads, const int64_t* sizes,
            const int32_t* chunk_tensor, const int64_t* chunk_start,
            int64_t num_chunks, int64_t chunk_size, const void* scales,
            const void* decay, double lr, double momentum, int nesterov) {
  if (num_chunks <= 0) return 0;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    using A = normopt::cuda::Acc<T>;
    const auto k = normopt::sgd_scalars<A>(lr, momentum);
    launch(grid_for(num_chunks), kThreads, [&] {
      Entry<T>::sgd(reinterpret_cast<T* const*>(weights),
                    reinterpret_cast<T* const*>(momenta),
                    reinterpret_cast<const T* const*>(grads), sizes,
                    chunk_tensor, chunk_start, num_chunks, chunk_size,
                    static_cast<const A*>(scales), static_cast<const A*>(decay),
                    k.lr, k.momentum, nesterov);
    });
    return 0;
  });
}

EMU_EXPORT int emu_adam(int dtype, void* const* weights, void* const* ms, void* const* vs,
             void* const* vhats, const void* const* grads, const int64_t* sizes,
             const int32_t* chunk_tensor, const int64_t* chunk_start,
             int64_t num_chunks, int64_t chunk_size, const void* scales,
             const void* decay, double lr, double beta_1, double beta_2,
             double epsilon, double step, int amsgrad) {
  if (num_chunks <= 0) return 0;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    using A = normopt::cuda::Acc<T>;
    const auto k = normopt::adam_scalars<A>(lr, beta_1, beta_2, epsilon, step);
    launch(grid_for(num_chunks), kThreads, [&] {
      Entry<T>::adam(reinterpret_cast<T* const*>(weights),
                     reinterpret_cast<T* const*>(ms),
                     reinterpret_cast<T* const*>(vs),
                     reinterpret_cast<T* const*>(vhats),
                     reinterpret_cast<const T* const*>(grads), sizes,
                     chunk_tensor, chunk_start, num_chunks, chunk_size,
                     static_cast<const A*>(scales), static_cast<const A*>(decay),
                     k.lr, k.alpha, k.one_minus_beta_1, k.one_minus_beta_2,
                     k.epsilon, amsgrad);
    });
    return 0;
  });
}

}  // extern "C"
