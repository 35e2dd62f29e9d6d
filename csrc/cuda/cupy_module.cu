// The translation unit CuPy compiles (normopt/kernels/cupy_kernels.py): the
// multi-tensor kernels only, no host code. CuPy instantiates the templates
// it needs through name expressions such as
// "normopt::cuda::chunk_stats_kernel<float>".
#include "cuda/norm_kernels.cuh"
#include "cuda/update_kernels.cuh"
