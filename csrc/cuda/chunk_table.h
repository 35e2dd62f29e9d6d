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
// normopt/kernels/chunks.py builds the same table for Numba and CuPy; the
// tests compare the two.
#ifndef NORMOPT_CUDA_CHUNK_TABLE_H_
#define NORMOPT_CUDA_CHUNK_TABLE_H_

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

}  // namespace cuda
}  // namespace normopt

#endif  // NORMOPT_CUDA_CHUNK_TABLE_H_
