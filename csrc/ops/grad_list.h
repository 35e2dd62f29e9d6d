// Reading the gradient list input shared by every op.
#ifndef NORMOPT_OPS_GRAD_LIST_H_
#define NORMOPT_OPS_GRAD_LIST_H_

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "ops/chunk_plan.h"
#include "ops/element_types.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace normopt {

// Buffers of kChunkElems elements per thread, where a sparse gradient's
// chunk is gathered and read by the same thread right after: buffer 0 for
// the dense chunk (GradList::Elements, which an update reads), buffer 1 for
// its present elements (PresentElements, which statistics read meanwhile).
template <typename T, int Buffer>
T* ChunkScratch() {
  thread_local std::unique_ptr<T[]> buffer(new T[kChunkElems]);
  return buffer.get();
}

// present[k], the rows `index[0, n)` lists in increasing order, and
// value_row[k] its position in `index`; an error naming `what` where a row
// is outside [0, rows) or listed twice.
inline absl::Status SortRows(const std::string& what, const int64_t* index,
                             int64_t n, int64_t rows,
                             std::vector<int64_t>* present,
                             std::vector<int64_t>* value_row) {
  value_row->resize(n);
  for (int64_t k = 0; k < n; ++k) {
    if (index[k] < 0 || index[k] >= rows) {
      return absl::InvalidArgumentError(
          what + "[" + std::to_string(k) + "] is " + std::to_string(index[k]) +
          ", not one of the variable's " + std::to_string(rows) + " rows");
    }
    (*value_row)[k] = k;
  }
  if (!std::is_sorted(index, index + n)) {
    std::sort(value_row->begin(), value_row->end(),
              [index](int64_t a, int64_t b) { return index[a] < index[b]; });
  }
  present->resize(n);
  for (int64_t k = 0; k < n; ++k) {
    (*present)[k] = index[(*value_row)[k]];
    if (k > 0 && (*present)[k] == (*present)[k - 1]) {
      return absl::InvalidArgumentError(
          what + " lists row " + std::to_string((*present)[k]) +
          " twice (duplicate indices must be summed first)");
    }
  }
  return absl::OkStatus();
}

// The N gradients of list input `name`: pointers, element counts, and the
// fixed chunk plan over them. units[i] is the size of the last axis of a
// gradient of two or more axes (its units, granularity "unit"), else 1.
//
// A sparse gradient (the apply op's `indices` input, `AddRows`) is the rows
// of a dense tensor that are not all zero: tensor i holds rows of
// row_elems[i] elements, present_rows[i] lists the rows of the dense
// gradient of shapes[i] that it holds, in increasing order, and
// value_row[i][k] is the row of tensor i that holds dense row
// present_rows[i][k]; every other row is zero. Every reader sees the dense
// gradient through `Elements`, or piece by piece through `ForEachRowPiece`;
// it is never built.
template <typename T>
struct GradList {
  tensorflow::OpInputList tensors;
  std::vector<const T*> data;
  std::vector<int64_t> sizes;  // elements of the dense gradient
  std::vector<int64_t> units;
  std::vector<tensorflow::TensorShape> shapes;  // of the dense gradient
  std::vector<int64_t> row_elems;
  std::vector<std::vector<int64_t>> present_rows;
  std::vector<std::vector<int64_t>> value_row;
  std::vector<char> sparse;  // 1 for a sparse gradient
  bool any_sparse = false;

  absl::Status Read(tensorflow::OpKernelContext* ctx, const char* name) {
    TF_RETURN_IF_ERROR(ctx->input_list(name, &tensors));
    data.reserve(tensors.size());
    sizes.reserve(tensors.size());
    for (int i = 0; i < tensors.size(); ++i) {
      const tensorflow::Tensor& t = tensors[i];
      sizes.push_back(t.NumElements());
      units.push_back(t.dims() >= 2 ? t.dim_size(t.dims() - 1) : 1);
      shapes.push_back(t.shape());
      data.push_back(t.NumElements() > 0 ? t.unaligned_flat<T>().data()
                                         : nullptr);
    }
    row_elems.assign(tensors.size(), 0);
    present_rows.assign(tensors.size(), {});
    value_row.assign(tensors.size(), {});
    sparse.assign(tensors.size(), 0);
    return absl::OkStatus();
  }

