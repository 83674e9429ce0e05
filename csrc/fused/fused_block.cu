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
#include "fused/layer.cuh"

namespace {
using namespace flashrnn;
using namespace flashrnn::fused;
using Cell = flashrnn::FRNN_CELL;
constexpr int DH = FRNN_DH, WARPS = FRNN_WARPS, BT = FRNN_BATCH_TILE, RREG = FRNN_R_REG_TILES;
using Cfg = Config<TIn, Cell, DH, WARPS, BT, RREG>;

// `set`: the dynamic shared memory the kernel was opted in to so far (once per process and size,
// not per launch); smem: what this launch takes (at least what the kernel uses)
template <typename K>
int launch(K kernel, size_t smem, int B, int NH, cudaStream_t stream, void* args, const char* what, size_t& set) {
  cudaError_t e;
  if (smem > set) {
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return fail(what, e);
    set = smem;
  }
  dim3 grid((B + BT - 1) / BT, NH), block(32 * WARPS);
  void* kargs[] = {args};
  e = cudaLaunchKernel((const void*)kernel, grid, block, kargs, smem, stream);
  if (e != cudaSuccess) return fail(what, e);
  return 0;
}

// the forward kernel, saving when a.states_in is set (an RC library: never an rhb), and the backward
// kernel; reserve: the forward takes this much shared memory where it is more than the kernel needs
// (so that no other kernel's block shares the SM: frnn_layer_forward's time chunks)
int launch_forward(FwdArgs& a, cudaStream_t stream, const char* what, size_t reserve = 0) {
  if (Cfg::RC && a.rhb != nullptr) {
    snprintf(g_error, sizeof(g_error), "%s: a FRNN_BWD_RECOMPUTE library saves no rhb (recurrent_layer's save)", what);
    return 1;
  }
  static size_t set_save = 0, set_plain = 0;
  const size_t smem = reserve > Cfg::fwd_smem() ? reserve : Cfg::fwd_smem();
  if (a.states_in != nullptr)
    return launch(forward_kernel<TIn, Cell, DH, WARPS, BT, RREG, true>, smem, a.B, a.NH, stream, &a, what, set_save);
  return launch(forward_kernel<TIn, Cell, DH, WARPS, BT, RREG, false>, smem, a.B, a.NH, stream, &a, what, set_plain);
}
int launch_backward(BwdArgs& a, cudaStream_t stream, const char* what) {
  static size_t set = 0;
  return launch(backward_kernel<TIn, Cell, DH, WARPS, BT, RREG>, Cfg::bwd_smem(), a.B, a.NH, stream, &a, what, set);
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

// FRNN_BWD_RECOMPUTE libraries (recurrent_layer's): the number SS of states the forward saves
// ([T, SS, B, NH, DH] f32, no rhb; the backward recomputes rhb from h); 0: the full save
int frnn_recompute() { return Cfg::RC ? Cfg::SS : 0; }

// pointers as in fused_block.cuh (FwdArgs); states_in = rhb = nullptr: save=false (RC: rhb always
// nullptr, states_in [T, SS, B, NH, DH] with save). 0 = queued.
int frnn_forward(int T, int B, int NH, int reverse, const void* gx, const void* R, const void* b,
                 const void* s0, void* h, void* sT, float* states_in, float* rhb, void* stream) {
  FwdArgs a{T, B, NH, reverse, gx, R, b, s0, h, sT, states_in, rhb};
  return launch_forward(a, static_cast<cudaStream_t>(stream), "frnn_forward");
}

// dw: with frnn_dr_in_kernel(), [ceil(B / BATCH_TILE)][NH][G * DH * DH + G * DH] fp32 (dR, db of
// each batch tile); else nullptr and drhb [T, B, NH, G, DH] is written
int frnn_backward(int T, int B, int NH, int reverse, const void* dh, const void* dsT, const void* gx,
                  const void* R, const float* states_in, const float* rhb, void* dgx, float* drhb,
                  void* ds0, float* dw, void* stream) {
  if (Cfg::RC) return fail_msg("frnn_backward: a FRNN_BWD_RECOMPUTE library's backward is frnn_layer_backward's");
  BwdArgs a{T, B, NH, reverse, dh, dsT, gx, R, states_in, rhb, dgx, drhb, ds0, dw};
  return launch_backward(a, static_cast<cudaStream_t>(stream), "fused_block backward");
}

// ---- a projected layer's backward (layer.cuh): the recurrence's in K time chunks, dx and dW beside it

// cuBLAS entry points (cublasCreate_v2, cublasSetStream_v2, cublasSetMathMode, cublasGemmEx,
// cublasGemmStridedBatchedEx) of the libcublas the caller's process loaded; 0 = set
int frnn_layer_set_blas(void* create, void* set_stream, void* set_math, void* gemm, void* gemm_batched) {
  layer::g_blas.create = reinterpret_cast<layer::CreateFn>(create);
  layer::g_blas.set_stream = reinterpret_cast<layer::SetStreamFn>(set_stream);
  layer::g_blas.set_math = reinterpret_cast<layer::SetMathFn>(set_math);
  layer::g_blas.gemm = reinterpret_cast<layer::GemmExFn>(gemm);
  layer::g_blas.gemm_batched = reinterpret_cast<layer::GemmBatchedFn>(gemm_batched);
  return 0;
}

// The forward of a projected layer in one call: gx = x W^T [T, B, N] (x [T, B, I], W [N, I], N = NH *
// G * DH; cuBLAS, float accumulation), then the forward kernel over gx with b_in [N] (nullptr: none)
// added to it in fp32, saving as frnn_forward does (RC libraries: states_in [T, SS, B, NH, DH] only).
// frnn_layer_backward takes the same b_in.
// K = 1: the GEMM, then the kernel, on the caller's stream (x nullptr: gx holds x W^T already).
// K > 1: in K time chunks (layer::chunk_range: chunk 0, on the critical path, half as long as the
// others), so that the projection's GEMM runs beside the recurrence: chunk 0's GEMM and every
// chunk's forward kernel go on a stream of the greatest priority, the other chunks' GEMMs on the
// side stream (after chunk 0's), each kernel after its chunk's GEMM, and the caller's stream waits
// for all. The kernels then take all the shared memory a block may (DeviceCtx::smem_optin):
// measured (H200, LSTM 12x64 bf16, benchmarks/probe_concurrency.py) a GEMM queued beside the forward
// kernel put its blocks on the kernel's SMs and doubled the kernel's time (303 -> 616 us). The
// states pass between chunks in float through sbuf [2][S * B * NH * DH], so h, sT, gx and the save
// are those of K = 1 to the bit; x is required. 1 <= K <= 16 with T >= 2K - 1. 0 = queued.
int frnn_layer_forward(int T, int B, int NH, int I, int reverse, int K, const void* x, const void* W,
                       const void* b_in, const void* R, const void* b, const void* s0, void* gx, void* h, void* sT,
                       float* states_in, float* rhb, float* sbuf, void* stream) {
  constexpr int G = Cell::G, S = Cell::S;
  if (Cfg::RC && rhb != nullptr)  // (launch_forward checks it too; before the GEMM here)
    return fail_msg("frnn_layer_forward: a FRNN_BWD_RECOMPUTE library saves no rhb (recurrent_layer's save)");
  if (K < 1 || K > layer::MAX_CHUNKS || T < 2 * K - 1)
    return fail_msg("frnn_layer_forward: expected 1 <= K <= 16 and T >= 2K - 1");
  if (K > 1 && (x == nullptr || sbuf == nullptr)) return fail_msg("frnn_layer_forward: K > 1 needs x and sbuf");
  layer::DeviceCtx* c = layer::device_ctx();
  if (c == nullptr) return 1;
  const cudaStream_t main = static_cast<cudaStream_t>(stream);
  const long long N = (long long)NH * G * DH, BN = (long long)B * NH * DH;
  if (K == 1) {
    if (x != nullptr) {  // gx [M, N] = x [M, I] W^T (column-major: gx^T = W^T^T x^T)
      void* handle = layer::handle_for(c, main);
      if (handle == nullptr) return 1;
      if (layer::gemm(handle, layer::OP_T, layer::OP_N, (int)N, T * B, I, W, I, x, I, 0.0f, gx, layer::kDtype, (int)N))
        return 1;
    }
    FwdArgs a{T, B, NH, reverse, gx, R, b, s0, h, sT, states_in, rhb, b_in};
    return launch_forward(a, main, "frnn_layer_forward");
  }
  void* const side = layer::handle_for(c, c->side);
  if (side == nullptr) return 1;
  int t0s[layer::MAX_CHUNKS], t1s[layer::MAX_CHUNKS];  // chunk k's time range, k in the recurrence's order
  for (int k = 0; k < K; ++k) layer::chunk_range(T, K, k, reverse, t0s[k], t1s[k]);
  cudaError_t e = cudaEventRecord(c->fev[0], main);  // the inputs are ready on the caller's stream
  if (e == cudaSuccess) e = cudaStreamWaitEvent(c->prio, c->fev[0], 0);
  if (e != cudaSuccess) return fail("frnn_layer_forward: start", e);
  // chunk k's GEMM: gx[k] [M, N] = x[k] [M, I] W^T; chunk 0's on prio, then the side stream waits for it
  auto chunk_gemm = [&](int k) -> int {
    const cudaStream_t s = k == 0 ? c->prio : c->side;
    if (layer::gemm(k == 0 ? c->handle_prio : side, layer::OP_T, layer::OP_N, (int)N, (t1s[k] - t0s[k]) * B, I, W, I,
                    static_cast<const TIn*>(x) + t0s[k] * (long long)B * I, I, 0.0f,
                    static_cast<TIn*>(gx) + t0s[k] * (long long)B * N, layer::kDtype, (int)N))
      return 1;
    cudaError_t err = cudaEventRecord(c->fev[1 + k], s);
    if (err == cudaSuccess && k == 0) err = cudaStreamWaitEvent(c->side, c->fev[1], 0);
    return err == cudaSuccess ? 0 : fail("frnn_layer_forward: GEMM event", err);
  };
  // queued in the order the GPU needs them: GEMM 0, GEMM 1, kernel 0, GEMM 2, kernel 1, ...
  if (chunk_gemm(0) || chunk_gemm(1)) return 1;
  for (int k = 0; k < K; ++k) {
    const int t0 = t0s[k];
    if (k > 0 && (e = cudaStreamWaitEvent(c->prio, c->fev[1 + k], 0)) != cudaSuccess)
      return fail("frnn_layer_forward: wait", e);
    const bool first = k == 0, last = k == K - 1;
    FwdArgs a{t1s[k] - t0, B, NH, reverse, static_cast<const TIn*>(gx) + t0 * (long long)B * N, R, b,
              first ? s0 : static_cast<const void*>(sbuf + ((k - 1) & 1) * S * BN),
              static_cast<TIn*>(h) + t0 * BN, last ? sT : static_cast<void*>(sbuf + (k & 1) * S * BN),
              states_in == nullptr ? nullptr : states_in + t0 * Cfg::SS * BN,
              rhb == nullptr ? nullptr : rhb + t0 * (long long)B * N, b_in, first ? 0 : 1, last ? 0 : 1};
    const int rc = launch_forward(a, c->prio, "frnn_layer_forward", c->smem_optin);
    if (rc != 0) return rc;
    if (k + 2 < K && chunk_gemm(k + 2)) return 1;
  }
  e = cudaEventRecord(c->fev[K + 1], c->prio);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(main, c->fev[K + 1], 0);
  return e == cudaSuccess ? 0 : fail("frnn_layer_forward: join", e);
}

// The backward of a layer gx = x W^T + b_in [T, B, N] (x [T, B, I], W [N, I]) whose recurrence
// frnn_forward ran with save, in K time chunks: dh [T, B, NH, DH], dsT [S, B, NH, DH] or nullptr
// (zeros), the forward's gx, states_in and rhb, x and W ->
// dgx [T, B, N], ds0, dw [K][ceil(B / BT)][NH][G * DH * DH + G * DH] float (dR | db partials, as
// frnn_backward's dw, one block per chunk), dx [T, B, I] (nullptr: not wanted) and dW [N, I] float
// (nullptr: not wanted). dsbuf: [2][S * B * NH * DH] float. Libraries whose backward accumulates
// dR (frnn_dr_in_kernel() == 1) write dw; FRNN_DR_OUT libraries (2) leave dw alone and make dR
// [NH, G, DH, DH] and db [N] float on the side stream (layer.cuh) from h [T, B, NH, DH] (the
// forward's output), s0 (its first state is h_in of the first step) and ones [>= the largest
// chunk's T_c * B] in TIn; others (0) are refused. FRNN_BWD_RECOMPUTE libraries take the forward's
// save [T, SS, B, NH, DH] as states_in (rhb unused) and b [NH, G, DH]. b_in: as frnn_layer_forward's
// (gx then is x W^T without it; nullptr: gx holds it). 1 <= K <= 16 with T >= 2K - 1
// (layer::chunk_range). 0 = queued.
int frnn_layer_backward(int T, int B, int NH, int I, int reverse, int K, const void* dh, const void* dsT,
                        const void* gx, const void* R, const float* states_in, const float* rhb, const void* x,
                        const void* W, void* dgx, void* ds0, float* dw, float* dR, float* db, const void* h,
                        const void* s0, const void* ones, void* dx, float* dW, float* dsbuf, const void* b,
                        const void* b_in, void* stream) {
  constexpr int G = Cell::G, S = Cell::S;
  constexpr bool dr_out = !Cfg::DR && !Cfg::DRHB;
  if (!Cfg::DR && !dr_out) return fail_msg("frnn_layer_backward: this configuration's backward writes drhb");
  if (K < 1 || K > layer::MAX_CHUNKS || T < 2 * K - 1)
    return fail_msg("frnn_layer_backward: expected 1 <= K <= 16 and T >= 2K - 1");
  layer::DeviceCtx* c = layer::device_ctx();
  if (c == nullptr) return 1;
  const cudaStream_t main = static_cast<cudaStream_t>(stream);
  const long long N = (long long)NH * G * DH, BN = (long long)B * NH * DH;
  const long long dw_chunk = (long long)((B + BT - 1) / BT) * NH * (G * DH * DH + G * DH);
  const bool side_work = dx != nullptr || dW != nullptr || dr_out;
  void* const handle = side_work ? layer::handle_for(c, c->side) : nullptr;
  if (side_work && handle == nullptr) return 1;
  cudaError_t e;
  int t0s[layer::MAX_CHUNKS], t1s[layer::MAX_CHUNKS];  // chunk j's time range: the forward's chunks from the last
  for (int j = 0; j < K; ++j) layer::chunk_range(T, K, K - 1 - j, reverse, t0s[j], t1s[j]);
  // every chunk's recurrence first (main, an event after each), then the GEMMs (side, each after
  // its chunk's event): the recurrence is queued whole before the host spends time on GEMM calls
  for (int j = 0; j < K; ++j) {
    const int t0 = t0s[j], t1 = t1s[j];
    const bool first = j == 0, last = j == K - 1;
    // RC: h_{t-1} of the chunk's first step in the forward's order: s0's h at the sequence's edge,
    // else h of the neighbour step
    const bool edge = reverse ? t1 == T : t0 == 0;
    const void* h0 = edge ? s0 : static_cast<const void*>(static_cast<const TIn*>(h) + (reverse ? t1 : t0 - 1) * BN);
    BwdArgs a{t1 - t0, B, NH, reverse, static_cast<const TIn*>(dh) + t0 * BN,
              first ? dsT : static_cast<const void*>(dsbuf + ((j - 1) & 1) * S * BN),
              static_cast<const TIn*>(gx) + t0 * (long long)B * N, R, states_in + t0 * Cfg::SS * BN,
              Cfg::RC ? nullptr : rhb + t0 * (long long)B * N, static_cast<TIn*>(dgx) + t0 * (long long)B * N,
              nullptr, last ? ds0 : static_cast<void*>(dsbuf + (j & 1) * S * BN), Cfg::DR ? dw + j * dw_chunk : nullptr,
              first ? 0 : 1, last ? 0 : 1, static_cast<const TIn*>(h) + t0 * BN, h0, b, b_in};
    const int rc = launch_backward(a, main, "fused_block layer backward");
    if (rc != 0) return rc;
    if (side_work && (e = cudaEventRecord(c->ev[j], main)) != cudaSuccess) return fail("frnn_layer_backward: event", e);
  }
  for (int j = 0; side_work && j < K; ++j) {
    const int t0 = t0s[j], t1 = t1s[j];
    const long long M = (long long)(t1 - t0) * B;
    if ((e = cudaStreamWaitEvent(c->side, c->ev[j], 0)) != cudaSuccess) return fail("frnn_layer_backward: wait", e);
    const TIn* dgxc = static_cast<const TIn*>(dgx) + t0 * (long long)B * N;
    const TIn* xc = static_cast<const TIn*>(x) + t0 * (long long)B * I;
    if (dx != nullptr &&  // dx[c] [M, I] = dgx[c] [M, N] W [N, I]
        layer::gemm(handle, layer::OP_N, layer::OP_N, I, (int)M, (int)N, W, I, dgxc, (int)N, 0.0f,
                    static_cast<TIn*>(dx) + t0 * (long long)B * I, layer::kDtype, I))
      return 1;
    if (dW != nullptr &&  // dW [N, I] += dgx[c]^T x[c]
        layer::gemm(handle, layer::OP_N, layer::OP_T, I, (int)N, (int)M, xc, I, dgxc, (int)N, j == 0 ? 0.0f : 1.0f,
                    dW, CUDA_R_32F, I))
      return 1;
    if (!dr_out) continue;
    // dR += dgx[c]^T h_in[c] per head, db += dgx[c]^T 1. h_in of step t is h of the step before it
    // in the recurrence's order (t - 1, reverse: t + 1), s0's h at the first step (t = 0, reverse: T - 1)
    const float beta = j == 0 ? 0.0f : 1.0f;
    const int t_edge = reverse ? T - 1 : 0;  // the step whose h_in is s0's
    const bool has_edge = t0 <= t_edge && t_edge < t1;
    const int r0 = has_edge && !reverse ? t0 + 1 : t0, r1 = has_edge && reverse ? t1 - 1 : t1;  // rows with h_in in h
    float beta_r = beta;
    if (has_edge) {
      if (layer::dr_gemm(handle, NH, G * DH, DH, B, s0, static_cast<const TIn*>(dgx) + t_edge * (long long)B * N,
                         beta_r, dR))
        return 1;
      beta_r = 1.0f;
    }
    if (r1 > r0 && layer::dr_gemm(handle, NH, G * DH, DH, (long long)(r1 - r0) * B,
                                  static_cast<const TIn*>(h) + (r0 + (reverse ? 1 : -1)) * BN,
                                  static_cast<const TIn*>(dgx) + r0 * (long long)B * N, beta_r, dR))
      return 1;
    if (layer::gemm(handle, layer::OP_N, layer::OP_N, (int)N, 1, (int)M, dgxc, (int)N, ones, (int)M, beta, db,
                    CUDA_R_32F, (int)N))
      return 1;
  }
  if (side_work) {
    e = cudaEventRecord(c->ev[K], c->side);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(main, c->ev[K], 0);
    if (e != cudaSuccess) return fail("frnn_layer_backward: join", e);
  }
  return 0;
}

}  // extern "C\"
