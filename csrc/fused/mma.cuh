// Tensor-core and copy primitives of the fused kernels (fused_block, fused_cluster, fused_grid):
// 16-bit input types and their fp32 conversions, hi/lo splits, mma.sync (m16n8k16 and m16n8k8),
// ldmatrix, warp-pair barriers, cp.async, and WarpGemm (one warp's share of a step's GEMM with its
// A fragments in registers and shared memory). Plain CUDA C++ (no torch headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

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

// barrier of the 64 threads of a warp pair (ids 1..15; 0 is __syncthreads)
__device__ __forceinline__ void pair_barrier(int id) { asm volatile("bar.sync %0, 64;\n" ::"r"(id) : "memory"); }

// 16-byte global -> shared copy (shared-window address) that bypasses the registers (and L1)
__device__ __forceinline__ void cp_async16(uint32_t smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(gmem));
}
// the same copy, issued only where `on` (a predicated instruction, no branch)
__device__ __forceinline__ void cp_async16_if(uint32_t smem, unsigned long long gmem, bool on) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %2, 0;\n@p cp.async.cg.shared.global [%0], [%1], 16;\n}\n" ::"r"(smem),
               "l"(gmem), "r"((int)on));
}
// 16 bytes shared -> global through registers, the store only where `on`
__device__ __forceinline__ void copy16_if(unsigned long long gmem, uint32_t smem, bool on) {
  uint32_t v[4];
  asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3]) : "r"(smem) : "memory");
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %5, 0;\n@p st.global.v4.b32 [%0], {%1,%2,%3,%4};\n}\n" ::"l"(gmem),
               "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3]), "r"((int)on) : "memory");
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
template <typename Op, int MT, int KT, int NTW, int HP, int RREG, int WARPS, int KTT = KT, int BRING = 0>
struct WarpGemm {
  static constexpr int NFRAG = MT * KT;
  static constexpr int NREG = RREG < NFRAG ? RREG : NFRAG;
  static constexpr int NSMEM = NFRAG - NREG;
  static constexpr bool GUARD = KTT % KT != 0;  // an odd split: the last k-tile may be past KTT
  // run(): B fragments held at once, in k-tiles (BRING > 0 and fewer than KT: the k-tiles stream
  // through a ring of BRING, which leaves registers to R; 0: all of them, loaded up front)
  static constexpr int BD = BRING > 0 && BRING < KT ? BRING : KT;
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

  // xs: this step's X [HP][BT][XK]; nt0: the warp's first n-tile. SEG > 0: X is cut along K into
  // segments of SEG columns (a multiple of 16), SEGS elements apart, each [HP][BT][XK]
  // `between()` runs after the fragment loads are issued and before the MMAs (work for the wait)
  template <int BT, int XK, int SEG = 0, int SEGS = 0, typename F>
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
    // the B fragments of k-tile kt sit in ring slot kt % BD: the first BD are loaded before
    // between(), each later one right after the MMAs of the k-tile BD before it (BD = KT up to
    // BRING k-tiles: all of them, loaded up front)
    uint32_t bfr[BD][HP][NTW][2];
    auto load_b = [&](int kt) {
#pragma unroll
      for (int hp = 0; hp < HP; ++hp)
#pragma unroll
        for (int i = 0; i < NTW; ++i) {
          const int k0 = (kt0 + kt) * 16;
          const int kseg = SEG > 0 ? (k0 / (SEG > 0 ? SEG : 1)) * SEGS + k0 % (SEG > 0 ? SEG : 1) : k0;
          const int base = ((hp * BT + (nt0 + i) * 8 + gq) * XK + kseg) / 2 + t4;
          bfr[kt % BD][hp][i][0] = xw[base];
          bfr[kt % BD][hp][i][1] = xw[base + 4];
        }
    };
#pragma unroll
    for (int kt = 0; kt < BD; ++kt) {
      if (GUARD && kt0 + kt >= KTT) break;
      load_b(kt);
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
          for (int i = 0; i < NTW; ++i) mma(part[kt % KS][mt][i], a, bfr[kt % BD][hp][i], (Op*)nullptr);
      }
      if (BD < KT && kt + BD < KT && (!GUARD || kt0 + kt + BD < KTT)) load_b(kt + BD);
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

}  // namespace fused
}  // namespace flashrnn
