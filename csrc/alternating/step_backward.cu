// Alternating backward, step-kernel path: ONE launch per time step (no cuBLAS in the loop). A block
// owns UW hidden units j of one head and a tile of BT batch rows (BwdTile). At processing step p
// (t of the step; p runs T-1 .. 0):
//
//   rec[j, b] = sum_(g, i) RT[n, j, (g, i)] * drhb_prev[b, n, (g, i)]   (R^T d(rhb) of step p + 1,
//                                             FMAs: step.cuh block_matvec_wide)
//   ds_new = ds (+ dh[t] + rec on h); (dgx[t], drhb, ds) = Cell::backward(...)   (own units)
//
// RT [NH, DH, G, DH] is R transposed once per call (rows of R^T contiguous); drhb is kept in fp32
// and double-buffered (dr_ws[p & 1] is written while dr_ws[(p + 1) & 1] is read). A last launch
// adds R^T drhb of step 0 into ds[0]. dR and db after the loop as in the cuBLAS path (backward.cu).
#include "finish.cuh"
#include "step.cuh"

namespace flashrnn {
namespace alternating {

template <typename T>
struct StepBwd {
  int B, NH, DH, ublocks;  // ublocks: blocks per head (ceil(DH / UW))
  bool vec;                // 16-byte copies of RT and drhb rows
  int cap;                 // K elements per round of a warp (step::WideConfig)
  bool has_prev;           // a step was processed before this one: add R^T drhb_prev
  bool pointwise;          // false: only ds[0] += R^T drhb_prev (the launch after the loop)
  const T* RT;             // [NH, DH, G, DH]
  const float* dr_prev;    // [B, NH, G, DH]
  float* dr_cur;           // [B, NH, G, DH]
  BwdStep<T> io;           // the step's tensors (common.cuh; io.ds is used by the last launch too)
};

// Tiles of the backward (units UW x batch rows BT per block): the block reads UW rows of R^T and
// BT rows of drhb (fp32), each K = G * DH long, every step. B > 4: 12 x 8 (dense 1x768 LSTM bf16
// B=16: 128 blocks of 175 KB, one per SM; 8 x 16 would need 245 KB), B <= 4: 6 x 4; float32
// (float64 accumulators): 4 x 4.
template <typename T, bool WIDE>
struct BwdTile {
  static constexpr int UW = WIDE ? 12 : 6, BT = WIDE ? 8 : 4;
};
template <bool WIDE>
struct BwdTile<float, WIDE> {
  static constexpr int UW = 4, BT = 4;
};

template <typename Cell, typename T, int UW, int BT>
__global__ void __launch_bounds__(32 * step::MAX_KW) step_backward_kernel(StepBwd<T> p) {
  constexpr int G = Cell::G, RW = UW, V = RW * BT;
  using A = typename step::Accum<T>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  const int KW = blockDim.x >> 5;
  const int n = blockIdx.x / p.ublocks, j0 = (blockIdx.x % p.ublocks) * UW, b0 = blockIdx.y * BT;
  const int B = p.B, NH = p.NH, DH = p.DH, K = G * DH;
  A* part = reinterpret_cast<A*>(smem + step::wide_part_offset<T, RW, BT>(KW, p.cap));
  step::grid_dep_launch();  // the next step may start launching: it waits for this one to finish
  if (p.pointwise) {  // this step's inputs: DRAM -> L2 early
    for (int i = threadIdx.x; i < UW * BT; i += blockDim.x) {
      const int j = j0 + i % UW, bb = b0 + i / UW;
      if (j < DH && bb < B) {
        const long long gb = ((long long)bb * NH + n) * G * DH + j;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          step::prefetch_l2(p.io.gx_t + gb + (long long)g * DH);
          step::prefetch_l2(p.io.rhb_t + gb + (long long)g * DH);
        }
        step::prefetch_l2(p.io.dh_t + ((long long)bb * NH + n) * DH + j);
      }
    }
  }
  if (p.has_prev) {  // uniform over the grid
    auto W = [&](int r) { return p.RT + ((long long)n * DH + min(j0 + r, DH - 1)) * K; };
    auto X = [&](int b) { return p.dr_prev + ((long long)min(b0 + b, B - 1) * NH + n) * K; };
    step::block_matvec_wide<T, RW, BT>(W, X, K, p.vec, p.cap, smem, part);  // waits for the previous step
  } else {
    step::grid_dep_wait();
  }
  const long long BND = (long long)B * NH * DH;
  for (int i = threadIdx.x; i < UW * BT; i += blockDim.x) {
    const int u = i % UW, b = i / UW, j = j0 + u, bb = b0 + b;
    if (j >= DH || bb >= B) continue;
    const long long idx = ((long long)bb * NH + n) * DH + j;
    const A rec = p.has_prev ? step::block_sum<V>(part, u * BT + b) : A(0);
    if (!p.pointwise) {
      p.io.ds[idx] = static_cast<float>(p.io.ds[idx] + rec);
      continue;
    }
    pointwise_backward<Cell, T>(p.io, idx, ((long long)bb * NH + n) * G * DH + j, DH, BND, rec,
                                [&](int, long long o, float drhb) { p.dr_cur[o] = drhb; });
  }
}

// RT[n, j, g, i] = R[n, g, i, j]
template <typename T>
__global__ void transpose_r_kernel(T* RT, const T* R, int NH, int G, int DH) {
  const long long n_el = (long long)NH * G * DH * DH;
  FLASHRNN_GRID_STRIDE(e, n_el) {
    const int i = static_cast<int>(e % DH);
    const long long rest = e / DH;
    const int g = static_cast<int>(rest % G);
    const long long nj = rest / G;
    const int j = static_cast<int>(nj % DH);
    const long long n = nj / DH;
    RT[e] = R[((n * G + g) * DH + i) * DH + j];
  }
}

template <typename Cell, typename T, int UW, int BT>
std::string run_step_backward(const BackwardArgs& a, cudaStream_t stream) {
  constexpr int G = Cell::G, S = Cell::S;
  using DT = typename Acc<T>::DT;
  const int T_ = a.shape.T, B = a.shape.B, NH = a.shape.NH, DH = a.shape.DH;
  const long long BND = (long long)B * NH * DH;
  const long long step_gx = BND * G;
  const int K = G * DH;
  std::string err;
  if (!(err = convert(a.ds_ws, static_cast<const T*>(a.dsT), S * BND, stream)).empty()) return err;
  cudaMemsetAsync(a.db_ws, 0, (long long)B * NH * G * DH * sizeof(double), stream);
  T* RT = static_cast<T*>(a.RT_ws);
  transpose_r_kernel<T><<<blocks_for((long long)NH * G * DH * DH), kThreads, 0, stream>>>(
      RT, static_cast<const T*>(a.R), NH, G, DH);
  if (!(err = last_error("transpose_r_kernel")).empty()) return err;
  const int ublocks = (DH + UW - 1) / UW;
  const dim3 grid(NH * ublocks, (B + BT - 1) / BT);
  const step::WideConfig cfg = step::configure_wide<T, UW, BT>((long long)grid.x * grid.y, K);
  auto kernel = step_backward_kernel<Cell, T, UW, BT>;
  if (cfg.smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, cfg.smem);
  const bool vec = (K * (int)sizeof(T)) % 16 == 0 && K % 4 == 0 && step::aligned16(RT) && step::aligned16(a.dr_ws);
  float* dr[2] = {a.dr_ws, a.dr_ws + step_gx};  // drhb of processing step p: dr[p & 1]
  DT* drhb = static_cast<DT*>(a.drhb_ws);
  DT* hin = static_cast<DT*>(a.hin_ws);
  for (int p = T_ - 1; p >= -1; --p) {  // p = -1: only ds[0] += R^T drhb of step 0
    const int t = a.reverse ? T_ - 1 - p : p;
    const bool pw = p >= 0;
    StepBwd<T> sp{B, NH, DH, ublocks, vec, cfg.cap, p < T_ - 1, pw, RT, dr[(p + 1) & 1], pw ? dr[p & 1] : nullptr,
                  {pw ? static_cast<const T*>(a.dh) + t * BND : nullptr,
                   pw ? static_cast<const T*>(a.gx) + t * step_gx : nullptr,
                   pw ? a.rhb + t * step_gx : nullptr,
                   pw ? a.states_in + (long long)t * S * BND : nullptr,
                   a.ds_ws,
                   pw ? static_cast<T*>(a.dgx) + t * step_gx : nullptr,
                   pw ? drhb + t * step_gx : nullptr,
                   a.db_ws,
                   pw ? hin + t * BND : nullptr}};
    // the first step waits for everything before it in the stream (RT, ds_ws, db_ws) in full
    const cudaError_t e = step::launch(kernel, grid, 32 * cfg.KW, cfg.smem, stream, cfg.pdl && p < T_ - 1, sp);
    if (e != cudaSuccess) return std::string("step_backward_kernel: ") + cudaGetErrorString(e);
  }
  return finish_backward<T>(a, G, S, stream);
}

template <typename Cell, typename T>
struct RunStepBackward {
  static std::string run(const BackwardArgs& a, cudaStream_t stream) {
    using Small = BwdTile<T, false>;
    using Wide = BwdTile<T, true>;
    if (a.shape.B <= 4 || (Small::UW == Wide::UW && Small::BT == Wide::BT))
      return run_step_backward<Cell, T, Small::UW, Small::BT>(a, stream);
    return run_step_backward<Cell, T, Wide::UW, Wide::BT>(a, stream);
  }
};

std::string step_backward(const std::string& functor, const BackwardArgs& args, cudaStream_t stream) {
  return dispatch<RunStepBackward>(functor, args.dtype, args, stream);
}

}  // namespace alternating
}  // namespace flashrnn
