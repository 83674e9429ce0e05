// fused_block: one persistent block per (head, batch tile) for all T steps; no inter-block sync.
// Plain CUDA C++ (no torch headers). Layouts as flashrnn_compile/reference.py:
//   gx [T, B, NH, G, DH] T_IN   R [NH, G, DH, DH] T_IN (R[n, g, out, in])   b [NH, G, DH] T_IN
//   s0, sT [S, B, NH, DH] T_IN  h [T, B, NH, DH] T_IN
//   states_in [T, S, B, NH, DH] fp32, rhb [T, B, NH, G, DH] fp32 (saved by the forward)
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
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/cells.cuh"

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
// 1: the forward with SAVE stages a step's rhb and states_in in shared memory and writes them (and
// h, from the next step's X) during the next step as 16-byte row chunks (Config::F_STAGED); 0: each
// lane stores its elements (4-byte stores, a quarter of a sector row each)
#ifndef FRNN_SAVE_V2
#define FRNN_SAVE_V2 0
#endif
// the backward's in-kernel dR (Config::DR) on m16n8k16 MMAs (K = 16 of the (step, batch column)
// reduction axis: half the MMAs of m16n8k8): 1: where the batch tile has an even number of 8-column
// chunks, chunks 2c, 2c + 1 of one step; else chunk c of two consecutive steps (a step pair: the
// first step's A fragments kept in registers, h_in in a buffer per step pair; the loop runs two
// steps per iteration so the pair's parity is compile-time; only where the registers fit:
// Config::DR_XSTEP, else m16n8k8 as with 0), all the pair's MMAs in the step after it; 2: as 1, the
// pair's MMAs split over the two steps after it (half of the n-tiles each); 0: m16n8k8, one step at
// a time (Config::DR16, DrAcc)
#ifndef FRNN_BWD_DR16
#define FRNN_BWD_DR16 0
#endif

namespace flashrnn {
namespace fused {

template <typename T> struct In;
template <> struct In<__nv_bfloat16> {
  using Op = __nv_bfloat16;
  using Math = ApproxMath;  // bf16 rounding (2^-9) is 4x coarser than tanh.approx
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};
template <> struct In<__half> {
  using Op = __half;
  using Math = FastMath;
  __device__ static float load(__half x) { return __half2float(x); }
  __device__ static __half store(float x) { return __float2half_rn(x); }
};

__device__ __forceinline__ __nv_bfloat16 to_op(float x, __nv_bfloat16*) { return __float2bfloat16_rn(x); }
__device__ __forceinline__ __half to_op(float x, __half*) { return __float2half_rn(x); }
__device__ __forceinline__ float op_to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float op_to_f(__half x) { return __half2float(x); }

// x = sum of P pieces (each the rounding of what the previous ones left)
template <typename Op, int P>
__device__ __forceinline__ void split(float x, Op* out) {
#pragma unroll
  for (int p = 0; p < P; ++p) {
    out[p] = to_op(x, (Op*)nullptr);
    x -= op_to_f(out[p]);
  }
}

template <typename Op>
__device__ __forceinline__ uint32_t pack2(Op lo, Op hi) {
  uint16_t a, b;
  memcpy(&a, &lo, 2);
  memcpy(&b, &hi, 2);
  return (uint32_t)a | ((uint32_t)b << 16);
}

// d += a b, m16n8k16, fp32 accumulate
__device__ __forceinline__ void mma(float* d, const uint32_t* a, const uint32_t* b, __nv_bfloat16*) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma(float* d, const uint32_t* a, const uint32_t* b, __half*) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += a b, m16n8k8 (a: 2 registers, b: 1), fp32 accumulate: the in-kernel dR (K = batch columns)
__device__ __forceinline__ void mma_k8(float* d, const uint32_t* a, uint32_t b, __nv_bfloat16*) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(b));
}
__device__ __forceinline__ void mma_k8(float* d, const uint32_t* a, uint32_t b, __half*) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(b));
}

// two 8x8 16-bit matrices, transposed: lanes 0-15 give the row addresses (lane l: row l % 8 of
// matrix l / 8); lane (gq, t4) gets {M[2 t4][gq], M[2 t4 + 1][gq]} of each
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t* r, uint32_t smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem));
}

// four 8x8 16-bit matrices, transposed: lanes 8 m .. 8 m + 7 give the row addresses of matrix m
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, uint32_t smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem));
}
// not transposed: lane (gq, t4) gets {M[gq][2 t4], M[gq][2 t4 + 1]} of each matrix
__device__ __forceinline__ void ldmatrix_x2(uint32_t* r, uint32_t smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, uint32_t smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem));
}

#if FRNN_BWD_DR16
// a compile-time step parity (-1: known at run time only)
template <int P> struct Par { static constexpr int value = P; };
#endif

// barrier of the 64 threads of a warp pair (ids 1..15; 0 is __syncthreads)
__device__ __forceinline__ void pair_barrier(int id) { asm volatile("bar.sync %0, 64;\n" ::"r"(id) : "memory"); }

// 16-byte global -> shared copy (shared-window address) that bypasses the registers (and L1)
__device__ __forceinline__ void cp_async16(uint32_t smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// One warp's share of a step's GEMM: acc[MT][NTW][4] = A_w[MT*16, K] @ X[K, its n-tiles] over the
// warp's KT k-tiles kt0 .. kt0 + KT - 1 of the KTT in all (KT = KTT unless a warp pair splits K;
// the second warp of an odd split has one k-tile less: kt0 + kt >= KTT is skipped).
// A (the warp's rows of R or R^T) is loaded once as MT*KT m16k16 fragments: the first NREG in
// registers, the rest in shared memory (per warp, fragment order, conflict-free). X sits in
// shared memory as HP pieces [HP][BT][XK] (row = batch column, K contiguous, padded).
template <typename Op, int MT, int KT, int NTW, int HP, int RREG, int WARPS, int KTT = KT>
struct WarpGemm {
  static constexpr int NFRAG = MT * KT;
  static constexpr int NREG = RREG < NFRAG ? RREG : NFRAG;
  static constexpr int NSMEM = NFRAG - NREG;
  static constexpr bool GUARD = KTT % KT != 0;  // an odd split: the last k-tile may be past KTT
  // independent accumulator chains over k (more in flight when the warp has few output tiles)
  static constexpr int KS = MT * NTW >= 4 ? 1 : (KT >= 4 / (MT * NTW) ? 4 / (MT * NTW) : KT);
  __host__ __device__ static constexpr size_t smem_a_bytes() { return (size_t)WARPS * NSMEM * 4 * 32 * 4; }

  uint32_t areg[NREG > 0 ? NREG : 1][4];
  int kt0;

  // acc = the sum of the KS independent accumulator chains (fixed order)
  __device__ static void sum_slices(const float (&part)[KS][MT][NTW][4], float (&acc)[MT][NTW][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < NTW; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          float s = part[0][mt][i][r];
#pragma unroll
          for (int k = 1; k < KS; ++k) s += part[k][mt][i][r];
          acc[mt][i][r] = s;
        }
  }

  // a(mt, r, k): element (row r of tile mt, column k of all K) of the warp's A, as float; once,
  // before the loop; kt0_: the warp's first k-tile
  template <typename F>
  __device__ void load(F a, uint32_t* a_smem, int warp, int lane, int kt0_ = 0) {
    kt0 = kt0_;
    const int gq = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int kt = 0; kt < KT; ++kt) {
        const int f = mt * KT + kt, k0 = (kt0 + kt) * 16;
        const bool in = !GUARD || kt0 + kt < KTT;
        const int rows[8] = {gq, gq, gq + 8, gq + 8, gq, gq, gq + 8, gq + 8};
        const int cols[8] = {2 * t4, 2 * t4 + 1, 2 * t4, 2 * t4 + 1, 2 * t4 + 8, 2 * t4 + 9, 2 * t4 + 8, 2 * t4 + 9};
        Op pc[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) pc[e] = to_op(in ? a(mt, rows[e], k0 + cols[e]) : 0.0f, (Op*)nullptr);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const uint32_t w = pack2(pc[2 * r], pc[2 * r + 1]);
          if (f < NREG) areg[f < NREG ? f : 0][r] = w;
          else a_smem[((warp * NSMEM + (f - NREG)) * 4 + r) * 32 + lane] = w;
        }
      }
    }
  }

  // xs: this step's X [HP][BT][XK]; nt0: the warp's first n-tile
  // `between()` runs after the fragment loads are issued and before the MMAs (work for the wait)
  template <int BT, int XK, typename F>
  __device__ void run(const uint32_t* a_smem, const Op* xs, int nt0, int warp, int lane, float (&acc)[MT][NTW][4],
                      F between) const {
    const int gq = lane >> 2, t4 = lane & 3;
    const uint32_t* xw = reinterpret_cast<const uint32_t*>(xs);
    float part[KS][MT][NTW][4];
#pragma unroll
    for (int s = 0; s < KS; ++s)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < NTW; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) part[s][mt][i][r] = 0.0f;
    uint32_t bfr[KT][HP][NTW][2];
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      if (GUARD && kt0 + kt >= KTT) break;
#pragma unroll
      for (int hp = 0; hp < HP; ++hp)
