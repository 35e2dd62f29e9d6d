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
// The emu_* functions take host pointers and mirror launchers.h (emu_apply
// takes the rule by name); emu_kernel gives a launcher of any entry point by
// name, for a CuPy stand-in.
#include <barrier>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
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

// At most NORMOPT_EMU_THREADS (default: the number of cores) emulated CUDA
// threads of a block run at once; the others sleep. __syncthreads() is a
// barrier whose waiters sleep on a condition variable: std::barrier's
// waiters spin and yield, which put hundreds of runnable threads on a
// 2-core machine. (Not std::counting_semaphore: GCC 12's can miss a
// wake-up, libstdc++ PR 104928.)
class EmuGate {
 public:
  EmuGate() {
    const char* env = std::getenv("NORMOPT_EMU_THREADS");
    free_ = env ? std::atol(env) : 0;
    if (free_ < 1) free_ = std::thread::hardware_concurrency();
    if (free_ < 1) free_ = 1;
  }
  void begin() {
    std::unique_lock<std::mutex> lock(mutex_);
    take(lock);
  }
  void end() {
    std::lock_guard<std::mutex> lock(mutex_);
    give();
  }
  // The barrier of `count` threads (a block), giving up the slot meanwhile.
  void sync(unsigned count) {
    std::unique_lock<std::mutex> lock(mutex_);
    give();
    const unsigned long long phase = phase_;
    if (++arrived_ == count) {
      arrived_ = 0;
      ++phase_;
      phase_done_.notify_all();
    } else {
      phase_done_.wait(lock, [&] { return phase_ != phase; });
    }
    take(lock);
  }

 private:
  void take(std::unique_lock<std::mutex>& lock) {
    slot_free_.wait(lock, [this] { return free_ > 0; });
    --free_;
  }
  void give() {
    ++free_;
    slot_free_.notify_one();
  }
  std::mutex mutex_;
  std::condition_variable slot_free_, phase_done_;
  long free_;
  unsigned arrived_ = 0;
  unsigned long long phase_ = 0;
};
EmuGate& emu_gate() {
  static EmuGate gate;
  return gate;
}
inline void __syncthreads() { emu_gate().sync(blockDim.x); }
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
#include "normopt/update_rules.h"

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
          emu_gate().begin();
          (*kernel_)();
          emu_gate().end();
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
#define EMU_KERNELS(SUF) \
  EMU_KERNEL(normopt_chunk_stats_##SUF), EMU_KERNEL(normopt_scale_##SUF)
#define EMU_APPLY_F16(name, Rule) EMU_KERNEL(normopt_apply_##name##_f16),
#define EMU_APPLY_BF16(name, Rule) EMU_KERNEL(normopt_apply_##name##_bf16),
#define EMU_APPLY_F32(name, Rule) EMU_KERNEL(normopt_apply_##name##_f32),
#define EMU_APPLY_F64(name, Rule) EMU_KERNEL(normopt_apply_##name##_f64),

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
      NORMOPT_UPDATE_RULES(EMU_APPLY_F16) NORMOPT_UPDATE_RULES(EMU_APPLY_BF16)
      NORMOPT_UPDATE_RULES(EMU_APPLY_F32) NORMOPT_UPDATE_RULES(EMU_APPLY_F64)
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
                         A(clipnorm), A(eps), tensors, sizes, dtype,
                         static_cast<A*>(norms),
                         static_cast<normopt::TensorScale<A>*>(scales));
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
                      static_cast<const normopt::TensorScale<normopt::cuda::Acc<T>>*>(scales));
    });
    return 0;
  });
}

// launchers.h's normopt_cuda_apply, the rule given by name; -1 for an
// unknown rule.
EMU_EXPORT int emu_apply(int dtype, const char* rule, void* const* state,
                         int num_tensors, const void* const* grads,
                         const int64_t* sizes, const int32_t* chunk_tensor,
                         const int64_t* chunk_start, int64_t num_chunks,
                         int64_t chunk_size, const void* scales,
                         const void* decay, const double* args) {
  normopt::RuleId id;
  if (!normopt::parse_rule(rule, &id)) return -1;
  if (num_chunks <= 0) return 0;
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    using A = normopt::cuda::Acc<T>;
    const auto kernel = normopt::cuda::apply_entry<T>(id);
    launch(grid_for(num_chunks), kThreads, [&] {
      kernel(reinterpret_cast<T* const*>(state), num_tensors,
             reinterpret_cast<const T* const*>(grads), sizes, chunk_tensor,
             chunk_start, num_chunks, chunk_size,
             static_cast<const normopt::TensorScale<A>*>(scales),
             static_cast<const A*>(decay), args);
    });
    return 0;
  });
}

}  // extern "C"
