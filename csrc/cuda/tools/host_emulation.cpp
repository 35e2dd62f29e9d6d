// Runs the CUDA kernels of csrc/cuda on the CPU, for machines without a GPU.
//
// Built by the tests with a host C++ compiler (g++ -std=c++20 -shared), not
// nvcc: CUDA's keywords become plain C++, and each block runs on the calling
// thread as blockDim.x fibers, one per CUDA thread, switched round-robin: a
// fiber runs until its next __syncthreads() or its end, so every thread of
// the block reaches a barrier before any passes it.
// __shared__ is a static (blocks run one after another) and threadIdx is set
// for the fiber that runs. No OS thread is started, whatever the block size.
// The entry points of entry_points.cuh are called unchanged, so the kernels'
// indexing, chunking, vector/tail paths, block reductions and per-tensor
// finish are exercised with real data. (Warp timing and memory-model effects
// are not.)
//
// The emu_* functions take host pointers and mirror launchers.h (emu_apply
// takes the rule by name); emu_kernel gives a launcher of any entry point by
// name, for a CuPy stand-in.
#include <setjmp.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

struct EmuDim3 {
  unsigned x = 1, y = 1, z = 1;
};
EmuDim3 threadIdx, blockIdx, blockDim, gridDim;

// Back to the scheduler; it resumes this fiber once every other fiber of the
// block has reached the barrier (or its end).
void emu_yield();
inline void __syncthreads() { emu_yield(); }
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

// Kernel bodies use a few KiB of stack; 256 KiB leaves them room.
constexpr size_t kFiberStack = size_t{256} << 10;

const std::function<void()>* emu_kernel_body = nullptr;
bool emu_returned = false;  // set by a fiber whose kernel body has ended

// A fiber lives for the whole process and runs one kernel body per block it
// takes part in. It is entered once through ucontext (makecontext gives it
// its stack); every later switch, both ways, is _setjmp/_longjmp, which
// unlike swapcontext saves no signal mask: no system call per switch (the
// emulated suites switch millions of times).
struct Fiber {
  std::unique_ptr<char[]> stack{new char[kFiberStack]};
  ucontext_t entry{};
  jmp_buf resume{};
  bool started = false;
};
std::vector<std::unique_ptr<Fiber>> emu_fibers;
jmp_buf emu_scheduler;

[[noreturn]] void fiber_main() {
  for (;;) {
    (*emu_kernel_body)();
    emu_returned = true;
    emu_yield();
  }
}

// Runs fiber t until it yields (a barrier or the end of its kernel body).
__attribute__((noinline)) void resume(unsigned t) {
  Fiber& fiber = *emu_fibers[t];
  if (_setjmp(emu_scheduler)) return;
  if (fiber.started) _longjmp(fiber.resume, 1);
  fiber.started = true;
  ucontext_t from;
  getcontext(&fiber.entry);
  fiber.entry.uc_stack.ss_sp = fiber.stack.get();
  fiber.entry.uc_stack.ss_size = kFiberStack;
  fiber.entry.uc_link = nullptr;  // fiber_main never returns
  makecontext(&fiber.entry, fiber_main, 0);
  swapcontext(&from, &fiber.entry);  // left by _longjmp, never resumed
}

// Runs one block of `block` fibers to completion.
void run_block(unsigned block) {
  while (emu_fibers.size() < block) emu_fibers.emplace_back(new Fiber);
  std::vector<char> done(block, 0);
  unsigned left = block;
  while (left > 0) {
    for (unsigned t = 0; t < block; ++t) {
      if (done[t]) continue;
      threadIdx.x = t;
      emu_returned = false;
      resume(t);
      if (emu_returned) {
        done[t] = 1;
        --left;
      }
    }
  }
}

}  // namespace

// threadIdx.x is the yielding fiber's: the scheduler set it before resuming
// it, and no other fiber has run since.
__attribute__((noinline)) void emu_yield() {
  if (!_setjmp(emu_fibers[threadIdx.x]->resume)) _longjmp(emu_scheduler, 1);
}

