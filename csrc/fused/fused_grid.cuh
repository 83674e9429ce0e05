// fused_grid: the R of one head split by hidden units over GS blocks of ONE cooperative grid (no
// thread-block clusters: sm_80 and sm_90), GS blocks per (head, batch tile) for all T steps, h
// exchanged each step through global memory (L2). Plain CUDA C++ (no torch headers). Layouts as
// flashrnn_compile/reference.py and fused_cluster.cuh:
//   gx [T, B, NH, G, DH] T_IN   R [NH, G, DH, DH] T_IN (R[n, g, out, in])   b [NH, G, DH] T_IN
//   s0, sT [S, B, NH, DH] T_IN  h [T, B, NH, DH] T_IN
//   states_in [T, S, B, NH, DH] fp32, rhb [T, B, NH, G, DH] fp32 (saved by the forward when not
//   nullptr: what the alternating backward reads)
//   flags [NH, NBT, GS] uint32, zero at the launch: flags[nh, tile, rank] = the number of steps whose
//   h block `rank` of that group has written (NBT = ceil(B / BT) batch tiles)
//
// Work split as fused_cluster (Config below): block `rank` of a group owns the DHB = DH / GS units
// rank * DHB .. + DHB - 1 (all G gates: G * DHB rows of R, WarpGemm: R_REG_TILES A fragments per
// warp in registers, the rest in shared memory, loaded once); its warps are UGB = DHB / 16 unit
// groups times KS = WARPS / UGB K slices. Per step:
//   1. (step > 0) wait for h_{t-1}. The exchange IS the output h: block r's units of h_{t-1} are
//      in h[t_prev] (the input dtype, which is also the MMA operand type: HP = 1), flagged by r.
//      FRNN_GRID_WAIT = 0 (default): the threads tid < GS wait (ld.acquire.gpu spin) for block
//      tid's flag, then __syncthreads. 1: each thread waits for the flags of the blocks whose units
//      its own h chunks hold (one block for most tilings), then copies them: no block barrier
//      (24% slower at LSTM 1x1024 on the H200, session 6).
//   2. every thread copies its 16-byte chunks of h_{t-1} [nb][DH] of the batch tile (s0[0] at the
//      first step) from global memory into shared memory xs [BT][DH + 8] with cp.async.cg (L2,
//      never a stale L1 line; no registers); cp.async.wait_all, __syncthreads
//   3. MMAs -> partial sums of the K slice in red [KS][G][BT][DHB + 4] fp32; __syncthreads
//   4. each thread takes unit pairs (u, u + 1) of one batch column (split_common.cuh unit_pairs):
//      sums the KS partials, + b, + gx (its pairs' G words, loaded into registers during the step
//      before: the load's latency hides behind a whole step), runs the cell (fp32 states in its
//      registers for all T steps), stores h_t (its pair, 4 bytes) to global; __syncthreads
//   5. thread 0 releases the block's flag = step + 1 (st.release.gpu: cumulative over the block's
//      h stores ordered before it by the barrier); then each thread stores its pairs' states_in and
//      rhb (save only: nobody waits for them, so they are kept out of the release's way)
// Why one h buffer in shared memory and no other barrier: xs is rewritten in step s + 1 only after
// the barrier of step s's step 3, when every warp's MMAs on it have ended; red is written in step
// s + 1 after that step's barrier 2, when every thread's reads of step s (step 4) have ended.
// A block reads h[t_prev] of a peer only after acquiring that peer's flag >=
// step, set after the peer's stores of h[t_prev]; h[t] is written once, so nothing is overwritten.
// The flags are per block (no read-modify-write on one word), and only the GS blocks of a (head,
// batch tile) group wait for each other. All blocks must be resident at once (otherwise a waiting
// block could starve the peer it waits for): fused_grid.cu launches with cudaLaunchCooperativeKernel,
// which refuses a grid larger than the device holds.
// Columns past the batch compute on zeros (their xs rows stay zero) and store nothing.
//
// Precision as fused_cluster: bf16 / fp16 MMA operands, fp32 accumulate, h rounded to the input
// dtype (one piece), fp32 states and cell math (Precision<Cell>::MathFor).
//
// Template parameters = the planner's fused_grid variables (csrc/fused/fused_grid.cint):
//   GS = GRID_SPLIT, WARPS (a multiple of DHB / 16 whose quotient KS divides DH / 16), BT =
//   BATCH_TILE, RREG = R_REG_TILES.
#pragma once

