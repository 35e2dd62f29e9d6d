// Host-side chunk table of a multi-tensor launch (plain C++, no CUDA needed).
//
// A list of N tensors with sizes n_t is cut into chunks of `chunk_size`
// elements; chunk c covers [start[c], start[c] + chunk_size) of tensor
// tensor[c] (the last chunk of a tensor may be shorter). Empty tensors get no
// chunk. Chunks first[t] .. first[t+1]-1 belong to tensor t, in element
// order, which is the order the finish kernel merges them in.
//
//   chunks(t) = ceil(n_t / chunk_size)
//   first     = [0, cumsum(chunks)]
//   start[c]  = (c - first[t]) * chunk_size
//
// A list with sparse gradients (build_sparse_chunk_table) cuts each dense
// chunk of a sparse tensor further at its row boundaries: each chunk is then
// part of one present row, or a run of absent rows (zeros, not stored), and
// `grad` says where its gradient is (chunk_grad in tensor_list.cuh).
//
// normopt/kernels/chunks.py builds the same tables for Numba and CuPy; the
// tests compare the two.
#ifndef NORMOPT_CUDA_CHUNK_TABLE_H_
#define NORMOPT_CUDA_CHUNK_TABLE_H_

#include <algorithm>
#include <cstdint>
#include <vector>

namespace normopt {
namespace cuda {

// Elements per full chunk of a GPU launch (the TF GPU op's, and the default
// of the CuPy and Numba paths: DEFAULT_CHUNK_SIZE in
// normopt/kernels/_finalize.py, checked against this by the tests).
constexpr int64_t kDefaultChunkElems = int64_t{1} << 16;

struct ChunkTable {
  std::vector<int32_t> tensor;  // [C] owner of each chunk
  std::vector<int64_t> start;   // [C] first element of each chunk
  std::vector<int64_t> first;   // [N+1] first chunk of each tensor
  int64_t chunk_size = 0;
  // build_sparse_chunk_table only: [2C] chunk c's first element in its
  // gradient's array (-1: its gradient is zeros) and its element count;
  // [N] the zeros of each tensor that its array does not hold.
  std::vector<int64_t> grad;
  std::vector<int64_t> zeros;
};

// A sparse gradient: `count` rows of `row_elems` elements, dense row rows[k]
// (increasing) being row value_row[k] of its array; its other rows are
// zeros. row_elems 0: a dense gradient.
struct SparseRows {
  int64_t row_elems = 0;
  const int64_t* rows = nullptr;
  const int64_t* value_row = nullptr;
  int64_t count = 0;
};

inline ChunkTable build_chunk_table(const int64_t* sizes, int num_tensors,
                                    int64_t chunk_size) {
  ChunkTable table;
  table.chunk_size = chunk_size;
  table.first.resize(static_cast<size_t>(num_tensors) + 1, 0);
  for (int t = 0; t < num_tensors; ++t) {
    const int64_t chunks = (sizes[t] + chunk_size - 1) / chunk_size;
    table.first[t + 1] = table.first[t] + chunks;
    for (int64_t k = 0; k < chunks; ++k) {
      table.tensor.push_back(t);
      table.start.push_back(k * chunk_size);
    }
  }
  return table;
}

// The chunk table of N dense tensors of `sizes` elements, tensor t's
// gradient sparse[t] (see SparseRows). A dense gradient's chunks are those of
// build_chunk_table; a sparse one's dense chunks are cut at its row
// boundaries, so each of its chunks lies in one present row (gradient at
// value_row * row_elems + column) or in one run of absent rows (-1).
inline ChunkTable build_sparse_chunk_table(const int64_t* sizes,
                                           int num_tensors, int64_t chunk_size,
                                           const SparseRows* sparse) {
  ChunkTable table;
  table.chunk_size = chunk_size;
  table.first.assign(static_cast<size_t>(num_tensors) + 1, 0);
  table.zeros.assign(static_cast<size_t>(num_tensors), 0);
  for (int t = 0; t < num_tensors; ++t) {
    const auto add = [&](int64_t start, int64_t grad, int64_t count) {
      table.tensor.push_back(t);
      table.start.push_back(start);
      table.grad.push_back(grad);
      table.grad.push_back(count);
    };
    const SparseRows& sp = sparse[t];
    const int64_t width = sp.row_elems;
    if (width > 0) table.zeros[t] = sizes[t] - sp.count * width;
    int64_t k = 0;  // the first present row that ends after element e
    for (int64_t lo = 0; lo < sizes[t]; lo += chunk_size) {
      const int64_t end = std::min(sizes[t], lo + chunk_size);
      if (width <= 0) {
        add(lo, lo, end - lo);
        continue;
      }
      for (int64_t e = lo; e < end;) {
        while (k < sp.count && (sp.rows[k] + 1) * width <= e) ++k;
        const int64_t next = k < sp.count ? sp.rows[k] * width : end;
        if (e < next) {  // absent rows up to the next present one
          const int64_t piece = std::min(end, next) - e;
          add(e, -1, piece);
          e += piece;
        } else {
          const int64_t piece = std::min(end, next + width) - e;
          add(e, sp.value_row[k] * width + (e - next), piece);
          e += piece;
        }
      }
    }
    table.first[t + 1] = static_cast<int64_t>(table.tensor.size());
  }
  return table;
}

}  // namespace cuda
}  // namespace normopt

#endif  // NORMOPT_CUDA_CHUNK_TABLE_H_