#pragma unroll
        for (int i = 0; i < NTW; ++i) {
          const int base = ((hp * BT + (nt0 + i) * 8 + gq) * XK + (kt0 + kt) * 16) / 2 + t4;
          bfr[kt][hp][i][0] = xw[base];
          bfr[kt][hp][i][1] = xw[base + 4];
        }
    }
    between();
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      if (GUARD && kt0 + kt >= KTT) break;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int f = mt * KT + kt;
        uint32_t a[4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
          a[r] = f < NREG ? areg[f < NREG ? f : 0][r] : a_smem[((warp * NSMEM + (f - NREG)) * 4 + r) * 32 + lane];
#pragma unroll
        for (int hp = HP - 1; hp >= 0; --hp)
#pragma unroll
          for (int i = 0; i < NTW; ++i) mma(part[kt % KS][mt][i], a, bfr[kt][hp][i], (Op*)nullptr);
      }
    }
    sum_slices(part, acc);
  }

  // The same product with X stored transposed, X^T [HP][KTT * 16][XN] (row = k, the batch columns
  // contiguous; XN * 2 bytes an odd multiple of 16: conflict-free): the B fragments of two k-tiles
  // come from one ldmatrix.x4.trans (lane l gives the row address of k = 16 kt + l). xs_s: the
  // shared-window address of X^T.
  // `between()` runs after the fragment loads are issued and before the MMAs (work for the wait)
  template <int XN, typename F>
  __device__ void run_t(const uint32_t* a_smem, uint32_t xs_s, int nt0, int warp, int lane, float (&acc)[MT][NTW][4],
                        F between) const {
    float part[KS][MT][NTW][4];
#pragma unroll
    for (int s = 0; s < KS; ++s)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < NTW; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) part[s][mt][i][r] = 0.0f;
    constexpr int KP = (KT + 1) / 2;
    uint32_t bfr[KP][HP][NTW][4];
#pragma unroll
    for (int kt = 0; kt < KT; kt += 2) {
      // both k-tiles of the pair exist (compile-time unless an odd split guards the last one)
      const bool two = kt + 1 < KT && (!GUARD || kt0 + kt + 1 < KTT);
      if (GUARD && kt0 + kt >= KTT) break;
#pragma unroll
      for (int hp = 0; hp < HP; ++hp)
#pragma unroll
        for (int i = 0; i < NTW; ++i) {
          const int row = hp * KTT * 16 + (kt0 + kt) * 16 + (two ? lane : (lane & 15));
          const uint32_t addr = xs_s + (uint32_t)((row * XN + (nt0 + i) * 8) * 2);
          if (two) ldmatrix_x4_trans(bfr[kt / 2][hp][i], addr);
          else ldmatrix_x2_trans(bfr[kt / 2][hp][i], addr);
        }
    }
    between();
#pragma unroll
    for (int kt = 0; kt < KT; kt += 2) {
      const bool two = kt + 1 < KT && (!GUARD || kt0 + kt + 1 < KTT);
      if (GUARD && kt0 + kt >= KTT) break;
#pragma unroll
      for (int h2 = 0; h2 < 2; ++h2) {
        if (h2 == 1 && !two) break;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int f = mt * KT + kt + h2;
          uint32_t a[4];
#pragma unroll
          for (int r = 0; r < 4; ++r)
            a[r] = f < NREG ? areg[f < NREG ? f : 0][r] : a_smem[((warp * NSMEM + (f - NREG)) * 4 + r) * 32 + lane];
#pragma unroll
          for (int hp = HP - 1; hp >= 0; --hp)
#pragma unroll
            for (int i = 0; i < NTW; ++i) mma(part[(kt + h2) % KS][mt][i], a, &bfr[kt / 2][hp][i][2 * h2], (Op*)nullptr);
        }
      }
    }
    sum_slices(part, acc);
  }
};

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
  // h_in of a step for the dR MMA: [DH][HBW words] (row = unit, batch columns in pairs; HBW % 8 = 4:
  // the B fragments are conflict-free)
  static constexpr int HBW = BT / 2 + (12 - (BT / 2) % 8) % 8;
  // FRNN_BWD_DR16: DR16 the mode (0: m16n8k8); DR_INSTEP: K pairs two 8-column chunks of a step (an
  // even number of chunks DR_NK); DR_XSTEP: K pairs two steps (an odd number), where the pair's A
  // halves (4 DR_NK DR_MPW HP registers) fit: ptxas (sm_90, the 56 prebuild_fused configurations)
  // spilled only GRU 48 W3 BT8 RREG9 (DR_REGS + those 160: 210 -> 255 registers, 12 bytes of
  // spills), none up to 148 (slstm 64 W8: 223 -> 228); elsewhere m16n8k8 as with 0. With DR_XSTEP
  // h_in of a step pair sits in [DH][HBW2] words, word (chunk * 4 + t4) * 2 + slot = columns 2 t4,
  // 2 t4 + 1 of the chunk in the pair's step `slot` (one 64-bit B fragment per m16n8k16; HBW2 = 8
  // mod 32: conflict-free per half warp), double-buffered by pair parity
  static constexpr int DR_NK = BT / 8, DR16 = DR ? FRNN_BWD_DR16 : 0;
  static constexpr bool DR_INSTEP = DR16 != 0 && DR_NK % 2 == 0;
  static constexpr bool DR_XSTEP = DR16 != 0 && DR_NK % 2 == 1 && DR_REGS + 4 * DR_NK * DR_MPW * HP <= 150;
  static constexpr int HBW2 = BT + (40 - BT % 32) % 32;
  static constexpr int HB_WORDS = 2 * DH * (DR_XSTEP ? HBW2 : HBW);  // both buffers
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
  // 128 KiB, at least 2
  __host__ __device__ static constexpr int stages(size_t stage_bytes) {
    return (int)(128 * 1024 / stage_bytes) >= 6 ? 6 : ((int)(128 * 1024 / stage_bytes) <= 2 ? 2 : (int)(128 * 1024 / stage_bytes));
  }
  // forward: a_smem | xs [2][HP][BT][XF] | NS stages of gx [BT][GXR]
  static constexpr size_t F_STAGE = align16((size_t)BT * GXR * 2);
  static constexpr int F_NS = stages(F_STAGE);
  static constexpr size_t F_A = align16(Fwd::smem_a_bytes()), F_X = align16((size_t)2 * HP * BT * XF * 2);
  // FRNN_SAVE_V2: after the ring, the staging of a step's rhb [2][BT][RHR] f32 and states_in
  // [2][S][BT][STR] f32 (double-buffered by step parity; RHR, STR = 4 mod 16 floats: a lane's
  // scalar writes are conflict-free), where it fits
  static constexpr size_t F_SR = align16((size_t)2 * BT * RHR * 4), F_SS = align16((size_t)2 * S * BT * STR * 4);
  static constexpr bool F_STAGED = FRNN_SAVE_V2 != 0 && F_A + F_X + F_NS * F_STAGE + F_SR + F_SS <= 200 * 1024;
  __host__ __device__ static constexpr size_t fwd_smem() {
    return F_A + F_X + F_NS * F_STAGE + (F_STAGED ? F_SR + F_SS : 0);
  }
  // backward stage: gx [BT][GXR] | rhb [BT][RHR] f32 | states_in [S][BT][STR] f32 | dh [BT][DHR]
  static constexpr size_t B_GX = 0, B_RH = align16((size_t)BT * GXR * 2);
  static constexpr size_t B_ST = B_RH + align16((size_t)BT * RHR * 4);
  static constexpr size_t B_DH = B_ST + align16((size_t)S * BT * STR * 4);
  static constexpr size_t B_STAGE = B_DH + align16((size_t)BT * DHR * 2);
  static constexpr int B_NS = stages(B_STAGE);
  static constexpr size_t B_A = align16(Bwd::smem_a_bytes()), B_X = align16((size_t)2 * XT * 2);
  // after the ring: the K-split exchange [WARPS][NTW][32] float2 | h_in [2][DH][HBW] words (DR) |
  // db partials [WN][G * DH] floats (DR)
  static constexpr size_t B_XCH = KSPLIT == 2 ? align16((size_t)WARPS * NTW * 32 * 8) : 0;
  static constexpr size_t B_HB = DR ? align16((size_t)HB_WORDS * 4) : 0;
  static constexpr size_t B_DB = DR ? align16((size_t)WN * G * DH * 4) : 0;
  static constexpr size_t B_TAIL = B_A + B_X + B_NS * B_STAGE;
  __host__ __device__ static constexpr size_t bwd_smem() { return B_TAIL + B_XCH + B_HB + B_DB; }
};

