// The step kernels' shared core: one block computes RW rows of a matrix times BT columns of an
// fp32 operand, K long, with FMAs on CUDA cores (no tensor cores: every product is exact, so the
// result is at least as accurate as the split-operand cuBLAS path), then hands the RW x BT sums to
// the block's threads for the cell's pointwise step.
//
//   out[r, b] = sum_k W[r, k] * X[b, k]     W rows: RW of them (dtype T), X rows: BT (fp32)
//
// Accumulation (Accum<T>): fp32 for bf16/fp16 inputs; float64 for float32 inputs (products of two
// floats are exact in float64, so R h is rounded once, as PyTorch's float32 GEMM at best).
// The KW warps of a block split K into contiguous ranges. A warp copies its range of the W rows
// and X rows into shared memory (cp.async, 16 bytes, when aligned): all of it at once when the
// block's share fits (`all_in`), else in chunks of KC through NST stages (the next chunks load
// while one is used). Lane l takes k = l, l + 32, ... into RW * BT register accumulators. A butterfly
// reduce-scatter over the 32 lanes and a sum over the KW warps (shared memory, fixed order:
// deterministic) give the totals in `part` for the pointwise threads.
//
// Programmatic dependent launch (sm_90): the W rows (R, the same every step) are requested before
// griddepcontrol.wait, i.e. while the previous step's kernel still runs; X (its output) after.
//
// Two versions: block_matvec (the forward: lane-strided k, all-in or chunked copies) and
// block_matvec_wide (the backward, K = G * DH: 4 consecutive k per lane, the whole range copied in
// 128-element phases that the FMAs follow; its section below). On H100 the backward's switch from
// block_matvec (8 x 16 tile, chunked) to block_matvec_wide (12 x 8 tile, all in) took dense LSTM
// 1x768 bf16 B16 T1024 fwd+bwd from 36.70 to 20.27 ms (alternating.md, session 3).
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>

#include "common.cuh"

