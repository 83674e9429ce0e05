// After the backward loop (both paths: cuBLAS, backward.cu, and the step kernel, step_backward.cu):
//   dR[n] = sum_(t,b) drhb[t,b,n]^T hin[t,b,n] (one GEMM, K = T*B, operands DT = Acc<T>::DT);
//   db = sum_b db_ws[b]; ds0 = (T) ds_ws.
#pragma once

#include "common.cuh"

namespace flashrnn {
namespace alternating {

// db[c] = sum_b db_ws[b, c] for c < NH*G*DH
template <typename T>
__global__ void reduce_db_kernel(T* db, const double* db_ws, int B, long long n) {
  FLASHRNN_GRID_STRIDE(c, n) {
    double acc = 0.0;
    for (int b = 0; b < B; ++b) acc += db_ws[b * n + c];
    db[c] = from_float<T>(static_cast<float>(acc));
  }
}

// out[i] = (T) in[i] from float64
template <typename T>
__global__ void from_double_kernel(T* out, const double* in, long long n) {
  FLASHRNN_GRID_STRIDE(i, n) { out[i] = from_float<T>(static_cast<float>(in[i])); }
}

// dR, db and ds0 from the loop's drhb_ws [T, B, NH, G, DH], hin_ws [T, B, NH, DH] (DT), db_ws and
// ds_ws (G gates, S states).
template <typename T>
std::string finish_backward(const BackwardArgs& a, int G, int S, cudaStream_t stream) {
  using DT = typename Acc<T>::DT;
  const int T_ = a.shape.T, B = a.shape.B, NH = a.shape.NH, DH = a.shape.DH;
  const long long BND = (long long)B * NH * DH;
  const long long GDD = (long long)G * DH * DH;
  const long long nb = (long long)NH * G * DH;
  std::string err;
  // dR[n, gi, j] = sum_r drhb[r, n, gi] hin[r, n, j], r = (t, b); column-major per head n:
  // C [DH, G*DH] (ldc DH) = hin [DH, T*B] (lda NH*DH) x drhb^T [T*B, G*DH] (ldb NH*G*DH)
  const bool f64 = Traits<DT>::dtype == DType::kFloat64;
  Gemm dR{false, true, DH, G * DH, T_ * B,
          a.hin_ws, NH * DH, (long long)DH,
          a.drhb_ws, NH * G * DH, (long long)G * DH,
          0.0f, f64 ? static_cast<void*>(a.dR64_ws) : a.dR, false, DH, GDD,
          NH, Traits<DT>::dtype};
  if (!(err = run_gemm(dR, stream)).empty()) return err;
  if (f64) {
    from_double_kernel<T><<<blocks_for(nb * DH), kThreads, 0, stream>>>(static_cast<T*>(a.dR), a.dR64_ws, nb * DH);
    if (!(err = last_error("from_double_kernel")).empty()) return err;
  }
  reduce_db_kernel<T><<<blocks_for(nb), kThreads, 0, stream>>>(static_cast<T*>(a.db), a.db_ws, B, nb);
  if (!(err = last_error("reduce_db_kernel")).empty()) return err;
  return convert(static_cast<T*>(a.ds0), a.ds_ws, S * BND, stream);
}

}  // namespace alternating
}  // namespace flashrnn
