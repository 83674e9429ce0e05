// fused_block: one persistent block per (head, batch tile) for all T steps; no inter-block sync.
// Plain CUDA C++ (no torch headers). Layouts as flashrnn_compile/reference.py:
//   gx [T, B, NH, G, DH] T_IN   R [NH, G, DH, DH] T_IN (R[n, g, out, in])   b [NH, G, DH] T_IN
//   s0, sT [S, B, NH, DH] T_IN  h [T, B, NH, DH] T_IN
//   states_in [T, S, B, NH, DH] fp32, rhb [T, B, NH, G, DH] fp32 (saved by the forward)
//   backward: dh [T, B, NH, DH], dsT [S, B, NH, DH] -> dgx [T, B, NH, G, DH], ds0 [S, B, NH, DH],
//             drhb [T, B, NH, G, DH] fp32 (dR and db are one GEMM / sum over it, outside)
//
// Forward step (block of head nh, batch columns bt0 .. bt0+BT):
//   gates[G*DH, BT] = R_nh[G*DH, DH] @ h[DH, BT]       mma.sync m16n8k16, fp32 accumulate
//   state = Cell::forward(gx_t, gates + b, state)      (csrc/common/cells.cuh, fp32)
// Backward step (reverse processing order):
//   dgx, drhb, ds = Cell::backward(..., ds + dh_t + R^T drhb_prev)
//   dh_rec[DH, BT] = R_nh^T[DH, G*DH] @ drhb[G*DH, BT] (warps split K; partials summed in order)
//
// Precision: MMA operands are 16-bit (bf16, or fp16 for fp16 inputs). R is exact in the input
// dtype for half inputs (RP = 1 piece); fp32 R is split into 3 bf16 pieces. The fp32 right-hand
// side (h or drhb) is split into HP pieces (2 for half inputs, 3 for fp32); the products with
// rp + hp <= MAXORD are summed, so R h is as exact as an fp32 product (as the alternating kernels).
//
// Template parameters = the planner's fused_block variables (csrc/fused/fused_block.cint):
//   WARPS, BATCH_TILE (BT), R_REG_TILES (4-register A fragments each warp keeps in registers for
//   all steps; the rest of R sits in shared memory in fragment order).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "common/cells.cuh"