#include "fused/fused_block.cuh"
#include "fused/split_common.cuh"

// 1: each thread acquires the flags of its own h chunks' source blocks, then copies (no block
// barrier); 0: the threads tid < GS acquire one flag each, then a block barrier, then the copies
#ifndef FRNN_GRID_WAIT
#define FRNN_GRID_WAIT 0
#endif

namespace flashrnn {
namespace fused_grid {

using fused::In;
using fused::Precision;
using fused::WarpGemm;
using fused::cp_async_commit;
using fused::cp_async_wait;
using fused::split;
using fused::to_op;
using fused_split::unit_pairs;
using fused_split::load_pair_bias_states;
using fused_split::load_pair_states;
using fused_split::store_pair_states;

template <typename TIn, typename Cell, int DH, int GS, int WARPS, int BT, int RREG>
struct Config {
  static constexpr int G = Cell::G, S = Cell::S, THREADS = 32 * WARPS;
  using Math = typename Precision<Cell>::template MathFor<typename In<TIn>::Math>;
  using Op = typename In<TIn>::Op;
  static_assert(sizeof(Op) == sizeof(TIn), "the exchanged h (the output, T_IN) is the MMA operand itself");
  static constexpr int DHB = DH / GS, UGB = DHB / 16, KS = WARPS / (UGB > 0 ? UGB : 1);
  static constexpr int KT = DH / 16, KTW = KT / (KS > 0 ? KS : 1), NT = BT / 8;
  static_assert(GS >= 1 && DH % GS == 0 && DHB % 16 == 0, "each block owns a multiple of 16 units");
  static_assert(BT % 8 == 0, "the batch tile is a multiple of the MMA N side (8)");
  static_assert(WARPS % UGB == 0 && KS >= 1 && KT % KS == 0, "WARPS = DHB / 16 unit groups x KS K slices, KS | DH / 16");
  using Gemm = WarpGemm<Op, G, KTW, NT, 1, RREG, WARPS>;
  static constexpr int NP = BT * DHB / 2;                   // unit pairs (u, u + 1) x batch columns
  static constexpr int PPT = (NP + THREADS - 1) / THREADS;  // pairs per thread
  static constexpr int XF = DH + 8;                         // h row in shared memory (Op), padded
  static constexpr int RP = DHB + 4;                        // red row (fp32)
  static constexpr int CPR = DH * (int)sizeof(Op) / 16;     // 16-byte chunks of one h row (8 units each)
  static constexpr int HCH = (BT * CPR + THREADS - 1) / THREADS;  // h chunks per thread per step
  static_assert(DHB % 8 == 0, "a 16-byte h chunk never straddles two blocks' units");
  __host__ __device__ static constexpr size_t align16(size_t x) { return (x + 15) / 16 * 16; }
  // a_smem | xs [BT][XF] Op | red [KS][G][BT][RP] f32
  static constexpr size_t A_BYTES = align16(Gemm::smem_a_bytes());
  static constexpr size_t X_BYTES = align16((size_t)BT * XF * sizeof(Op));
  static constexpr size_t RED_BYTES = align16((size_t)KS * G * BT * RP * 4);
  static constexpr size_t X_OFF = A_BYTES, RED_OFF = X_OFF + X_BYTES;
  __host__ __device__ static constexpr size_t smem() { return RED_OFF + RED_BYTES; }
};

struct FwdArgs {
  int T, B, NH, reverse;
  const void* gx; const void* R; const void* b; const void* s0;
  void* h; void* sT; float* states_in; float* rhb;  // states_in, rhb: nullptr = save=false
  unsigned* flags;                                 // [NH, NBT, GS], zero at the launch
};

// acquire / release at GPU scope (sm_70+)
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_gpu(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

template <typename TIn, typename Cell, int DH, int GS, int WARPS, int BT, int RREG>
__global__ void __launch_bounds__(32 * WARPS, 1) forward_kernel(FwdArgs p) {
  using C = Config<TIn, Cell, DH, GS, WARPS, BT, RREG>;
  using Op = typename C::Op;
  using M = typename C::Math;
  constexpr int G = C::G, S = C::S, NT = C::NT, XF = C::XF, RP = C::RP, DHB = C::DHB;
  constexpr int PPT = C::PPT, NP = C::NP, CPR = C::CPR, HCH = C::HCH;
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* a_smem = reinterpret_cast<uint32_t*>(smem);
  Op* xs = reinterpret_cast<Op*>(smem + C::X_OFF);         // [BT][XF]
  float* red = reinterpret_cast<float*>(smem + C::RED_OFF);  // [KS][G][BT][RP]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
  const int ug = warp % C::UGB, ks = warp / C::UGB;
  const int rank = blockIdx.x % GS, tile = blockIdx.x / GS, nh = blockIdx.y, bt0 = tile * BT;
  const int T = p.T, B = p.B, NH = p.NH, nb = B - bt0 < BT ? B - bt0 : BT;
  const int u0 = rank * DHB;  // the block's first unit
  const TIn* R = static_cast<const TIn*>(p.R) + (size_t)nh * G * DH * DH;
  const TIn* bias = static_cast<const TIn*>(p.b) + (size_t)nh * G * DH;
  const int BND = B * NH * DH;  // one [B, NH, DH] slice (the module checks G x it fits an int)
  const int dstep = p.reverse ? -1 : 1, t_first = p.reverse ? T - 1 : 0;
  unsigned* flags = p.flags + ((size_t)nh * (gridDim.x / GS) + tile) * GS;  // the group's GS flags

  // the rows of columns past the batch: zero for all T steps (the h copies write only rows < nb;
  // the barrier after the first copy shows these zeros to every warp)
  for (int i = nb * XF + tid; i < BT * XF; i += C::THREADS) xs[i] = to_op(0.0f, (Op*)nullptr);
  typename C::Gemm gemm;  // tile g = gate g of the warp's 16 units, k-tiles ks * KTW ..
  gemm.load([&](int g, int r, int k) { return In<TIn>::load(R[((size_t)g * DH + u0 + ug * 16 + r) * DH + k]); },
            a_smem, warp, lane, ks * C::KTW);
  // the thread's h chunks: chunk c = tid + k * THREADS -> row (batch column) c / CPR, units
  // 8 (c % CPR) .. of it; only rows inside the batch are copied
  const uint32_t xs_s = (uint32_t)__cvta_generic_to_shared(xs);
  // h_{t-1} of the batch tile from src [B, NH, DH] into xs; wait_step > 0 (FRNN_GRID_WAIT 1): first
  // acquire the flag (>= wait_step) of each chunk's source block (units 8 cc .. of block 8 cc / DHB)
  auto copy_h = [&](const TIn* src, int wait_step) {
    int seen = -1;  // the source block whose flag this thread last acquired
#pragma unroll
    for (int k = 0; k < HCH; ++k) {
      const int c = tid + k * C::THREADS, n = c / CPR, cc = c % CPR;
      if ((HCH * C::THREADS == BT * CPR || c < BT * CPR) && n < nb) {
        const int from = cc * 8 / DHB;
        if (FRNN_GRID_WAIT && wait_step > 0 && from != seen) {
          while (ld_acquire_gpu(flags + from) < (unsigned)wait_step) {
          }
          seen = from;
        }
        fused::cp_async16(xs_s + (uint32_t)((n * XF + cc * 8) * sizeof(Op)), src + ((size_t)(bt0 + n) * NH + nh) * DH + cc * 8);
      }
    }
    cp_async_commit();
    cp_async_wait<0>();
  };

  // the thread's unit pairs (as fused_cluster): fp32 states and the bias in registers
  float st[PPT][2][S], bb[PPT][2][G];
  int pn[PPT], pu[PPT];
  bool pok[PPT];  // a pair of this block and a column inside the batch
  const TIn* s0 = static_cast<const TIn*>(p.s0);
  unit_pairs<PPT, C::THREADS, DHB>(tid, NP, nb, pn, pu, pok);
  load_pair_bias_states<TIn, PPT, G, S>(bias, s0, DH, NH, nh, BND, bt0, u0, pn, pu, pok, bb, st);
  TIn* hout = static_cast<TIn*>(p.h);
  // the gx words of the thread's pairs (units u, u + 1 of gate g), one step ahead; 0 past the batch
  const TIn* gxp = static_cast<const TIn*>(p.gx);
  const int GBND = G * BND;  // one [B, NH, G, DH] slice
  uint32_t igx[PPT][G];
  auto load_gx = [&](int t) {
#pragma unroll
    for (int k = 0; k < PPT; ++k)
#pragma unroll
      for (int g = 0; g < G; ++g)
        igx[k][g] = pok[k] ? __ldg(reinterpret_cast<const unsigned int*>(
                                 gxp + (size_t)t * GBND + ((size_t)(bt0 + pn[k]) * NH + nh) * G * DH + (size_t)g * DH + u0 + pu[k]))
                           : 0u;
  };
  if (T > 0) load_gx(t_first);

#pragma unroll 1
  for (int step = 0; step < T; ++step) {
    const int t = t_first + dstep * step;
    // h_{t-1}: s0[0] at the first step, else h[t_prev] once every block of the group flagged it
    const TIn* hprev = step == 0 ? s0 : hout + (size_t)(t - dstep) * BND;
    if (!FRNN_GRID_WAIT && step > 0) {
      for (int r = tid; r < GS; r += C::THREADS)
        while (ld_acquire_gpu(flags + r) < (unsigned)step) {
        }
      __syncthreads();  // the acquires above order every thread's copies below
    }
    copy_h(hprev, step);
    __syncthreads();  // xs holds h_{t-1}
    {
      float acc[G][NT][4];
      gemm.template run<BT, XF>(a_smem, xs, 0, warp, lane, acc, [] {});
      // partial sums of the warp's K slice: rows gq, gq + 8 of unit group ug, columns 2 t4, 2 t4 + 1
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < NT; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int n = i * 8 + 2 * t4 + (r & 1), u = ug * 16 + gq + 8 * (r >> 1);
            red[((ks * G + g) * BT + n) * RP + u] = acc[g][i][r];
          }
    }
    __syncthreads();  // red complete
    TIn* ht = hout + (size_t)t * BND;
    float rhs[PPT][2][G], sold[PPT][2][S];  // what the save stores after the release
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      if (PPT * C::THREADS != NP && tid + k * C::THREADS >= NP) break;
      const int n = pn[k], u = pu[k];
      float gxv[2][G], sn[2][S];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float2 a = make_float2(bb[k][0][g], bb[k][1][g]);
#pragma unroll
        for (int s = 0; s < C::KS; ++s) {
          const float2 v = *reinterpret_cast<const float2*>(red + ((s * G + g) * BT + n) * RP + u);
          a.x += v.x;
          a.y += v.y;
        }
        rhs[k][0][g] = a.x;
        rhs[k][1][g] = a.y;
        const float2 x = fused_split::unpack2f<TIn>(igx[k][g]);
        gxv[0][g] = x.x;
        gxv[1][g] = x.y;
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int s = 0; s < S; ++s) sold[k][j][s] = st[k][j][s];
        Cell::template forward<M>(gxv[j], rhs[k][j], st[k][j], sn[j]);
#pragma unroll
        for (int s = 0; s < S; ++s) st[k][j][s] = sn[j][s];
      }
      if (pok[k]) {
        const size_t so = ((size_t)(bt0 + n) * NH + nh) * DH + u0 + u;  // (b, nh, unit) in [B, NH, DH]
        *reinterpret_cast<uint32_t*>(ht + so) = fused::pack2(In<TIn>::store(sn[0][0]), In<TIn>::store(sn[1][0]));
      }
    }
    if (step + 1 < T) load_gx(t + dstep);  // in flight across the barriers until the next step's cell
    __syncthreads();  // the block's h_t is stored (and red and xs are free again)
    if (tid == 0 && step + 1 < T) st_release_gpu(flags + rank, (unsigned)(step + 1));
    if (p.states_in != nullptr) {
      float* sit = p.states_in + (size_t)t * S * BND;
      float* rht = p.rhb + (size_t)t * G * BND;
#pragma unroll
      for (int k = 0; k < PPT; ++k) {
        if (PPT * C::THREADS != NP && tid + k * C::THREADS >= NP) break;
        if (!pok[k]) continue;
        const size_t so = ((size_t)(bt0 + pn[k]) * NH + nh) * DH + u0 + pu[k];
        const size_t go = ((size_t)(bt0 + pn[k]) * NH + nh) * G * DH + u0 + pu[k];
#pragma unroll
        for (int s = 0; s < S; ++s) *reinterpret_cast<float2*>(sit + s * BND + so) = make_float2(sold[k][0][s], sold[k][1][s]);
#pragma unroll
        for (int g = 0; g < G; ++g) *reinterpret_cast<float2*>(rht + go + g * DH) = make_float2(rhs[k][0][g], rhs[k][1][g]);
      }
    }
  }
  TIn* sT = static_cast<TIn*>(p.sT);
  store_pair_states<TIn, PPT, S>(sT, DH, NH, nh, BND, bt0, u0, pn, pu, pok, st);
}


