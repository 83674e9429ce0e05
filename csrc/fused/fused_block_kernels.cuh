// The fused_block kernels: forward_kernel (SAVE: states_in and rhb for the backward) and
// backward_kernel, one persistent block per (head, batch tile); the design is in fused_block.cuh.
#pragma once

#include "fused/fused_block.cuh"

namespace flashrnn {
namespace fused {

// SAVE: states_in and rhb are written (p.states_in not null), for the backward; with C::RC
// (FRNN_BWD_RECOMPUTE) only the states S0 .. S - 1 the cell's backward reads, and no rhb
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
  // gx [BT][G*DH] of a step into a ring stage (rows past the batch copy the tile's first row);
  // predicated copies, each address moved before its copy (StageCopy)
  constexpr int GXC = G * DH * 2 / 16;
  StageCopy<C::THREADS, BT * GXC, false> gxc;
  {
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
    gxc.init([&](int i) -> StageChunk {
      const int r = i / GXC, c = i % GXC, n = r < nb ? r : 0;
      return {ring_s + (uint32_t)(r * GXR * 2 + c * 16),
              (unsigned long long)(gx0 + n * gx_row + (long long)t_first * gx_t) + c * 16, dstep * gx_t, 0};
    }, tid);
  }
  uint32_t pf_stage = 0;  // the ring stage the next prefetch fills (bytes)
  // the gx stage of the next step in order (calls go step 0, 1, ...; none past T), one commit
  // group always
  auto prefetch = [&](int step) {
    gxc.issue(pf_stage, step < T, false);
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
  float bin[C::JN][G];  // b_in (zeros without one), added to gx
  load_b_in<TIn, G, DH, C::JN, C::RH>(p.b_in, nh, ug, gq, rh, bin);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const auto el = C::elem(e, rh);
    const int i = el.i, j = el.j, n = (nt0 + i) * 8 + 2 * t4 + el.c, u = ug * 16 + gq + 8 * j;
    sidx[e] = n < nb ? ((bt0 + n) * NH + nh) * DH + u : -1;
    gidx[e] = ((bt0 + n) * NH + nh) * G * DH + u;
#pragma unroll
    for (int s = 0; s < S; ++s) st[e][s] = 0.0f;  // a column past the batch computes on zeros
    if (sidx[e] >= 0) {
#pragma unroll
      for (int s = 0; s < S; ++s) st[e][s] = load_state<TIn>(p.s0, p.s0_f32, s * BND + sidx[e]);
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
  // (each pointer starts a step before the first and moves before its store: the add then waits on
  // no store in flight; measured (ncu, H200) those adds after the stores waited on the LSU reading
  // their registers, ~4% of the forward's samples)
#pragma unroll
  for (int e = 0; e < E; ++e) {
    hpe[e] = static_cast<TIn*>(p.h) + (long long)(t_first - dstep) * BND + sidx[e];
    spe[e] = p.states_in + (long long)(t_first - dstep) * C::SS * BND + sidx[e];
    rpe[e] = C::RC ? nullptr : p.rhb + (long long)(t_first - dstep) * G * BND + gidx[e];
  }
  auto store_outputs = [&]() {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      hpe[e] += (long long)dstep * BND;
      spe[e] += (long long)dstep * C::SS * BND;
      if (!C::RC) rpe[e] += (long long)dstep * G * BND;
      if (sidx[e] >= 0) {
        *hpe[e] = In<TIn>::store(hv[e]);
        if (SAVE) {
#pragma unroll
          for (int s = C::S0; s < S; ++s) spe[e][(s - C::S0) * BND] = sin_[e][s];
          if (!C::RC)
#pragma unroll
            for (int g = 0; g < G; ++g) rpe[e][g * DH] = rv[e][g];
        }
      }
    }
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
      for (int g = 0; g < G; ++g) gxe[e][g] = In<TIn>::load(gxs[n * GXR + g * DH + u]) + bin[el.jj][g];
    }
    float acc[C::FMT][NTW][4];
    // the prefetch fills the stage step - 1 used (every warp is past it)
    gemm.template run<BT, XF>(a_smem, xs + cur * HP * BT * XF, nt0, warp, lane, acc, [&]() {
      if (!SAVE) prefetch(step + NS - 1);
    });
    if (SAVE) {
      prefetch(step + NS - 1);
      if (step > 0) store_outputs();  // the last step's
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
      }
#pragma unroll
      for (int s = 0; s < S; ++s) sin_[e][s] = st[e][s];
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
  if (SAVE && T > 0) store_outputs();  // the last step's
  cp_async_wait<0>();
#pragma unroll
  for (int e = 0; e < E; ++e)
    if (sidx[e] >= 0)
#pragma unroll
      for (int s = 0; s < S; ++s) store_state<TIn>(p.sT, p.sT_f32, s * BND + sidx[e], st[e][s]);
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
  const unsigned char* rh0 = C::RC ? nullptr : reinterpret_cast<const unsigned char*>(p.rhb + gxe + t_first * gx_t);
  const unsigned char* st0 = reinterpret_cast<const unsigned char*>(p.states_in + ((size_t)bt0 * NH + nh) * DH +
                                                                    (long long)t_first * C::SS * BND);
  const unsigned char* dh0 = static_cast<const unsigned char*>(p.dh) +
                             (((size_t)bt0 * NH + nh) * DH + (long long)t_first * BND) * sizeof(TIn);
  const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
  // a stage: gx [BT][G*DH] | rhb [BT][G*DH] f32, or (RC) h_{t-1} [BT][DH] into rows of XF (the
  // forward's X: h one step back in the forward's order, at its first step h0, the ALT source) |
  // states_in [SS][BT][DH] f32 | dh [BT][DH], as one list of 16-byte chunks; rows past the batch
  // copy the tile's first row (finite values for the columns that compute and store nothing)
  constexpr int GXC = G * DH * 2 / 16, RHC = C::RC ? DH * 2 / 16 : G * DH * 4 / 16, STC = DH * 4 / 16, DHC = DH * 2 / 16;
  constexpr int N_GX = BT * GXC, N_RH = BT * RHC, N_ST = C::SS * BT * STC, N_DH = BT * DHC;
  StageCopy<C::THREADS, N_GX + N_RH + N_ST + N_DH, C::RC> copy;
  {
    using U = unsigned long long;
    const size_t hrow = (size_t)NH * DH * sizeof(TIn), hoff = ((size_t)bt0 * NH + nh) * DH * sizeof(TIn);
    const U hp0 = (U)p.h + hoff + (U)((long long)(t_first - (p.reverse ? -1 : 1)) * BND * (long long)sizeof(TIn));
    const U h00 = (U)p.h0 + hoff;
    copy.init([&](int i) -> StageChunk {
      if (i < N_GX) {
        const int r = i / GXC, c = i % GXC, n = r < nb ? r : 0;
        return {ring_s + (uint32_t)(C::B_GX + r * C::GXR * 2 + c * 16), (U)gx0 + (U)n * NH * G * DH * sizeof(TIn) + c * 16,
                dstep * gx_t * (long long)sizeof(TIn), 0};
      }
      i -= N_GX;
      if (i < N_RH) {
        const int r = i / RHC, c = i % RHC, n = r < nb ? r : 0;
        if constexpr (C::RC)
          return {ring_s + (uint32_t)(C::B_RH + r * C::XF * 2 + c * 16), hp0 + (U)n * hrow + c * 16,
                  (long long)dstep * BND * (long long)sizeof(TIn), h00 + (U)n * hrow + c * 16};
        return {ring_s + (uint32_t)(C::B_RH + r * C::RHR * 4 + c * 16), (U)rh0 + (U)n * NH * G * DH * 4 + c * 16,
                dstep * gx_t * 4, 0};
      }
      i -= N_RH;
      if (i < N_ST) {
        const int r = i / STC, c = i % STC, st = r / BT, n = r % BT < nb ? r % BT : 0;
        return {ring_s + (uint32_t)(C::B_ST + r * C::STR * 4 + c * 16), (U)st0 + ((U)st * BND + (U)n * NH * DH) * 4 + c * 16,
                (long long)dstep * C::SS * BND * 4, 0};
      }
      i -= N_ST;
      const int r = i / DHC, c = i % DHC, n = r < nb ? r : 0;
      return {ring_s + (uint32_t)(C::B_DH + r * C::DHR * 2 + c * 16), (U)dh0 + (U)n * NH * DH * sizeof(TIn) + c * 16,
              (long long)dstep * BND * (long long)sizeof(TIn), 0};
    }, tid);
  }
  uint32_t pf_stage = 0;  // the ring stage the next prefetch fills (bytes)
  // the stage of the next step in order (calls go step 0, 1, ...; none past T; RC: at the forward's
  // first step, h0), one commit group always
  auto prefetch = [&](int step) {
    copy.issue(pf_stage, step < T, step == T - 1);
    pf_stage = pf_stage + C::B_STAGE == NS * C::B_STAGE ? 0u : pf_stage + (uint32_t)C::B_STAGE;
    cp_async_commit();
  };
#pragma unroll 1
  for (int s = 0; s < NS - 1; ++s) prefetch(s);

  Gm gemm;  // A[r][(g, o)] = R[g][o][ug*16 + r]; a K-split pair: the first or the second half of K
  gemm.load([&](int, int r, int k) { return In<TIn>::load(R[k * DH + ug * 16 + r]); }, a_smem, warp, lane,
            C::KSPLIT == 2 ? rh * C::BKT : 0);
  float bin[C::JN][G];  // b_in (zeros without one), added to gx as in the forward
  load_b_in<TIn, G, DH, C::JN, C::RH>(p.b_in, nh, ug, gq, rh, bin);
  // RC: R's forward fragments (after R^T's in shared memory) and the lane's bias, as the forward's
  typename C::FwdRc gemm_f;
  uint32_t* af_smem = a_smem + C::align16(Gm::smem_a_bytes()) / 4;
  float bb[C::RC ? C::JN : 1][G];
  if constexpr (C::RC) {
    auto r_at = [&](int g, int u, int k) { return In<TIn>::load(R[(g * DH + u) * DH + k]); };
    gemm_f.load([&](int mt, int r, int k) { return C::fwd_a(r_at, ug, rh, mt, r, k); }, af_smem, warp, lane);
    const TIn* bias = static_cast<const TIn*>(p.b) + (size_t)nh * G * DH;
#pragma unroll
    for (int jj = 0; jj < C::JN; ++jj)
#pragma unroll
      for (int g = 0; g < G; ++g) bb[jj][g] = In<TIn>::load(bias[g * DH + ug * 16 + gq + 8 * (C::RH == 2 ? rh : jj)]);
  }
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
    if (sidx[e] >= 0 && p.dsT != nullptr)
#pragma unroll
      for (int s = 0; s < S; ++s) ds[e][s] = load_state<TIn>(p.dsT, p.dsT_f32, s * BND + sidx[e]);
  }
  // dgx of a step: the cells write it at the step's end (after its drhb, the next step's operand)
  // into shared memory, [2][BT][DGR] by the step's parity; the next step stores the rows in the batch
  // in 16-byte pieces (the last step's after the loop). Before: 2-byte stores per element and gate
  // straight from the cells (ncu, H200: their registers waited on the LSU, ~4% of the samples)
  float dgp[E][G];
  float mk[E];  // 1 for a column in the batch, 0 past it (its db share)
#pragma unroll
  for (int e = 0; e < E; ++e) mk[e] = sidx[e] >= 0 ? 1.0f : 0.0f;
  TIn* dgs = reinterpret_cast<TIn*>(smem + C::B_DGX);
  const uint32_t dgs_s = (uint32_t)__cvta_generic_to_shared(dgs);
  constexpr uint32_t DG_STEP = BT * C::DGR * 2;  // bytes of one step's dgx in shared memory
  RowStore<C::THREADS, BT, G * DH * 2 / 16> dgo;
  // (the first store() is the step before the first: nothing stored)
  dgo.init(C::DGR * 2, nb, [&](int r) {
    return (unsigned long long)p.dgx + (unsigned long long)((((long long)(t_first - dstep) * B + bt0 + r) * NH + nh) * G * DH *
                                                            (long long)sizeof(TIn));
  }, (long long)dstep * G * BND * (long long)sizeof(TIn), tid);
  auto stage_dgx = [&](int cur) {
    TIn* w = dgs + cur * BT * C::DGR;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const auto el = C::elem(e, rh);
      const int n = (nt0 + el.i) * 8 + 2 * t4 + el.c, u = ug * 16 + gq + 8 * el.j;
#pragma unroll
      for (int g = 0; g < G; ++g) w[n * C::DGR + g * DH + u] = In<TIn>::store(dgp[e][g]);
    }
  };
  uint32_t rd_stage = 0;  // the ring stage of this step (bytes)
  // (RC_AHEAD: a step reads the next step's stage too, so the copies run one stage further ahead)
  constexpr int WAIT = C::RC_AHEAD ? NS - 3 : NS - 2;
  cp_async_wait<WAIT>();
  __syncthreads();
  // RC: rhb of the step (frc; RC_AHEAD: computed by the step before, the first step's here)
  float frc[C::FMT][NTW][4];
  if constexpr (C::RC_AHEAD)
    gemm_f.template run<BT, C::XF>(af_smem, reinterpret_cast<const Op*>(ring + C::B_RH), nt0, warp, lane, frc, [] {});

#pragma unroll 1
  for (int step = 0; step < T; ++step) {
    const int t = t_first + dstep * step, cur = step & 1;
    // R^T drhb of the step before (zero at the first): its fragments first, right after the barrier
    float acc[1][NTW][4];
    // the prefetch (into the stage step - 1 used: every warp is past it) and the step before's dgx
    // (out of shared memory) between the fragment loads and the MMAs; this step's dgx goes to shared
    // memory at the step's end. Measured on the H100 with per-element dgx stores from registers (LSTM
    // 12x64 bf16 B16, backward kernel): 0.805 ms; prefetch and the last step's dgx after the MMAs,
    // before the K-split exchange: 0.954 (the pointer registers of the stores and copies waited on the
    // LSU reading them: ncu long-scoreboard stalls on register moves, 27% of the samples); both before
    // the MMAs 0.962; prefetch first, dgx at the end 0.808; the dR MMAs before the exchange 0.820
    gemm.template run_t<XN>(a_smem, xs_s + (uint32_t)(cur * XT * 2), nt0, warp, lane, acc,
                            [&]() {
                              prefetch(step + NS - 1);
                              dgo.store(dgs_s + (cur ^ 1) * DG_STEP, step > 0);  // the step before's dgx
                            });
    // this step's inputs (landed before the last barrier): the cell's gate math does not wait for
    // R^T drhb and can overlap it
    const unsigned char* stage = ring + rd_stage;
    rd_stage = rd_stage + C::B_STAGE == NS * C::B_STAGE ? 0u : rd_stage + (uint32_t)C::B_STAGE;
    const Op* gxs = reinterpret_cast<const Op*>(stage + C::B_GX);
    const float* rhs = reinterpret_cast<const float*>(stage + C::B_RH);
    const float* sts = reinterpret_cast<const float*>(stage + C::B_ST);
    const Op* dhs = reinterpret_cast<const Op*>(stage + C::B_DH);
    float gxv[E][G], rhv[E][G], sv[E][S], dhv[E];
    // RC: rhb = R h_{t-1} + b again, after R^T drhb's MMAs: RC_AHEAD the next step's (stage
    // rd_stage, landed before the last barrier), else this step's (the cells below wait for it)
    float fnx[C::FMT][NTW][4];
    if constexpr (C::RC_AHEAD)
      gemm_f.template run<BT, C::XF>(af_smem, reinterpret_cast<const Op*>(ring + rd_stage + C::B_RH), nt0, warp, lane,
                                     fnx, [] {});
    else if constexpr (C::RC)
      gemm_f.template run<BT, C::XF>(af_smem, reinterpret_cast<const Op*>(stage + C::B_RH), nt0, warp, lane, frc, [] {});
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const auto el = C::elem(e, rh);
      const int n = (nt0 + el.i) * 8 + 2 * t4 + el.c, u = ug * 16 + gq + 8 * el.j;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        gxv[e][g] = In<TIn>::load(gxs[n * C::GXR + g * DH + u]) + bin[el.jj][g];
        if constexpr (C::RC) rhv[e][g] = C::gate(frc, g, el) + bb[el.jj][g];
        else rhv[e][g] = rhs[n * C::RHR + g * DH + u];
      }
#pragma unroll
      for (int s = 0; s < S; ++s) sv[e][s] = s < C::S0 ? 0.0f : sts[((s - C::S0) * BT + n) * C::STR + u];
      dhv[e] = In<TIn>::load(dhs[n * C::DHR + u]);
      if (C::DR && el.c == 1) {  // h_in of the element pair e - 1, e (columns n - 1, n; 0 past the batch)
        const int e0 = e > 0 ? e - 1 : 0;
        const float h0 = sidx[e0] >= 0 ? sv[e0][0] : 0.0f, h1 = sidx[e] >= 0 ? sv[e][0] : 0.0f;
        hb[(cur * DH + u) * C::HBW + (n - 1) / 2] = pack2(to_op(h0, (Op*)nullptr), to_op(h1, (Op*)nullptr));
      }
    }
    // in the MMAs' shadow: the ring stage step - 1 used (every warp is past it), the last step's dgx
    exchange(acc);
    // dR of the step before (its drhb is this step's X, its h_in in the other hb buffer; zeros at
    // the first step): no branch, so its MMAs share a basic block with the cells below and ptxas
    // interleaves them with the cells' latency chains
    if (dr_on) dr.step(xs + cur * XT, hb + (cur ^ 1) * DH * C::HBW, warp, lane);
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
    stage_dgx(cur);
    if constexpr (C::RC_AHEAD)
