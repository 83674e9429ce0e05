// The one GEMM shape the alternating kernels need, behind a header with no cuBLAS types, so the
// .cu files compile with nvcc alone (CI); gemm.cpp makes the cuBLAS call.
//
// Column-major, strided-batched over the heads: C_i = op(A_i) op(B_i) + beta C_i, i < batch.
// A and B are in `dtype`, C in float32 (c_fp32) or `dtype`; products accumulate in float32 (for
// float32 without TF32), or in float64 for kFloat64.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "alternating.h"

namespace flashrnn {
namespace alternating {

struct Gemm {
  bool trans_a, trans_b;
  int m, n, k;
  const void* A;
  int lda;
  long long stride_a;
  const void* B;
  int ldb;
  long long stride_b;
  float beta;
  void* C;
  bool c_fp32;
  int ldc;
  long long stride_c;
  int batch;
  DType dtype;
};

// "" on success, else the cuBLAS error and the GEMM's sizes.
std::string run_gemm(const Gemm& gemm, cudaStream_t stream);

}  // namespace alternating
}  // namespace flashrnn