// ---------------------------------------------------------------------------------------------
// Backward (built only with -DFRNN_GRID_BWD=1: the library kernels/fused_grid.py's backward
// loads). Persistent over all T steps in the reverse of the forward's order, GS blocks per (head,
// batch tile) as the forward, all resident (a cooperative launch), block `rank` owning the DHB
// units u0 = rank * DHB .. + DHB - 1:
//   backward  dgx [T, B, NH, G, DH] T_IN, drhb [T, B, NH, G, DH] fp32 (dR, db: one GEMM outside,
//             fused_block._weight_grads), ds0 [S, B, NH, DH] T_IN
//   ex [2, HP, B, NH, G, DH] T_IN (scratch): drhb of a step as HP pieces of T_IN, the MMA operand
//   every block of the group reads (double-buffered by step parity)
// The forward's exchange of h becomes an exchange of drhb, and R's rows become its columns: block
// `rank` computes dh_rec = R^T drhb for its OWN units from ALL units' drhb (K = G * DH), so no
// partial sums cross blocks. Per step s (forward time t; processing order, step 0 = the forward's last):
//   1. (s > 0) wait for the flags of every block of the group >= s (threads tid < GS, ld.acquire.gpu,
//      then __syncthreads), copy drhb of step s - 1 [HP][nb][G * DH] from ex[(s - 1) & 1] into shared
//      memory X [HP][BT][G * DH + 8] (cp.async.cg: L2, never a stale L1 line); MMAs: warp (ug, ks) =
//      16 own units x the K slice ks (WarpGemm: A[u][(g, o)] = R[g][o][u0 + u], R_REG_TILES fragments
//      in registers, the rest in shared memory) -> red [KS][BT][DHB + 4] fp32; __syncthreads
//   2. each thread's unit pairs (u, u + 1) of one batch column (split_common.cuh unit_pairs):
//      dh_rec = the sum of the KS partials (0 at s = 0), ds[0] += dh_rec + dh_t, the cell's backward
//      from gx, rhb, states_in of step s (registers, loaded during the step before) gives dgx, drhb
//      (stored) and the pointwise ds (registers for all T steps); drhb as HP pieces into ex[s & 1]
//   3. the next step's inputs are loaded into registers; __syncthreads; thread 0 releases flag =
//      s + 1 (st.release.gpu, cumulative over the block's ex stores ordered before it by the barrier)
// After the last step, phase 1 once more (flags >= T) gives dh_rec of the state before the first
// step: ds0 = ds (+ dh_rec for state 0).
// Why two ex buffers suffice: a block writes ex[s & 1] in step s after its wait of step s (s >= 2),
// which needs every block's flag >= s, set after that block's step s - 1, whose copy of ex[(s - 2) & 1]
// had ended (cp.async.wait_all and a barrier before its cell). X and red are reused as the forward's.
// Precision: MMA operands T_IN (R exact; drhb as HP pieces: two for the cells whose gradient jumps,
// Precision<Cell>::JUMPS, as fused_block's and fused_cluster's backward), fp32 accumulate over all
// G * DH in one block (no cross-block partial sums), fp32 states and cell math (Config::Math).
// Columns past the batch compute on zeros (their X rows stay zero) and store nothing.

