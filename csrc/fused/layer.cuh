// A projected layer's backward in one call (fused_block.cu's frnn_layer_backward), for
// gx = x W^T + b_in [T, B, N] (N = NH * G * DH, x [T, B, I], W [N, I]) and the recurrence over gx:
// the recurrence's backward runs in K time chunks on the caller's stream, an event after each, and
// the input GEMMs of a chunk run on a side stream once its event fires,
//   dx[c] = dgx[c] W  and  dW += dgx[c]^T x[c]  (float32, the first chunk with beta 0),
// so chunk c's GEMMs run while chunk c-1 recurs; the caller's stream waits for the side at the end.
// Chunks are contiguous time ranges (chunk_range), taken from the end of the recurrence's order; between chunks
// the state gradients pass in float, as inside one launch, so dgx and ds0 are those of the
// one-launch backward.
//
// With an FRNN_DR_OUT library (the kernel leaves dR and db out), the side stream also makes
//   dR += dgx[c]^T h_in[c] per head  and  db += dgx[c]^T 1,
// h_in being the forward's h one step back (s0's h at the first step): the values the kernel's MMA
// would have used, as dR's in-kernel accumulation rounds them.
//
// cuBLAS is not linked (CI compiles without its headers): the caller hands over the five entry
// points of the libcublas its process already loaded (frnn_layer_set_blas) and the library keeps
// one handle per device, in math mode "no reduced-precision reductions". Not thread-safe: one
// host thread per device at a time.
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>

