// The fused_block backward's in-kernel dR and db accumulator (DrAcc, Config::DR). Plain CUDA C++;
// included by fused_block.cuh (DrAcc reads its Config through the template parameter C).
#pragma once

#include "fused/mma.cuh"

namespace flashrnn {
namespace fused {

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

}  // namespace fused
}  // namespace flashrnn
