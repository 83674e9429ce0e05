// Device code shared by the fused families that split the R of one head by hidden units over
// several blocks (fused_cluster: a thread-block cluster; fused_grid: blocks of a cooperative grid):
// the gx ring's per-thread copy plan, the map of a thread's unit pairs, and unpacking two 16-bit
// values. Plain CUDA C++.
#pragma once

#include <stdint.h>

#include "fused/fused_block.cuh"

namespace flashrnn {
namespace fused_split {

// One thread's share of streaming ROWS rows x CHUNKS 16-byte chunks of gx into a ring stage each
// step: shared addresses (stage 0) and global addresses (first step) fixed before the time loop;
// a row past the batch copies nothing (its stage rows stay zero).
template <int THREADS, int ROWS, int CHUNKS>
struct StageCopy {
  static constexpr int TOTAL = ROWS * CHUNKS, CH = (TOTAL + THREADS - 1) / THREADS;
  uint32_t dst[CH];
  const unsigned char* src[CH];  // nullptr: a slot past the tile or a row past the batch
  // row r lands at dst_base + r * dst_row; src_of(r): its global address at the first step, or nullptr
  template <typename F>
  __device__ void init(uint32_t dst_base, int dst_row, F src_of, int tid) {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      const int i = k * THREADS + tid, r = i / CHUNKS, c = i % CHUNKS;
      const unsigned char* row = i < TOTAL ? src_of(r) : nullptr;
      dst[k] = dst_base + r * dst_row + c * 16;
      src[k] = row != nullptr ? row + c * 16 : nullptr;
    }
  }
  __device__ void issue(uint32_t stage_off, long long t_off) const {
#pragma unroll
    for (int k = 0; k < CH; ++k)
      if (src[k] != nullptr) fused::cp_async16(dst[k] + stage_off, src[k] + t_off);
  }
};

// The thread's unit pairs: pair q = tid + k * THREADS -> column pn = q / (DHB / 2) of the batch
// tile, unit pu = 2 (q % (DHB / 2)) of the block's DHB; pok: a pair of this block (q < NP) and a
// column inside the batch (pn < nb). Forward and backward use the same map.
template <int PPT, int THREADS, int DHB>
__device__ __forceinline__ void unit_pairs(int tid, int NP, int nb, int (&pn)[PPT], int (&pu)[PPT], bool (&pok)[PPT]) {
#pragma unroll
  for (int k = 0; k < PPT; ++k) {
    const int q = tid + k * THREADS;
    const bool in = q < NP;
    pn[k] = in ? q / (DHB / 2) : 0;
    pu[k] = in ? 2 * (q % (DHB / 2)) : 0;
    pok[k] = in && pn[k] < nb;
  }
}

// The states st[k][j][s] (fp32; 0 for a pair outside the batch) of unit u0 + pu[k] + j of the
// thread's pairs (unit_pairs), head nh, batch tile from column bt0, from s0 [S][B][NH][DH] with
// BND = B * NH * DH values a state: the forwards' initial states, the backwards' dsT.
template <typename TIn, int PPT, int S>
__device__ __forceinline__ void load_pair_states(const TIn* s0, int DH, int NH, int nh, int BND, int bt0, int u0,
                                                 const int (&pn)[PPT], const int (&pu)[PPT], const bool (&pok)[PPT],
                                                 float (&st)[PPT][2][S]) {
#pragma unroll
  for (int k = 0; k < PPT; ++k)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int s = 0; s < S; ++s)
        st[k][j][s] = pok[k] ? fused::In<TIn>::load(s0[(size_t)s * BND + ((size_t)(bt0 + pn[k]) * NH + nh) * DH + u0 + pu[k] + j]) : 0.0f;
}

// load_pair_states, and the bias bb[k][j][g] of the same units from bias [NH][G][DH] at the head's row
template <typename TIn, int PPT, int G, int S>
__device__ __forceinline__ void load_pair_bias_states(const TIn* bias, const TIn* s0, int DH, int NH, int nh, int BND,
                                                      int bt0, int u0, const int (&pn)[PPT], const int (&pu)[PPT],
                                                      const bool (&pok)[PPT], float (&bb)[PPT][2][G],
                                                      float (&st)[PPT][2][S]) {
#pragma unroll
  for (int k = 0; k < PPT; ++k)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int g = 0; g < G; ++g) bb[k][j][g] = fused::In<TIn>::load(bias[g * DH + u0 + pu[k] + j]);
  load_pair_states<TIn, PPT, S>(s0, DH, NH, nh, BND, bt0, u0, pn, pu, pok, st);
}

