// Fixed chunking of a list of tensors, and a parallel loop over the chunks.
//
// Every tensor of n elements is cut into ceil(n / kChunkElems) chunks of
// kChunkElems elements (the last one shorter). The chunks of all tensors, in
// tensor order, form one work list. Each chunk's work depends only on the
// chunk, never on which thread runs it or on how the list is sharded, and
// per-chunk results are combined per tensor in chunk order: so results are
// bitwise identical whatever the number of threads.
#ifndef NORMOPT_OPS_CHUNK_PLAN_H_
#define NORMOPT_OPS_CHUNK_PLAN_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

namespace normopt {

// 16K elements: 64 KiB of float32, cache-resident for a second pass (std).
constexpr int64_t kChunkElems = int64_t{1} << 14;

struct Chunk {
  int32_t tensor;  // index in the list
  int64_t begin;   // first element, inclusive
  int64_t end;     // last element, exclusive
};

struct ChunkPlan {
  std::vector<Chunk> chunks;
  // Chunks of tensor i are chunks[first[i] .. first[i + 1]).
  std::vector<int64_t> first;
  int64_t total_elems = 0;

  explicit ChunkPlan(const std::vector<int64_t>& sizes) {
    first.reserve(sizes.size() + 1);
    for (size_t i = 0; i < sizes.size(); ++i) {
      total_elems += sizes[i];
      first.push_back(static_cast<int64_t>(chunks.size()));
      for (int64_t b = 0; b < sizes[i]; b += kChunkElems) {
        const int64_t e = b + kChunkElems < sizes[i] ? b + kChunkElems : sizes[i];
        chunks.push_back(Chunk{static_cast<int32_t>(i), b, e});
      }
    }
    first.push_back(static_cast<int64_t>(chunks.size()));
  }

  int64_t size() const { return static_cast<int64_t>(chunks.size()); }
};

// Runs fn(k) for k in [0, count) on TF's CPU worker threads. `cost_per_unit`
// is a rough cycle count of one call; it tells Shard whether splitting the
// work is worth a thread hop.
inline void ParallelForCount(tensorflow::OpKernelContext* ctx, int64_t count,
                             int64_t cost_per_unit,
                             const std::function<void(int64_t)>& fn) {
  if (count <= 0) return;
  const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(threads->num_threads, threads->workers, count,
                    cost_per_unit, [&](int64_t begin, int64_t end) {
                      for (int64_t k = begin; k < end; ++k) fn(k);
                    });
}

// Runs fn(chunk_index) for every chunk on TF's CPU worker threads.
// `cost_per_elem` is a rough cycle count per element; with the mean chunk
// length it gives Shard the cost of one chunk.
inline void ParallelForChunks(tensorflow::OpKernelContext* ctx,
                              const ChunkPlan& plan, int64_t cost_per_elem,
                              const std::function<void(int64_t)>& fn) {
  if (plan.size() == 0) return;
  ParallelForCount(ctx, plan.size(),
                   (plan.total_elems / plan.size() + 1) * cost_per_elem, fn);
}

}  // namespace normopt

#endif  // NORMOPT_OPS_CHUNK_PLAN_H_
