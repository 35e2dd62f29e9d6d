// What the GPU op kernels share on the way to the CUDA launchers
// (csrc/cuda/launchers.h): dtype codes, the op's CUDA stream, the launch
// tables uploaded in one asynchronous copy, the per-tensor scales, and
// copy-on-write of a variable on the GPU.
//
// Nothing here synchronises with the device: every copy and launch is
// enqueued on the op's stream, and TF's GPU allocator orders the reuse of
// device temporaries after the work queued on that stream. The one host
// buffer (pinned) is kept alive until its copy has run (EventMgr).
#ifndef NORMOPT_OPS_LAUNCH_TABLES_GPU_H_
#define NORMOPT_OPS_LAUNCH_TABLES_GPU_H_

#if GOOGLE_CUDA

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/chunk_table.h"
#include "cuda/launchers.h"
#include "normopt/dtype_codes.h"
#include "normopt/norm_stats.h"
#include "ops/element_types.h"
#include "ops/grad_list.h"
#include "ops/tensor_scales.h"
#include "tensorflow/core/common_runtime/gpu/gpu_event_mgr.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_reference.h"
#include "xla/stream_executor/stream.h"

namespace normopt {

// Elements per chunk of a GPU launch (csrc/cuda/chunk_table.h).
constexpr int64_t kGpuChunkElems = cuda::kDefaultChunkElems;

// The launchers' dtype code of T (normopt/dtype_codes.h). Eigen::half /
// Eigen::bfloat16 have the bit layout of __half / __nv_bfloat16, which the
// launchers read.
template <typename T>
constexpr int LauncherDtype();
template <>
constexpr int LauncherDtype<Eigen::half>() { return kDtypeFloat16; }
template <>
constexpr int LauncherDtype<Eigen::bfloat16>() { return kDtypeBFloat16; }
template <>
constexpr int LauncherDtype<float>() { return kDtypeFloat32; }
template <>
constexpr int LauncherDtype<double>() { return kDtypeFloat64; }
static_assert(sizeof(Eigen::half) == 2 && sizeof(Eigen::bfloat16) == 2,
              "16-bit element types must be 2 bytes");

inline stream_executor::Stream* OpStream(tensorflow::OpKernelContext* ctx) {
  return ctx->op_device_context() == nullptr
             ? nullptr
             : ctx->op_device_context()->stream();
}

inline cudaStream_t CudaStreamOf(stream_executor::Stream* stream) {
  return static_cast<cudaStream_t>(stream->platform_specific_handle().stream);
}

// A launcher's or the runtime's return code as a Status.
inline absl::Status CudaStatus(int rc, const char* what) {
  if (rc == 0) return absl::OkStatus();
  return absl::InternalError(std::string("normopt: CUDA ") + what +
                             " failed: " +
                             cudaGetErrorString(static_cast<cudaError_t>(rc)));
}

// Makes a variable's GPU tensor writable in place: a copy when a reader
// still holds the buffer, here a device-to-device copy on the op's stream
// (LockedVariables::PrepareFn, which says why copy-on-read mode needs none).
inline absl::Status PrepareOnGpu(tensorflow::OpKernelContext* ctx,
                                 tensorflow::Tensor* tensor) {
  if (tensor->RefCountIsOne()) return absl::OkStatus();
  stream_executor::Stream* stream = OpStream(ctx);
  if (stream == nullptr) {
    return absl::InternalError("normopt: no GPU stream for a GPU kernel");
  }
  tensorflow::Tensor copy;
  tensorflow::AllocatorAttributes attr;
  attr.set_gpu_compatible(true);
  attr.set_nic_compatible(true);
  TF_RETURN_IF_ERROR(
      ctx->allocate_temp(tensor->dtype(), tensor->shape(), &copy, attr));
  if (tensor->TotalBytes() > 0) {
    TF_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(copy.data(), tensor->data(), tensor->TotalBytes(),
                        cudaMemcpyDeviceToDevice, CudaStreamOf(stream)),
        "copy-on-write of a variable"));
  }
  *tensor = copy;
  return absl::OkStatus();
}

// The host arrays a launch reads on the device (pointer tables, sizes, the
// chunk table), gathered into one buffer and uploaded with one copy. Each
// array starts 16-byte aligned; Add returns its byte offset, At its device
// address once Upload has run.
class LaunchTables {
 public:
  template <typename E>
  size_t Add(const std::vector<E>& values) {
    const size_t offset = (bytes_.size() + 15) & ~size_t{15};
    bytes_.resize(offset + values.size() * sizeof(E), 0);
    if (!values.empty()) {
      std::memcpy(bytes_.data() + offset, values.data(),
                  values.size() * sizeof(E));
    }
    return offset;
  }

