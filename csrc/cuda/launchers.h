// C-callable launchers of the multi-tensor kernels, for hosts that link the
// compiled CUDA code (the TF op's GPU kernel). CuPy compiles the kernels
// itself (cupy_module.cu) and does not use these.
//
// Every pointer argument is device memory except `table` fields built on the
// host and copied to the device by the caller: `tensors`/`weights`/... are
// device arrays of N device pointers, `sizes` int64[N], and `chunk_tensor`,
// `chunk_start`, `first_chunk` the chunk table (chunk_table.h) of those
// sizes. Sparse gradients (rows of a dense tensor, the rest zeros) come with
// `chunk_grad` [2C] and `zeros` [N] of chunk_table.h's
// build_sparse_chunk_table (null when every gradient is dense): `tensors` /
// `grads` then point at their rows and `sizes` are the dense sizes.
// Launchers only enqueue work on `stream` (no synchronisation) and
// return the cudaError_t of the launch (0 on success). DTYPE codes:
// normopt/dtype_codes.h; norms and decay are float for 16/32-bit
// data and double for float64 data; `scales` holds one normopt::TensorScale
// {pre, mult} of that type per tensor (2N values: g' = (g * pre) * mult,
// normopt/norm_stats.h).
#ifndef NORMOPT_CUDA_LAUNCHERS_H_
#define NORMOPT_CUDA_LAUNCHERS_H_

#include <cstdint>

#include <cuda_runtime_api.h>

extern "C" {

// Bytes of the chunk-statistics workspace for `num_chunks` chunks.
int64_t normopt_cuda_stats_workspace_bytes(int dtype, int64_t num_chunks);

// Norms and scales: chunk statistics + per-tensor finish (2 launches).
// `grad_norms` (N values, or null) receives each tensor's L2 norm
// sqrt(sum g^2), from the same statistics.
int normopt_cuda_norms(int dtype, const void* const* tensors,
                       const int64_t* sizes, const int64_t* zeros,
                       int num_tensors, const int32_t* chunk_tensor,
                       const int64_t* chunk_start, const int64_t* chunk_grad,
                       const int64_t* first_chunk, int64_t num_chunks,
                       int64_t chunk_size, int kind, int mode, double clipnorm,
                       double eps, void* workspace, void* norms, void* scales,
                       void* grad_norms, cudaStream_t stream);

// Scales from norms computed elsewhere (custom normalizations; 1 launch).
int normopt_cuda_scales_from_norms(int dtype, const void* norms,
                                   int num_tensors, int mode, double clipnorm,
                                   void* scales, cudaStream_t stream);

// outs[t] = (grads[t] * scales[t].pre) * scales[t].mult (1 launch).
int normopt_cuda_scale(int dtype, const void* const* grads, void* const* outs,
                       const int64_t* sizes, const int32_t* chunk_tensor,
                       const int64_t* chunk_start, int64_t num_chunks,
                       int64_t chunk_size, const void* scales,
                       cudaStream_t stream);

// Bytes of the workspace normopt_cuda_apply needs for rule `rule`: 0 for a
// one-phase rule, the per-chunk and per-tensor sums of a trust-ratio rule.
int64_t normopt_cuda_apply_workspace_bytes(int dtype, int rule,
                                           int64_t num_chunks,
                                           int num_tensors);

// One step of update rule `rule` (a normopt::RuleId of update_rules.h) on
// N variables and their slots (1 launch; 3 for a trust-ratio rule, which
// reads `first_chunk` and uses `workspace`, of
// normopt_cuda_apply_workspace_bytes). `state` is the device table of
// (1 + slots) * N pointers, slot-major (variables, then slot 0 of every
// variable, ...); `args` a device array of [lr, t, hyper...] doubles (t =
// iterations + 1). An unknown rule returns cudaErrorInvalidValue.
int normopt_cuda_apply(int dtype, int rule, void* const* state,
                       int num_tensors, const void* const* grads,
                       const int64_t* sizes, const int32_t* chunk_tensor,
                       const int64_t* chunk_start, const int64_t* chunk_grad,
                       const int64_t* first_chunk, int64_t num_chunks,
                       int64_t chunk_size, const void* scales, const void* decay,
                       const double* args, void* workspace,
                       cudaStream_t stream);

}  // extern "C"

#endif  // NORMOPT_CUDA_LAUNCHERS_H_