namespace flashrnn {
namespace fused {

template <typename T> struct In;
template <> struct In<float> {
  using Op = __nv_bfloat16;  // MMA operand type
  static constexpr int RP = 3, HP = 3, MAXORD = 2;
  __device__ static float load(float x) { return x; }
  __device__ static float store(float x) { return x; }
};
template <> struct In<__nv_bfloat16> {
  using Op = __nv_bfloat16;
  static constexpr int RP = 1, HP = 2, MAXORD = 1;
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};
template <> struct In<__half> {
  using Op = __half;
  static constexpr int RP = 1, HP = 2, MAXORD = 1;
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

__host__ __device__ constexpr int gcd_c(int a, int b) { return b == 0 ? a : gcd_c(b, a % b); }

// out[BT][M + 4] (fp32, per K group) = A[M, K] @ X[K, BT]; A is held per warp as fragments
// (registers first, then shared memory), X in shared memory as HP pieces [HP][BT][K + 8].
// Warp w owns m-tiles (w % WM) * MT_W .. and k-tiles (w / WM) * KT_W ..; K group w / WM writes
// its own partial sum out + (w / WM) * OUT_GROUP.
template <typename TIn, int M, int K, int WARPS, int BT, int RREG>
struct BlockGemm {
  using Op = typename In<TIn>::Op;
  static constexpr int RP = In<TIn>::RP, HP = In<TIn>::HP, MAXORD = In<TIn>::MAXORD;
  static constexpr int M_TILES = M / 16, K_TILES = K / 16, NT = BT / 8;
  static constexpr int WM = gcd_c(WARPS, M_TILES), WK = WARPS / WM;
  static constexpr int MT_W = M_TILES / WM, KT_W = K_TILES / WK;
  static constexpr int NFRAG = MT_W * KT_W * RP;               // A fragments per warp
  static constexpr int NREG = RREG < NFRAG ? RREG : NFRAG;     // ... of them in registers
  static constexpr int NSMEM = NFRAG - NREG;                   // ... in shared memory
  static constexpr int XK = K + 8;                             // padded row of X (Op elements)
  static constexpr int OUT_M = M + 4;                          // padded row of out (floats)
  static constexpr int OUT_GROUP = BT * OUT_M;
  static_assert(M % 16 == 0 && K % 16 == 0 && BT % 8 == 0, "MMA tile shapes");
  static_assert(K_TILES % WK == 0, "the k-tiles split evenly over the warps' K groups");
  __host__ __device__ static constexpr size_t smem_a_bytes() { return (size_t)WARPS * NSMEM * 4 * 32 * 4; }
  __host__ __device__ static constexpr size_t smem_x_bytes() { return (size_t)HP * BT * XK * sizeof(Op); }
  __host__ __device__ static constexpr size_t smem_out_bytes() { return (size_t)WK * OUT_GROUP * 4; }

  uint32_t areg[NREG > 0 ? NREG : 1][4];

  // a(m, k) gives A's element as float; called once, before the time loop
  template <typename F>
  __device__ void load_a(F a, uint32_t* a_smem, int warp, int lane) {
    const int wm = warp % WM, wk = warp / WM, gq = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT_W; ++mt) {
#pragma unroll
      for (int kt = 0; kt < KT_W; ++kt) {
        const int m0 = (wm * MT_W + mt) * 16, k0 = (wk * KT_W + kt) * 16;
        Op pc[8][RP];
        const int rows[8] = {gq, gq, gq + 8, gq + 8, gq, gq, gq + 8, gq + 8};
        const int cols[8] = {2 * t4, 2 * t4 + 1, 2 * t4, 2 * t4 + 1, 2 * t4 + 8, 2 * t4 + 9, 2 * t4 + 8, 2 * t4 + 9};
#pragma unroll
        for (int e = 0; e < 8; ++e) split<Op, RP>(a(m0 + rows[e], k0 + cols[e]), pc[e]);
#pragma unroll
        for (int rp = 0; rp < RP; ++rp) {
          const int f = (mt * KT_W + kt) * RP + rp;
          uint32_t w[4];
#pragma unroll
          for (int r = 0; r < 4; ++r) w[r] = pack2(pc[2 * r][rp], pc[2 * r + 1][rp]);
          if (f < NREG) {
#pragma unroll
            for (int r = 0; r < 4; ++r) areg[f < NREG ? f : 0][r] = w[r];
          } else {
#pragma unroll
            for (int r = 0; r < 4; ++r) a_smem[((warp * NSMEM + (f - NREG)) * 4 + r) * 32 + lane] = w[r];
          }
        }
      }
    }
  }

  __device__ void run(const uint32_t* a_smem, const Op* xs, float* out, int warp, int lane) const {
    const int wm = warp % WM, wk = warp / WM, gq = lane >> 2, t4 = lane & 3;
    const uint32_t* xw = reinterpret_cast<const uint32_t*>(xs);
#pragma unroll
    for (int mt = 0; mt < MT_W; ++mt) {
      float acc[MAXORD + 1][NT][4];  // one accumulator per order rp + hp (hi*hi, hi*lo + lo*hi, ...)
#pragma unroll
      for (int p = 0; p <= MAXORD; ++p)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[p][nt][r] = 0.0f;
#pragma unroll
      for (int kt = 0; kt < KT_W; ++kt) {
        const int k0 = (wk * KT_W + kt) * 16;
        uint32_t bfr[HP][NT][2];
#pragma unroll
        for (int hp = 0; hp < HP; ++hp)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const int base = ((hp * BT + nt * 8 + gq) * XK + k0) / 2 + t4;
            bfr[hp][nt][0] = xw[base];
            bfr[hp][nt][1] = xw[base + 4];
          }
#pragma unroll
        for (int rp = 0; rp < RP; ++rp) {
          const int f = (mt * KT_W + kt) * RP + rp;
          uint32_t a[4];
          if (f < NREG) {
#pragma unroll
            for (int r = 0; r < 4; ++r) a[r] = areg[f < NREG ? f : 0][r];
          } else {
#pragma unroll
            for (int r = 0; r < 4; ++r) a[r] = a_smem[((warp * NSMEM + (f - NREG)) * 4 + r) * 32 + lane];
          }
#pragma unroll
          for (int hp = 0; hp < HP; ++hp) {
            if (rp + hp > MAXORD) continue;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma(acc[rp + hp][nt], a, bfr[hp][nt], (Op*)nullptr);
          }
        }
      }
      // sum the products, smallest first, and store the 16 x BT tile
      const int m = (wm * MT_W + mt) * 16 + gq;
      float* o = out + wk * OUT_GROUP;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int p = MAXORD; p >= 0; --p)
#pragma unroll
          for (int r = 0; r < 4; ++r) s[r] += acc[p][nt][r];
        const int n = nt * 8 + 2 * t4;
        o[n * OUT_M + m] = s[0];
        o[(n + 1) * OUT_M + m] = s[1];
        o[n * OUT_M + m + 8] = s[2];
        o[(n + 1) * OUT_M + m + 8] = s[3];
      }
    }
  }
};

