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

std::string handle_for(cudaStream_t stream, cublasHandle_t* out) {
  thread_local std::unordered_map<int, cublasHandle_t> handles;  // device -> handle
  int device = 0;
  cudaError_t cerr = cudaGetDevice(&device);
  if (cerr != cudaSuccess) return std::string("cudaGetDevice: ") + cudaGetErrorString(cerr);
  auto it = handles.find(device);
  if (it == handles.end()) {
    cublasHandle_t handle = nullptr;
    cublasStatus_t st = cublasCreate(&handle);
    if (st != CUBLAS_STATUS_SUCCESS) return std::string("cublasCreate: ") + cublasGetStatusString(st);
    // a workspace of our own, so cuBLAS never allocates while a CUDA graph is being captured
    constexpr size_t kWorkspace = size_t(32) << 20;
    void* workspace = nullptr;
    cudaError_t werr = cudaMalloc(&workspace, kWorkspace);
    if (werr != cudaSuccess) return std::string("cudaMalloc (cuBLAS workspace): ") + cudaGetErrorString(werr);
    st = cublasSetWorkspace(handle, workspace, kWorkspace);
    if (st != CUBLAS_STATUS_SUCCESS) return std::string("cublasSetWorkspace: ") + cublasGetStatusString(st);
    it = handles.emplace(device, handle).first;
  }
  cublasStatus_t st = cublasSetStream(it->second, stream);
  if (st != CUBLAS_STATUS_SUCCESS) return std::string("cublasSetStream: ") + cublasGetStatusString(st);
  *out = it->second;
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