struct FwdArgs {
  int T, B, NH, reverse;
  const void* gx; const void* R; const void* b; const void* s0;
  void* h; void* sT; float* states_in; float* rhb;  // states_in, rhb: nullptr = save=false
};

struct BwdArgs {
  int T, B, NH, reverse;
  const void* dh; const void* dsT; const void* gx; const void* R;
  const float* states_in; const float* rhb;
  void* dgx; float* drhb; void* ds0;
  float* dw;  // DR: per batch tile [NBT][NH][G * DH * DH (dR) + G * DH (db)]; else drhb is written
};

// One thread's share of streaming a tile of ROWS rows x ROW_CHUNKS 16-byte chunks into a ring
// stage each step: its chunk slots' shared addresses (stage 0) and global addresses (the first
// step) are fixed before the time loop; `issue` adds the stage's byte offset, `advance` moves the
// global addresses by one step (a 64-bit add per chunk: no per-step index math, no predicates but
// for a partial last slot). A row past the batch copies the tile's first row (src_of gives its
// address): finite values for the columns that compute and store nothing.
template <int THREADS, int ROWS, int ROW_CHUNKS>
struct RowCopy {
  static constexpr int TOTAL = ROWS * ROW_CHUNKS, CH = (TOTAL + THREADS - 1) / THREADS;
  static constexpr bool PARTIAL = TOTAL % THREADS != 0;  // the last slot is past the tile for some threads
  uint32_t dst[CH];
  const unsigned char* src[CH];
  bool last_in;
  // row r lands at dst_base + r * dst_row; src_of(r): its global address at the first step
  template <typename F>
  __device__ void init(uint32_t dst_base, int dst_row, F src_of, int tid) {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      const int i = k * THREADS + tid, r = i < TOTAL ? i / ROW_CHUNKS : 0, c = i % ROW_CHUNKS;
      dst[k] = dst_base + r * dst_row + c * 16;
      src[k] = src_of(r) + c * 16;
    }
    last_in = (CH - 1) * THREADS + tid < TOTAL;
  }
  __device__ void issue(uint32_t stage_off) const {
#pragma unroll
    for (int k = 0; k < CH; ++k)
      if (!PARTIAL || k < CH - 1 || last_in) cp_async16(dst[k] + stage_off, src[k]);
  }
  __device__ void advance(long long bytes) {
#pragma unroll
    for (int k = 0; k < CH; ++k) src[k] += bytes;
  }
};

// One thread's share of writing a tile of ROWS rows x ROW_CHUNKS 16-byte chunks from shared memory
// (a double buffer: `flush` takes the buffer's byte offset) to global rows each step (FRNN_SAVE_V2):
// as RowCopy, the chunk slots' shared addresses and the first step's global addresses are fixed
// before the time loop and `advance` moves the global ones by a step; a row past the batch
// (dst_of gives nullptr) is never written.
template <int THREADS, int ROWS, int ROW_CHUNKS>
struct RowStore {
  static constexpr int TOTAL = ROWS * ROW_CHUNKS, CH = (TOTAL + THREADS - 1) / THREADS;
  uint32_t src[CH];
  unsigned char* dst[CH];
  bool in[CH];  // the slot is in the tile and its row in the batch
  // row r sits at src_base + r * src_row (buffer 0); dst_of(r): its global address at the first
  // step, nullptr past the batch
  template <typename F>
  __device__ void init(uint32_t src_base, int src_row, F dst_of, int tid) {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      const int i = k * THREADS + tid, r = i < TOTAL ? i / ROW_CHUNKS : 0, c = i % ROW_CHUNKS;
      unsigned char* row = dst_of(r);
      src[k] = src_base + r * src_row + c * 16;
      dst[k] = row + c * 16;
      in[k] = i < TOTAL && row != nullptr;
    }
  }
  __device__ void flush(uint32_t buf_off) const {
#pragma unroll
    for (int k = 0; k < CH; ++k)
      if (in[k]) {
        uint32_t v0, v1, v2, v3;
        asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v0), "=r"(v1), "=r"(v2), "=r"(v3) : "r"(src[k] + buf_off) : "memory");
        asm volatile("st.global.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"l"(dst[k]), "r"(v0), "r"(v1), "r"(v2), "r"(v3) : "memory");
      }
  }
  __device__ void advance(long long bytes) {
#pragma unroll
    for (int k = 0; k < CH; ++k) dst[k] += bytes;
  }
};

// The backward block's share of dR and db (Config::DR): warp w accumulates the m-tiles w, w + WARPS,
// ... of dR [(g, o)][u] (all DH / 8 n-tiles) on the tensor cores, one step at a time:
//   dR[(g, o)][u] += sum_n drhb[(g, o)][n] h_in[u][n]   (m16n8k8, K = 8 batch columns)
// A = drhb as the step's MMA pieces in shared memory X^T [HP][G * DH][XN] (ldmatrix), B = h_in
// rounded to the input dtype [DH][HBW words]; db[(g, o)] as fp32 sums of the lane's own elements.
template <typename C>
struct DrAcc {
  using Op = typename C::Op;
  static constexpr int MPW = C::DR ? C::DR_MPW : 1, NT = C::DR ? C::DR_NT : 1, G = C::G, DH = C::DH_, BT = C::BT_;
  float acc[MPW][NT][4];
  float db[C::JN][G];

  __device__ void zero() {
#pragma unroll
    for (int mt = 0; mt < MPW; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[mt][nt][r] = 0.0f;
#pragma unroll
    for (int jj = 0; jj < C::JN; ++jj)
#pragma unroll
      for (int g = 0; g < G; ++g) db[jj][g] = 0.0f;
  }

  // xsb: drhb pieces of one step, X^T [HP][G * DH][XN] (shared); hb: its h_in [DH][HBW] words (shared)
  __device__ void step(const Op* xsb, const uint32_t* hb, int warp, int lane) {
    const int gq = lane >> 2, t4 = lane & 3;
    const uint32_t xs_s = (uint32_t)__cvta_generic_to_shared(xsb);
    // two m-tiles per ldmatrix.x4 where both exist (lanes 16-31 address the second)
    constexpr bool X4 = MPW % 2 == 0 && C::DR_MT % C::WARPS_ == 0;
#pragma unroll
    for (int ks = 0; ks < BT / 8; ++ks) {
      uint32_t bf[NT];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) bf[nt] = hb[(nt * 8 + gq) * C::HBW + ks * 4 + t4];
#pragma unroll
      for (int mt = 0; mt < MPW; mt += X4 ? 2 : 1) {
        const int m = warp + mt * C::WARPS_;
        if (!X4 && C::DR_MT % C::WARPS_ != 0 && m >= C::DR_MT) break;
#pragma unroll
        for (int hp = 0; hp < C::HP; ++hp) {
          uint32_t a[4];  // A = drhb^T rows (g, o) of m-tile m (and m + WARPS), k = batch columns
          const int row = hp * G * DH + (X4 ? m + (lane >> 4) * C::WARPS_ : m) * 16 + (lane & 15);
          const uint32_t addr = xs_s + (uint32_t)((row * C::XN + ks * 8) * 2);
          if (X4) ldmatrix_x4(a, addr);
          else ldmatrix_x2(a, addr);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) mma_k8(acc[mt][nt], a, bf[nt], (Op*)nullptr);
          if (X4) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma_k8(acc[X4 ? mt + 1 : mt][nt], a + 2, bf[nt], (Op*)nullptr);
          }
        }
      }
    }
  }