#pragma unroll
      for (int m = 0; m < C::FMT; ++m)
#pragma unroll
        for (int i = 0; i < NTW; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) frc[m][i][r] = fnx[m][i][r];
    cp_async_wait<WAIT>();
    __syncthreads();
  }
  cp_async_wait<0>();
  dgo.store(dgs_s + ((T - 1) & 1) * DG_STEP, T > 0);  // the last step's dgx (written before the loop's last barrier)
  if (dr_on) {  // the last step's dR, then the block's partials
    if (T > 0) dr.step(xs + (T & 1) * XT, hb + ((T - 1) & 1) * DH * C::HBW, warp, lane);
    dr.store(p.dw + ((size_t)blockIdx.x * NH + nh) * (G * DH * DH + G * DH),
             reinterpret_cast<float*>(smem + C::B_TAIL + C::B_XCH + C::B_HB), warp, lane, ug, rh, wn, tid);
  }
  // ds0 = ds + R^T drhb of the last step
  float acc[1][NTW][4];
  gemm.template run_t<XN>(a_smem, xs_s + (uint32_t)((T & 1) * XT * 2), nt0, warp, lane, acc, [] {});
  exchange(acc);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const auto el = C::elem(e, rh);
    if (sidx[e] < 0) continue;
    ds[e][0] += C::pick(acc[0][el.i], el);
#pragma unroll
    for (int s = 0; s < S; ++s) store_state<TIn>(p.ds0, p.ds0_f32, s * BND + sidx[e], ds[e][s]);
  }
}

}  // namespace fused
}  // namespace flashrnn