template <typename TIn, typename Cell, int DH, int GS, int WARPS, int BT, int RREG>
struct BwdConfig {
  using F = Config<TIn, Cell, DH, GS, WARPS, BT, RREG>;
  static constexpr int G = Cell::G, S = Cell::S, THREADS = 32 * WARPS;
  using Math = typename F::Math;
  using Op = typename F::Op;
  static constexpr int HP = Precision<Cell>::JUMPS ? 2 : 1;  // drhb pieces
  static constexpr int DHB = F::DHB, UGB = F::UGB, KS = F::KS, NT = F::NT;
  static constexpr int KT = G * DH / 16, KTW = KT / KS;  // k-tiles: (g, o) of all units
  static_assert(KT % KS == 0, "the K slices divide the G * DH / 16 k-tiles");
  // more than 12 k-tiles a warp: its B fragments stream through a ring of 8 (registers for R)
  using Gemm = WarpGemm<Op, 1, KTW, NT, HP, RREG, WARPS, KTW, (KTW > 12 ? 8 : 0)>;
  static constexpr int NP = F::NP, PPT = F::PPT;
  static constexpr int XK = G * DH + 8;  // X row (Op): XK / 2 words = 4 mod 8, conflict-free B fragments
  static constexpr int RP = DHB + 4;     // red row (fp32)
  static constexpr int CPR = G * DH * (int)sizeof(Op) / 16;  // 16-byte chunks of one drhb row
  static constexpr int XCH = (HP * BT * CPR + THREADS - 1) / THREADS;  // chunks per thread per step
  __host__ __device__ static constexpr size_t align16(size_t x) { return (x + 15) / 16 * 16; }
  // a_smem | X [HP][BT][XK] Op | red [KS][BT][RP] f32
  static constexpr size_t A_BYTES = align16(Gemm::smem_a_bytes());
  static constexpr size_t X_BYTES = align16((size_t)HP * BT * XK * sizeof(Op));
  static constexpr size_t RED_BYTES = align16((size_t)KS * BT * RP * 4);
  static constexpr size_t X_OFF = A_BYTES, RED_OFF = X_OFF + X_BYTES;
  __host__ __device__ static constexpr size_t smem() { return RED_OFF + RED_BYTES; }
};

