// Alternating forward: per step one cuBLAS GEMM (R h over the heads) and one pointwise kernel.
//
//   rh  [KS*B, NH, G, DH] fp32 = R[n] @ hsplit[:, n]           (GEMM, fp32 accumulation)
//   rhb = sum of the KS rows + b; states = Cell::forward(gx[t], rhb, states)
//                                    (pointwise: writes h[t], hsplit, states_in[t], rhb[t])
// hsplit [KS*B, NH, DH] holds h in the input dtype, as hi and lo halves for half types (KS = 2),
// so that R h is as exact as an fp32 product; float32 uses h itself (KS = 1).
#include "common.cuh"

namespace flashrnn {
namespace alternating {

template <typename T>
struct StepForward {
  int B, NH, DH;
  const T* gx_t;       // [B, NH, G, DH]
  const float* rh;     // [KS*B, NH, G, DH]  R hsplit
  const T* bias;       // [NH, G, DH]
  float* state;        // [S, B, NH, DH]  in place
  float* states_in_t;  // [S, B, NH, DH]  or nullptr
  float* rhb_t;        // [B, NH, G, DH]  or nullptr
  T* hsplit;           // [KS*B, NH, DH]  next step's GEMM operand
  T* h_t;              // [B, NH, DH]
  T* sT;               // [S, B, NH, DH]  last step only, else nullptr
};

template <typename Cell, typename T>
__global__ void step_forward_kernel(StepForward<T> p) {
  constexpr int G = Cell::G, S = Cell::S, KS = Acc<T>::KS;
  const long long BND = (long long)p.B * p.NH * p.DH;
  FLASHRNN_GRID_STRIDE(idx, BND) {
    const int d = static_cast<int>(idx % p.DH);
    const long long bn = idx / p.DH;
    const int n = static_cast<int>(bn % p.NH);
    const long long gbase = bn * G * p.DH + d;
    float gx[G], rhb[G], s[S], s_new[S];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      gx[g] = Traits<T>::load(p.gx_t[gbase + (long long)g * p.DH]);
      float acc = Traits<T>::load(p.bias[((long long)n * G + g) * p.DH + d]);
#pragma unroll
      for (int k = KS - 1; k >= 0; --k) acc += p.rh[k * BND * G + gbase + (long long)g * p.DH];
      rhb[g] = acc;
    }
#pragma unroll
    for (int k = 0; k < S; ++k) s[k] = p.state[k * BND + idx];
    Cell::forward(gx, rhb, s, s_new);
    save_states_rhb<S, G>(p.states_in_t, p.rhb_t, s, rhb, idx, gbase, BND, p.DH);
#pragma unroll
    for (int k = 0; k < S; ++k) p.state[k * BND + idx] = s_new[k];
    split_store<T, KS>(p.hsplit + idx, BND, s_new[0]);
    p.h_t[idx] = Traits<T>::store(s_new[0]);
    if (p.sT != nullptr) {
#pragma unroll
      for (int k = 0; k < S; ++k) p.sT[k * BND + idx] = Traits<T>::store(s_new[k]);
    }
  }
}

template <typename Cell, typename T>
struct RunForward {
  static std::string run(const ForwardArgs& a, cudaStream_t stream) {
    constexpr int G = Cell::G, S = Cell::S, KS = Acc<T>::KS;
    const int T_ = a.shape.T, B = a.shape.B, NH = a.shape.NH, DH = a.shape.DH;
    const long long BND = (long long)B * NH * DH;
    const T* gx = static_cast<const T*>(a.gx);
    const T* s0 = static_cast<const T*>(a.s0);
    T* hsplit = static_cast<T*>(a.hsplit_ws);
    std::string err;
    if (T_ == 0 || BND == 0) {  // nothing to run: sT = s0
      if (S * BND > 0) cudaMemcpyAsync(a.sT, a.s0, S * BND * sizeof(T), cudaMemcpyDeviceToDevice, stream);
      return last_error("forward (empty)");
    }
    if (!(err = convert(a.state_ws, s0, S * BND, stream)).empty()) return err;
    cudaMemcpyAsync(hsplit, s0, BND * sizeof(T), cudaMemcpyDeviceToDevice, stream);  // hi = h0
    if (KS == 2) cudaMemsetAsync(hsplit + BND, 0, BND * sizeof(T), stream);         // lo = 0
    const long long step_gx = BND * G;  // elements of gx / rhb per time step
    for (int p = 0; p < T_; ++p) {
      const int t = a.reverse ? T_ - 1 - p : p;
      // rh[r, n, gi] = sum_j R[n, gi, j] hsplit[r, n, j], r < KS*B; column-major per head n:
      // C [G*DH, KS*B] (ldc NH*G*DH) = R[n]^T-view [G*DH, DH] x hsplit [DH, KS*B] (ldb NH*DH)
      Gemm gemm{true, false, G * DH, KS * B, DH,
                a.R, DH, (long long)G * DH * DH,
                hsplit, NH * DH, (long long)DH,
                0.0f, a.rh_ws, true, NH * G * DH, (long long)G * DH,
                NH, Traits<T>::dtype};
      if (!(err = run_gemm(gemm, stream)).empty()) return err;
      const bool save = a.states_in != nullptr;
      StepForward<T> sp{B, NH, DH, gx + t * step_gx, a.rh_ws, static_cast<const T*>(a.b), a.state_ws,
                        save ? a.states_in + (long long)t * S * BND : nullptr,
                        save ? a.rhb + t * step_gx : nullptr,
                        hsplit, static_cast<T*>(a.h) + t * BND,
                        p == T_ - 1 ? static_cast<T*>(a.sT) : nullptr};
      step_forward_kernel<Cell, T><<<blocks_for(BND), kThreads, 0, stream>>>(sp);
      if (!(err = last_error("step_forward_kernel")).empty()) return err;
    }
    return "";
  }
};

std::string forward(const std::string& functor, const ForwardArgs& args, cudaStream_t stream) {
  const Shape& sh = args.shape;
  if (args.step_kernel && (long long)sh.T * sh.B * sh.NH * sh.DH > 0) return step_forward(functor, args, stream);
  return dispatch<RunForward>(functor, args.dtype, args, stream);
}

int num_gates(const std::string& functor) {
#define FLASHRNN_GATES(Cell) \
  if (functor == #Cell) return Cell::G;
  FLASHRNN_FOR_EACH_CELL(FLASHRNN_GATES)
#undef FLASHRNN_GATES
  return -1;
}

int num_states(const std::string& functor) {
#define FLASHRNN_STATES(Cell) \
  if (functor == #Cell) return Cell::S;
  FLASHRNN_FOR_EACH_CELL(FLASHRNN_STATES)
#undef FLASHRNN_STATES
  return -1;
}

}  // namespace alternating
}  // namespace flashrnn