#if FRNN_BWD_DR16
  // m16n8k16 dR (C::DR16). Fragments: A = drhb^T rows (g, o) of an m-tile x 16 k, B = h_in 16 k x
  // 8 units; a0, a1 / b0 hold k 0-7 (rows gq, gq + 8 / units gq), a2, a3 / b1 k 8-15, so a K = 16
  // MMA is the two m16n8k8 ones of its k halves in one: their A halves come from the same ldmatrix
  // (.x2: one m-tile, lanes 0-15 address its 16 rows) and their B words from the same hb words.
  static constexpr int NK = C::DR_NK, HP = C::HP;
  static constexpr bool X4 = MPW % 2 == 0 && C::DR_MT % C::WARPS_ == 0;  // two m-tiles per ldmatrix.x4
  // step pairs (C::DR_XSTEP): the n-tiles [0, NSPLIT) of a pair's MMAs go in the step after it, the
  // rest (mode 2) in the step after that
  static constexpr int NSPLIT = C::DR16 == 2 ? NT / 2 : NT;
  // A k-halves of the pair's first step (ak) and second (an): chunk ks of drhb, m-tile mt, piece hp
  uint32_t ak[NK][MPW][HP][2], an[NK][MPW][HP][2];

  __device__ void zero16() {
#pragma unroll
    for (int ks = 0; ks < NK; ++ks)
#pragma unroll
      for (int mt = 0; mt < MPW; ++mt)
#pragma unroll
        for (int hp = 0; hp < HP; ++hp)
#pragma unroll
          for (int r = 0; r < 2; ++r) ak[ks][mt][hp][r] = an[ks][mt][hp][r] = 0u;
  }

  // a = the k8 A fragments of one step's drhb (xsb: X^T [HP][G * DH][XN], shared), every chunk and
  // m-tile of the warp (as step())
  __device__ void load_a(uint32_t (&a)[NK][MPW][HP][2], const Op* xsb, int warp, int lane) const {
    const uint32_t xs_s = (uint32_t)__cvta_generic_to_shared(xsb);
#pragma unroll
    for (int ks = 0; ks < NK; ++ks)
#pragma unroll
      for (int mt = 0; mt < MPW; mt += X4 ? 2 : 1) {
        const int m = warp + mt * C::WARPS_;
        if (!X4 && C::DR_MT % C::WARPS_ != 0 && m >= C::DR_MT) break;
#pragma unroll
        for (int hp = 0; hp < HP; ++hp) {
          const int row = hp * G * DH + (X4 ? m + (lane >> 4) * C::WARPS_ : m) * 16 + (lane & 15);
          const uint32_t addr = xs_s + (uint32_t)((row * C::XN + ks * 8) * 2);
          if (X4) {
            uint32_t r[4];
            ldmatrix_x4(r, addr);
            a[ks][mt][hp][0] = r[0];
            a[ks][mt][hp][1] = r[1];
            a[ks][X4 ? mt + 1 : mt][hp][0] = r[2];
            a[ks][X4 ? mt + 1 : mt][hp][1] = r[3];
          } else {
            ldmatrix_x2(a[ks][mt][hp], addr);
          }
        }
      }
  }

  // acc[., nt] += (ak | an) (h_in of the pair's two steps) for the n-tiles nt in [NT0, NT1): K =
  // (chunk ks of the first step, the same chunk of the second); hbp: the pair's h_in [DH][HBW2] words
  template <int NT0, int NT1>
  __device__ void mma_pair(const uint32_t* hbp, int warp, int lane) {
    const int gq = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int ks = 0; ks < NK; ++ks) {
      uint32_t bf[NT][2];
#pragma unroll
      for (int nt = NT0; nt < NT1; ++nt) {
        const uint2 w = *reinterpret_cast<const uint2*>(hbp + (nt * 8 + gq) * C::HBW2 + (ks * 4 + t4) * 2);
        bf[nt][0] = w.x;  // the first step's columns 2 t4, 2 t4 + 1 (k 2 t4, 2 t4 + 1)
        bf[nt][1] = w.y;  // the second step's (k 2 t4 + 8, 2 t4 + 9)
      }
#pragma unroll
      for (int mt = 0; mt < MPW; ++mt) {
        const int m = warp + mt * C::WARPS_;
        if (C::DR_MT % C::WARPS_ != 0 && m >= C::DR_MT) break;
#pragma unroll
        for (int hp = 0; hp < HP; ++hp) {
          const uint32_t a[4] = {ak[ks][mt][hp][0], ak[ks][mt][hp][1], an[ks][mt][hp][0], an[ks][mt][hp][1]};
#pragma unroll
          for (int nt = NT0; nt < NT1; ++nt) mma(acc[mt][nt], a, bf[nt], (Op*)nullptr);
        }
      }
    }
  }

  // the last step alone (an odd number of steps): drhb xsb, h_in in slot 0 of the pair buffer hbp
  __device__ void single(const Op* xsb, const uint32_t* hbp, int warp, int lane) {
    const int gq = lane >> 2, t4 = lane & 3;
    load_a(ak, xsb, warp, lane);
#pragma unroll
    for (int ks = 0; ks < NK; ++ks) {
      uint32_t bf[NT];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) bf[nt] = hbp[(nt * 8 + gq) * C::HBW2 + (ks * 4 + t4) * 2];
#pragma unroll
      for (int mt = 0; mt < MPW; ++mt) {
        const int m = warp + mt * C::WARPS_;
        if (C::DR_MT % C::WARPS_ != 0 && m >= C::DR_MT) break;
#pragma unroll
        for (int hp = 0; hp < HP; ++hp)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) mma_k8(acc[mt][nt], ak[ks][mt][hp], bf[nt], (Op*)nullptr);
      }
    }
  }

  // one step (an even number of chunks NK): K = chunks 2c, 2c + 1 per MMA, A from one ldmatrix.x4
  // per m-tile (lanes 16-31 address the second chunk); xsb, hb as step()
  __device__ void step16(const Op* xsb, const uint32_t* hb, int warp, int lane) {
    const int gq = lane >> 2, t4 = lane & 3;
    const uint32_t xs_s = (uint32_t)__cvta_generic_to_shared(xsb);
#pragma unroll
    for (int c = 0; c < NK / 2; ++c) {
      uint32_t bf[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        bf[nt][0] = hb[(nt * 8 + gq) * C::HBW + 8 * c + t4];      // chunk 2c: k 2 t4, 2 t4 + 1
        bf[nt][1] = hb[(nt * 8 + gq) * C::HBW + 8 * c + 4 + t4];  // chunk 2c + 1: k 2 t4 + 8, 2 t4 + 9
      }
#pragma unroll
      for (int mt = 0; mt < MPW; ++mt) {
        const int m = warp + mt * C::WARPS_;
        if (C::DR_MT % C::WARPS_ != 0 && m >= C::DR_MT) break;
#pragma unroll
        for (int hp = 0; hp < HP; ++hp) {
          uint32_t a[4];
          const int row = hp * G * DH + m * 16 + (lane & 15);
          ldmatrix_x4(a, xs_s + (uint32_t)((row * C::XN + 16 * c + (lane >> 4) * 8) * 2));
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) mma(acc[mt][nt], a, bf[nt], (Op*)nullptr);
        }
      }
    }
  }
#endif

  // the block's partials: dw [G * DH][DH] (dR) then [G * DH] (db); dbs: [WN][G * DH] floats (shared)
  __device__ void store(float* dw, float* dbs, int warp, int lane, int ug, int rh, int wn, int tid) {
    const int gq = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MPW; ++mt) {
      const int m = warp + mt * C::WARPS_;
      if (C::DR_MT % C::WARPS_ != 0 && m >= C::DR_MT) break;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        float* row = dw + (size_t)(m * 16 + gq) * DH + nt * 8 + 2 * t4;
        *reinterpret_cast<float2*>(row) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
        *reinterpret_cast<float2*>(row + 8 * DH) = make_float2(acc[mt][nt][2], acc[mt][nt][3]);
      }
    }
