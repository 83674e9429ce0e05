// fused_block: one persistent block per (head, batch tile) for all T steps; no inter-block sync.
// Plain CUDA C++ (no torch headers). Layouts as flashrnn_compile/reference.py:
//   gx [T, B, NH, G, DH] T_IN   R [NH, G, DH, DH] T_IN (R[n, g, out, in])   b [NH, G, DH] T_IN
//   s0, sT [S, B, NH, DH] T_IN  h [T, B, NH, DH] T_IN
//   states_in [T, S, B, NH, DH] fp32, rhb [T, B, NH, G, DH] fp32 (saved by the forward; with
//             FRNN_BWD_RECOMPUTE states_in [T, SS, B, NH, DH] only, the backward recomputing rhb)
//   backward: dh [T, B, NH, DH], dsT [S, B, NH, DH] -> dgx [T, B, NH, G, DH], ds0 [S, B, NH, DH],
//             and dR, db per batch tile dw [NBT, NH, G*DH*DH + G*DH] fp32 (Config::DR, accumulated
//             on chip: DrAcc), or else drhb [T, B, NH, G, DH] fp32 (dR, db one GEMM outside)
//
// Work split (both directions): the DH units of the head are cut into UG = DH / 16 groups of 16;
// warp w owns unit group w % UG and NTW = (BATCH_TILE / 8) / (WARPS / UG) n-tiles (8 batch columns
// each). The MMA accumulators of a warp are exactly the values its own pointwise cell needs, so
// the cell runs on registers (no gate round trip through shared memory):
//   forward   gates[g][u, n] = R[g][u, :] @ h[:, n]    one m16 tile per gate (rows = the warp's
//             16 units), K = DH; lane (gq, t4) holds units gq, gq + 8 of columns 2 t4, 2 t4 + 1
//   backward  rec[u, n] = sum_(g, o) R[g][o, u] drhb[g, o][n]   one m16 tile (the warp's units),
//             K = G * DH; same lane layout, so ds[0] += rec needs no exchange either
// With an even number of warps per unit group, a pair of warps ("row halves" rh = 0, 1) shares the
// group: each runs the cell for 8 of its 16 units. The forward gives each half ceil(G / 2)
// gate-pair tiles (rows 0-7 gate 2m, rows 8-15 gate 2m + 1 of its 8 units: the lane still holds all
// gates of its unit); the backward splits K = (g, o) between the two and adds the other half's
// partial sums of the lane's rows from shared memory behind a 64-thread pair barrier.
// What crosses warps is the next step's right-hand side (h, or drhb), written to shared memory
// (double-buffered: one __syncthreads per step; the backward keeps drhb transposed, X^T
// [(g, o)][batch column], so a lane's two columns are one word and ldmatrix.trans gives the B
// fragments). The per-step inputs (gx; in the backward also rhb, states_in and dh) stream through a
// ring of NS shared-memory stages filled by cp.async NS - 1 steps ahead, so DRAM latency never sits
// on the recurrence; outputs are plain stores through per-element pointers, placed in the step
// where they cost least (measured: see the kernels).
//
// Precision: MMA operands are 16-bit (bf16, or fp16 for fp16 inputs), fp32 accumulate. R is exact
// in the input dtype. The fp32 right-hand side (h or drhb) is rounded to HP pieces of the input
// dtype (HP = 1, as cuDNN rounds h to the input dtype every step; FRNN_H_PIECES=2 splits it in a
// hi and a lo piece, twice the MMAs). States and the cell math are fp32; the cell's
// transcendentals use the SFU (cells.cuh FastMath; ApproxMath for bfloat16).
//
// Template parameters = the planner's fused_block variables (csrc/fused/fused_block.cint):
//   WARPS (a multiple of UG whose quotient divides BATCH_TILE / 8), BATCH_TILE, R_REG_TILES (A
//   fragments, 16x16 tiles of R, each warp keeps in registers for all steps; the rest sit in shared
//   memory in fragment order).
//
// Files: mma.cuh (the MMA and copy primitives, WarpGemm), fused_block_dr.cuh (DrAcc), this one
// (the compile-time switches, Config, the kernels' arguments and row copies) and
// fused_block_kernels.cuh (forward_kernel, backward_kernel).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/cells.cuh"
#include "fused/mma.cuh"
#include "fused/fused_block_dr.cuh"

