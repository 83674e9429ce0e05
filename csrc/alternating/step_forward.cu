// Alternating forward, step-kernel path: ONE launch per time step (no cuBLAS). A block owns UW
// hidden units of one head (all G gate rows of each) and a tile of BT batch rows:
//
//   rh[(u, g), b] = sum_k R[n, g, d0 + u, k] * h_prev[b, n, k]     (FMAs, fp32 or fp64 sums: step.cuh)
//   rhb = rh + b; states = Cell::forward(gx[t], rhb, states)          (the block's own units)
//
// h_prev is fp32 and double-buffered (state_ws[0] and h2_ws alternate: every block reads all of
// h_prev while the step writes h_next); the other states are updated in place by their owner.
#include "step.cuh"

namespace flashrnn {
namespace alternating {

template <typename T>
struct StepFwd {
  int B, NH, DH, ublocks;  // ublocks: blocks per head (ceil(DH / UW))
  bool vec;                // 16-byte copies of R and h_prev rows
  bool all_in;             // whole K ranges in shared memory (step::Config)
  const T* R;              // [NH, G, DH, DH]
  const T* bias;           // [NH, G, DH]
  const T* gx_t;           // [B, NH, G, DH]
  const float* h_prev;     // [B, NH, DH]
  float* h_next;           // [B, NH, DH]
  float* state;            // [S, B, NH, DH]  states 1.. in place (slot 0 is not touched here)
  float* states_in_t;      // [S, B, NH, DH]  or nullptr
  float* rhb_t;            // [B, NH, G, DH]  or nullptr
  T* h_t;                  // [B, NH, DH]
  T* sT;                   // [S, B, NH, DH]  last step only, else nullptr
};

template <typename Cell, typename T, int BT>
__global__ void __launch_bounds__(32 * step::MAX_KW) step_forward_kernel(StepFwd<T> p) {
  constexpr int G = Cell::G, S = Cell::S;
  constexpr int UW = step::FwdTile<G>::UW, RW = step::FwdTile<G>::RW, V = RW * BT;
  using A = typename step::Accum<T>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  const int KW = blockDim.x >> 5;
  A* part = reinterpret_cast<A*>(smem + step::part_offset<T, RW, BT>(KW, p.DH, p.all_in));
  const int n = blockIdx.x / p.ublocks, d0 = (blockIdx.x % p.ublocks) * UW, b0 = blockIdx.y * BT;
  const int B = p.B, NH = p.NH, DH = p.DH;
  step::grid_dep_launch();  // the next step may start launching: it waits for this one to finish
  for (int i = threadIdx.x; i < UW * BT; i += blockDim.x) {  // gx of this step: DRAM -> L2 early
    const int d = d0 + i % UW, bb = b0 + i / UW;
    if (d < DH && bb < B) {
#pragma unroll
      for (int g = 0; g < G; ++g) step::prefetch_l2(p.gx_t + ((long long)bb * NH + n) * G * DH + (long long)g * DH + d);
    }
  }
  auto W = [&](int r) {  // row (u, g) = (r / G, r % G) of R, clamped to the head
    const int d = min(d0 + r / G, DH - 1);
    return p.R + ((long long)(n * G + r % G) * DH + d) * DH;
  };
  auto X = [&](int b) { return p.h_prev + ((long long)min(b0 + b, B - 1) * NH + n) * DH; };
  step::block_matvec<T, RW, BT>(W, X, DH, p.vec, p.all_in, smem, part);  // waits for the previous step

  const long long BND = (long long)B * NH * DH;
  for (int i = threadIdx.x; i < UW * BT; i += blockDim.x) {
    const int u = i % UW, b = i / UW, d = d0 + u, bb = b0 + b;
    if (d >= DH || bb >= B) continue;
    const long long idx = ((long long)bb * NH + n) * DH + d;
    const long long gbase = ((long long)bb * NH + n) * G * DH + d;
    float gx[G], rhb[G], s[S], s_new[S];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      gx[g] = Traits<T>::load(p.gx_t[gbase + (long long)g * DH]);
      rhb[g] = static_cast<float>(step::block_sum<V>(part, (u * G + g) * BT + b) +
                                  static_cast<A>(Traits<T>::load(p.bias[((long long)n * G + g) * DH + d])));
    }
    s[0] = p.h_prev[idx];
#pragma unroll
    for (int k = 1; k < S; ++k) s[k] = p.state[k * BND + idx];
    Cell::forward(gx, rhb, s, s_new);
    save_states_rhb<S, G>(p.states_in_t, p.rhb_t, s, rhb, idx, gbase, BND, DH);
    p.h_next[idx] = s_new[0];
#pragma unroll
    for (int k = 1; k < S; ++k) p.state[k * BND + idx] = s_new[k];
    p.h_t[idx] = Traits<T>::store(s_new[0]);
    if (p.sT != nullptr) {
#pragma unroll
      for (int k = 0; k < S; ++k) p.sT[k * BND + idx] = Traits<T>::store(s_new[k]);
    }
  }
}

template <typename Cell, typename T, int BT>
std::string run_step_forward(const ForwardArgs& a, cudaStream_t stream) {
  constexpr int G = Cell::G, S = Cell::S;
  constexpr int UW = step::FwdTile<G>::UW, RW = step::FwdTile<G>::RW;
  const int T_ = a.shape.T, B = a.shape.B, NH = a.shape.NH, DH = a.shape.DH;
  const long long BND = (long long)B * NH * DH;
  std::string err;
  if (!(err = convert(a.state_ws, static_cast<const T*>(a.s0), S * BND, stream)).empty()) return err;
  const int ublocks = (DH + UW - 1) / UW;
  const dim3 grid(NH * ublocks, (B + BT - 1) / BT);
  const step::Config cfg = step::configure<T, RW, BT>((long long)grid.x * grid.y, DH, /*one_warp=*/true);
  auto kernel = step_forward_kernel<Cell, T, BT>;
  if (cfg.smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cfg.smem);
  const bool vec = (DH * (int)sizeof(T)) % 16 == 0 && DH % 4 == 0 && step::aligned16(a.R) &&
                   step::aligned16(a.state_ws) && step::aligned16(a.h2_ws);
  float* hbuf[2] = {a.state_ws, a.h2_ws};  // h_prev of processing step p: hbuf[p & 1]
  const T* gx = static_cast<const T*>(a.gx);
  const long long step_gx = BND * G;
  const bool save = a.states_in != nullptr;
  for (int p = 0; p < T_; ++p) {
    const int t = a.reverse ? T_ - 1 - p : p;
    StepFwd<T> sp{B, NH, DH, ublocks, vec, cfg.all_in,
                  static_cast<const T*>(a.R), static_cast<const T*>(a.b), gx + t * step_gx,
                  hbuf[p & 1], hbuf[(p + 1) & 1], a.state_ws,
                  save ? a.states_in + (long long)t * S * BND : nullptr,
                  save ? a.rhb + t * step_gx : nullptr,
                  static_cast<T*>(a.h) + t * BND,
                  p == T_ - 1 ? static_cast<T*>(a.sT) : nullptr};
    // the first step waits for everything before it in the stream (s0, state_ws) in full
    const cudaError_t e = step::launch(kernel, grid, 32 * cfg.KW, cfg.smem, stream, cfg.pdl && p > 0, sp);
    if (e != cudaSuccess) return std::string("step_forward_kernel: ") + cudaGetErrorString(e);
  }
  return "";
}

template <typename Cell, typename T>
struct RunStepForward {
  static std::string run(const ForwardArgs& a, cudaStream_t stream) {
    return a.shape.B <= 4 ? run_step_forward<Cell, T, 4>(a, stream)
                          : run_step_forward<Cell, T, step::wide_tile<T>()>(a, stream);
  }
};

std::string step_forward(const std::string& functor, const ForwardArgs& args, cudaStream_t stream) {
  return dispatch<RunStepForward>(functor, args.dtype, args, stream);
}

}  // namespace alternating
}  // namespace flashrnn