namespace flashrnn {
namespace alternating {
namespace step {

constexpr int KC = 64;       // K elements per chunk (a multiple of 8: 16-byte copies stay aligned)
constexpr int NST = 3;       // chunk stages in shared memory (2 chunks load while one is used)
constexpr int MAX_KW = 8;    // warps per block at most

// Units (hidden elements) a forward block owns: all G gate rows of each, about 8 rows in all.
template <int G>
struct FwdTile {
  static constexpr int UW = G >= 8 ? 1 : 8 / G;
  static constexpr int RW = UW * G;
};

// Accumulator type of R h: float64 for float32 inputs, else float32.
template <typename T>
struct Accum {
  using type = float;
};
template <>
struct Accum<float> {
  using type = double;
};
// Batch tile of B > 4: 16 rows, 8 for float32 (float64 accumulators take twice the registers).
template <typename T>
constexpr int wide_tile() { return sizeof(T) == 4 ? 8 : 16; }

// K elements of a warp's range (a multiple of 8, so every range starts 16-byte aligned).
__host__ __device__ inline int warp_span(int K, int KW) { return ((K + KW - 1) / KW + 7) / 8 * 8; }

// Bytes of shared memory per warp for `len` elements of K: W rows (dtype T) then X rows (fp32).
template <typename T, int RW, int BT>
__host__ __device__ constexpr int buffer_bytes(int len) {
  return RW * len * (int)sizeof(T) + BT * len * 4;
}
// Where the partial sums start in the block's dynamic shared memory.
template <typename T, int RW, int BT>
__host__ __device__ inline int part_offset(int KW, int K, bool all_in) {
  return KW * (all_in ? buffer_bytes<T, RW, BT>(warp_span(K, KW)) : NST * buffer_bytes<T, RW, BT>(KC));
}
// Dynamic shared memory of a block: per warp its whole range (all_in) or NST chunk stages, then the
// cross-warp partial sums.
template <typename T, int RW, int BT>
inline int smem_bytes(int KW, int K, bool all_in) {
  using A = typename Accum<T>::type;
  return part_offset<T, RW, BT>(KW, K, all_in) + KW * RW * BT * (int)sizeof(A);
}
// Whole ranges at once when a block needs at most this much (two blocks still fit an SM).
constexpr int kAllInBytes = 100 * 1024;

// Programmatic dependent launch: wait for the previous kernel in the stream (its writes visible),
// and let the next one start launching. No-ops before sm_90 (and without the launch attribute).
__device__ __forceinline__ void grid_dep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dep_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }

// Copy `rows` rows of n elements (row r from src(r) + k0) into dst[r * ld + 0 .. n) with the 32
// lanes of a warp: 16-byte cp.async when `vec` (every row start, ld and n 16-byte aligned), else
// plain loads and stores.
template <typename E, typename Src>
__device__ __forceinline__ void warp_copy(E* dst, int ld, int rows, Src src, long long k0, int n, bool vec, int lane) {
  if (vec) {
    constexpr int per = 16 / sizeof(E);  // elements per 16-byte copy
    const int ops = n / per;             // n is a multiple of `per` when vec
    for (int r = 0; r < rows; ++r) {
      const E* from = src(r) + k0;
      for (int o = lane; o < ops; o += 32) cp_async16(dst + r * ld + o * per, from + o * per);
    }
  } else {
    for (int r = 0; r < rows; ++r) {
      const E* from = src(r) + k0;
      for (int k = lane; k < n; k += 32) dst[r * ld + k] = from[k];
    }
  }
}

// Values a lane keeps after the butterfly steps STEP..4 (halving while the count is even).
__host__ __device__ constexpr int kept(int c, int step) {
  return step >= 5 ? c : kept(c % 2 == 0 ? c / 2 : c, step + 1);
}

// One butterfly step per lane bit (mask 16 .. 1): with an even count c, a lane keeps the upper
// half of acc[0 .. c) if its bit is set, else the lower half, adds its partner's copy of that half
// and moves it to acc[0 .. c / 2); `base` tracks which values it holds. With an odd count all c
// are summed (both lanes hold the totals; only the one with the bit clear writes them).
template <int C, int STEP, typename A>
__device__ __forceinline__ void butterfly(A* acc, int lane, int& base, bool& writer) {
  if constexpr (STEP < 5) {
    constexpr int mask = 16 >> STEP;
    const bool up = (lane & mask) != 0;
    if constexpr (C % 2 == 0) {
      constexpr int half = C / 2;
#pragma unroll
      for (int i = 0; i < half; ++i) {
        const A lo = acc[i], hi = acc[i + half];
        const A got = __shfl_xor_sync(0xffffffffu, up ? lo : hi, mask);
        acc[i] = (up ? hi : lo) + got;
      }
      if (up) base += half;
      butterfly<half, STEP + 1>(acc, lane, base, writer);
    } else {
#pragma unroll
      for (int i = 0; i < C; ++i) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], mask);
      if (up) writer = false;
      butterfly<C, STEP + 1>(acc, lane, base, writer);
    }
  }
}

// The warp's V sums over its lanes (the butterfly: halve the values while their count is even,
// else sum all of them) into part[w * V + v], each written once; then a block barrier.
template <int V, typename A>
__device__ __forceinline__ void store_warp_sums(A* acc, int lane, int w, A* part) {
  int base = 0;
  bool writer = true;
  butterfly<V, 0>(acc, lane, base, writer);
  if (writer) {
#pragma unroll
    for (int i = 0; i < kept(V, 0); ++i) part[w * V + base + i] = acc[i];
  }
  __syncthreads();
}

// Compute-on-chunk: acc[r * BT + b] += sum over k < n of ws[r * ld + k] * xs[b * ld + k].
template <typename T, int RW, int BT, typename A>
__device__ __forceinline__ void accumulate(A* acc, const T* ws, const float* xs, int ld, int n, int lane) {
#pragma unroll 2
  for (int k = lane; k < n; k += 32) {
    A x[BT];
#pragma unroll
    for (int b = 0; b < BT; ++b) x[b] = xs[b * ld + k];
#pragma unroll
    for (int r = 0; r < RW; ++r) {
      const A wv = to_float(ws[r * ld + k]);
#pragma unroll
      for (int b = 0; b < BT; ++b) acc[r * BT + b] = fma(wv, x[b], acc[r * BT + b]);
    }
  }
}