#pragma unroll
    for (int jj = 0; jj < C::JN; ++jj)
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float v = db[jj][g];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (t4 == 0) dbs[wn * G * DH + g * DH + ug * 16 + gq + 8 * (C::RH == 2 ? rh : jj)] = v;
      }
    __syncthreads();
    for (int k = tid; k < G * DH; k += C::THREADS) {
      float v = 0.0f;
      for (int w = 0; w < C::WN; ++w) v += dbs[w * G * DH + k];
      dw[(size_t)G * DH * DH + k] = v;
    }
  }
};

// SAVE: states_in and rhb are written (p.states_in, p.rhb not null), for the backward
template <typename TIn, typename Cell, int DH, int WARPS, int BT, int RREG, bool SAVE>
__global__ void __launch_bounds__(32 * WARPS, 1) forward_kernel(FwdArgs p) {
  using C = Config<TIn, Cell, DH, WARPS, BT, RREG>;
  using Gm = typename C::Fwd;
  using Op = typename C::Op;
  using M = typename C::Math;
  constexpr int G = C::G, S = C::S, HP = C::HP, NTW = C::NTW, NS = C::F_NS, XF = C::XF, GXR = C::GXR, E = C::E;
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* a_smem = reinterpret_cast<uint32_t*>(smem);
  Op* xs = reinterpret_cast<Op*>(smem + C::F_A);                   // [2][HP][BT][XF]
  unsigned char* ring = smem + C::F_A + C::F_X;                   // NS x gx [BT][GXR]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
  const int ug = warp % C::UG, rh = (warp / C::UG) % C::RH, nt0 = (warp / C::UG / C::RH) * NTW;
  const int nh = blockIdx.y, bt0 = blockIdx.x * BT;
  const int T = p.T, B = p.B, NH = p.NH, nb = B - bt0 < BT ? B - bt0 : BT;
  const TIn* R = static_cast<const TIn*>(p.R) + (size_t)nh * G * DH * DH;
  const TIn* bias = static_cast<const TIn*>(p.b) + (size_t)nh * G * DH;
  const int BND = B * NH * DH;  // one [B, NH, DH] slice (the module checks it fits an int)
  const int dstep = p.reverse ? -1 : 1, t_first = p.reverse ? T - 1 : 0;
  // gx rows (t = 0, bt0 + n, nh) and the bytes of one time step
  const unsigned char* gx0 = static_cast<const unsigned char*>(p.gx) + (((size_t)bt0 * NH + nh) * G * DH) * sizeof(TIn);
  const long long gx_t = (long long)B * NH * G * DH * sizeof(TIn);
  const size_t gx_row = (size_t)NH * G * DH * sizeof(TIn);
  RowCopy<C::THREADS, BT, G * DH * 2 / 16> gxc;
  gxc.init((uint32_t)__cvta_generic_to_shared(ring), GXR * 2,
           [&](int n) { return gx0 + (n < nb ? n : 0) * gx_row + (long long)t_first * gx_t; }, tid);
  uint32_t pf_stage = 0;  // the ring stage the next prefetch fills (bytes)
  // the gx stage of the next step in order (calls go step 0, 1, ...; none past T), one commit
  // group always
  auto prefetch = [&](int step) {
    if (step < T) gxc.issue(pf_stage);
    gxc.advance(dstep * gx_t);
    pf_stage = pf_stage + C::F_STAGE == NS * C::F_STAGE ? 0u : pf_stage + (uint32_t)C::F_STAGE;
    cp_async_commit();
  };
#pragma unroll 1
  for (int s = 0; s < NS - 1; ++s) prefetch(s);

  Gm gemm;  // C::fwd_a: tile mt = gate mt of the warp's 16 units, or gate pair mt of its 8
  auto r_at = [&](int g, int u, int k) { return In<TIn>::load(R[(g * DH + u) * DH + k]); };
  gemm.load([&](int mt, int r, int k) { return C::fwd_a(r_at, ug, rh, mt, r, k); }, a_smem, warp, lane);
  for (int i = tid; i < 2 * HP * BT * XF; i += C::THREADS) xs[i] = to_op(0.0f, (Op*)nullptr);
  __syncthreads();

  // the lane's elements (C::elem): n-tile nt0 + i, unit ug*16 + gq + 8j, column 2 t4 + c
  float st[E][S], bb[C::JN][G];
  int sidx[E];  // (b, nh, unit) offset in a [B, NH, DH] slice; -1: column past the batch
  int gidx[E];  // (b, nh, 0, unit) offset in a [B, NH, G, DH] slice
#pragma unroll
  for (int jj = 0; jj < C::JN; ++jj)
#pragma unroll
    for (int g = 0; g < G; ++g) bb[jj][g] = In<TIn>::load(bias[g * DH + ug * 16 + gq + 8 * (C::RH == 2 ? rh : jj)]);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const auto el = C::elem(e, rh);
    const int i = el.i, j = el.j, n = (nt0 + i) * 8 + 2 * t4 + el.c, u = ug * 16 + gq + 8 * j;
    sidx[e] = n < nb ? ((bt0 + n) * NH + nh) * DH + u : -1;
    gidx[e] = ((bt0 + n) * NH + nh) * G * DH + u;
#pragma unroll
    for (int s = 0; s < S; ++s) st[e][s] = 0.0f;  // a column past the batch computes on zeros
    if (sidx[e] >= 0) {
      const TIn* s0 = static_cast<const TIn*>(p.s0);
#pragma unroll
      for (int s = 0; s < S; ++s) st[e][s] = In<TIn>::load(s0[s * BND + sidx[e]]);
      Op pc[HP];
      split<Op, HP>(st[e][0], pc);
#pragma unroll
      for (int hp = 0; hp < HP; ++hp) xs[(hp * BT + n) * XF + u] = pc[hp];
    }
  }
  // a step's outputs (h; with SAVE, states_in and rhb), through per-element pointers that move one
  // step per store. Where they go in the step (measured on the H100, LSTM 12x64 / 24x32 bf16 B16):
  // with SAVE during the next step's MMAs (forward 0.579 / 0.303 ms, at the step's end 0.594 /
  // 0.291); without, h at the step's end and the prefetch between the fragment loads and the MMAs
  // (0.323 / 0.187 ms, the SAVE placement 0.339 / 0.217)
  TIn* hpe[E];
  float *spe[E], *rpe[E];
  float hv[E], sin_[E][S], rv[E][G];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    hpe[e] = static_cast<TIn*>(p.h) + (long long)t_first * BND + sidx[e];
    spe[e] = p.states_in + (long long)t_first * S * BND + sidx[e];
    rpe[e] = p.rhb + (long long)t_first * G * BND + gidx[e];
  }
  auto store_outputs = [&]() {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if (sidx[e] >= 0) {
        *hpe[e] = In<TIn>::store(hv[e]);
        if (SAVE) {
#pragma unroll
          for (int s = 0; s < S; ++s) spe[e][s * BND] = sin_[e][s];
#pragma unroll
          for (int g = 0; g < G; ++g) rpe[e][g * DH] = rv[e][g];
        }
      }
      hpe[e] += (long long)dstep * BND;
      spe[e] += (long long)dstep * S * BND;
      rpe[e] += (long long)dstep * G * BND;
    }
  };
  // FRNN_SAVE_V2 (C::F_STAGED): the cells write rhb and states_in to the staging buffer of the
  // step's parity; the next step (or the end) writes the buffer and h (piece 0 of the next step's X
  // is h rounded to the input dtype: the same value) as 16-byte row chunks. The buffer written in
  // step k is read in step k + 1 and written again in step k + 2: one barrier between each.
  constexpr bool STG = SAVE && C::F_STAGED;
  float* srs = reinterpret_cast<float*>(smem + C::F_A + C::F_X + NS * C::F_STAGE);               // [2][BT][RHR]
  float* sss = reinterpret_cast<float*>(smem + C::F_A + C::F_X + NS * C::F_STAGE + C::F_SR);     // [2][S][BT][STR]
  RowStore<C::THREADS, BT, G * DH * 4 / 16> rhw;     // rhb rows [BT][G * DH] f32
  RowStore<C::THREADS, S * BT, DH * 4 / 16> stw;     // states_in rows [S][BT][DH] f32
  RowStore<C::THREADS, BT, DH * sizeof(TIn) / 16> hw;  // h rows [BT][DH]
  if (STG) {
    const uint32_t smem_s = (uint32_t)__cvta_generic_to_shared(smem);
    rhw.init(smem_s + (uint32_t)(C::F_A + C::F_X + NS * C::F_STAGE), C::RHR * 4, [&](int n) {
      return n < nb ? reinterpret_cast<unsigned char*>(p.rhb + (long long)t_first * G * BND + ((size_t)(bt0 + n) * NH + nh) * G * DH)
                    : nullptr;
    }, tid);
    stw.init(smem_s + (uint32_t)(C::F_A + C::F_X + NS * C::F_STAGE + C::F_SR), C::STR * 4, [&](int r) {
      const int s = r / BT, n = r % BT;
      return n < nb ? reinterpret_cast<unsigned char*>(p.states_in + (long long)t_first * S * BND + (long long)s * BND +
                                                       ((size_t)(bt0 + n) * NH + nh) * DH)
                    : nullptr;
    }, tid);
    hw.init(smem_s + (uint32_t)C::F_A, XF * 2, [&](int n) {
      return n < nb ? reinterpret_cast<unsigned char*>(static_cast<TIn*>(p.h) + (long long)t_first * BND + ((size_t)(bt0 + n) * NH + nh) * DH)
                    : nullptr;
    }, tid);
  }
  // the outputs of the step whose rhb / states_in sit in staging buffer sb and whose h is X buffer xb
  auto flush = [&](int sb, int xb) {
    rhw.flush((uint32_t)(sb * BT * C::RHR * 4));
    stw.flush((uint32_t)(sb * S * BT * C::STR * 4));
    hw.flush((uint32_t)(xb * HP * BT * XF * 2));
    rhw.advance((long long)dstep * G * BND * 4);
    stw.advance((long long)dstep * S * BND * 4);
    hw.advance((long long)dstep * BND * (long long)sizeof(TIn));
  };
  uint32_t rd_stage = 0;  // the ring stage of this step (bytes)
  cp_async_wait<NS - 2>();
  __syncthreads();