  // Makes gradients `which[k]` sparse: list input `indices_name` holds, for
  // each, the int64 rows of the dense gradient that its rows are (one per
  // row, each at most once, in any order), and the int64 vector input
  // `dense_rows_name` the dense gradient's first dimension; its other
  // dimensions are the gradient's.
  absl::Status AddRows(tensorflow::OpKernelContext* ctx,
                       const char* indices_name, const char* dense_rows_name,
                       const std::vector<int>& which) {
    tensorflow::OpInputList indices;
    TF_RETURN_IF_ERROR(ctx->input_list(indices_name, &indices));
    const tensorflow::Tensor* dense_rows;
    TF_RETURN_IF_ERROR(ctx->input(dense_rows_name, &dense_rows));
    const int m = static_cast<int>(which.size());
    if (indices.size() != m || dense_rows->dims() != 1 ||
        dense_rows->dim_size(0) != m) {
      return absl::InvalidArgumentError(
          std::string("normopt: '") + indices_name + "' and '" +
          dense_rows_name + "' must hold one entry per index in 'sparse' (" +
          std::to_string(m) + "), got " + std::to_string(indices.size()) +
          " tensors and shape " + dense_rows->shape().DebugString());
    }
    for (int k = 0; k < m; ++k) {
      const int i = which[k];
      const std::string what =
          std::string("normopt: ") + indices_name + "[" + std::to_string(k) +
          "]";
      if (i < 0 || i >= size() || sparse[i]) {
        return absl::InvalidArgumentError(
            "normopt: 'sparse' holds " + std::to_string(i) + ", not the "
            "index of one of the " + std::to_string(size()) +
            " gradients (each at most once)");
      }
      const tensorflow::Tensor& listed = indices[k];
      const tensorflow::Tensor& values = tensors[i];
      const int64_t count = dense_rows->flat<int64_t>()(k);
      if (values.dims() < 1 || listed.dims() != 1 ||
          listed.dim_size(0) != values.dim_size(0) || count < 0) {
        return absl::InvalidArgumentError(
            what + " must be a vector of one index per row of gradient " +
            std::to_string(i) + " and " + dense_rows_name + "[" +
            std::to_string(k) + "] >= 0, got shapes " +
            listed.shape().DebugString() + " and " +
            values.shape().DebugString() + " and " + std::to_string(count) +
            " rows");
      }
      TF_RETURN_IF_ERROR(SortRows(what, listed.flat<int64_t>().data(),
                                  listed.dim_size(0), count,
                                  &present_rows[i], &value_row[i]));
      tensorflow::TensorShape dense = values.shape();
      dense.set_dim(0, count);
      row_elems[i] = 1;
      for (int d = 1; d < dense.dims(); ++d) row_elems[i] *= dense.dim_size(d);
      shapes[i] = dense;
      sizes[i] = dense.num_elements();
      sparse[i] = 1;
      any_sparse = true;
    }
    return absl::OkStatus();
  }

  // fn(offset, values, piece) for each piece of [begin, begin + len) of
  // sparse gradient i, in order: elements begin + offset ... of the dense
  // gradient are values[0, piece), one present row's (or its part in the
  // range), or zeros where values is null (a run of absent rows). The range's
  // first row is found by binary search and absent rows come as one piece
  // per run, so the calls grow with the present rows, not the range's rows.
  template <typename Fn>
  void ForEachRowPiece(int64_t i, int64_t begin, int64_t len, Fn&& fn) const {
    const int64_t width = row_elems[i];
    const int64_t end = begin + len;
    const std::vector<int64_t>& listed = present_rows[i];
    // Row begin / width holds element begin: the first row in the range.
    auto at = std::lower_bound(listed.begin(), listed.end(), begin / width);
    for (int64_t e = begin; e < end;) {
      const int64_t next = at == listed.end() ? end : *at * width;
      if (e < next) {  // absent rows up to the next present one
        const int64_t piece = std::min(end, next) - e;
        fn(e - begin, nullptr, piece);
        e += piece;
        continue;
      }
      const int64_t piece = std::min(end, next + width) - e;
      fn(e - begin,
         data[i] + value_row[i][at - listed.begin()] * width + (e - next),
         piece);
      e += piece;
      ++at;
    }
  }

  // Elements [begin, begin + len) of dense gradient i, len <= kChunkElems:
  // in place, or (sparse) gathered into this thread's ChunkScratch.
  const T* Elements(int64_t i, int64_t begin, int64_t len) const {
    if (!sparse[i]) return data[i] + begin;
    T* out = ChunkScratch<T, 0>();
    ForEachRowPiece(i, begin, len, [out](int64_t at, const T* x, int64_t n) {
      if (x == nullptr) {
        std::fill(out + at, out + at + n, static_cast<T>(0.0f));
      } else {
        std::copy(x, x + n, out + at);
      }
    });
    return out;
  }

  // The elements of [begin, begin + len) of sparse gradient i that lie in
  // its present rows, in order, gathered into this thread's ChunkScratch;
  // *count of them. The other len - *count elements are zeros.
  const T* PresentElements(int64_t i, int64_t begin, int64_t len,
                           int64_t* count) const {
    T* out = ChunkScratch<T, 1>();
    int64_t n = 0;
    ForEachRowPiece(i, begin, len, [out, &n](int64_t, const T* x, int64_t k) {
      if (x == nullptr) return;
      std::copy(x, x + k, out + n);
      n += k;
    });
    *count = n;
    return out;
  }

  int size() const { return tensors.size(); }
};

}  // namespace normopt

#endif  // NORMOPT_OPS_GRAD_LIST_H_
