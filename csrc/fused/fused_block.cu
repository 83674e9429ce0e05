// One fused_block configuration as a small shared library with a C entry API (no torch): built
// per configuration by flashrnn_compile/build.py (`ensure_variant`) with
//   -DFRNN_CELL=LstmCell -DFRNN_DTYPE=1 (1 bfloat16, 2 float16) -DFRNN_DH=64
//   -DFRNN_WARPS=4 -DFRNN_BATCH_TILE=8 -DFRNN_R_REG_TILES=16 (optional -DFRNN_H_PIECES=2: h in 2 pieces)
// and called through ctypes by flashrnn_compile/kernels/fused_block.py on the caller's stream.
// Without defines (CI's nvcc_check) it compiles a small default configuration.
#include <cuda_runtime.h>
#include <stdio.h>

#include "fused/fused_block_kernels.cuh"

#ifndef FRNN_CELL
#define FRNN_CELL LstmCell
#endif
#ifndef FRNN_DTYPE
#define FRNN_DTYPE 1
#endif
#ifndef FRNN_DH
#define FRNN_DH 64
#endif
#ifndef FRNN_WARPS
#define FRNN_WARPS 4
#endif
#ifndef FRNN_BATCH_TILE
#define FRNN_BATCH_TILE 8
#endif
#ifndef FRNN_R_REG_TILES
#define FRNN_R_REG_TILES 16
#endif

#include "fused/library.cuh"

namespace {
using namespace flashrnn;
using namespace flashrnn::fused;
using Cell = flashrnn::FRNN_CELL;
constexpr int DH = FRNN_DH, WARPS = FRNN_WARPS, BT = FRNN_BATCH_TILE, RREG = FRNN_R_REG_TILES;
using Cfg = Config<TIn, Cell, DH, WARPS, BT, RREG>;

// `set`: the kernel's shared-memory opt-in is done (once per process and kernel, not per launch)
template <typename K>
int launch(K kernel, size_t smem, int B, int NH, cudaStream_t stream, void* args, const char* what, bool& set) {
  cudaError_t e;
  if (!set) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return fail(what, e);
    set = true;
  }
  dim3 grid((B + BT - 1) / BT, NH), block(32 * WARPS);
  void* kargs[] = {args};
  e = cudaLaunchKernel((const void*)kernel, grid, block, kargs, smem, stream);
  if (e != cudaSuccess) return fail(what, e);
  return 0;
}
}  // namespace

extern "C" {

// the configuration this library was built for, and its shared memory per block (bytes)
int frnn_config(int* out) {
  out[0] = Cell::G; out[1] = Cell::S; out[2] = DH; out[3] = WARPS; out[4] = BT; out[5] = RREG;
  out[6] = FRNN_DTYPE; out[7] = (int)Cfg::fwd_smem(); out[8] = (int)Cfg::bwd_smem();
  return 0;
}

const char* frnn_error() { return g_error; }

// 1: the backward kernel accumulates dR and db itself (frnn_backward's dw, drhb unused); 0: it
// writes drhb and dR, db are one GEMM outside (fused_block.cuh Config::DR); 2: neither (FRNN_DR_OUT:
// dR, db come from dgx outside; dw, drhb unused)
int frnn_dr_in_kernel() { return Cfg::DR ? 1 : (Cfg::DRHB ? 0 : 2); }

// pointers as in fused_block.cuh (FwdArgs); states_in = rhb = nullptr: save=false. 0 = queued.
int frnn_forward(int T, int B, int NH, int reverse, const void* gx, const void* R, const void* b,
                 const void* s0, void* h, void* sT, float* states_in, float* rhb, void* stream) {
  FwdArgs a{T, B, NH, reverse, gx, R, b, s0, h, sT, states_in, rhb};
  static bool set_save = false, set_plain = false;
  if (states_in != nullptr)
    return launch(forward_kernel<TIn, Cell, DH, WARPS, BT, RREG, true>, Cfg::fwd_smem(), B, NH,
                  static_cast<cudaStream_t>(stream), &a, "fused_block forward", set_save);
  return launch(forward_kernel<TIn, Cell, DH, WARPS, BT, RREG, false>, Cfg::fwd_smem(), B, NH,
                static_cast<cudaStream_t>(stream), &a, "fused_block forward", set_plain);
}

// dw: with frnn_dr_in_kernel(), [ceil(B / BATCH_TILE)][NH][G * DH * DH + G * DH] fp32 (dR, db of
// each batch tile); else nullptr and drhb [T, B, NH, G, DH] is written
int frnn_backward(int T, int B, int NH, int reverse, const void* dh, const void* dsT, const void* gx,
                  const void* R, const float* states_in, const float* rhb, void* dgx, float* drhb,
                  void* ds0, float* dw, void* stream) {
  BwdArgs a{T, B, NH, reverse, dh, dsT, gx, R, states_in, rhb, dgx, drhb, ds0, dw};
  static bool set = false;
  return launch(backward_kernel<TIn, Cell, DH, WARPS, BT, RREG>, Cfg::bwd_smem(), B, NH,
                static_cast<cudaStream_t>(stream), &a, "fused_block backward", set);
}

}  // extern "C"