// The calling warp's lane, index w, the block's warp count KW, and the warp's share [kb, ke) (at
// most span elements) of a K range split over the block's warps.
struct WarpSlice {
  int lane, w, KW, span, kb, ke;
};
__device__ __forceinline__ WarpSlice warp_slice(int K) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, KW = blockDim.x >> 5;
  const int span = warp_span(K, KW);
  const int kb = min(K, w * span);
  return {lane, w, KW, span, kb, min(K, kb + span)};
}

// Sums of the block: part[w * V + v] for warp w, v = r * BT + b (each v written once per warp).
// W(r): pointer to row r of W (K elements); X(b): pointer to row b of X (K floats).
// vec: 16-byte copies are allowed (K, both row strides and base pointers 16-byte aligned);
// all_in: the warp's whole range fits its shared memory (smem_bytes(KW, K, true)).
// Calls grid_dep_wait() once, after the first W copies are issued and before any X is read.
template <typename T, int RW, int BT, typename WRow, typename XRow>
__device__ __forceinline__ void block_matvec(WRow W, XRow X, int K, bool vec, bool all_in, unsigned char* smem,
                                             typename Accum<T>::type* part) {
  using A = typename Accum<T>::type;
  constexpr int V = RW * BT;
  const WarpSlice sl = warp_slice(K);  // this warp's K range: [kb, ke)
  const int lane = sl.lane, w = sl.w, span = sl.span, kb = sl.kb, ke = sl.ke;
  A acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = 0;
  if (all_in) {
    unsigned char* mine = smem + (size_t)w * buffer_bytes<T, RW, BT>(span);
    T* ws = reinterpret_cast<T*>(mine);
    float* xs = reinterpret_cast<float*>(mine + RW * span * (int)sizeof(T));
    warp_copy(ws, span, RW, W, kb, ke - kb, vec, lane);
    cp_async_commit();
    grid_dep_wait();
    warp_copy(xs, span, BT, X, kb, ke - kb, vec, lane);
    cp_async_commit();
    cp_async_wait_all();
    __syncwarp();
    accumulate<T, RW, BT>(acc, ws, xs, span, ke - kb, lane);
  } else {
    const int nchunks = (ke - kb + KC - 1) / KC;
    unsigned char* mine = smem + (size_t)w * NST * buffer_bytes<T, RW, BT>(KC);
    auto Ws = [&](int s) { return reinterpret_cast<T*>(mine + s * buffer_bytes<T, RW, BT>(KC)); };
    auto Xs = [&](int s) {
      return reinterpret_cast<float*>(mine + s * buffer_bytes<T, RW, BT>(KC) + RW * KC * (int)sizeof(T));
    };
    auto len = [&](int c) { return min(KC, ke - (kb + c * KC)); };
    auto copy = [&](int c) {  // chunk c (W and X) into stage c % NST
      warp_copy(Ws(c % NST), KC, RW, W, kb + c * KC, len(c), vec, lane);
      warp_copy(Xs(c % NST), KC, BT, X, kb + c * KC, len(c), vec, lane);
    };
    // groups: W of chunk 0 (before the wait), X of chunk 0, chunks 1 .. NST-2; then one per
    // iteration (chunk c + NST - 1), so after it all but the newest NST - 1 groups hold chunk c
    if (nchunks > 0) warp_copy(Ws(0), KC, RW, W, kb, len(0), vec, lane);
    cp_async_commit();
    grid_dep_wait();
    if (nchunks > 0) warp_copy(Xs(0), KC, BT, X, kb, len(0), vec, lane);
    cp_async_commit();
#pragma unroll
    for (int c = 1; c < NST - 1; ++c) {
      if (c < nchunks) copy(c);
      cp_async_commit();
    }
    for (int c = 0; c < nchunks; ++c) {
      if (c + NST - 1 < nchunks) copy(c + NST - 1);
      cp_async_commit();
      cp_async_wait<NST - 1>();  // chunk c has landed in stage c % NST
      __syncwarp();
      accumulate<T, RW, BT>(acc, Ws(c % NST), Xs(c % NST), KC, len(c), lane);
      __syncwarp();  // stage c % NST is refilled by the next iteration (chunk c + NST)
    }
  }
  store_warp_sums<V>(acc, lane, w, part);
}