#ifndef FRNN_H_PIECES
#define FRNN_H_PIECES 1
#endif
// 1: dR and db accumulated in the backward kernel where they fit (Config::DR); 0: never
#ifndef FRNN_DR_KERNEL
#define FRNN_DR_KERNEL 1
#endif
// 1: the backward makes neither dR / db nor drhb (Config::DRHB false): the caller derives them
// from dgx, for cells whose d(rhb) is d(gx) (the gates read gx + rhb; fused_block.py adds the
// define only for those); 0: as FRNN_DR_KERNEL says
#ifndef FRNN_DR_OUT
#define FRNN_DR_OUT 0
#endif
// 1 (with FRNN_DR_OUT, h in one piece; recurrent_layer's libraries): the forward with SAVE writes
// only the states the cell's backward reads (BwdStates) and no rhb; the backward recomputes
// rhb = R h_{t-1} + b per step from the forward's h output (p.h; p.h0 the first step's h_{t-1}),
// on the forward's fragments of R: the same MMA operands and summation order as the forward, so the
// same rhb to the bit. Config::RC
#ifndef FRNN_BWD_RECOMPUTE
#define FRNN_BWD_RECOMPUTE 0
#endif

namespace flashrnn {
namespace fused {

// Cells whose gradient jumps (relu' at 0; the sLSTM stabiliser's max picks a branch) keep the
// right-hand side exact to fp32 (HP = 2 pieces) and FastMath for every dtype: there a rounded h
// moves the jump's side for a few elements, and the 2x bound failed on the H100 (elman_relu fp16
// dgx 25x, slstm bf16 dgx 16x at T=17). The other cells take h in the input dtype (as cuDNN).
template <typename Cell> struct Precision {
  static constexpr bool JUMPS = false;
  template <typename DtypeMath> using MathFor = DtypeMath;
};
template <> struct Precision<ElmanReluCell> {
  static constexpr bool JUMPS = true;
  template <typename DtypeMath> using MathFor = FastMath;
};
template <> struct Precision<SlstmCell> {
  static constexpr bool JUMPS = true;
  template <typename DtypeMath> using MathFor = FastMath;
};

// the states a cell's backward reads: FIRST .. S - 1 (an LSTM's reads c, not h)
template <typename Cell> struct BwdStates { static constexpr int FIRST = 0; };
template <> struct BwdStates<LstmCell> { static constexpr int FIRST = 1; };

template <typename TIn, typename Cell, int DH, int WARPS, int BT, int RREG>
struct Config {
  static constexpr int G = Cell::G, S = Cell::S, THREADS = 32 * WARPS, DH_ = DH, BT_ = BT, WARPS_ = WARPS;
  static constexpr int HP = Precision<Cell>::JUMPS ? 2 : FRNN_H_PIECES;
  using Math = typename Precision<Cell>::template MathFor<typename In<TIn>::Math>;
  // warps per unit group Q = RH x WN: RH = 2 row halves (both warps run the group's MMAs, each
  // runs the cell for 8 of its 16 units) when Q is even, times WN warps splitting the n-tiles
  static constexpr int UG = DH / 16, Q = WARPS / UG, RH = Q % 2 == 0 ? 2 : 1, WN = Q / RH;
  static constexpr int NT = BT / 8, NTW = NT / (WN > 0 ? WN : 1), JN = 2 / RH;
  static constexpr int KT = DH / 16;
  static constexpr int E = NTW * JN * 2;  // (n-tile, unit, column) elements per lane
  static_assert(DH % 16 == 0 && BT % 8 == 0, "MMA tile shapes");
  static_assert(WARPS % UG == 0 && Q > 0 && (Q == 1 || Q % 2 == 0) && NT % WN == 0,
                "WARPS = DH / 16 x (1, or 2 x a divisor of BATCH_TILE / 8)");
  using Op = typename In<TIn>::Op;
  // forward rows: one warp (RH = 1) takes G tiles, tile g = gate g of its 16 units; a row half
  // (RH = 2) takes FMT = ceil(G / 2) gate-pair tiles of its 8 units: rows 0-7 gate 2m, rows 8-15
  // gate 2m + 1 (zero past G), so lane (gq, t4) holds every gate of unit gq: no MMA is duplicated
  static constexpr int FMT = RH == 2 ? (G + 1) / 2 : G;
  using Fwd = WarpGemm<Op, FMT, KT, NTW, HP, RREG * RH, WARPS>;
  // backward rows: the warp's 16 units (one m16 tile), K = (g, o): a row-half pair splits K
  // (KSPLIT = 2: each warp half of the k-tiles, then the two exchange the other half's rows
  // through shared memory behind a pair barrier); with more than 15 pairs (barrier ids) both run all
  static constexpr int KSPLIT = RH == 2 && WARPS / 2 <= 15 ? 2 : 1;
  static constexpr int BKT = (G * KT + KSPLIT - 1) / KSPLIT;
  using Bwd = WarpGemm<Op, 1, BKT, NTW, HP, RREG * RH, WARPS, G * KT>;
  // element e of lane (gq, t4) of warp (ug, rh, wn): n-tile wn * NTW + i, unit ug * 16 + gq + 8 j,
  // batch column 2 t4 + c of that n-tile
  // (jj: the index among the lane's JN units, compile-time once e is; j itself may be the warp's rh)
  struct Elem { int i, j, jj, c; };
  __device__ static Elem elem(int e, int rh) {
    const int i = e / (JN * 2), jj = (e / 2) % JN, c = e % 2;
    return {i, RH == 2 ? rh : jj, jj, c};
  }
  // the element's value in an m16n8 accumulator fragment (rows gq, gq + 8; columns 2 t4, 2 t4 + 1),
  // without a runtime index into registers
  __device__ static float pick(const float (&a)[4], Elem el) {
    if (RH == 1) return a[2 * el.jj + el.c];
    return el.j ? a[2 + el.c] : a[el.c];
  }
  // gate g of the element in the forward accumulators (tile g, or gate-pair tile g / 2)
  __device__ static float gate(const float (&acc)[FMT][NTW][4], int g, Elem el) {
    if (RH == 1) return acc[g][el.i][2 * el.jj + el.c];
    return acc[g / 2][el.i][2 * (g % 2) + el.c];
  }
  // forward A: element (row r of tile mt, column k) of R for the warp of unit group ug, half rh
  template <typename RAt>
  __device__ static float fwd_a(RAt R, int ug, int rh, int mt, int r, int k) {
    if (RH == 1) return R(mt, ug * 16 + r, k);
    const int g = 2 * mt + r / 8;
    return g < G ? R(g, ug * 16 + 8 * rh + r % 8, k) : 0.0f;
  }
  // In-kernel dR and db (DR): dR[(g, o), u] += drhb[(g, o)][n] h_in[u][n] per step on the tensor
  // cores (m16n8k8, K = the batch tile; drhb as the MMA's input-dtype pieces, h rounded to the
  // input dtype), the M = G * DH rows spread over the warps (m-tile w + WARPS m), each all DH / 8
  // n-tiles; db in fp32 from the cell's drhb. Kept when a rough count of the backward's long-lived
  // registers (dR accumulators, a step's per-element inputs, R fragments) stays <= 160 of the 255
  // (ptxas: no spills for the planner's tilings), else drhb goes out and one GEMM outside makes dR, db.
  static constexpr int DR_MT = G * DH / 16, DR_MPW = (DR_MT + WARPS - 1) / WARPS, DR_NT = DH / 8;
  static constexpr int DR_REGS = DR_MPW * DR_NT * 4 + E * (2 * G + 2 * S + 2) + Bwd::NREG * 4;
  static constexpr bool DR = FRNN_DR_KERNEL != 0 && FRNN_DR_OUT == 0 && DR_REGS <= 160;
  static constexpr bool DRHB = !DR && FRNN_DR_OUT == 0;  // drhb [T, B, NH, G, DH] written
  // FRNN_BWD_RECOMPUTE: the save is states S0 .. S - 1 only ([T, SS, B, NH, DH] f32), the backward
  // recomputes rhb on FwdRc (the forward's fragments, in registers where RREG * RH allows)
  static constexpr bool RC = FRNN_BWD_RECOMPUTE != 0;
  static_assert(!RC || (FRNN_DR_OUT != 0 && HP == 1), "FRNN_BWD_RECOMPUTE needs FRNN_DR_OUT and h in one piece");
  static constexpr int S0 = RC ? BwdStates<Cell>::FIRST : 0, SS = S - S0;
  using FwdRc = WarpGemm<Op, FMT, KT, NTW, HP, RREG * RH, WARPS>;
  // h_in of a step for the dR MMA: [DH][HBW words] (row = unit, batch columns in pairs; HBW % 8 = 4:
  // the B fragments are conflict-free)
  static constexpr int HBW = BT / 2 + (12 - (BT / 2) % 8) % 8;
  static constexpr int HB_WORDS = 2 * DH * HBW;  // both buffers
  // shared-memory rows (Op elements unless said), padded by 16 bytes: conflict-free fragments
  static constexpr int XF = DH + 8;        // forward X (h) row
  // backward X (drhb) transposed, [HP][G * DH][XN]: row = (g, o), the batch columns contiguous;
  // XN * 2 bytes an odd multiple of 16 (conflict-free ldmatrix rows and pair stores)
  static constexpr int XN = BT + ((BT / 8) % 2 == 0 ? 8 : 0);
  static constexpr int XT = HP * G * DH * XN;  // Op elements of one step's X^T
  static constexpr int GXR = G * DH + 8;   // gx row of a stage
  static constexpr int RHR = G * DH + 4;   // rhb row (floats)
  static constexpr int STR = DH + 4;       // states_in row (floats)
  static constexpr int DHR = DH + 8;       // dh row
  __host__ __device__ static constexpr size_t align16(size_t x) { return (x + 15) / 16 * 16; }
  // ring stages: up to 6 (5 steps of prefetch, ~1.5 us at 0.3 us a step: past DRAM latency) within
  // `budget` bytes (128 KiB), at least 2
  __host__ __device__ static constexpr int stages(size_t stage_bytes, size_t budget = 128 * 1024) {
    return (int)(budget / stage_bytes) >= 6 ? 6 : ((int)(budget / stage_bytes) <= 2 ? 2 : (int)(budget / stage_bytes));
  }
  // forward: a_smem | xs [2][HP][BT][XF] | NS stages of gx [BT][GXR]
  static constexpr size_t F_STAGE = align16((size_t)BT * GXR * 2);
  static constexpr int F_NS = stages(F_STAGE);
  static constexpr size_t F_A = align16(Fwd::smem_a_bytes()), F_X = align16((size_t)2 * HP * BT * XF * 2);
  __host__ __device__ static constexpr size_t fwd_smem() { return F_A + F_X + F_NS * F_STAGE; }
  // backward stage: gx [BT][GXR] | rhb [BT][RHR] f32 (RC: h_{t-1} [BT][XF], the forward's X) |
  // states_in [SS][BT][STR] f32 | dh [BT][DHR]
  static constexpr size_t B_GX = 0, B_RH = align16((size_t)BT * GXR * 2);
  static constexpr size_t B_ST = B_RH + align16(RC ? (size_t)BT * XF * 2 : (size_t)BT * RHR * 4);
  static constexpr size_t B_DH = B_ST + align16((size_t)SS * BT * STR * 4);
  static constexpr size_t B_STAGE = B_DH + align16((size_t)BT * DHR * 2);
  // dgx staging (B_DGX): its bytes come out of the ring's 128 KiB
  static constexpr int DGR = G * DH + 8;  // row (elements): 16 bytes of padding, conflict-free cell writes
  static constexpr size_t DG_BYTES = align16((size_t)2 * BT * DGR * 2);
  static constexpr int B_NS = stages(B_STAGE, DG_BYTES < 64 * 1024 ? 128 * 1024 - DG_BYTES : 64 * 1024);
  // RC with 3+ stages: a step recomputes the NEXT step's rhb (its h_{t-1} stage landed one step
  // early: the step's end waits for two stages ahead), so the cells never wait for those MMAs
  static constexpr bool RC_AHEAD = RC && B_NS >= 3;
  // a_smem: R^T's fragments in shared memory (Bwd), then (RC) R's (FwdRc)
  static constexpr size_t B_A = align16(Bwd::smem_a_bytes()) + (RC ? align16(FwdRc::smem_a_bytes()) : 0);
  static constexpr size_t B_X = align16((size_t)2 * XT * 2);
  // after the ring: the K-split exchange [WARPS][NTW][32] float2 | h_in [2][DH][HBW] words (DR) |
  // db partials [WN][G * DH] floats (DR)
  static constexpr size_t B_XCH = KSPLIT == 2 ? align16((size_t)WARPS * NTW * 32 * 8) : 0;
  static constexpr size_t B_HB = DR ? align16((size_t)HB_WORDS * 4) : 0;
  static constexpr size_t B_DB = DR ? align16((size_t)WN * G * DH * 4) : 0;
  static constexpr size_t B_TAIL = B_A + B_X + B_NS * B_STAGE;
  // dgx of two steps [2][BT][DGR] (the cells write a step's, the next step stores it in 16-byte rows)
  static constexpr size_t B_DGX = B_TAIL + B_XCH + B_HB + B_DB;
  __host__ __device__ static constexpr size_t bwd_smem() { return B_DGX + DG_BYTES; }
};

struct FwdArgs {
  int T, B, NH, reverse;
  const void* gx; const void* R; const void* b; const void* s0;
  void* h; void* sT; float* states_in; float* rhb;  // states_in, rhb: nullptr = save=false
  // a projected layer's input bias [NH, G, DH] (nullptr: none), added to gx in fp32 (its projection
  // then leaves it out: recurrent_layer's one-call path)
  const void* b_in;
  int s0_f32, sT_f32;  // s0 / sT in float, not TIn (a layer's forward time chunks pass the states on in float)
};

struct BwdArgs {
  int T, B, NH, reverse;
  const void* dh; const void* dsT; const void* gx; const void* R;  // dsT nullptr: zeros
  const float* states_in; const float* rhb;  // RC: states_in [T, SS, B, NH, DH], rhb unused
  void* dgx; float* drhb; void* ds0;
  float* dw;  // DR: per batch tile [NBT][NH][G * DH * DH (dR) + G * DH (db)]; else drhb is written
  int dsT_f32, ds0_f32;  // dsT / ds0 in float, not TIn (a layer's time chunks pass them on in float)
  // RC: the forward's h [T, B, NH, DH], h_{t-1} of its first step [B, NH, DH] (s0's h, or a time
  // chunk's neighbour step), b [NH, G, DH]
  const void* h; const void* h0; const void* b;
  const void* b_in;  // as FwdArgs::b_in (the forward's)
};

// the lane's b_in values [JN][G] (zeros without one): unit ug * 16 + gq + 8 (rh, or jj) of head nh, as
// the recurrent bias
template <typename TIn, int G, int DH, int JN, int RH>
__device__ __forceinline__ void load_b_in(const void* b_in, int nh, int ug, int gq, int rh, float (&out)[JN][G]) {
  const TIn* p = static_cast<const TIn*>(b_in);
#pragma unroll
  for (int jj = 0; jj < JN; ++jj)
#pragma unroll
    for (int g = 0; g < G; ++g)
      out[jj][g] = p != nullptr ? In<TIn>::load(p[((size_t)nh * G + g) * DH + ug * 16 + gq + 8 * (RH == 2 ? rh : jj)]) : 0.0f;
}

// element i of a state tensor [S, B, NH, DH] that is float (f32) or TIn
template <typename TIn>
__device__ __forceinline__ float load_state(const void* p, int f32, int i) {
  return f32 ? static_cast<const float*>(p)[i] : In<TIn>::load(static_cast<const TIn*>(p)[i]);
}
template <typename TIn>
__device__ __forceinline__ void store_state(void* p, int f32, int i, float v) {
  if (f32) static_cast<float*>(p)[i] = v;
  else static_cast<TIn*>(p)[i] = In<TIn>::store(v);
}

// One thread's share of a ring stage's copies: one tile's, or several tiles' 16-byte chunks in one
// list (chunk i: slot i / THREADS of thread i % THREADS), each slot with its fixed shared address,
// its global address and the tile's per-step stride. `issue` first moves the global address a step
// (that add waits on no copy in flight: the slot's last copy went out a step before), then copies,
// predicated, not branched: measured (ncu, H200, the LSTM 12x64 backward) a branch after a copy
// waits for the copy to read its registers (long-scoreboard stalls on the former per-tile copies'
// guards, ~15% of the samples). ALT: slots with a second source for one step (`use_alt`).
struct StageChunk {
  uint32_t dst;             // shared address in stage 0
  unsigned long long src;   // global address at the first step
  long long stride;         // bytes per step
  unsigned long long alt;   // the second source (0: none)
};
template <int THREADS, int TOTAL, bool ALT>
struct StageCopy {
  static constexpr int CH = (TOTAL + THREADS - 1) / THREADS;
  uint32_t dst[CH];
  unsigned long long src[CH], alt[ALT ? CH : 1];
  long long stride[CH];
  bool on[CH], has_alt[ALT ? CH : 1];
  // chunk(i) -> StageChunk of chunk i (0 <= i < TOTAL)
  template <typename F>
  __device__ void init(F chunk, int tid) {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      const int i = k * THREADS + tid;
      on[k] = i < TOTAL;
      const StageChunk c = chunk(on[k] ? i : 0);
      dst[k] = c.dst;
      stride[k] = c.stride;
      src[k] = c.src - (unsigned long long)c.stride;  // issue() moves it first
      if constexpr (ALT) {
        alt[k] = c.alt;
        has_alt[k] = c.alt != 0;
      }
    }
  }
  __device__ void issue(uint32_t stage_off, bool live, bool use_alt) {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      src[k] += (unsigned long long)stride[k];
      unsigned long long s = src[k];
      if constexpr (ALT) s = use_alt && has_alt[k] ? alt[k] : s;
      cp_async16_if(dst[k] + stage_off, s, live && on[k]);
    }
  }
};

