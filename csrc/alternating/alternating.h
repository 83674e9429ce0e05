// The alternating kernels' C++ entry API: plain C++ and CUDA runtime/cuBLAS types, no torch.
//
// One recurrence, one direction, one layer, any size (layouts as flashrnn_compile/reference.py):
//   gx        [T, B, NH, G, DH]   dtype        R   [NH, G, DH, DH] dtype (R[n, g, out, in])
//   b         [NH, G, DH]         dtype        s0  [S, B, NH, DH]  dtype
//   h         [T, B, NH, DH]      dtype        sT  [S, B, NH, DH]  dtype
//   states_in [T, S, B, NH, DH]   float32      rhb [T, B, NH, G, DH] float32 (only with save)
// Per step (processing order; t runs T-1..0 with reverse): one strided-batched cuBLAS GEMM over
// the heads (R h, fp32 accumulation) and one pointwise kernel (the cell functor of
// csrc/common/cells.cuh). Backward: per step the pointwise backward and the GEMM for dh; dR (one
// strided-batched GEMM over all T*B rows) and db (accumulated in fp32) after the loop.
// Every buffer is contiguous; the caller allocates outputs and workspaces (sizes below).
#pragma once

#include <cuda_runtime_api.h>

#include <string>

namespace flashrnn {
namespace alternating {

enum class DType { kFloat32, kBFloat16, kFloat16 };

struct Shape {
  int T, B, NH, DH;
};

struct ForwardArgs {
  Shape shape;
  DType dtype;
  bool reverse;
  const void* gx;    // [T, B, NH, G, DH] dtype
  const void* R;     // [NH, G, DH, DH]   dtype
  const void* b;     // [NH, G, DH]       dtype
  const void* s0;    // [S, B, NH, DH]    dtype
  void* h;           // [T, B, NH, DH]    dtype (out)
  void* sT;          // [S, B, NH, DH]    dtype (out)
  float* states_in;  // [T, S, B, NH, DH] (out) or nullptr: save=false
  float* rhb;        // [T, B, NH, G, DH] (out) or nullptr: save=false
  float* state_ws;   // [S, B, NH, DH] workspace
  float* rh_ws;      // [B, NH, G, DH] workspace (used when rhb is nullptr)
};

struct BackwardArgs {
  Shape shape;
  DType dtype;
  bool reverse;
  const void* dh;          // [T, B, NH, DH]    dtype
  const void* dsT;         // [S, B, NH, DH]    dtype
  const void* gx;          // [T, B, NH, G, DH] dtype
  const void* R;           // [NH, G, DH, DH]   dtype
  const float* states_in;  // [T, S, B, NH, DH]
  const float* rhb;        // [T, B, NH, G, DH]
  void* dgx;               // [T, B, NH, G, DH] dtype (out)
  void* dR;                // [NH, G, DH, DH]   dtype (out)
  void* db;                // [NH, G, DH]       dtype (out)
  void* ds0;               // [S, B, NH, DH]    dtype (out)
  float* ds_ws;            // [S, B, NH, DH] workspace
  float* db_ws;            // [NH, G, DH] workspace
  void* drhb_ws;           // [T, B, NH, G, DH] dtype workspace
  void* hin_ws;            // [T, B, NH, DH]    dtype workspace
};

// Gates and states of the cell whose functor is named `functor` ("LstmCell", ...); -1 if unknown.
int num_gates(const std::string& functor);
int num_states(const std::string& functor);

// Both return "" on success, else what went wrong. Work is queued on `stream` (cuBLAS runs on
// a handle of this library's own, one per thread and device, bound to that stream).
std::string forward(const std::string& functor, const ForwardArgs& args, cudaStream_t stream);
std::string backward(const std::string& functor, const BackwardArgs& args, cudaStream_t stream);

}  // namespace alternating
}  // namespace flashrnn
