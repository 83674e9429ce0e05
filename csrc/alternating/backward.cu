// Alternating backward: per step (reverse processing order) one pointwise kernel and one cuBLAS
// GEMM for dh; dR and db once after the loop.
//
//   pointwise: ds_new = ds (+ dh[t] on h); (dgx[t], drhb[t], ds) = Cell::backward(...)
//              db_ws += drhb[t] (fp32 atomics over B); hin[t] = states_in[t, 0] (GEMM dtype)
//   GEMM:      ds[0] += R^T drhb[t]                       (beta = 1, fp32 accumulation)
//   after:     dR[n] = sum_(t,b) drhb[t,b,n]^T hin[t,b,n] (one GEMM, K = T*B); db = db_ws
#include "common.cuh"

namespace flashrnn {
namespace alternating {

template <typename T>
struct StepBackward {
  int B, NH, DH;
  const T* dh_t;           // [B, NH, DH]
  const T* gx_t;           // [B, NH, G, DH]
  const float* rhb_t;      // [B, NH, G, DH]
  const float* states_t;   // [S, B, NH, DH]
  float* ds;               // [S, B, NH, DH]  in place: ds_new in, ds_in out
  T* dgx_t;                // [B, NH, G, DH]
  T* drhb_t;               // [B, NH, G, DH]
  float* db;               // [NH, G, DH]     accumulated
  T* hin_t;                // [B, NH, DH]
};

template <typename Cell, typename T>
__global__ void step_backward_kernel(StepBackward<T> p) {
  constexpr int G = Cell::G, S = Cell::S;
  const long long BND = (long long)p.B * p.NH * p.DH;
  FLASHRNN_GRID_STRIDE(idx, BND) {
    const int d = static_cast<int>(idx % p.DH);
    const long long bn = idx / p.DH;
    const int n = static_cast<int>(bn % p.NH);
    const long long gbase = bn * G * p.DH + d;
    float gx[G], rhb[G], s[S], ds_new[S], dgx[G], drhb[G], ds[S];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      gx[g] = Traits<T>::load(p.gx_t[gbase + (long long)g * p.DH]);
      rhb[g] = p.rhb_t[gbase + (long long)g * p.DH];
    }
#pragma unroll
    for (int k = 0; k < S; ++k) {
      s[k] = p.states_t[k * BND + idx];
      ds_new[k] = p.ds[k * BND + idx];
    }
    ds_new[0] += Traits<T>::load(p.dh_t[idx]);
    Cell::backward(gx, rhb, s, ds_new, dgx, drhb, ds);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      p.dgx_t[gbase + (long long)g * p.DH] = Traits<T>::store(dgx[g]);
      p.drhb_t[gbase + (long long)g * p.DH] = Traits<T>::store(drhb[g]);
      atomicAdd(p.db + ((long long)n * G + g) * p.DH + d, drhb[g]);
    }
#pragma unroll
    for (int k = 0; k < S; ++k) p.ds[k * BND + idx] = ds[k];
    p.hin_t[idx] = Traits<T>::store(s[0]);
  }
}

template <typename Cell, typename T>
struct RunBackward {
  static std::string run(const BackwardArgs& a, cudaStream_t stream) {
    constexpr int G = Cell::G, S = Cell::S;
    const int T_ = a.shape.T, B = a.shape.B, NH = a.shape.NH, DH = a.shape.DH;
    const long long BND = (long long)B * NH * DH;
    const long long step_gx = BND * G;
    const T* R = static_cast<const T*>(a.R);
    T* drhb = static_cast<T*>(a.drhb_ws);
    T* hin = static_cast<T*>(a.hin_ws);
    std::string err;
    if (!(err = convert(a.ds_ws, static_cast<const T*>(a.dsT), S * BND, stream)).empty()) return err;
    const long long nb = (long long)NH * G * DH;
    cudaMemsetAsync(a.db_ws, 0, nb * sizeof(float), stream);
    if (T_ == 0 || BND == 0) {  // no step ran: dR = 0, db = 0, ds0 = dsT
      cudaMemsetAsync(a.dR, 0, nb * DH * sizeof(T), stream);
      if (!(err = convert(static_cast<T*>(a.db), a.db_ws, nb, stream)).empty()) return err;
      if (!(err = convert(static_cast<T*>(a.ds0), a.ds_ws, S * BND, stream)).empty()) return err;
      return last_error("backward (empty)");
    }
    for (int p = T_ - 1; p >= 0; --p) {
      const int t = a.reverse ? T_ - 1 - p : p;
      StepBackward<T> sp{B, NH, DH,
                         static_cast<const T*>(a.dh) + t * BND,
                         static_cast<const T*>(a.gx) + t * step_gx,
                         a.rhb + t * step_gx,
                         a.states_in + (long long)t * S * BND,
                         a.ds_ws,
                         static_cast<T*>(a.dgx) + t * step_gx,
                         drhb + t * step_gx,
                         a.db_ws,
                         hin + t * BND};
      step_backward_kernel<Cell, T><<<blocks_for(BND), kThreads, 0, stream>>>(sp);
      if (!(err = last_error("step_backward_kernel")).empty()) return err;
      // ds[0][b, n, j] += sum_gi R[n, gi, j] drhb[t][b, n, gi]; column-major per head n:
      // C [DH, B] (ldc NH*DH) += R[n]-view [DH, G*DH] x drhb[t] [G*DH, B] (ldb NH*G*DH)
      Gemm gemm{false, false, DH, B, G * DH,
                R, DH, (long long)G * DH * DH,
                drhb + t * step_gx, NH * G * DH, (long long)G * DH,
                1.0f, a.ds_ws, true, NH * DH, (long long)DH,
                NH, Traits<T>::dtype};
      if (!(err = run_gemm(gemm, stream)).empty()) return err;
    }
    // dR[n, gi, j] = sum_r drhb[r, n, gi] hin[r, n, j], r = (t, b); column-major per head n:
    // C [DH, G*DH] (ldc DH) = hin [DH, T*B] (lda NH*DH) x drhb^T [T*B, G*DH] (ldb NH*G*DH)
    Gemm dR{false, true, DH, G * DH, T_ * B,
            hin, NH * DH, (long long)DH,
            drhb, NH * G * DH, (long long)G * DH,
            0.0f, a.dR, false, DH, (long long)G * DH * DH,
            NH, Traits<T>::dtype};
    if (!(err = run_gemm(dR, stream)).empty()) return err;
    if (!(err = convert(static_cast<T*>(a.db), a.db_ws, nb, stream)).empty()) return err;
    return convert(static_cast<T*>(a.ds0), a.ds_ws, S * BND, stream);
  }
};

std::string backward(const std::string& functor, const BackwardArgs& args, cudaStream_t stream) {
  return dispatch<RunBackward>(functor, args.dtype, args, stream);
}

}  // namespace alternating
}  // namespace flashrnn