// The final states st[k][j][s] of the thread's pairs into sT [S][B][NH][DH] (the input dtype, one
// 32-bit word per pair and state; pairs outside the batch store nothing): load_pair_bias_states'
// layout.
template <typename TIn, int PPT, int S>
__device__ __forceinline__ void store_pair_states(TIn* sT, int DH, int NH, int nh, int BND, int bt0, int u0,
                                                  const int (&pn)[PPT], const int (&pu)[PPT], const bool (&pok)[PPT],
                                                  const float (&st)[PPT][2][S]) {
#pragma unroll
  for (int k = 0; k < PPT; ++k)
    if (pok[k])
#pragma unroll
      for (int s = 0; s < S; ++s) {
        TIn o[2] = {fused::In<TIn>::store(st[k][0][s]), fused::In<TIn>::store(st[k][1][s])};
        *reinterpret_cast<uint32_t*>(sT + (size_t)s * BND + ((size_t)(bt0 + pn[k]) * NH + nh) * DH + u0 + pu[k]) =
            fused::pack2(o[0], o[1]);
      }
}

// the two 16-bit values of a 32-bit word (lo: the lower address) as floats
template <typename TIn>
__device__ __forceinline__ float2 unpack2f(uint32_t w) {
  const uint16_t lo = (uint16_t)(w & 0xffffu), hi = (uint16_t)(w >> 16);
  TIn a, b;
  memcpy(&a, &lo, 2);
  memcpy(&b, &hi, 2);
  return make_float2(fused::In<TIn>::load(a), fused::In<TIn>::load(b));
}

// One step's inputs of the own backwards (fused_cluster, fused_grid) for the thread's unit pairs,
// loaded a step ahead: gx (two values of the input dtype a word) and rhb [T][B][NH][G][DH] (GBND
// values a step), states_in [T][S][B][NH][DH] and dh [T][B][NH][DH] (BND values a slice); zeros
// for a pair outside the batch. cell() runs the cell's backward of one pair on them.
template <typename TIn, typename Cell, int PPT>
struct PairStepInputs {
  static constexpr int G = Cell::G, S = Cell::S;
  uint32_t igx[PPT][G], idh[PPT];
  float2 irh[PPT][G], ist[PPT][S];

  __device__ __forceinline__ void load(const TIn* gx, const TIn* dh, const float* rhb, const float* states_in, int t,
                                       int GBND, int BND, int DH, int NH, int nh, int bt0, int u0, const int (&pn)[PPT],
                                       const int (&pu)[PPT], const bool (&pok)[PPT]) {
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      const size_t so = ((size_t)(bt0 + pn[k]) * NH + nh) * DH + u0 + pu[k];
      const size_t go = (size_t)t * GBND + ((size_t)(bt0 + pn[k]) * NH + nh) * G * DH + u0 + pu[k];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        igx[k][g] = pok[k] ? *reinterpret_cast<const uint32_t*>(gx + go + (size_t)g * DH) : 0u;
        irh[k][g] = pok[k] ? *reinterpret_cast<const float2*>(rhb + go + (size_t)g * DH) : make_float2(0.0f, 0.0f);
      }
#pragma unroll
      for (int s = 0; s < S; ++s)
        ist[k][s] = pok[k] ? *reinterpret_cast<const float2*>(states_in + ((size_t)t * S + s) * BND + so) : make_float2(0.0f, 0.0f);
      idh[k] = pok[k] ? *reinterpret_cast<const uint32_t*>(dh + (size_t)t * BND + so) : 0u;
    }
  }

  // pair k's cell backward: ds[j] (its units' state gradients, updated) gets dh_rec `rec` and the
  // step's dh on state 0; dg, dr: the gradients of gx and of R h + b
  template <typename M>
  __device__ __forceinline__ void cell(int k, float2 rec, float (&ds)[2][S], float (&dg)[2][G], float (&dr)[2][G]) const {
    const float2 dhv = unpack2f<TIn>(idh[k]);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float gxv[G], rhv[G], sv[S], dsn[S], dsi[S];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float2 x = unpack2f<TIn>(igx[k][g]);
        gxv[g] = j ? x.y : x.x;
        rhv[g] = j ? irh[k][g].y : irh[k][g].x;
      }
#pragma unroll
      for (int s = 0; s < S; ++s) {
        sv[s] = j ? ist[k][s].y : ist[k][s].x;
        dsn[s] = ds[j][s];
      }
      dsn[0] += (j ? rec.y : rec.x) + (j ? dhv.y : dhv.x);
      Cell::template backward<M>(gxv, rhv, sv, dsn, dg[j], dr[j], dsi);
#pragma unroll
      for (int s = 0; s < S; ++s) ds[j][s] = dsi[s];
    }
  }
};

}  // namespace fused_split
}  // namespace flashrnn
