// Alternating backward: per step (reverse processing order) one pointwise kernel and one cuBLAS
// GEMM for dh; dR and db once after the loop.
//
//   pointwise: ds_new = ds (+ dh[t] on h); (dgx[t], drhb, ds) = Cell::backward(...)
//              dsplit = drhb split in KS parts (GEMM operand); drhb[t], hin[t] = states_in[t, 0]
//              kept in DT for dR; db_ws[b] += drhb (float64, one owner per element: no atomics)
//   GEMM:      ds[0] += [R R]^T [d_hi; d_lo]  (K = KS*G*DH, beta = 1, fp32 accumulation)
//   after:     dR[n] = sum_(t,b) drhb[t,b,n]^T hin[t,b,n] (one GEMM, K = T*B, operands DT);
//              db = sum_b db_ws[b]
#include "finish.cuh"

namespace flashrnn {
namespace alternating {

template <typename T>
struct StepBackward {
  int B, NH, DH;
  BwdStep<T> io;  // the step's tensors (common.cuh)
  T* dsplit;      // [B, NH, KS, G, DH]  drhb split into KS pieces of T, for the cuBLAS GEMM
};

template <typename Cell, typename T>
__global__ void step_backward_kernel(StepBackward<T> p) {
  constexpr int G = Cell::G, KS = Acc<T>::KS;
  const long long BND = (long long)p.B * p.NH * p.DH;
  FLASHRNN_GRID_STRIDE(idx, BND) {
    const int d = static_cast<int>(idx % p.DH);
    const long long bn = idx / p.DH;
    const long long sbase = bn * KS * G * p.DH + d;  // [B, NH, KS, G, DH]
    // rec = -0.0f: no R^T drhb here (the GEMM adds it to ds[0]); x + -0 is x exactly, and folds away
    pointwise_backward<Cell, T>(p.io, idx, bn * G * p.DH + d, p.DH, BND, -0.0f, [&](int g, long long, float drhb) {
      split_store<T, KS>(p.dsplit + sbase + (long long)g * p.DH, (long long)G * p.DH, drhb);
    });
  }
}

template <typename Cell, typename T>
struct RunBackward {
  static std::string run(const BackwardArgs& a, cudaStream_t stream) {
    constexpr int G = Cell::G, S = Cell::S, KS = Acc<T>::KS;
    using DT = typename Acc<T>::DT;
    const int T_ = a.shape.T, B = a.shape.B, NH = a.shape.NH, DH = a.shape.DH;
    const long long BND = (long long)B * NH * DH;
    const long long step_gx = BND * G;
    const long long GDD = (long long)G * DH * DH;
    const long long nb = (long long)NH * G * DH;
    DT* drhb = static_cast<DT*>(a.drhb_ws);
    DT* hin = static_cast<DT*>(a.hin_ws);
    T* dsplit = static_cast<T*>(a.dsplit_ws);
    std::string err;
    if (!(err = convert(a.ds_ws, static_cast<const T*>(a.dsT), S * BND, stream)).empty()) return err;
    if (T_ == 0 || BND == 0) {  // no step ran: dR = 0, db = 0, ds0 = dsT
      cudaMemsetAsync(a.dR, 0, nb * DH * sizeof(T), stream);
      cudaMemsetAsync(a.db, 0, nb * sizeof(T), stream);
      if (!(err = convert(static_cast<T*>(a.ds0), a.ds_ws, S * BND, stream)).empty()) return err;
      return last_error("backward (empty)");
    }
    cudaMemsetAsync(a.db_ws, 0, (long long)B * nb * sizeof(double), stream);
    const void* RR = a.R;  // [NH, KS, G, DH, DH]: R repeated KS times per head
    if (KS == 2) {
      cudaMemcpy2DAsync(a.R2_ws, 2 * GDD * sizeof(T), a.R, GDD * sizeof(T), GDD * sizeof(T), NH,
                        cudaMemcpyDeviceToDevice, stream);
      cudaMemcpy2DAsync(static_cast<T*>(a.R2_ws) + GDD, 2 * GDD * sizeof(T), a.R, GDD * sizeof(T),
                        GDD * sizeof(T), NH, cudaMemcpyDeviceToDevice, stream);
      RR = a.R2_ws;
    }
    for (int p = T_ - 1; p >= 0; --p) {
      const int t = a.reverse ? T_ - 1 - p : p;
      StepBackward<T> sp{B, NH, DH,
                         {static_cast<const T*>(a.dh) + t * BND,
                          static_cast<const T*>(a.gx) + t * step_gx,
                          a.rhb + t * step_gx,
                          a.states_in + (long long)t * S * BND,
                          a.ds_ws,
                          static_cast<T*>(a.dgx) + t * step_gx,
                          drhb + t * step_gx,
                          a.db_ws,
                          hin + t * BND},
                         dsplit};
      step_backward_kernel<Cell, T><<<blocks_for(BND), kThreads, 0, stream>>>(sp);
      if (!(err = last_error("step_backward_kernel")).empty()) return err;
      // ds[0][b, n, j] += sum_(k, gi) RR[n, k, gi, j] dsplit[b, n, k, gi]; column-major per head n:
      // C [DH, B] (ldc NH*DH) += RR[n]-view [DH, KS*G*DH] x dsplit [KS*G*DH, B] (ldb NH*KS*G*DH)
      Gemm gemm{false, false, DH, B, KS * G * DH,
                RR, DH, KS * GDD,
                dsplit, NH * KS * G * DH, (long long)KS * G * DH,
                1.0f, a.ds_ws, true, NH * DH, (long long)DH,
                NH, Traits<T>::dtype};
      if (!(err = run_gemm(gemm, stream)).empty()) return err;
    }
    return finish_backward<T>(a, G, S, stream);
  }
};

std::string backward(const std::string& functor, const BackwardArgs& args, cudaStream_t stream) {
  const Shape& sh = args.shape;
  if (args.step_kernel && (long long)sh.T * sh.B * sh.NH * sh.DH > 0) return step_backward(functor, args, stream);
  return dispatch<RunBackward>(functor, args.dtype, args, stream);
}

}  // namespace alternating
}  // namespace flashrnn