namespace {

// Runs `kernel` on a grid of `grid` blocks of `block` threads, block by block.
void launch(unsigned grid, unsigned block, const std::function<void()>& kernel) {
  emu_kernel_body = &kernel;
  gridDim.x = grid;
  blockDim.x = block;
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    run_block(block);
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
  EMU_KERNEL(normopt_chunk_stats_##SUF), EMU_KERNEL(normopt_scale_##SUF), \
      EMU_KERNEL(normopt_unit_stats_##SUF)
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
      EMU_KERNEL(normopt_global_finish_f32), EMU_KERNEL(normopt_global_finish_f64),
      EMU_KERNEL(normopt_unit_finish_f32), EMU_KERNEL(normopt_unit_finish_f64),
      EMU_KERNEL(normopt_trust_sums_f32), EMU_KERNEL(normopt_trust_sums_f64),
      NORMOPT_UPDATE_RULES(EMU_APPLY_F16) NORMOPT_UPDATE_RULES(EMU_APPLY_BF16)
      NORMOPT_UPDATE_RULES(EMU_APPLY_F32) NORMOPT_UPDATE_RULES(EMU_APPLY_F64)
  };
  const auto it = kKernels.find(name);
  return it == kKernels.end() ? nullptr : it->second;
}

EMU_EXPORT int emu_norms(int dtype, const void* const* tensors, const int64_t* sizes,
              const int64_t* zeros, int num_tensors, const int32_t* chunk_tensor,
              const int64_t* chunk_start, const int64_t* chunk_grad,
              const int64_t* first_chunk,
              int64_t num_chunks, int64_t chunk_size, int kind, int mode,
              double clipnorm, double eps, void* norms, void* scales,
              void* grad_norms) {
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    using A = normopt::cuda::Acc<T>;
    std::vector<normopt::NormStats<A>> stats(num_chunks > 0 ? num_chunks : 1);
    const unsigned needed =
        normopt::stats_needed(static_cast<normopt::NormKind>(kind));
    if (num_chunks > 0) {
      launch(grid_for(num_chunks), kThreads, [&] {
        Entry<T>::chunk_stats(reinterpret_cast<const T* const*>(tensors), sizes,
                              chunk_tensor, chunk_start, chunk_grad, num_chunks,
                              chunk_size, needed, stats.data());
      });
    }
    if (num_tensors > 0) {
      launch((num_tensors + kFinishThreads - 1) / kFinishThreads, kFinishThreads, [&] {
        Entry<T>::finish(stats.data(), first_chunk, num_tensors, kind, mode,
                         A(clipnorm), A(eps), tensors, sizes, zeros, dtype,
                         static_cast<A*>(norms),
                         static_cast<normopt::TensorScale<A>*>(scales),
                         static_cast<A*>(grad_norms));
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
                      static_cast<const normopt::TensorScale<normopt::cuda::Acc<T>>*>(scales),
                      nullptr, nullptr);
    });
    return 0;
  });
}

// launchers.h's normopt_cuda_apply, the rule given by name, its workspace
// allocated here; -1 for an unknown rule.
EMU_EXPORT int emu_apply(int dtype, const char* rule, void* const* state,
                         int num_tensors, const void* const* grads,
                         const int64_t* sizes, const int32_t* chunk_tensor,
                         const int64_t* chunk_start, const int64_t* chunk_grad,
                         const int64_t* first_chunk, int64_t num_chunks,
                         int64_t chunk_size, const void* scales,
                         const void* decay, const double* args) {
  normopt::RuleId id;
  if (!normopt::parse_rule(rule, &id)) return -1;
  const auto emulate = [](unsigned grid, unsigned block, auto kernel,
                          auto... kernel_args) {
    launch(grid, block, [&] { kernel(kernel_args...); });
  };
  return dispatch(dtype, [&](auto zero) {
    using T = decltype(zero);
    using A = normopt::cuda::Acc<T>;
    std::vector<char> workspace(static_cast<size_t>(
        normopt::cuda::apply_workspace_bytes<A>(id, num_chunks, num_tensors)));
    return normopt::cuda::launch_apply<T>(
        emulate, id, grid_for(num_chunks), kFinishThreads,
        reinterpret_cast<T* const*>(state), num_tensors,
        reinterpret_cast<const T* const*>(grads), sizes, chunk_tensor,
        chunk_start, chunk_grad, first_chunk, num_chunks, chunk_size,
        static_cast<const normopt::TensorScale<A>*>(scales), nullptr, nullptr,
        static_cast<const A*>(decay), args, workspace.data());
  });
}

}  // extern "C"
