// Shared by forward.cu and backward.cu: dtype traits, dispatch, small utility kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "../common/cells.cuh"
#include "alternating.h"
#include "gemm.h"

namespace flashrnn {
namespace alternating {

template <typename T>
struct Traits;
template <>
struct Traits<float> {
  static constexpr DType dtype = DType::kFloat32;
  __device__ static float load(float x) { return x; }
  __device__ static float store(float x) { return x; }
};
template <>
struct Traits<__nv_bfloat16> {
  static constexpr DType dtype = DType::kBFloat16;
  __device__ static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct Traits<double> {
  static constexpr DType dtype = DType::kFloat64;
  __device__ static float load(double x) { return static_cast<float>(x); }
  __device__ static double store(float x) { return x; }
};
template <>
struct Traits<__half> {
  static constexpr DType dtype = DType::kFloat16;
  __device__ static float load(__half x) { return __half2float(x); }
  __device__ static __half store(float x) { return __float2half_rn(x); }
};

constexpr int kThreads = 256;

inline int blocks_for(long long n) {
  long long blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

#define FLASHRNN_GRID_STRIDE(i, n) \
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

inline std::string last_error(const char* where) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string(where) + ": " + cudaGetErrorString(err);
  return "";
}

// out[i] = (To) in[i] for n elements
template <typename To, typename From>
__global__ void convert_kernel(To* out, const From* in, long long n);

template <typename T>
__device__ __forceinline__ float to_float(T x) { return Traits<T>::load(x); }
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }

// Operand types: KS splits of GEMM operands, DT for the dR GEMM (float64 for float32 inputs).
template <typename T>
struct Acc {
  static constexpr int KS = 2;
  using DT = T;
};
template <>
struct Acc<float> {
  static constexpr int KS = 1;
  using DT = double;
};

// x ~ hi + lo with hi = (T) x, lo = (T) (x - hi): the two-term split of an fp32 value
template <typename T, int KS>
__device__ __forceinline__ void split_store(T* out, long long lo_offset, float x) {
  const T hi = Traits<T>::store(x);
  out[0] = hi;
  if (KS == 2) out[lo_offset] = Traits<T>::store(x - Traits<T>::load(hi));
}

// The forward's saved tensors of one element (when saving): its S states in, at
// states_in_t[k * BND + idx], and its G pre-activations R h + b, at rhb_t[gbase + g * DH].
template <int S, int G>
__device__ __forceinline__ void save_states_rhb(float* states_in_t, float* rhb_t, const float* s, const float* rhb,
                                                long long idx, long long gbase, long long BND, int DH) {
  if (states_in_t == nullptr) return;
#pragma unroll
  for (int k = 0; k < S; ++k) states_in_t[k * BND + idx] = s[k];
#pragma unroll
  for (int g = 0; g < G; ++g) rhb_t[gbase + (long long)g * DH] = rhb[g];
}

template <typename To>
__device__ __forceinline__ To from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_float<double>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// One time step's tensors of the pointwise backward, shared by both backward paths (backward.cu:
// cuBLAS for R^T drhb; step_backward.cu: the step kernel).
template <typename T>
struct BwdStep {
  using DT = typename Acc<T>::DT;
  const T* dh_t;           // [B, NH, DH]
  const T* gx_t;           // [B, NH, G, DH]
  const float* rhb_t;      // [B, NH, G, DH]
  const float* states_t;   // [S, B, NH, DH]
  float* ds;               // [S, B, NH, DH]  in place: ds_new in, ds_in out
  T* dgx_t;                // [B, NH, G, DH]
  DT* drhb_t;              // [B, NH, G, DH]
  double* db;              // [B, NH, G, DH]  accumulated over t
  DT* hin_t;               // [B, NH, DH]
};

// The cell's backward for one element: idx into [B, NH, DH], gbase its gate 0 in [B, NH, G, DH].
// ds[0] += dh[t] + rec (rec: R^T drhb of the step after, in the accumulator type A); then dgx,
// drhb (DT), db += drhb, the states' gradient ds (in place) and hin = h in (for dR) are written.
// `each_gate(g, o, drhb_g)` runs for every gate g after its stores (o: its offset in [B, NH, G, DH]),
// for what a path keeps of drhb itself.
template <typename Cell, typename T, typename A, typename EachGate>
__device__ __forceinline__ void pointwise_backward(const BwdStep<T>& p, long long idx, long long gbase, int DH,
                                                   long long BND, A rec, EachGate each_gate) {
  constexpr int G = Cell::G, S = Cell::S;
  using DT = typename Acc<T>::DT;
  float gx[G], rhb[G], s[S], ds_new[S], dgx[G], drhb[G], ds[S];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    gx[g] = Traits<T>::load(p.gx_t[gbase + (long long)g * DH]);
    rhb[g] = p.rhb_t[gbase + (long long)g * DH];
  }
#pragma unroll
  for (int k = 0; k < S; ++k) {
    s[k] = p.states_t[k * BND + idx];
    ds_new[k] = p.ds[k * BND + idx];
  }
  ds_new[0] = static_cast<float>(ds_new[0] + (Traits<T>::load(p.dh_t[idx]) + rec));
  Cell::backward(gx, rhb, s, ds_new, dgx, drhb, ds);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const long long o = gbase + (long long)g * DH;
    p.dgx_t[o] = Traits<T>::store(dgx[g]);
    p.drhb_t[o] = from_float<DT>(drhb[g]);
    p.db[o] += static_cast<double>(drhb[g]);
    each_gate(g, o, drhb[g]);
  }
#pragma unroll
  for (int k = 0; k < S; ++k) p.ds[k * BND + idx] = ds[k];
  p.hin_t[idx] = from_float<DT>(s[0]);
}

template <typename To, typename From>
__global__ void convert_kernel(To* out, const From* in, long long n) {
  FLASHRNN_GRID_STRIDE(i, n) { out[i] = from_float<To>(to_float<From>(in[i])); }
}

template <typename To, typename From>
std::string convert(To* out, const From* in, long long n, cudaStream_t stream) {
  if (n <= 0) return "";
  convert_kernel<To, From><<<blocks_for(n), kThreads, 0, stream>>>(out, in, n);
  return last_error("convert_kernel");
}

// Dispatch a functor name and a DType to `Run<Cell, T>::run(args...)`.
template <template <typename, typename> class Run, typename Args>
std::string dispatch(const std::string& functor, DType dtype, const Args& args, cudaStream_t stream) {
#define FLASHRNN_DISPATCH_CELL(Cell)                                                   \
  if (functor == #Cell) {                                                              \
    switch (dtype) {                                                                   \
      case DType::kFloat32: return Run<Cell, float>::run(args, stream);        \
      case DType::kBFloat16: return Run<Cell, __nv_bfloat16>::run(args, stream); \
      case DType::kFloat16: return Run<Cell, __half>::run(args, stream);       \
      default: break;                                                                  \
    }                                                                                  \
    return "unknown dtype";                                                            \
  }
  FLASHRNN_FOR_EACH_CELL(FLASHRNN_DISPATCH_CELL)
#undef FLASHRNN_DISPATCH_CELL
  return "functor: no CUDA cell named '" + functor + "' in csrc/common/cells.cuh";
}

}  // namespace alternating
}  // namespace flashrnn
