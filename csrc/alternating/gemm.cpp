// cuBLAS for the alternating kernels: one handle per (thread, device), bound to the caller's stream.
#include "gemm.h"

#include <cublas_v2.h>

#include <unordered_map>

namespace flashrnn {
namespace alternating {

namespace {

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return CUDA_R_32F;
    case DType::kBFloat16: return CUDA_R_16BF;
    case DType::kFloat16: return CUDA_R_16F;
    case DType::kFloat64: return CUDA_R_64F;
  }
  return CUDA_R_32F;
}

struct Handle {
  cublasHandle_t handle = nullptr;
  void* workspace = nullptr;
};

constexpr size_t kWorkspace = size_t(32) << 20;

std::string handle_for(cudaStream_t stream, cublasHandle_t* out) {
  thread_local std::unordered_map<int, Handle> handles;  // device -> handle
  int device = 0;
  cudaError_t cerr = cudaGetDevice(&device);
  if (cerr != cudaSuccess) return std::string("cudaGetDevice: ") + cudaGetErrorString(cerr);
  Handle& h = handles[device];
  if (h.handle == nullptr) {
    cublasStatus_t st = cublasCreate(&h.handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
      h.handle = nullptr;
      return std::string("cublasCreate: ") + cublasGetStatusString(st);
    }
    // a workspace of our own, so cuBLAS never allocates (as while a CUDA graph is captured)
    cerr = cudaMalloc(&h.workspace, kWorkspace);
    if (cerr != cudaSuccess) return std::string("cudaMalloc (cuBLAS workspace): ") + cudaGetErrorString(cerr);
  }
  cublasStatus_t st = cublasSetStream(h.handle, stream);
  if (st != CUBLAS_STATUS_SUCCESS) return std::string("cublasSetStream: ") + cublasGetStatusString(st);
  // cublasSetStream resets the workspace to cuBLAS's default pool: set ours again
  st = cublasSetWorkspace(h.handle, h.workspace, kWorkspace);
  if (st != CUBLAS_STATUS_SUCCESS) return std::string("cublasSetWorkspace: ") + cublasGetStatusString(st);
  *out = h.handle;
  return "";
}

}  // namespace

int gemm_splits(DType dtype) { return dtype == DType::kFloat32 || dtype == DType::kFloat64 ? 1 : 2; }

DType dR_dtype(DType dtype) { return dtype == DType::kFloat32 ? DType::kFloat64 : dtype; }

std::string run_gemm(const Gemm& g, cudaStream_t stream) {
  cublasHandle_t handle = nullptr;
  std::string err = handle_for(stream, &handle);
  if (!err.empty()) return err;
  const cudaDataType_t ab = cuda_type(g.dtype);
  const cudaDataType_t c = g.c_fp32 ? CUDA_R_32F : ab;
  // float32: exact fp32 products (no TF32), as the numerics contract compares against fp32 PyTorch
  const bool f64 = g.dtype == DType::kFloat64;
  const cublasComputeType_t compute = f64 ? CUBLAS_COMPUTE_64F
                                      : g.dtype == DType::kFloat32 ? CUBLAS_COMPUTE_32F_PEDANTIC
                                                                   : CUBLAS_COMPUTE_32F;
  const float alpha = 1.0f, beta = g.beta;
  const double alpha64 = 1.0, beta64 = g.beta;
  cublasStatus_t st = cublasGemmStridedBatchedEx(
      handle, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, g.m, g.n,
      g.k, f64 ? static_cast<const void*>(&alpha64) : &alpha, g.A, ab, g.lda, g.stride_a, g.B, ab,
      g.ldb, g.stride_b, f64 ? static_cast<const void*>(&beta64) : &beta, g.C, c, g.ldc, g.stride_c,
      g.batch, compute, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS) {
    return std::string("cublasGemmStridedBatchedEx: ") + cublasGetStatusString(st) +
           " (m=" + std::to_string(g.m) + ", n=" + std::to_string(g.n) + ", k=" + std::to_string(g.k) +
           ", batch=" + std::to_string(g.batch) + ")";
  }
  return "";
}

}  // namespace alternating
}  // namespace flashrnn
