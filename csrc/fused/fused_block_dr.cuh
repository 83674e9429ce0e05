// The fused_block backward's in-kernel dR and db accumulator (DrAcc, Config::DR) and its
// m16n8k16 mode (FRNN_BWD_DR16). Plain CUDA C++; included by fused_block.cuh (DrAcc reads its
// Config through the template parameter C).
#pragma once

#include "fused/mma.cuh"

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

#if FRNN_BWD_DR16
// a compile-time step parity (-1: known at run time only)
template <int P> struct Par { static constexpr int value = P; };
#endif

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

}  // namespace fused
}  // namespace flashrnn