// The total of v over the block's warps (after block_matvec).
template <int V, typename A>
__device__ __forceinline__ A block_sum(const A* part, int v) {
  const int KW = blockDim.x >> 5;
  A s = 0;
  for (int w = 0; w < KW; ++w) s += part[w * V + v];
  return s;
}

// Warps per block: about 8 warps per SM in all, each with at least 128 of K, at most MAX_KW.
inline int warps_per_block(long long blocks, int K, int sms) {
  long long kw = (8LL * sms + blocks - 1) / (blocks > 0 ? blocks : 1);
  const int by_k = (K + 127) / 128;
  if (kw > by_k) kw = by_k;
  if (kw > MAX_KW) kw = MAX_KW;
  return kw < 1 ? 1 : static_cast<int>(kw);
}

// Launch one step kernel; pdl: it may start while the previous kernel of the stream finishes
// (programmatic dependent launch, sm_90+; the kernel waits in grid_dep_wait before it reads what
// that kernel wrote).
template <typename P>
inline cudaError_t launch(void (*kernel)(P), dim3 grid, int threads, int smem, cudaStream_t stream, bool pdl,
                          const P& params) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, params);
}

// An integer from the environment, else `fallback`: tuning overrides for benchmarks only
// (FLASHRNN_STEP_KW: warps per block, FLASHRNN_STEP_ALL_IN=0: always chunked copies,
// FLASHRNN_STEP_PDL=0: plain launches). Every setting computes the same result.
inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

// Launch settings of the forward step kernel (block_matvec).
struct Config {
  int KW;       // warps per block
  bool all_in;  // whole K ranges in shared memory
  int smem;     // dynamic shared memory bytes
  bool pdl;     // programmatic dependent launch (compute capability 9.0+)
};

// one_warp: prefer one warp per block whenever its whole range fits shared memory (the forward:
// on H100, dense LSTM 1x768 bf16 B=16 ran 10.6 ms forward with one warp, 16.5 with three and 23.1
// with six, benchmarks/results/H100_80GB_HBM3/alternating.md). The backward has configure_wide.
template <typename T, int RW, int BT>
inline Config configure(long long blocks, int K, bool one_warp) {
  int device = 0, sms = 0, smem_optin = 0, major = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  Config c;
  const int all_in_limit = kAllInBytes < smem_optin ? kAllInBytes : smem_optin;
  const bool one = one_warp && smem_bytes<T, RW, BT>(1, K, true) <= all_in_limit;
  c.KW = env_int("FLASHRNN_STEP_KW", one ? 1 : warps_per_block(blocks, K, sms));
  c.KW = c.KW < 1 ? 1 : (c.KW > MAX_KW ? MAX_KW : c.KW);
  c.all_in = env_int("FLASHRNN_STEP_ALL_IN", 1) != 0 && smem_bytes<T, RW, BT>(c.KW, K, true) <= all_in_limit;
  while (c.KW > 1 && smem_bytes<T, RW, BT>(c.KW, K, c.all_in) > smem_optin) --c.KW;  // fit the opt-in limit
  c.smem = smem_bytes<T, RW, BT>(c.KW, K, c.all_in);
  c.pdl = major >= 9 && env_int("FLASHRNN_STEP_PDL", 1) != 0;
  return c;
}

// ---- The backward's matvec (R^T d(rhb), K = G * DH): 4 consecutive k per lane, phased copies ----
// A warp's K range is processed in rounds of at most `cap` elements (all of it in one round when it
// fits shared memory, the common case). In a round the W rows are requested first (before
// grid_dep_wait on the first round), then the X rows in phases of kPhase elements, one cp.async
// group each (the last kMaxGroups - 1 share a group), so the FMAs of phase i run while later
// phases still land. Lane l takes k = 4 l .. 4 l + 3 of each phase: 8- or 16-byte shared-memory
// loads, 4 * RW * BT FMAs each. Rows in shared memory are `cap` long (a multiple of kPhase);
// without 16-byte copies the elements are copied one by one and a range is padded with zeros to a
// multiple of 4 (so the 4-wide loads never see garbage).
constexpr int kPhase = 128;    // K elements per phase: one group of 4 per lane
constexpr int kMaxGroups = 8;  // cp.async groups a round waits on one by one

