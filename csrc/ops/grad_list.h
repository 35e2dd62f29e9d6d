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

// The N gradients of list input `name`: pointers, element counts, and the
// fixed chunk plan over them. units[i] is the size of the last axis of a
// gradient of two or more axes (its units, granularity "unit"), else 1.
//
// A sparse gradient (the apply op's `rows` input, `AddRows`) is the rows of
// a dense tensor that are not all zero: tensor i holds rows of row_elems[i]
// elements, and row_of[i][r] names the row of tensor i that is row r of the
// dense gradient of shapes[i], or is -1 where that row is zero;
// present_rows[i] lists the rows r that are not, in increasing order. Every
// reader sees the dense gradient through `Elements`, or its present rows
// alone through `ForEachPresentPiece`; it is never built.
template <typename T>
struct GradList {
  tensorflow::OpInputList tensors;
  std::vector<const T*> data;
  std::vector<int64_t> sizes;  // elements of the dense gradient
  std::vector<int64_t> units;
  std::vector<tensorflow::TensorShape> shapes;  // of the dense gradient
  std::vector<const int32_t*> row_of;  // null for a dense gradient
  std::vector<int64_t> row_elems;
  std::vector<std::vector<int64_t>> present_rows;
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
    row_of.assign(tensors.size(), nullptr);
    row_elems.assign(tensors.size(), 0);
    present_rows.assign(tensors.size(), {});
    sparse.assign(tensors.size(), 0);
    return absl::OkStatus();
  }

  // Makes gradients `which[k]` sparse with the row maps of list input
  // `name` (int32 vectors, one per sparse gradient, each entry -1 or a row
  // of that gradient). Each dense gradient has the map's length as its
  // first dimension and the gradient's other dimensions.
  absl::Status AddRows(tensorflow::OpKernelContext* ctx, const char* name,
                       const std::vector<int>& which) {
    tensorflow::OpInputList maps;
    TF_RETURN_IF_ERROR(ctx->input_list(name, &maps));
    if (maps.size() != static_cast<int>(which.size())) {
      return absl::InvalidArgumentError(
          std::string("normopt: '") + name + "' must hold one row map per " +
          "index in 'sparse' (" + std::to_string(which.size()) + "), got " +
          std::to_string(maps.size()));
    }
    for (int k = 0; k < maps.size(); ++k) {
      const int i = which[k];
      const std::string what =
          std::string("normopt: ") + name + "[" + std::to_string(k) + "]";
      if (i < 0 || i >= size() || sparse[i]) {
        return absl::InvalidArgumentError(
            "normopt: 'sparse' holds " + std::to_string(i) + ", not the "
            "index of one of the " + std::to_string(size()) +
            " gradients (each at most once)");
      }
      const tensorflow::Tensor& map = maps[k];
      const tensorflow::Tensor& values = tensors[i];
      if (map.dims() != 1 || values.dims() < 1) {
        return absl::InvalidArgumentError(
            what + " must be a vector and gradient " + std::to_string(i) +
            " have at least one axis, got shapes " +
            map.shape().DebugString() + " and " +
            values.shape().DebugString());
      }
      const int64_t count = map.dim_size(0);
      tensorflow::TensorShape dense = values.shape();
      dense.set_dim(0, count);
      const int64_t present = values.dim_size(0);
      const int32_t* rows = map.flat<int32_t>().data();
      std::vector<int64_t>& listed = present_rows[i];
      listed.reserve(present);
      for (int64_t r = 0; r < count; ++r) {
        if (rows[r] < -1 || rows[r] >= present) {
          return absl::InvalidArgumentError(
              what + "[" + std::to_string(r) + "] is " +
              std::to_string(rows[r]) + ": a row map entry is -1 or a row " +
              "of the gradient's " + std::to_string(present) + " rows");
        }
        if (rows[r] >= 0) listed.push_back(r);
      }
      shapes[i] = dense;
      sizes[i] = dense.num_elements();
      row_elems[i] = present > 0 ? values.NumElements() / present
                                 : dense.num_elements() /
                                       std::max<int64_t>(count, 1);
      row_of[i] = count > 0 ? rows : nullptr;
      sparse[i] = 1;
      any_sparse = true;
    }
    return absl::OkStatus();
  }

  // fn(offset, values, piece) for each piece of [begin, begin + len) of
  // sparse gradient i that lies in one row, in order: elements begin +
  // offset ... of the dense gradient are values[0, piece), or zeros where
  // values is null (an absent row).
  template <typename Fn>
  void ForEachRowPiece(int64_t i, int64_t begin, int64_t len, Fn&& fn) const {
    const int64_t width = row_elems[i];
    const int64_t end = begin + len;
    int64_t r = begin / width;  // one division per chunk, not per row
    for (int64_t e = begin, row_begin = r * width; e < end;
         ++r, row_begin += width) {
      const int64_t piece = std::min(end, row_begin + width) - e;
      const int32_t src = row_of[i][r];
      fn(e - begin, src < 0 ? nullptr : data[i] + src * width + (e - row_begin),
         piece);
      e += piece;
    }
  }

  // ForEachRowPiece's calls with values, alone: the present rows of the
  // range found by binary search, so the work grows with them, not with the
  // range's rows.
  template <typename Fn>
  void ForEachPresentPiece(int64_t i, int64_t begin, int64_t len,
                           Fn&& fn) const {
    const int64_t width = row_elems[i];
    const int64_t end = begin + len;
    const std::vector<int64_t>& listed = present_rows[i];
    // Row begin / width holds element begin: the first row in the range.
    auto at = std::lower_bound(listed.begin(), listed.end(), begin / width);
    for (; at != listed.end() && *at * width < end; ++at) {
      const int64_t row_begin = *at * width;
      const int64_t from = std::max(begin, row_begin);
      const int64_t piece = std::min(end, row_begin + width) - from;
      fn(from - begin, data[i] + row_of[i][*at] * width + (from - row_begin),
         piece);
    }
  }

  // Elements [begin, begin + len) of dense gradient i, len <= kChunkElems:
  // in place, or (sparse) gathered into this thread's ChunkScratch.
  const T* Elements(int64_t i, int64_t begin, int64_t len) const {
    if (row_of[i] == nullptr) return data[i] + begin;
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
    ForEachPresentPiece(i, begin, len,
                        [out, &n](int64_t, const T* x, int64_t k) {
                          std::copy(x, x + k, out + n);
                          n += k;
                        });
    *count = n;
    return out;
  }

  int size() const { return tensors.size(); }
};

// The op's Tacc attr must be the accumulation type of T.
template <typename T>
absl::Status CheckAccAttr(tensorflow::OpKernelConstruction* ctx) {
  tensorflow::DataType acc;
  TF_RETURN_IF_ERROR(ctx->GetAttr("Tacc", &acc));
  if (acc != AccDataType<T>()) {
    return absl::InvalidArgumentError(
        "normopt: Tacc must be " +
        tensorflow::DataTypeString(AccDataType<T>()) + " for gradients of " +
        tensorflow::DataTypeString(tensorflow::DataTypeToEnum<T>::v()) +
        ", got " + tensorflow::DataTypeString(acc));
  }
  return absl::OkStatus();
}

}  // namespace normopt

#endif  // NORMOPT_OPS_GRAD_LIST_H_
