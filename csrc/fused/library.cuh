// The host side shared by the per-configuration libraries of the fused families (fused_block.cu,
// fused_cluster.cu, fused_grid.cu: one translation unit each, built with -D defines and called
// through ctypes): the input dtype from FRNN_DTYPE, and the thread's last error message that
// frnn_error() returns. Include after the file's FRNN_DTYPE default.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>

namespace {
#if FRNN_DTYPE == 1
using TIn = __nv_bfloat16;
#elif FRNN_DTYPE == 2
using TIn = __half;
#else
#error "the fused families take bfloat16 (FRNN_DTYPE=1) and float16 (2); float32 runs elsewhere"
#endif

thread_local char g_error[512];

// the message "what: CUDA's error string" into g_error; 1 (the C API's failure code). The error is
// reported here and cleared from CUDA's last error: a refused attribute or launch left there would
// fail the caller's next, unrelated launch check (torch's, e.g. of the alternating fallback)
int fail(const char* what, cudaError_t e) {
  snprintf(g_error, sizeof(g_error), "%s: %s", what, cudaGetErrorString(e));
  cudaGetLastError();
  return 1;
}

// a message of the library's own into g_error; 1
int fail_msg(const char* msg) {
  snprintf(g_error, sizeof(g_error), "%s", msg);
  return 1;
}
}  // namespace
