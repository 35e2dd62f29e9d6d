// The translation unit CuPy compiles (normopt/kernels/cupy_kernels.py): the
// extern "C" entry points only, no host code, so NVRTC and nvcc both build
// it and CuPy looks kernels up by their plain names (normopt_adam_f32, ...).
#include "cuda/entry_points.cuh"