  // Copies the arrays host -> device on the op's stream, through a pinned
  // host buffer that stays referenced until the copy has run.
  absl::Status Upload(tensorflow::OpKernelContext* ctx) {
    stream_executor::Stream* stream = OpStream(ctx);
    const auto* info = ctx->device()->tensorflow_accelerator_device_info();
    if (stream == nullptr || info == nullptr || info->event_mgr == nullptr) {
      return absl::InternalError("normopt: no GPU stream for a GPU kernel");
    }
    if (bytes_.empty()) bytes_.resize(16, 0);
    const int64_t total = static_cast<int64_t>(bytes_.size());
    tensorflow::AllocatorAttributes pinned;
    pinned.set_on_host(true);
    pinned.set_gpu_compatible(true);
    TF_RETURN_IF_ERROR(ctx->allocate_temp(
        tensorflow::DT_INT8, tensorflow::TensorShape({total}), &on_host_,
        pinned));
    std::memcpy(on_host_.data(), bytes_.data(), bytes_.size());
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_INT8,
                                          tensorflow::TensorShape({total}),
                                          &on_device_));
    device_base_ = static_cast<char*>(on_device_.data());
    TF_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(device_base_, on_host_.data(), bytes_.size(),
                        cudaMemcpyHostToDevice, CudaStreamOf(stream)),
        "upload of the launch tables"));
    // The copy runs after Compute returns; the pinned buffer must outlive it.
    tensorflow::TensorReference ref(on_host_);
    info->event_mgr->ThenExecute(stream, [ref]() { ref.Unref(); });
    return absl::OkStatus();
  }

  template <typename E>
  E* At(size_t offset) const {
    return reinterpret_cast<E*>(device_base_ + offset);
  }

 private:
  std::vector<char> bytes_;
  char* device_base_ = nullptr;
  tensorflow::Tensor on_host_;
  tensorflow::Tensor on_device_;
};

// The chunk table of a gradient list: build_chunk_table, or with sparse
// gradients (GradList::AddRows) build_sparse_chunk_table over their sorted
// rows, which the kernels read in place (the values stay on the device; the
// indices are host memory inputs).
template <typename T>
cuda::ChunkTable GradChunkTable(const GradList<T>& grads) {
  if (!grads.any_sparse) {
    return cuda::build_chunk_table(grads.sizes.data(), grads.size(),
                                   kGpuChunkElems);
  }
  std::vector<cuda::SparseRows> sparse(grads.size());
  for (int i = 0; i < grads.size(); ++i) {
    if (!grads.sparse[i]) continue;
    sparse[i].row_elems = grads.row_elems[i];
    sparse[i].rows = grads.present_rows[i].data();
    sparse[i].value_row = grads.value_row[i].data();
    sparse[i].count = static_cast<int64_t>(grads.present_rows[i].size());
  }
  return cuda::build_sparse_chunk_table(grads.sizes.data(), grads.size(),
                                        kGpuChunkElems, sparse.data());
}

// One multi-tensor launch over a gradient list: its chunk table and the
// device tables of the gradients; callers add their own pointer tables
// (outputs, variables, slots) before Upload.
template <typename T>
class GradLaunch {
 public:
  explicit GradLaunch(const GradList<T>& grads)
      : n_(grads.size()), chunks_(GradChunkTable(grads)) {
    grads_ = tables_.Add(grads.data);
    sizes_ = tables_.Add(grads.sizes);
    chunk_tensor_ = tables_.Add(chunks_.tensor);
    chunk_start_ = tables_.Add(chunks_.start);
    first_chunk_ = tables_.Add(chunks_.first);
    chunk_grad_ = tables_.Add(chunks_.grad);
    zeros_ = tables_.Add(chunks_.zeros);
  }

  // A table of one device pointer per tensor (null entries allowed).
  template <typename P>
  size_t AddPointers(const std::vector<P*>& pointers) {
    return tables_.Add(pointers);
  }

  absl::Status Upload(tensorflow::OpKernelContext* ctx) {
    stream_ = OpStream(ctx);
    TF_RETURN_IF_ERROR(tables_.Upload(ctx));
    return absl::OkStatus();
  }