#pragma unroll 1
  for (int step = 0; step < T; ++step) {
    const int cur = step & 1;
    // this step's gx (landed before the last barrier), read before the MMAs: off the critical path
    const Op* gxs = reinterpret_cast<const Op*>(ring + rd_stage);
    rd_stage = rd_stage + C::F_STAGE == NS * C::F_STAGE ? 0u : rd_stage + (uint32_t)C::F_STAGE;
    float gxe[E][G];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const auto el = C::elem(e, rh);
      const int n = (nt0 + el.i) * 8 + 2 * t4 + el.c, u = ug * 16 + gq + 8 * el.j;
#pragma unroll
      for (int g = 0; g < G; ++g) gxe[e][g] = In<TIn>::load(gxs[n * GXR + g * DH + u]);
    }
    float acc[C::FMT][NTW][4];
    // the prefetch fills the stage step - 1 used (every warp is past it)
    gemm.template run<BT, XF>(a_smem, xs + cur * HP * BT * XF, nt0, warp, lane, acc, [&]() {
      if (!SAVE) prefetch(step + NS - 1);
    });
    if (SAVE) {
      prefetch(step + NS - 1);
      if (STG) {
        if (step > 0) flush(cur ^ 1, cur);  // the last step's (its h is this step's X)
      } else if (step > 0) {
        store_outputs();  // the last step's
      }
    }
    Op* xn = xs + (cur ^ 1) * HP * BT * XF;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const auto el = C::elem(e, rh);
      const int n = (nt0 + el.i) * 8 + 2 * t4 + el.c, u = ug * 16 + gq + 8 * el.j;
      // branch-free: a column past the batch runs the cell too (on the copied first row of gx; its
      // results are never stored, and its h only meets its own column in R h)
      float gxv[G], sn[S];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        gxv[g] = gxe[e][g];
        rv[e][g] = C::gate(acc, g, el) + bb[el.jj][g];
        if (STG) srs[(cur * BT + n) * C::RHR + g * DH + u] = rv[e][g];
      }
#pragma unroll
      for (int s = 0; s < S; ++s) {
        sin_[e][s] = st[e][s];
        if (STG) sss[((cur * S + s) * BT + n) * C::STR + u] = st[e][s];
      }
      Cell::template forward<M>(gxv, rv[e], st[e], sn);
#pragma unroll
      for (int s = 0; s < S; ++s) st[e][s] = sn[s];
      hv[e] = sn[0];
      Op pc[HP];
      split<Op, HP>(sn[0], pc);
#pragma unroll
      for (int hp = 0; hp < HP; ++hp) xn[(hp * BT + n) * XF + u] = pc[hp];
    }
    if (!SAVE) store_outputs();  // this step's h
    cp_async_wait<NS - 2>();  // this thread's copies of step + 1 landed; the barrier shows them to all
    __syncthreads();
  }
  if (STG && T > 0) flush((T - 1) & 1, T & 1);  // the last step's (its h is X buffer T & 1)
  else if (SAVE && T > 0) store_outputs();
  cp_async_wait<0>();
  TIn* sT = static_cast<TIn*>(p.sT);
#pragma unroll
  for (int e = 0; e < E; ++e)
    if (sidx[e] >= 0)
#pragma unroll
      for (int s = 0; s < S; ++s) sT[s * BND + sidx[e]] = In<TIn>::store(st[e][s]);
}