struct BwdArgs {
  int T, B, NH, reverse;
  const void* dh; const void* dsT; const void* gx; const void* R;  // dh [T, B, NH, DH], dsT [S, B, NH, DH]
  const float* states_in; const float* rhb;                          // saved by the forward
  void* dgx; float* drhb; void* ds0;                                 // outputs
  void* ex;                                                          // [2, HP, B, NH, G, DH] T_IN scratch
  unsigned* flags;                                                   // [NH, NBT, GS], zero at the launch
};

template <typename TIn, typename Cell, int DH, int GS, int WARPS, int BT, int RREG>
__global__ void __launch_bounds__(32 * WARPS, 1) backward_kernel(BwdArgs p) {
  using C = BwdConfig<TIn, Cell, DH, GS, WARPS, BT, RREG>;
  using Op = typename C::Op;
  using M = typename C::Math;
  constexpr int G = C::G, S = C::S, HP = C::HP, NT = C::NT, XK = C::XK, RP = C::RP, DHB = C::DHB, KS = C::KS;
  constexpr int PPT = C::PPT, NP = C::NP, CPR = C::CPR, XCH = C::XCH;
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* a_smem = reinterpret_cast<uint32_t*>(smem);
  Op* xs = reinterpret_cast<Op*>(smem + C::X_OFF);           // [HP][BT][XK]
  float* red = reinterpret_cast<float*>(smem + C::RED_OFF);  // [KS][BT][RP]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
  const int ug = warp % C::UGB, ks = warp / C::UGB;
  const int rank = blockIdx.x % GS, tile = blockIdx.x / GS, nh = blockIdx.y, bt0 = tile * BT;
  const int T = p.T, B = p.B, NH = p.NH, nb = B - bt0 < BT ? B - bt0 : BT;
  const int u0 = rank * DHB;
  const TIn* R = static_cast<const TIn*>(p.R) + (size_t)nh * G * DH * DH;
  const int BND = B * NH * DH;  // one [B, NH, DH] slice (the module checks G x and S x it fit an int)
  const int GBND = G * BND;     // one [B, NH, G, DH] slice
  const int dstep = p.reverse ? 1 : -1, t_first = p.reverse ? 0 : T - 1;  // the reverse of the forward's order
  unsigned* flags = p.flags + ((size_t)nh * (gridDim.x / GS) + tile) * GS;  // the group's GS flags
  TIn* ex = static_cast<TIn*>(p.ex);

  // the rows of columns past the batch: zero for all steps (the copies write only rows < nb)
  for (int i = tid; i < HP * BT * XK; i += C::THREADS)
    if ((i / XK) % BT >= nb) xs[i] = to_op(0.0f, (Op*)nullptr);
  typename C::Gemm gemm;  // A[u][(g, o)] = R[g][o][u0 + ug * 16 + u], k-tiles ks * KTW ..
  gemm.load([&](int, int r, int k) { return In<TIn>::load(R[((size_t)(k / DH) * DH + k % DH) * DH + u0 + ug * 16 + r]); },
            a_smem, warp, lane, ks * C::KTW);
  const uint32_t xs_s = (uint32_t)__cvta_generic_to_shared(xs);

  // dh_rec of the block's units from ex[buf] (drhb of the step before, all units): wait for every
  // block's flag >= `need`, copy, MMAs, partial sums into red (complete after the last barrier)
  auto recurrent = [&](int buf, int need) {
    for (int r = tid; r < GS; r += C::THREADS)
      while (ld_acquire_gpu(flags + r) < (unsigned)need) {
      }
    __syncthreads();  // the acquires above order every thread's copies below
    const TIn* src = ex + (size_t)buf * HP * GBND;
    // not unrolled: unrolled, the compiler keeps every chunk's two addresses live across the whole
    // loop over steps (about 3 x XCH registers), and the kernel spilled
#pragma unroll 1
    for (int k = 0; k < XCH; ++k) {
      const int c = tid + k * C::THREADS, row = c / CPR, hp = row / BT, n = row % BT, cc = c % CPR;
      if ((XCH * C::THREADS == HP * BT * CPR || c < HP * BT * CPR) && n < nb)
        fused::cp_async16(xs_s + (uint32_t)(((hp * BT + n) * XK + cc * 8) * sizeof(Op)),
                          src + (size_t)hp * GBND + ((size_t)(bt0 + n) * NH + nh) * G * DH + cc * 8);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();  // X holds drhb of the step before
    float acc[1][NT][4];
    gemm.template run<BT, XK>(a_smem, xs, 0, warp, lane, acc, [] {});
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int n = i * 8 + 2 * t4 + (r & 1), u = ug * 16 + gq + 8 * (r >> 1);
        red[(ks * BT + n) * RP + u] = acc[0][i][r];
      }
    __syncthreads();  // red complete (and every warp done with X)
  };
  auto dh_rec = [&](int n, int u) {
    float2 a = make_float2(0.0f, 0.0f);
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const float2 v = *reinterpret_cast<const float2*>(red + (s * BT + n) * RP + u);
      a.x += v.x;
      a.y += v.y;
    }
    return a;
  };

  // the thread's unit pairs (as the forward): pair q = tid + k * THREADS -> column n, unit u
  float ds[PPT][2][S];
  int pn[PPT], pu[PPT];
  bool pok[PPT];
  unit_pairs<PPT, C::THREADS, DHB>(tid, NP, nb, pn, pu, pok);
  load_pair_states<TIn, PPT, S>(static_cast<const TIn*>(p.dsT), DH, NH, nh, BND, bt0, u0, pn, pu, pok, ds);
  // a step's inputs of the thread's pairs, loaded one step ahead (zeros past the batch)
  fused_split::PairStepInputs<TIn, Cell, PPT> in;
  auto load_inputs = [&](int t) {
    in.load(static_cast<const TIn*>(p.gx), static_cast<const TIn*>(p.dh), p.rhb, p.states_in, t, GBND, BND, DH, NH, nh,
            bt0, u0, pn, pu, pok);
  };
  TIn* dgxp = static_cast<TIn*>(p.dgx);
  if (T > 0) load_inputs(t_first);