// One thread's share of writing a step's [ROWS][ROW_CHUNKS x 16 B] tile from shared memory (row
// stride src_row bytes) to global memory in 16-byte stores: rows past `rows_in` are not stored;
// the global addresses move by `stride` bytes before each store (as StageCopy's).
template <int THREADS, int ROWS, int ROW_CHUNKS>
struct RowStore {
  static constexpr int TOTAL = ROWS * ROW_CHUNKS, CH = (TOTAL + THREADS - 1) / THREADS;
  uint32_t soff[CH];
  unsigned long long dst[CH];
  bool on[CH];
  long long stride;
  // dst_of(r): row r's global address at the first step
  template <typename F>
  __device__ void init(int src_row, int rows_in, F dst_of, long long stride_, int tid) {
    stride = stride_;
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      const int i = k * THREADS + tid, r = i < TOTAL ? i / ROW_CHUNKS : 0, c = i % ROW_CHUNKS;
      on[k] = i < TOTAL && r < rows_in;
      soff[k] = (uint32_t)(r * src_row + c * 16);
      dst[k] = dst_of(r) + (unsigned long long)(c * 16) - (unsigned long long)stride;
    }
  }
  // the tile at shared address `base` to the next step's place (`live`: stored at all)
  __device__ void store(uint32_t base, bool live) {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      dst[k] += (unsigned long long)stride;
      copy16_if(dst[k], base + soff[k], live && on[k]);
    }
  }
};

}  // namespace fused
}  // namespace flashrnn