template <typename TIn, typename Cell, int DH, int WARPS, int BT, int RREG>
__global__ void __launch_bounds__(32 * WARPS, 1) backward_kernel(BwdArgs p) {
  using C = Config<TIn, Cell, DH, WARPS, BT, RREG>;
  using Gm = typename C::Bwd;
  using Op = typename C::Op;
  using M = typename C::Math;
  constexpr int G = C::G, S = C::S, HP = C::HP, NTW = C::NTW, NS = C::B_NS, XN = C::XN, XT = C::XT, E = C::E;
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* a_smem = reinterpret_cast<uint32_t*>(smem);
  Op* xs = reinterpret_cast<Op*>(smem + C::B_A);                   // [2][HP][G * DH][XN] (X^T)
  unsigned char* ring = smem + C::B_A + C::B_X;                   // NS x (gx, rhb, states_in, dh)
  const uint32_t xs_s = (uint32_t)__cvta_generic_to_shared(xs);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
  const int ug = warp % C::UG, rh = (warp / C::UG) % C::RH, nt0 = (warp / C::UG / C::RH) * NTW;
  const int nh = blockIdx.y, bt0 = blockIdx.x * BT;
  const int T = p.T, B = p.B, NH = p.NH, nb = B - bt0 < BT ? B - bt0 : BT;
  const TIn* R = static_cast<const TIn*>(p.R) + (size_t)nh * G * DH * DH;
  const int BND = B * NH * DH;
  // processing order: reverse time of the forward
  const int dstep = p.reverse ? 1 : -1, t_first = p.reverse ? 0 : T - 1;
  const size_t gxe = (((size_t)bt0 * NH + nh) * G * DH);  // element offset of (t=0, bt0, nh) in gx / rhb
  const long long gx_t = (long long)B * NH * G * DH;  // elements per step of gx / rhb
  const unsigned char* gx0 = static_cast<const unsigned char*>(p.gx) + (gxe + t_first * gx_t) * sizeof(TIn);
  const unsigned char* rh0 = reinterpret_cast<const unsigned char*>(p.rhb + gxe + t_first * gx_t);
  const unsigned char* st0 = reinterpret_cast<const unsigned char*>(p.states_in + ((size_t)bt0 * NH + nh) * DH +
                                                                    (long long)t_first * S * BND);
  const unsigned char* dh0 = static_cast<const unsigned char*>(p.dh) +
                             (((size_t)bt0 * NH + nh) * DH + (long long)t_first * BND) * sizeof(TIn);
  const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
  RowCopy<C::THREADS, BT, G * DH * 2 / 16> gxc;      // gx [BT][G*DH]
  RowCopy<C::THREADS, BT, G * DH * 4 / 16> rhc;      // rhb [BT][G*DH] f32
  RowCopy<C::THREADS, S * BT, DH * 4 / 16> stc;      // states_in [S][BT][DH] f32
  RowCopy<C::THREADS, BT, DH * 2 / 16> dhc;          // dh [BT][DH]
  // rows past the batch copy the tile's first row (RowCopy)
  gxc.init(ring_s + C::B_GX, C::GXR * 2, [&](int n) { return gx0 + (n < nb ? n : 0) * (size_t)NH * G * DH * sizeof(TIn); }, tid);
  rhc.init(ring_s + C::B_RH, C::RHR * 4, [&](int n) { return rh0 + (n < nb ? n : 0) * (size_t)NH * G * DH * 4; }, tid);
  stc.init(ring_s + C::B_ST, C::STR * 4, [&](int r) {
    const int s = r / BT, n = r % BT;
    return st0 + ((size_t)s * BND + (size_t)(n < nb ? n : 0) * NH * DH) * 4;
  }, tid);
  dhc.init(ring_s + C::B_DH, C::DHR * 2, [&](int n) { return dh0 + (n < nb ? n : 0) * (size_t)NH * DH * sizeof(TIn); }, tid);
  uint32_t pf_stage = 0;  // the ring stage the next prefetch fills (bytes)
  // the stage of the next step in order (calls go step 0, 1, ...; none past T), one commit group always
  auto prefetch = [&](int step) {
    if (step < T) {
      gxc.issue(pf_stage);
      rhc.issue(pf_stage);
      stc.issue(pf_stage);
      dhc.issue(pf_stage);
    }
    gxc.advance(dstep * gx_t * (long long)sizeof(TIn));
    rhc.advance(dstep * gx_t * 4);
    stc.advance((long long)dstep * S * BND * 4);
    dhc.advance((long long)dstep * BND * (long long)sizeof(TIn));
    pf_stage = pf_stage + C::B_STAGE == NS * C::B_STAGE ? 0u : pf_stage + (uint32_t)C::B_STAGE;
    cp_async_commit();
  };
#pragma unroll 1
  for (int s = 0; s < NS - 1; ++s) prefetch(s);

  Gm gemm;  // A[r][(g, o)] = R[g][o][ug*16 + r]; a K-split pair: the first or the second half of K
  gemm.load([&](int, int r, int k) { return In<TIn>::load(R[k * DH + ug * 16 + r]); }, a_smem, warp, lane,
            C::KSPLIT == 2 ? rh * C::BKT : 0);
  for (int i = tid; i < 2 * XT; i += C::THREADS) xs[i] = to_op(0.0f, (Op*)nullptr);
  // in-kernel dR / db (C::DR): h_in of each step as MMA operand, double-buffered [2][DH][HBW]
  // words, zero before the first step (its dR MMAs add zeros). Compile-time, not p.dw != nullptr:
  // a runtime test would put the dR MMAs in a block of their own, away from the cells
  constexpr bool dr_on = C::DR;
  uint32_t* hb = reinterpret_cast<uint32_t*>(smem + C::B_TAIL + C::B_XCH);
  if (C::DR)
    for (int i = tid; i < C::HB_WORDS; i += C::THREADS) hb[i] = 0u;
  DrAcc<C> dr;
  if (C::DR) dr.zero();
#if FRNN_BWD_DR16
  if (C::DR_XSTEP) dr.zero16();  // the pair before the first: A halves zero (and its h_in buffer)
#endif
  // a K-split pair adds the partner's half of the lane's rows of R^T drhb (after the exchange both
  // halves of acc hold the sums, so C::pick needs no change)
  float2* xch = reinterpret_cast<float2*>(smem + C::B_TAIL);  // [WARPS][NTW][32]
  const int wn = warp / C::UG / C::RH, partner = warp + (rh ? -C::UG : C::UG);
  auto exchange = [&](float (&acc)[1][NTW][4]) {
    if (C::KSPLIT == 2) {
#pragma unroll
      for (int i = 0; i < NTW; ++i)
        xch[(warp * NTW + i) * 32 + lane] = rh ? make_float2(acc[0][i][0], acc[0][i][1]) : make_float2(acc[0][i][2], acc[0][i][3]);
      pair_barrier(1 + ug + C::UG * wn);
#pragma unroll
      for (int i = 0; i < NTW; ++i) {
        const float2 v = xch[(partner * NTW + i) * 32 + lane];
        const float k0 = (rh ? acc[0][i][2] : acc[0][i][0]) + v.x, k1 = (rh ? acc[0][i][3] : acc[0][i][1]) + v.y;
        acc[0][i][0] = acc[0][i][2] = k0;
        acc[0][i][1] = acc[0][i][3] = k1;
      }
    }
  };

  float ds[E][S];
  int sidx[E], gidx[E];  // offsets in a [B, NH, DH] and a [B, NH, G, DH] slice (sidx -1: past the batch)
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const auto el = C::elem(e, rh);
    const int i = el.i, j = el.j, n = (nt0 + i) * 8 + 2 * t4 + el.c, u = ug * 16 + gq + 8 * j;
    sidx[e] = n < nb ? ((bt0 + n) * NH + nh) * DH + u : -1;
    gidx[e] = ((bt0 + n) * NH + nh) * G * DH + u;
#pragma unroll
    for (int s = 0; s < S; ++s) ds[e][s] = 0.0f;  // a column past the batch computes on zeros
    if (sidx[e] >= 0) {
      const TIn* dsT = static_cast<const TIn*>(p.dsT);
#pragma unroll
      for (int s = 0; s < S; ++s) ds[e][s] = In<TIn>::load(dsT[s * BND + sidx[e]]);
    }
  }
  // dgx of a step is stored at the step's end, after its drhb (the next step's operand), through
  // per-element pointers that move one step per store (no per-step index math)
  float dgp[E][G];
  TIn* dge[E];
  float mk[E];  // 1 for a column in the batch, 0 past it (its db share)
#pragma unroll
  for (int e = 0; e < E; ++e) {
    dge[e] = static_cast<TIn*>(p.dgx) + (long long)t_first * G * BND + gidx[e];
    mk[e] = sidx[e] >= 0 ? 1.0f : 0.0f;
  }
  auto store_dgx = [&]() {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if (sidx[e] >= 0)
#pragma unroll
        for (int g = 0; g < G; ++g) dge[e][g * DH] = In<TIn>::store(dgp[e][g]);
      dge[e] += (long long)dstep * G * BND;
    }
  };
  uint32_t rd_stage = 0;  // the ring stage of this step (bytes)
  cp_async_wait<NS - 2>();
  __syncthreads();