// Shared-memory bytes per K element of a warp's buffer: RW W values (dtype T) and BT X floats.
template <typename T, int RW, int BT>
__host__ __device__ constexpr int wide_elem_bytes() { return RW * (int)sizeof(T) + BT * 4; }

// Where the partial sums start: after KW buffers of cap elements.
template <typename T, int RW, int BT>
__host__ __device__ inline int wide_part_offset(int KW, int cap) { return KW * cap * wide_elem_bytes<T, RW, BT>(); }

// cp.async.wait_group with a run-time count (0 .. kMaxGroups - 1).
__device__ __forceinline__ void cp_async_wait_n(int n) {
  switch (n) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    case 6: cp_async_wait<6>(); break;
    default: cp_async_wait<7>(); break;
  }
}

// Copy one phase, elements [k0 + c0, k0 + c1) of `rows` rows (row r from src(r); c1 - c0 <= kPhase),
// to dst[r * ld + c0 .. c1) with the 32 lanes of a warp. vec: 16-byte cp.async (c0, c1, ld and
// every row start aligned); else one element per load, and columns in [c1, pad) are set to zero.
template <typename E, typename Src>
__device__ __forceinline__ void warp_copy_phase(E* dst, int ld, int rows, Src src, long long k0, int c0, int c1,
                                                int pad, bool vec, int lane) {
  if (vec) {
    constexpr int per = 16 / sizeof(E), ops = kPhase / per;  // 16-byte pieces per row and phase
    for (int o = lane; o < rows * ops; o += 32) {
      const int r = o / ops, c = c0 + (o % ops) * per;
      if (c < c1) cp_async16(dst + r * ld + c, src(r) + k0 + c);
    }
  } else {
    for (int o = lane; o < rows * kPhase; o += 32) {
      const int r = o / kPhase, c = c0 + o % kPhase;
      if (c < pad) dst[r * ld + c] = c < c1 ? src(r)[k0 + c] : from_float<E>(0.0f);
    }
  }
}

// Four consecutive values of a shared-memory row as A (8- or 16-byte aligned loads).
template <typename A>
__device__ __forceinline__ void load4(A* out, const float* p) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}
template <typename A>
__device__ __forceinline__ void load4(A* out, const __nv_bfloat16* p) {
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  out[0] = __uint_as_float(v.x << 16); out[1] = __uint_as_float(v.x & 0xffff0000u);
  out[2] = __uint_as_float(v.y << 16); out[3] = __uint_as_float(v.y & 0xffff0000u);
}
template <typename A>
__device__ __forceinline__ void load4(A* out, const __half* p) {
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
  out[0] = a.x; out[1] = a.y; out[2] = b.x; out[3] = b.y;
}

// acc[r * BT + b] += sum_(q < 4) ws[r * ld + k + q] * xs[b * ld + k + q]
template <typename T, int RW, int BT, typename A>
__device__ __forceinline__ void accumulate4(A* acc, const T* ws, const float* xs, int ld, int k) {
  A x[BT][4];
#pragma unroll
  for (int b = 0; b < BT; ++b) load4(x[b], xs + b * ld + k);
#pragma unroll
  for (int r = 0; r < RW; ++r) {
    A w[4];
    load4(w, ws + r * ld + k);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
#pragma unroll
      for (int b = 0; b < BT; ++b) acc[r * BT + b] = fma(w[q], x[b][q], acc[r * BT + b]);
    }
  }
}