  // Norms and scales from the built-in norm `kind` (2 launches); `norms`
  // is a device array of n accumulation-type values, `scales` of n
  // TensorScale pairs (2n values), `grad_norms` of n values (the L2 norms)
  // or null.
  absl::Status NormsAndScales(tensorflow::OpKernelContext* ctx, NormKind kind,
                              ScaleMode mode, double clipnorm, double eps,
                              void* norms, void* scales,
                              void* grad_norms = nullptr) const {
    constexpr int dtype = LauncherDtype<T>();
    const int64_t bytes =
        normopt_cuda_stats_workspace_bytes(dtype, num_chunks());
    tensorflow::Tensor workspace;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(
        tensorflow::DT_INT8, tensorflow::TensorShape({bytes}), &workspace));
    return CudaStatus(
        normopt_cuda_norms(
            dtype, tables_.At<const void* const>(grads_), sizes(), zeros(), n_,
            chunk_tensor(), chunk_start(), chunk_grad(), first_chunk(),
            num_chunks(),
            kGpuChunkElems, static_cast<int>(kind), static_cast<int>(mode),
            clipnorm, eps, workspace.data(), norms, scales, grad_norms,
            stream()),
        "norm kernels");
  }

  // The per-tensor scales ([2n] of the accumulation type: n TensorScale
  // pairs, device temp) of the gradients: from the built-in norm, or from
  // `precomputed_norms` (a device tensor, already validated) when the source
  // says so; and the L2 norm of every gradient into `grad_norms` ([n], on
  // the device). With precomputed norms the L2 norms take a statistics pass
  // of their own (the l2 kind with eps 0), since nothing else reads the
  // gradients before the update.
  //
  // Per-tensor norms of every gradient only: the other granularities,
  // exclusions and adaptive clipping, which the CUDA kernels have (the CuPy
  // front end's launch_scales drives them), are not wired into the TF op's
  // GPU kernel yet and are refused here (the Python side keeps such steps
  // off a GPU op).
  absl::Status Scales(tensorflow::OpKernelContext* ctx, const ScaleSpec& spec,
                      const tensorflow::Tensor& precomputed_norms,
                      tensorflow::Tensor* scales,
                      tensorflow::Tensor* grad_norms) const {
    if (spec.granularity != Granularity::kTensor || spec.adaptive ||
        !spec.excluded.empty()) {
      return absl::UnimplementedError(
          "normopt: the GPU kernels scale by per-tensor norms of every "
          "gradient only (no unit or global granularity, exclusions or "
          "adaptive clipping)");
    }
    if (!source_is_one_statistics_kind(spec)) {
      return absl::UnimplementedError(
          "normopt: the GPU kernels take one norm made of statistics for "
          "every gradient (not a matrix norm such as spectral, nor a norm "
          "per gradient)");
    }
    const NormSource& source = spec.source;
    const ScaleMode mode = spec.mode;
    const double clipnorm = spec.clipnorm, eps = spec.eps;
    const tensorflow::TensorShape shape({n_});
    // One TensorScale {pre, mult} per tensor.
    TF_RETURN_IF_ERROR(ctx->allocate_temp(
        AccDataType<T>(), tensorflow::TensorShape({2 * n_}), scales));
    if (source.precomputed) {
      TF_RETURN_IF_ERROR(NormsAndScales(ctx, NormKind::kL2,
                                        ScaleMode::kNormalize, 1.0, 0.0,
                                        grad_norms->data(), scales->data()));
      return CudaStatus(normopt_cuda_scales_from_norms(
                            LauncherDtype<T>(), precomputed_norms.data(), n_,
                            static_cast<int>(mode), clipnorm, scales->data(),
                            stream()),
                        "scales-from-norms kernel");
    }
    tensorflow::Tensor norms;
    TF_RETURN_IF_ERROR(ctx->allocate_temp(AccDataType<T>(), shape, &norms));
    return NormsAndScales(ctx, source.kind, mode, clipnorm, eps, norms.data(),
                          scales->data(), grad_norms->data());
  }

  static bool source_is_one_statistics_kind(const ScaleSpec& spec) {
    return spec.source.precomputed || OneStatisticsKind(spec);
  }

  // A table of plain values (the rule's args).
  template <typename E>
  size_t AddArray(const std::vector<E>& values) {
    return tables_.Add(values);
  }

  template <typename E>
  const E* Array(size_t offset) const {
    return tables_.At<const E>(offset);
  }

  template <typename P>
  P* const* Pointers(size_t offset) const {
    return tables_.At<P* const>(offset);
  }
  const void* const* grads() const {
    return tables_.At<const void* const>(grads_);
  }
  const int64_t* sizes() const { return tables_.At<const int64_t>(sizes_); }
  const int32_t* chunk_tensor() const {
    return tables_.At<const int32_t>(chunk_tensor_);
  }
  const int64_t* chunk_start() const {
    return tables_.At<const int64_t>(chunk_start_);
  }
  const int64_t* first_chunk() const {
    return tables_.At<const int64_t>(first_chunk_);
  }
  // Null unless the list has sparse gradients (tensor_list.cuh).
  const int64_t* chunk_grad() const {
    return chunks_.grad.empty() ? nullptr
                                : tables_.At<const int64_t>(chunk_grad_);
  }
  const int64_t* zeros() const {
    return chunks_.zeros.empty() ? nullptr : tables_.At<const int64_t>(zeros_);
  }
  int64_t num_chunks() const {
    return static_cast<int64_t>(chunks_.tensor.size());
  }
  cudaStream_t stream() const { return CudaStreamOf(stream_); }

 private:
  int n_;
  cuda::ChunkTable chunks_;
  LaunchTables tables_;
  size_t grads_, sizes_, chunk_tensor_, chunk_start_, first_chunk_,
      chunk_grad_, zeros_;
  stream_executor::Stream* stream_ = nullptr;
};

}  // namespace normopt

#endif  // GOOGLE_CUDA

#endif  // NORMOPT_OPS_LAUNCH_TABLES_GPU_H_