namespace {
namespace layer {

constexpr int MAX_CHUNKS = 16, MAX_DEVICES = 64;
constexpr int OP_N = 0, OP_T = 1, COMPUTE_32F = 68, GEMM_DEFAULT = -1, MATH_NO_REDUCED_REDUCTION = 16;

using CreateFn = int (*)(void**);
using SetStreamFn = int (*)(void*, cudaStream_t);
using SetMathFn = int (*)(void*, int);
using GemmExFn = int (*)(void*, int, int, int, int, int, const void*, const void*, cudaDataType, int, const void*,
                         cudaDataType, int, const void*, void*, cudaDataType, int, int, int);

using GemmBatchedFn = int (*)(void*, int, int, int, int, int, const void*, const void*, cudaDataType, int, long long,
                              const void*, cudaDataType, int, long long, const void*, void*, cudaDataType, int, long long,
                              int, int, int);

struct Blas {
  CreateFn create = nullptr;
  SetStreamFn set_stream = nullptr;
  SetMathFn set_math = nullptr;
  GemmExFn gemm = nullptr;
  GemmBatchedFn gemm_batched = nullptr;  // cublasGemmStridedBatchedEx
};
Blas g_blas;

// one device's streams, events and cuBLAS handles
struct DeviceCtx {
  bool ready = false;
  cudaStream_t side = nullptr;                // the backward's input GEMMs, the forward's chunk GEMMs
  cudaEvent_t ev[MAX_CHUNKS + 1] = {};        // the backward's: one per chunk, the join
  void* handle = nullptr;                     // bound to the stream of each use
  // the chunked forward's (frnn_layer_forward with K > 1): a stream of the greatest priority for its
  // kernels and first GEMM, that GEMM's handle (bound to it once), the events: start, one per
  // chunk's GEMM, the join
  cudaStream_t prio = nullptr;
  void* handle_prio = nullptr;
  cudaEvent_t fev[MAX_CHUNKS + 2] = {};
  size_t smem_optin = 0;  // the most shared memory a block may take (cudaDevAttrMaxSharedMemoryPerBlockOptin)
};
DeviceCtx g_dev[MAX_DEVICES];

constexpr cudaDataType kDtype = FRNN_DTYPE == 1 ? CUDA_R_16BF : CUDA_R_16F;  // TIn's

// a cuBLAS handle in math mode "no reduced-precision reductions"; nullptr with g_error set
void* new_handle() {
  void* h = nullptr;
  if (g_blas.create(&h) != 0) return fail_msg("layer: cublasCreate failed"), nullptr;
  if (g_blas.set_math(h, MATH_NO_REDUCED_REDUCTION) != 0) return fail_msg("layer: cublasSetMathMode failed"), nullptr;
  return h;
}

// the current device's context, created on first use; nullptr with g_error set
DeviceCtx* device_ctx() {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return fail("layer: cudaGetDevice", e), nullptr;
  if (dev < 0 || dev >= MAX_DEVICES) return fail_msg("layer: device index out of range"), nullptr;
  DeviceCtx& c = g_dev[dev];
  if (c.ready) return &c;
  if (g_blas.gemm == nullptr || g_blas.gemm_batched == nullptr)
    return fail_msg("layer: frnn_layer_set_blas was not called"), nullptr;
  int least = 0, greatest = 0, optin = 0;
  e = cudaStreamCreateWithFlags(&c.side, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaDeviceGetStreamPriorityRange(&least, &greatest);
  if (e == cudaSuccess) e = cudaStreamCreateWithPriority(&c.prio, cudaStreamNonBlocking, greatest);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return fail("layer: streams", e), nullptr;
  c.smem_optin = (size_t)optin;
  for (auto& ev : c.ev)
    if ((e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming)) != cudaSuccess) return fail("layer: event", e), nullptr;
  for (auto& ev : c.fev)
    if ((e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming)) != cudaSuccess) return fail("layer: event", e), nullptr;
  if ((c.handle = new_handle()) == nullptr || (c.handle_prio = new_handle()) == nullptr) return nullptr;
  if (g_blas.set_stream(c.handle_prio, c.prio) != 0) return fail_msg("layer: cublasSetStream failed"), nullptr;
  c.ready = true;
  return &c;
}

// the shared handle bound to stream s; nullptr with g_error set
void* handle_for(DeviceCtx* c, cudaStream_t s) {
  if (g_blas.set_stream(c->handle, s) != 0) return fail_msg("layer: cublasSetStream failed"), nullptr;
  return c->handle;
}

// C (column-major m x n, ldc) = alpha op(A) op(B) + beta C with A, B in TIn, C in c_type; float accumulation
int gemm(void* handle, int ta, int tb, int m, int n, int k, const void* A, int lda, const void* B, int ldb, float beta,
         void* C, cudaDataType c_type, int ldc) {
  const float one = 1.0f;
  const int st = g_blas.gemm(handle, ta, tb, m, n, k, &one, A, kDtype, lda, B, kDtype, ldb, &beta, C, c_type, ldc,
                             COMPUTE_32F, GEMM_DEFAULT);
  if (st != 0) {
    snprintf(g_error, sizeof(g_error), "layer: cublasGemmEx failed with status %d (m %d n %d k %d)", st, m, n, k);
    return 1;
  }
  return 0;
}

// FRNN_DR_OUT libraries: dR [NH][G * DH][DH] (+)= sum over M rows of dgx [M][NH][G * DH] (x) h_in
// [M][NH][DH], one GEMM per head (strided batched), float accumulation and output
int dr_gemm(void* handle, int NH, int GDH, int DH_, long long M, const void* h_in, const void* dgx, float beta,
            float* dR) {
  const float one = 1.0f;
  const int st = g_blas.gemm_batched(handle, OP_N, OP_T, DH_, GDH, (int)M, &one, h_in, kDtype, NH * DH_, DH_, dgx,
                                     kDtype, NH * GDH, GDH, &beta, dR, CUDA_R_32F, DH_, (long long)GDH * DH_, NH,
                                     COMPUTE_32F, GEMM_DEFAULT);
  if (st != 0) {
    snprintf(g_error, sizeof(g_error), "layer: cublasGemmStridedBatchedEx failed with status %d (M %lld)", st, M);
    return 1;
  }
  return 0;
}

// chunk c's time range [t0, t1), c counted in the recurrence's order (reverse: from the end of
// time). Chunk 0 is half as long as the others: the backward takes it last, and its GEMMs are the
// part of the input GEMMs that no recurrence hides. Every chunk is nonempty when T >= 2K - 1.
inline void chunk_range(int T, int K, int c, bool reverse, int& t0, int& t1) {
  const long long W = 2LL * K - 1, lo = c == 0 ? 0 : 2LL * c - 1, hi = 2LL * c + 1;  // in units of T / W
  const int a = (int)(T * lo / W), b = (int)(T * hi / W);                            // steps, in order
  t0 = reverse ? T - b : a;
  t1 = reverse ? T - a : b;
}

}  // namespace layer
}  // namespace