#pragma unroll 1
  for (int step = 0; step < T; ++step) {
    const int t = t_first + dstep * step;
    if (step > 0) recurrent((step - 1) & 1, step);
    TIn* exw = ex + (size_t)(step & 1) * HP * GBND;
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      if (PPT * C::THREADS != NP && tid + k * C::THREADS >= NP) break;
      const int n = pn[k], u = pu[k];
      const float2 rec = step > 0 ? dh_rec(n, u) : make_float2(0.0f, 0.0f);
      float dg[2][G], dr[2][G];
      in.template cell<M>(k, rec, ds[k], dg, dr);
      if (pok[k]) {
        const size_t bo = ((size_t)(bt0 + n) * NH + nh) * G * DH + u0 + u;  // (b, nh, gate 0, unit) in [B, NH, G, DH]
        const size_t go = (size_t)t * GBND + bo;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          *reinterpret_cast<uint32_t*>(dgxp + go + (size_t)g * DH) = fused::pack2(In<TIn>::store(dg[0][g]), In<TIn>::store(dg[1][g]));
          *reinterpret_cast<float2*>(p.drhb + go + (size_t)g * DH) = make_float2(dr[0][g], dr[1][g]);
          Op pa[HP], pb[HP];
          split<Op, HP>(dr[0][g], pa);
          split<Op, HP>(dr[1][g], pb);
#pragma unroll
          for (int hp = 0; hp < HP; ++hp)
            *reinterpret_cast<uint32_t*>(exw + (size_t)hp * GBND + bo + (size_t)g * DH) = fused::pack2(pa[hp], pb[hp]);
        }
      }
    }
    if (step + 1 < T) load_inputs(t + dstep);  // in flight across the barrier and the next wait
    __syncthreads();  // the block's drhb of this step is in ex (and red is free again)
    if (tid == 0) st_release_gpu(flags + rank, (unsigned)(step + 1));
  }
  if (T > 0) recurrent((T - 1) & 1, T);  // dh_rec of the state before the first step
#pragma unroll
  for (int k = 0; k < PPT; ++k) {  // ds0 = ds, with the dh_rec of the state before the first step on h
    if (!pok[k]) continue;
    const float2 rec = T > 0 ? dh_rec(pn[k], pu[k]) : make_float2(0.0f, 0.0f);
    ds[k][0][0] += rec.x;
    ds[k][1][0] += rec.y;
  }
  store_pair_states<TIn, PPT, S>(static_cast<TIn*>(p.ds0), DH, NH, nh, BND, bt0, u0, pn, pu, pok, ds);
}

}  // namespace fused_grid
}  // namespace flashrnn