// As block_matvec (same W, X, part and result), with the 4-wide lanes and phased copies above.
// cap: elements per round of a warp (a multiple of kPhase); smem: KW buffers of cap elements.
template <typename T, int RW, int BT, typename WRow, typename XRow>
__device__ __forceinline__ void block_matvec_wide(WRow W, XRow X, int K, bool vec, int cap, unsigned char* smem,
                                                  typename Accum<T>::type* part) {
  using A = typename Accum<T>::type;
  constexpr int V = RW * BT;
  const WarpSlice sl = warp_slice(K);  // this warp's K range: [kb, ke)
  const int lane = sl.lane, w = sl.w, kb = sl.kb, ke = sl.ke;
  T* ws = reinterpret_cast<T*>(smem + (size_t)w * cap * wide_elem_bytes<T, RW, BT>());
  float* xs = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(ws) + (size_t)RW * cap * sizeof(T));
  A acc[V];
#pragma unroll
  for (int v = 0; v < V; ++v) acc[v] = 0;
  bool waited = false;
  for (int r0 = kb; r0 < ke || !waited; r0 += cap) {  // one round; a warp with no range still waits
    const int n = max(0, min(cap, ke - r0)), n4 = (n + 3) & ~3;
    const int phases = (n4 + kPhase - 1) / kPhase;
    const int groups = min(phases, kMaxGroups);
    for (int ph = 0; ph < phases; ++ph) {  // W first (in the first group)
      const int c0 = ph * kPhase;
      warp_copy_phase(ws, cap, RW, W, r0, c0, min(n, c0 + kPhase), min(n4, c0 + kPhase), vec, lane);
    }
    if (!waited) {
      grid_dep_wait();
      waited = true;
    }
    for (int ph = 0; ph < phases; ++ph) {  // X of phase ph
      const int c0 = ph * kPhase;
      warp_copy_phase(xs, cap, BT, X, r0, c0, min(n, c0 + kPhase), min(n4, c0 + kPhase), vec, lane);
      if (ph < groups - 1 || ph == phases - 1) cp_async_commit();
    }
    for (int ph = 0; ph < phases; ++ph) {
      cp_async_wait_n(groups - 1 - min(ph, groups - 1));  // phase ph has landed
      __syncwarp();
      const int k = ph * kPhase + 4 * lane;
      if (k < n4) accumulate4<T, RW, BT>(acc, ws, xs, cap, k);
    }
    __syncwarp();  // the buffer is refilled by the next round
    if (r0 >= ke) break;
  }
  store_warp_sums<V>(acc, lane, w, part);
}

// Launch settings of the backward step kernel (block_matvec_wide).
struct WideConfig {
  int KW;    // warps per block
  int cap;   // K elements per round of a warp (a multiple of kPhase)
  int smem;  // dynamic shared memory bytes
  bool pdl;  // programmatic dependent launch (compute capability 9.0+)
};

// Warps as warps_per_block (FLASHRNN_STEP_KW overrides); cap: the whole range of a warp when it
// fits the opt-in shared memory, else as much as fits (FLASHRNN_STEP_ALL_IN=0: one phase per round,
// for tests and benchmarks of the multi-round path).
template <typename T, int RW, int BT>
inline WideConfig configure_wide(long long blocks, int K) {
  using A = typename Accum<T>::type;
  int device = 0, sms = 0, smem_optin = 0, major = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  WideConfig c;
  c.KW = env_int("FLASHRNN_STEP_KW", warps_per_block(blocks, K, sms));
  c.KW = c.KW < 1 ? 1 : (c.KW > MAX_KW ? MAX_KW : c.KW);
  const int part = c.KW * RW * BT * (int)sizeof(A);
  const int whole = (warp_span(K, c.KW) + kPhase - 1) / kPhase * kPhase;
  const int fit = (smem_optin - part) / (c.KW * wide_elem_bytes<T, RW, BT>()) / kPhase * kPhase;
  c.cap = whole < fit ? whole : fit;
  if (env_int("FLASHRNN_STEP_ALL_IN", 1) == 0) c.cap = kPhase;
  if (c.cap < kPhase) c.cap = kPhase;  // at least one phase (fits: RW * BT is small)
  c.smem = wide_part_offset<T, RW, BT>(c.KW, c.cap) + part;
  c.pdl = major >= 9 && env_int("FLASHRNN_STEP_PDL", 1) != 0;
  return c;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<unsigned long long>(p) & 15ULL) == 0; }

}  // namespace step
}  // namespace alternating
}  // namespace flashrnn
