// The alternating kernels' C++ entry API: plain C++ and CUDA runtime/cuBLAS types, no torch.
//
// One recurrence, one direction, one layer, any size (layouts as flashrnn_compile/reference.py):
//   gx        [T, B, NH, G, DH]   dtype        R   [NH, G, DH, DH] dtype (R[n, g, out, in])
//   b         [NH, G, DH]         dtype        s0  [S, B, NH, DH]  dtype
//   h         [T, B, NH, DH]      dtype        sT  [S, B, NH, DH]  dtype
//   states_in [T, S, B, NH, DH]   float32      rhb [T, B, NH, G, DH] float32 (only with save)
// Two paths, chosen per call by `step_kernel` (the plan's STEP_KERNEL):
// - cuBLAS path: per step (processing order; t runs T-1..0 with reverse) one strided-batched
//   cuBLAS GEMM over the heads (R h, fp32 accumulation) and one pointwise kernel (the cell functor
//   of csrc/common/cells.cuh). Backward: per step the pointwise backward and the GEMM for dh.
// - step-kernel path: ONE launch per step that computes R h (backward: R^T d(rhb)) for the hidden
//   units each block owns with FMAs (fp32 sums; fp64 for float32 inputs), then applies the
//   functor to them (step.cuh).
// Both: dR (one strided-batched GEMM over all T*B rows) and db (accumulated in float64) after the
// loop.
// Every buffer is contiguous; the caller allocates outputs and workspaces (sizes below).
#pragma once

#include <cuda_runtime_api.h>

#include <string>

namespace flashrnn {
namespace alternating {

// Input dtypes; kFloat64 only names the dR GEMM's operands for float32 inputs (see below).
enum class DType { kFloat32, kBFloat16, kFloat16, kFloat64 };

// Accuracy (fp32 arithmetic everywhere, half-precision tensor-core GEMMs):
// - half inputs: GEMM operands that are fp32 values (h for R h, d(rhb) for R^T d(rhb)) are split
//   into hi + lo halves, so each per-step product is exact to ~2^-22 instead of one rounding;
//   `gemm_splits(dtype)` is 2 for half types, 1 for float32.
// - dR: one GEMM over all T*B rows after the loop, operands in `dR_dtype(dtype)` (the input dtype
//   for half types; float64 for float32 inputs, so the long sum loses nothing); db in float64.
int gemm_splits(DType dtype);
DType dR_dtype(DType dtype);

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
  void* hsplit_ws;   // [KS*B, NH, DH] dtype workspace, KS = gemm_splits(dtype)
  float* rh_ws;      // [KS*B, NH, G, DH] workspace (cuBLAS path only)
  bool step_kernel;  // true: the step-kernel path (one launch per step, step_forward.cu)
  float* h2_ws;      // [B, NH, DH] workspace (step-kernel path only: h double buffer)
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
  double* db_ws;           // [B, NH, G, DH] workspace
  void* dsplit_ws;         // [B, NH, KS, G, DH] dtype workspace
  void* R2_ws;             // [NH, KS, G, DH, DH] dtype workspace (KS = 2 only, else unused)
  void* drhb_ws;           // [T, B, NH, G, DH] dR_dtype workspace
  void* hin_ws;            // [T, B, NH, DH]    dR_dtype workspace
  double* dR64_ws;         // [NH, G, DH, DH] workspace (float32 inputs only, else unused)
  bool step_kernel;        // true: the step-kernel path (one launch per step, step_backward.cu)
  void* RT_ws;             // [NH, DH, G, DH] dtype workspace (step-kernel path only: R transposed)
  float* dr_ws;            // [2, B, NH, G, DH] workspace (step-kernel path only: drhb double buffer)
};

// Gates and states of the cell whose functor is named `functor` ("LstmCell", ...); -1 if unknown.
int num_gates(const std::string& functor);
int num_states(const std::string& functor);

// Both return "" on success, else what went wrong. Work is queued on `stream` (cuBLAS runs on
// a handle of this library's own, one per thread and device, bound to that stream).
std::string forward(const std::string& functor, const ForwardArgs& args, cudaStream_t stream);
std::string backward(const std::string& functor, const BackwardArgs& args, cudaStream_t stream);

// The step-kernel paths (called by forward/backward when args.step_kernel and T * B > 0).
std::string step_forward(const std::string& functor, const ForwardArgs& args, cudaStream_t stream);
std::string step_backward(const std::string& functor, const BackwardArgs& args, cudaStream_t stream);

}  // namespace alternating
}  // namespace flashrnn