template <typename TIn, typename Cell, int DH, int WARPS, int BT, int RREG>
struct Config {
  static constexpr int G = Cell::G, S = Cell::S, THREADS = 32 * WARPS;
  static constexpr int EPT = (DH * BT + THREADS - 1) / THREADS;  // pointwise elements per thread
  using Fwd = BlockGemm<TIn, G * DH, DH, WARPS, BT, RREG>;
  using Bwd = BlockGemm<TIn, DH, G * DH, WARPS, BT, RREG>;
  __host__ __device__ static constexpr size_t align16(size_t x) { return (x + 15) / 16 * 16; }
  __host__ __device__ static constexpr size_t fwd_smem() {
    return align16(Fwd::smem_a_bytes()) + align16(Fwd::smem_x_bytes()) + align16(Fwd::smem_out_bytes());
  }
  __host__ __device__ static constexpr size_t bwd_smem() {
    return align16(Bwd::smem_a_bytes()) + align16(Bwd::smem_x_bytes()) + align16(Bwd::smem_out_bytes());
  }
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
};

template <typename TIn, typename Cell, int DH, int WARPS, int BT, int RREG>
__global__ void __launch_bounds__(32 * WARPS, 1) forward_kernel(FwdArgs p) {
  using C = Config<TIn, Cell, DH, WARPS, BT, RREG>;
  using Gm = typename C::Fwd;
  using Op = typename Gm::Op;
  constexpr int G = C::G, S = C::S, EPT = C::EPT, HP = Gm::HP;
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* a_smem = reinterpret_cast<uint32_t*>(smem);
  Op* xs = reinterpret_cast<Op*>(smem + C::align16(Gm::smem_a_bytes()));                 // [HP][BT][DH + 8]
  float* gs = reinterpret_cast<float*>(smem + C::align16(Gm::smem_a_bytes()) + C::align16(Gm::smem_x_bytes()));  // [BT][G*DH + 4]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int nh = blockIdx.y, bt0 = blockIdx.x * BT;
  const int T = p.T, B = p.B, NH = p.NH;
  const TIn* R = static_cast<const TIn*>(p.R) + (size_t)nh * G * DH * DH;
  const TIn* gx = static_cast<const TIn*>(p.gx);
  const TIn* bias = static_cast<const TIn*>(p.b) + (size_t)nh * G * DH;
  const TIn* s0 = static_cast<const TIn*>(p.s0);
  TIn* hout = static_cast<TIn*>(p.h);
  TIn* sT = static_cast<TIn*>(p.sT);

  Gm gemm;
  gemm.load_a([&](int m, int k) { return In<TIn>::load(R[(size_t)m * DH + k]); }, a_smem, warp, lane);
  for (int i = tid; i < HP * BT * Gm::XK; i += blockDim.x) xs[i] = to_op(0.0f, (Op*)nullptr);
  __syncthreads();

  float st[EPT][S], bb[EPT][G], gxn[EPT][G];
  const size_t BND = (size_t)B * NH * DH;
#pragma unroll
  for (int j = 0; j < EPT; ++j) {
    const int e = tid + j * C::THREADS, o = e % DH, n = e / DH, b = bt0 + n;
    if (e < DH * BT && b < B) {
      const size_t sidx = ((size_t)b * NH + nh) * DH + o;
#pragma unroll
      for (int s = 0; s < S; ++s) st[j][s] = In<TIn>::load(s0[s * BND + sidx]);
#pragma unroll
      for (int g = 0; g < G; ++g) bb[j][g] = In<TIn>::load(bias[g * DH + o]);
      Op pc[HP];
      split<Op, HP>(st[j][0], pc);
#pragma unroll
      for (int hp = 0; hp < HP; ++hp) xs[(hp * BT + n) * Gm::XK + o] = pc[hp];
      if (T > 0) {
        const int t = p.reverse ? T - 1 : 0;
        const size_t gidx = (((size_t)t * B + b) * NH + nh) * G * DH + o;
#pragma unroll
        for (int g = 0; g < G; ++g) gxn[j][g] = In<TIn>::load(gx[gidx + g * DH]);
      }
    }
  }
  __syncthreads();

  for (int step = 0; step < T; ++step) {
    const int t = p.reverse ? T - 1 - step : step;
    gemm.run(a_smem, xs, gs, warp, lane);
    __syncthreads();
#pragma unroll
    for (int j = 0; j < EPT; ++j) {
      const int e = tid + j * C::THREADS, o = e % DH, n = e / DH, b = bt0 + n;
      if (e < DH * BT && b < B) {
        float gxv[G], rhb[G], sn[S];
#pragma unroll
        for (int g = 0; g < G; ++g) {
          gxv[g] = gxn[j][g];
          float acc = 0.0f;  // the K groups' partial sums, in a fixed order
#pragma unroll
          for (int w = Gm::WK - 1; w >= 0; --w) acc += gs[w * Gm::OUT_GROUP + n * Gm::OUT_M + g * DH + o];
          rhb[g] = acc + bb[j][g];
        }
        if (step + 1 < T) {  // prefetch the next step's gx (used after the next GEMM)
          const int tn = p.reverse ? t - 1 : t + 1;
          const size_t gidx = (((size_t)tn * B + b) * NH + nh) * G * DH + o;
#pragma unroll
          for (int g = 0; g < G; ++g) gxn[j][g] = In<TIn>::load(gx[gidx + g * DH]);
        }
        const size_t sidx = ((size_t)b * NH + nh) * DH + o;
        if (p.states_in != nullptr) {
#pragma unroll
          for (int s = 0; s < S; ++s) p.states_in[((size_t)t * S + s) * BND + sidx] = st[j][s];
          const size_t ridx = (((size_t)t * B + b) * NH + nh) * G * DH + o;
#pragma unroll
          for (int g = 0; g < G; ++g) p.rhb[ridx + g * DH] = rhb[g];
        }
        Cell::forward(gxv, rhb, st[j], sn);
#pragma unroll
        for (int s = 0; s < S; ++s) st[j][s] = sn[s];
        hout[(size_t)t * BND + sidx] = In<TIn>::store(sn[0]);
        Op pc[HP];
        split<Op, HP>(sn[0], pc);
#pragma unroll
        for (int hp = 0; hp < HP; ++hp) xs[(hp * BT + n) * Gm::XK + o] = pc[hp];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < EPT; ++j) {
    const int e = tid + j * C::THREADS, o = e % DH, n = e / DH, b = bt0 + n;
    if (e < DH * BT && b < B) {
      const size_t sidx = ((size_t)b * NH + nh) * DH + o;
#pragma unroll
      for (int s = 0; s < S; ++s) sT[s * BND + sidx] = In<TIn>::store(st[j][s]);
    }
  }
}

template <typename TIn, typename Cell, int DH, int WARPS, int BT, int RREG>
__global__ void __launch_bounds__(32 * WARPS, 1) backward_kernel(BwdArgs p) {
  using C = Config<TIn, Cell, DH, WARPS, BT, RREG>;
  using Gm = typename C::Bwd;
  using Op = typename Gm::Op;
  constexpr int G = C::G, S = C::S, EPT = C::EPT, HP = Gm::HP, WK = Gm::WK;
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* a_smem = reinterpret_cast<uint32_t*>(smem);
  Op* xs = reinterpret_cast<Op*>(smem + C::align16(Gm::smem_a_bytes()));  // [HP][BT][G*DH + 8]
  float* ps = reinterpret_cast<float*>(smem + C::align16(Gm::smem_a_bytes()) + C::align16(Gm::smem_x_bytes()));  // [WK][BT][DH + 4]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int nh = blockIdx.y, bt0 = blockIdx.x * BT;
  const int T = p.T, B = p.B, NH = p.NH;
  const TIn* R = static_cast<const TIn*>(p.R) + (size_t)nh * G * DH * DH;
  const TIn* gx = static_cast<const TIn*>(p.gx);
  const TIn* dh = static_cast<const TIn*>(p.dh);
  const TIn* dsT = static_cast<const TIn*>(p.dsT);
  TIn* dgx = static_cast<TIn*>(p.dgx);
  TIn* ds0 = static_cast<TIn*>(p.ds0);

  Gm gemm;  // A = R^T: A[i][g*DH + o] = R[g, o, i]
  gemm.load_a([&](int m, int k) { return In<TIn>::load(R[(size_t)k * DH + m]); }, a_smem, warp, lane);
  for (int i = tid; i < HP * BT * Gm::XK; i += blockDim.x) xs[i] = to_op(0.0f, (Op*)nullptr);
  for (int i = tid; i < WK * Gm::OUT_GROUP; i += blockDim.x) ps[i] = 0.0f;

  const size_t BND = (size_t)B * NH * DH;
  float ds[EPT][S];
  // the next step's inputs, loaded one step ahead
  float n_gx[EPT][G], n_rhb[EPT][G], n_s[EPT][S], n_dh[EPT];
  auto fetch = [&](int j, int t, size_t sidx, int b) {
    const size_t gidx = (((size_t)t * B + b) * NH + nh) * G * DH + (sidx % DH);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      n_gx[j][g] = In<TIn>::load(gx[gidx + g * DH]);
      n_rhb[j][g] = p.rhb[gidx + g * DH];
    }
#pragma unroll
    for (int s = 0; s < S; ++s) n_s[j][s] = p.states_in[((size_t)t * S + s) * BND + sidx];
    n_dh[j] = In<TIn>::load(dh[(size_t)t * BND + sidx]);
  };
#pragma unroll
  for (int j = 0; j < EPT; ++j) {
    const int e = tid + j * C::THREADS, o = e % DH, n = e / DH, b = bt0 + n;
    if (e < DH * BT && b < B) {
      const size_t sidx = ((size_t)b * NH + nh) * DH + o;
#pragma unroll
      for (int s = 0; s < S; ++s) ds[j][s] = In<TIn>::load(dsT[s * BND + sidx]);
      if (T > 0) fetch(j, p.reverse ? 0 : T - 1, sidx, b);
    }
  }
  __syncthreads();

  for (int step = 0; step < T; ++step) {
    const int t = p.reverse ? step : T - 1 - step;
#pragma unroll
    for (int j = 0; j < EPT; ++j) {
      const int e = tid + j * C::THREADS, o = e % DH, n = e / DH, b = bt0 + n;
      if (e < DH * BT && b < B) {
        float dsn[S], dgv[G], drv[G], dsi[S], gxv[G], rhv[G], sv[S];
        float rec = 0.0f;
#pragma unroll
        for (int w = 0; w < WK; ++w) rec += ps[w * Gm::OUT_GROUP + n * Gm::OUT_M + o];
#pragma unroll
        for (int s = 0; s < S; ++s) dsn[s] = ds[j][s];
        dsn[0] += rec + n_dh[j];
#pragma unroll
        for (int g = 0; g < G; ++g) { gxv[g] = n_gx[j][g]; rhv[g] = n_rhb[j][g]; }
#pragma unroll
        for (int s = 0; s < S; ++s) sv[s] = n_s[j][s];
        const size_t sidx = ((size_t)b * NH + nh) * DH + o;
        if (step + 1 < T) fetch(j, p.reverse ? t + 1 : t - 1, sidx, b);
        Cell::backward(gxv, rhv, sv, dsn, dgv, drv, dsi);
        const size_t gidx = (((size_t)t * B + b) * NH + nh) * G * DH + o;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          dgx[gidx + g * DH] = In<TIn>::store(dgv[g]);
          p.drhb[gidx + g * DH] = drv[g];
          Op pc[HP];
          split<Op, HP>(drv[g], pc);
#pragma unroll
          for (int hp = 0; hp < HP; ++hp) xs[(hp * BT + n) * Gm::XK + g * DH + o] = pc[hp];
        }
#pragma unroll
        for (int s = 0; s < S; ++s) ds[j][s] = dsi[s];
      }
    }
    __syncthreads();
    gemm.run(a_smem, xs, ps, warp, lane);
    __syncthreads();
  }
#pragma unroll
  for (int j = 0; j < EPT; ++j) {
    const int e = tid + j * C::THREADS, o = e % DH, n = e / DH, b = bt0 + n;
    if (e < DH * BT && b < B) {
      float rec = 0.0f;
#pragma unroll
      for (int w = 0; w < WK; ++w) rec += ps[w * Gm::OUT_GROUP + n * Gm::OUT_M + o];
      const size_t sidx = ((size_t)b * NH + nh) * DH + o;
      ds[j][0] += rec;
#pragma unroll
      for (int s = 0; s < S; ++s) ds0[s * BND + sidx] = In<TIn>::store(ds[j][s]);
    }
  }
}

}  // namespace fused
}  // namespace flashrnn
