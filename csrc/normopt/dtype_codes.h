// The element dtype codes of the CUDA launchers (csrc/cuda/launchers.h), the
// extern "C" entry points, CuPy and the host emulation, defined once.
//
// NORMOPT_DTYPE_CODES is the table: X(enumerator, code, name), name as NumPy
// and TensorFlow spell the dtype. The codes cross the C ABI, so a row keeps
// its code. normopt/kernels/_finalize.py (DTYPE_CODES) holds the same table
// for Python; tests/test_header_tables.py checks the two against each other.
//
// Which C++ type a code stands for depends on the compiler (Eigen::half on the
// TensorFlow side, __half in CUDA code), so each side maps its own types to
// these enumerators (LauncherDtype in csrc/ops/launch_tables_gpu.h, dispatch
// in csrc/cuda/entry_table.cuh).
//
// Plain C++ with no include: usable from TensorFlow code, nvcc, NVRTC and the
// host emulation alike.
#ifndef NORMOPT_DTYPE_CODES_H_
#define NORMOPT_DTYPE_CODES_H_

#define NORMOPT_DTYPE_CODES(X)   \
  X(kDtypeFloat16, 0, "float16")   \
  X(kDtypeBFloat16, 1, "bfloat16") \
  X(kDtypeFloat32, 2, "float32")   \
  X(kDtypeFloat64, 3, "float64")

namespace normopt {

enum DtypeCode : int {
#define NORMOPT_DTYPE_ENUMERATOR(e, code, name) e = code,
  NORMOPT_DTYPE_CODES(NORMOPT_DTYPE_ENUMERATOR)
#undef NORMOPT_DTYPE_ENUMERATOR
};

namespace dtype_table_detail {
// The rows numbered by position, to check that the codes are 0, 1, ...
enum RowIndex : int {
#define NORMOPT_DTYPE_ROW(e, code, name) kRow##e,
  NORMOPT_DTYPE_CODES(NORMOPT_DTYPE_ROW)
#undef NORMOPT_DTYPE_ROW
  kRowCount
};
#define NORMOPT_DTYPE_CODE_CHECK(e, code, name)                       \
  static_assert(static_cast<int>(e) == kRow##e,                       \
                "NORMOPT_DTYPE_CODES: the codes must be 0, 1, ... in " \
                "row order (" name ")");
NORMOPT_DTYPE_CODES(NORMOPT_DTYPE_CODE_CHECK)
#undef NORMOPT_DTYPE_CODE_CHECK
}  // namespace dtype_table_detail

constexpr int kNumDtypeCodes = dtype_table_detail::kRowCount;

}  // namespace normopt

#endif  // NORMOPT_DTYPE_CODES_H_