#if FRNN_BWD_DR16
  // one step; par: Par<its parity> where the loop runs step pairs (C::DR_XSTEP), else Par<-1>
  auto body = [&](const int step, auto par) {
    constexpr int PAR = decltype(par)::value;
    const int t = t_first + dstep * step, cur = PAR >= 0 ? PAR : step & 1;
    // step pairs: this step's h_in goes to the buffer of its pair (slot `cur`), the dR MMAs read the
    // pair before's (hbr)
    uint32_t* hbw = hb + ((step >> 1) & 1) * DH * C::HBW2;
#else
#pragma unroll 1
  for (int step = 0; step < T; ++step) {
    const int t = t_first + dstep * step, cur = step & 1;
#endif
    // R^T drhb of the step before (zero at the first): its fragments first, right after the barrier
    float acc[1][NTW][4];
    // the prefetch (into the stage step - 1 used: every warp is past it) between the fragment loads
    // and the MMAs; this step's dgx goes out at the step's end. Measured on the H100 (LSTM 12x64 bf16
    // B16, backward kernel): 0.805 ms; prefetch and the last step's dgx after the MMAs, before the
    // K-split exchange: 0.954 (the pointer registers of the stores and copies waited on the LSU
    // reading them: ncu long-scoreboard stalls on register moves, 27% of the samples); both before
    // the MMAs 0.962; prefetch first, dgx at the end 0.808; the dR MMAs before the exchange 0.820
    gemm.template run_t<XN>(a_smem, xs_s + (uint32_t)(cur * XT * 2), nt0, warp, lane, acc,
                            [&]() { prefetch(step + NS - 1); });
    // this step's inputs (landed before the last barrier): the cell's gate math does not wait for
    // R^T drhb and can overlap it
    const unsigned char* stage = ring + rd_stage;
    rd_stage = rd_stage + C::B_STAGE == NS * C::B_STAGE ? 0u : rd_stage + (uint32_t)C::B_STAGE;
    const Op* gxs = reinterpret_cast<const Op*>(stage + C::B_GX);
    const float* rhs = reinterpret_cast<const float*>(stage + C::B_RH);
    const float* sts = reinterpret_cast<const float*>(stage + C::B_ST);
    const Op* dhs = reinterpret_cast<const Op*>(stage + C::B_DH);
    float gxv[E][G], rhv[E][G], sv[E][S], dhv[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const auto el = C::elem(e, rh);
      const int n = (nt0 + el.i) * 8 + 2 * t4 + el.c, u = ug * 16 + gq + 8 * el.j;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        gxv[e][g] = In<TIn>::load(gxs[n * C::GXR + g * DH + u]);
        rhv[e][g] = rhs[n * C::RHR + g * DH + u];
      }
#pragma unroll
      for (int s = 0; s < S; ++s) sv[e][s] = sts[(s * BT + n) * C::STR + u];
      dhv[e] = In<TIn>::load(dhs[n * C::DHR + u]);
      if (C::DR && el.c == 1) {  // h_in of the element pair e - 1, e (columns n - 1, n; 0 past the batch)
        const int e0 = e > 0 ? e - 1 : 0;
        const float h0 = sidx[e0] >= 0 ? sv[e0][0] : 0.0f, h1 = sidx[e] >= 0 ? sv[e][0] : 0.0f;
#if FRNN_BWD_DR16
        if (C::DR_XSTEP)  // word (chunk * 4 + t4) * 2 + slot (C::HBW2)
          hbw[u * C::HBW2 + (n - 1) / 2 * 2 + cur] = pack2(to_op(h0, (Op*)nullptr), to_op(h1, (Op*)nullptr));
        else
#endif
        hb[(cur * DH + u) * C::HBW + (n - 1) / 2] = pack2(to_op(h0, (Op*)nullptr), to_op(h1, (Op*)nullptr));
      }
    }
    // in the MMAs' shadow: the ring stage step - 1 used (every warp is past it), the last step's dgx
    exchange(acc);
    // dR of the step before (its drhb is this step's X, its h_in in the other hb buffer; zeros at
    // the first step): no branch, so its MMAs share a basic block with the cells below and ptxas
    // interleaves them with the cells' latency chains
#if FRNN_BWD_DR16
    // step pairs (steps 2p, 2p + 1 the pair p): an odd step keeps the A halves of the step before (the
    // first of its pair); an even step loads the second's and runs the MMAs of pair p - 1 (its h_in
    // in hbr), mode 2 half of them, the odd step after it the other half (before it loads ak)
    if constexpr (C::DR_XSTEP) {
      const uint32_t* hbr = hb + (((step >> 1) & 1) ^ 1) * DH * C::HBW2;
      if constexpr (PAR == 0) {
        dr.load_a(dr.an, xs + cur * XT, warp, lane);
        dr.template mma_pair<0, DrAcc<C>::NSPLIT>(hbr, warp, lane);
      } else {
        dr.template mma_pair<DrAcc<C>::NSPLIT, DrAcc<C>::NT>(hbr, warp, lane);
        dr.load_a(dr.ak, xs + cur * XT, warp, lane);
      }
    } else if (dr_on) {
      if (C::DR_INSTEP) dr.step16(xs + cur * XT, hb + (cur ^ 1) * DH * C::HBW, warp, lane);
      else dr.step(xs + cur * XT, hb + (cur ^ 1) * DH * C::HBW, warp, lane);
    }
#else
    if (dr_on) dr.step(xs + cur * XT, hb + (cur ^ 1) * DH * C::HBW, warp, lane);
#endif
    uint32_t* xn = reinterpret_cast<uint32_t*>(xs + (cur ^ 1) * XT);  // this step's drhb, X^T word pairs
    float* drt = C::DRHB ? p.drhb + (size_t)t * G * BND : nullptr;
    float drv[E][G];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const auto el = C::elem(e, rh);
      // branch-free as in the forward: a column past the batch computes on the copied first row
      // (finite values; its h_in is zero, so its drhb adds nothing to dR) and stores nothing
      float dsn[S], dsi[S];
#pragma unroll
      for (int s = 0; s < S; ++s) dsn[s] = ds[e][s];
      dsn[0] += C::pick(acc[0][el.i], el) + dhv[e];
      Cell::template backward<M>(gxv[e], rhv[e], sv[e], dsn, dgp[e], drv[e], dsi);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (C::DR) dr.db[el.jj][g] = fmaf(mk[e], drv[e][g], dr.db[el.jj][g]);
        if (C::DRHB && sidx[e] >= 0) drt[gidx[e] + g * DH] = drv[e][g];
      }
#pragma unroll
      for (int s = 0; s < S; ++s) ds[e][s] = dsi[s];
    }
    // the element pairs (columns 2 t4, 2 t4 + 1 of one unit) as one word per (piece, gate)
#pragma unroll
    for (int e = 0; e < E; e += 2) {
      const auto el = C::elem(e, rh);
      const int n = (nt0 + el.i) * 8 + 2 * t4, u = ug * 16 + gq + 8 * el.j;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        Op p0[HP], p1[HP];
        split<Op, HP>(drv[e][g], p0);
        split<Op, HP>(drv[e + 1][g], p1);
#pragma unroll
        for (int hp = 0; hp < HP; ++hp) xn[((hp * G * DH + g * DH + u) * XN + n) / 2] = pack2(p0[hp], p1[hp]);
      }
    }
    store_dgx();
    cp_async_wait<NS - 2>();
    __syncthreads();
#if FRNN_BWD_DR16
  };
  if (C::DR_XSTEP) {
#pragma unroll 1
    for (int step = 0; step < T; step += 2) {
      body(step, Par<0>{});
      if (step + 1 < T) body(step + 1, Par<1>{});
    }
  } else {
#pragma unroll 1
    for (int step = 0; step < T; ++step) body(step, Par<-1>{});
  }
#else
  }
#endif
  cp_async_wait<0>();
  if (dr_on) {  // the last step's dR, then the block's partials
#if FRNN_BWD_DR16
    if (C::DR_XSTEP && T > 0) {
      // T even: pair (T - 2, T - 1) complete (ak from step T - 1), all its MMAs; T odd: mode 2's second
      // half of pair (T - 3, T - 2), then step T - 1 alone (slot 0 of its pair's buffer)
      const uint32_t* hbr = hb + (((T >> 1) & 1) ^ 1) * DH * C::HBW2;
      if ((T & 1) == 0) {
        dr.load_a(dr.an, xs, warp, lane);
        dr.template mma_pair<0, DrAcc<C>::NT>(hbr, warp, lane);
      } else {
        dr.template mma_pair<DrAcc<C>::NSPLIT, DrAcc<C>::NT>(hbr, warp, lane);
        dr.single(xs + XT, hb + (((T - 1) >> 1) & 1) * DH * C::HBW2, warp, lane);
      }
    } else if (T > 0) {
      if (C::DR_INSTEP) dr.step16(xs + (T & 1) * XT, hb + ((T - 1) & 1) * DH * C::HBW, warp, lane);
      else dr.step(xs + (T & 1) * XT, hb + ((T - 1) & 1) * DH * C::HBW, warp, lane);
    }
#else
    if (T > 0) dr.step(xs + (T & 1) * XT, hb + ((T - 1) & 1) * DH * C::HBW, warp, lane);
#endif
    dr.store(p.dw + ((size_t)blockIdx.x * NH + nh) * (G * DH * DH + G * DH),
             reinterpret_cast<float*>(smem + C::B_TAIL + C::B_XCH + C::B_HB), warp, lane, ug, rh, wn, tid);
  }
  // ds0 = ds + R^T drhb of the last step
  float acc[1][NTW][4];
  gemm.template run_t<XN>(a_smem, xs_s + (uint32_t)((T & 1) * XT * 2), nt0, warp, lane, acc, [] {});
  exchange(acc);
  TIn* ds0 = static_cast<TIn*>(p.ds0);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const auto el = C::elem(e, rh);
    if (sidx[e] < 0) continue;
    ds[e][0] += C::pick(acc[0][el.i], el);
#pragma unroll
    for (int s = 0; s < S; ++s) ds0[s * BND + sidx[e]] = In<TIn>::store(ds[e][s]);
  }
}

}  // namespace fused
}  // namespace flashrnn
