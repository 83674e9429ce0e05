// One fused_cluster configuration as a small shared library with a C entry API (no torch): built
// per configuration by flashrnn_compile/build.py (`ensure_variant`) with
//   -DFRNN_CELL=LstmCell -DFRNN_DTYPE=1 (1 bfloat16, 2 float16) -DFRNN_DH=768 -DFRNN_CLUSTER_SIZE=16
//   -DFRNN_WARPS=6 -DFRNN_BATCH_TILE=8 -DFRNN_R_REG_TILES=40
// and called through ctypes by flashrnn_compile/kernels/fused_cluster.py on the caller's stream.
// The kernel needs sm_90 (thread-block clusters, distributed shared memory): for older targets its
// body is a trap and frnn_forward refuses a device below compute capability 9.0 with a message.
// Without defines (CI's nvcc_check, sm_80 and sm_90) it compiles a small default configuration.
// -DFRNN_CLUSTER_BWD=1 adds the backward kernel (fused_cluster.cuh backward_kernel) and its entries
// frnn_bwd_config / frnn_bwd_check / frnn_backward (FLASHRNN_CLUSTER_BWD=1 in Python); without it
// the library is the forward's alone, as before.
#include <cuda_runtime.h>
#include <stdio.h>

#include "fused/fused_cluster.cuh"

#ifndef FRNN_CELL
#define FRNN_CELL LstmCell
#endif
#ifndef FRNN_DTYPE
#define FRNN_DTYPE 1
#endif
#ifndef FRNN_DH
#define FRNN_DH 64
#endif
#ifndef FRNN_CLUSTER_SIZE
#define FRNN_CLUSTER_SIZE 2
#endif
#ifndef FRNN_WARPS
#define FRNN_WARPS 4
#endif
#ifndef FRNN_BATCH_TILE
#define FRNN_BATCH_TILE 8
#endif
#ifndef FRNN_R_REG_TILES
#define FRNN_R_REG_TILES 8
#endif
// 1: the library also holds the backward kernel and frnn_backward (FLASHRNN_CLUSTER_BWD=1)
#ifndef FRNN_CLUSTER_BWD
#define FRNN_CLUSTER_BWD 0
#endif

#include "fused/library.cuh"

namespace {
using namespace flashrnn;
using namespace flashrnn::fused_cluster;
using Cell = flashrnn::FRNN_CELL;
constexpr int DH = FRNN_DH, CS = FRNN_CLUSTER_SIZE, WARPS = FRNN_WARPS, BT = FRNN_BATCH_TILE, RREG = FRNN_R_REG_TILES;
using Cfg = Config<TIn, Cell, DH, CS, WARPS, BT, RREG>;

auto kernel() { return forward_kernel<TIn, Cell, DH, CS, WARPS, BT, RREG>; }

cudaLaunchConfig_t launch_config(dim3 grid, cudaStream_t stream, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(32 * WARPS);
  cfg.dynamicSmemBytes = Cfg::smem();
  cfg.stream = stream;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = CS;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

// one kernel of this configuration: its shared-memory and cluster-size attributes, and whether one
// cluster of it fits on the current device (what: the message prefix)
int fail_at(const char* what, const char* step, cudaError_t e) {
  char where[256];
  snprintf(where, sizeof(where), "%s: %s", what, step);
  return fail(where, e);
}

template <typename K>
int fit(K k, size_t smem, const char* what) {
  cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return fail_at(what, "shared memory attribute", e);
  if (CS > 8) {
    e = cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (e != cudaSuccess) return fail_at(what, "non-portable cluster size refused", e);
  }
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg = launch_config(dim3(CS, 1), nullptr, &attr);
  cfg.dynamicSmemBytes = smem;
  int clusters = 0;
  e = cudaOccupancyMaxActiveClusters(&clusters, k, &cfg);
  if (e != cudaSuccess) return fail_at(what, "cudaOccupancyMaxActiveClusters", e);
  if (clusters < 1) {
    snprintf(g_error, sizeof(g_error), "%s: no cluster of this configuration fits on the device (blocks per "
             "cluster, shared memory or registers per block)", what);
    return 1;
  }
  return 0;
}

// check() once per device: 0 ready, else the message of the first failure (cached, replayed into
// g_error on every later call)
struct PerDevice {
  int done[64] = {0}, status[64] = {0};
  char message[64][512];
  template <typename F>
  int once(int device, F check) {
    if (device < 0 || device >= 64) return fail_msg("fused_cluster: device index out of range");
    if (done[device]) {
      if (status[device] != 0) snprintf(g_error, sizeof(g_error), "%s", message[device]);
      return status[device];
    }
    const int rc = check();
    if (rc != 0) snprintf(message[device], sizeof(message[device]), "%s", g_error);
    status[device] = rc;
    done[device] = 1;
    return rc;
  }
};

// compute capability 9.0 (thread-block clusters)
int capable(int device) {
  int major = 0;
  cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e != cudaSuccess) return fail("fused_cluster: compute capability", e);
  if (major < 9) return fail_msg("fused_cluster needs compute capability 9.0 or newer (thread-block clusters)");
  return 0;
}

// once per device: capable(), the forward kernel's attributes and cluster fit
int prepare(int device) {
  static PerDevice cache;
  return cache.once(device, [device] {
    const int rc = capable(device);
    return rc != 0 ? rc : fit(kernel(), Cfg::smem(), "fused_cluster");
  });
}

#if FRNN_CLUSTER_BWD
using Bwd = BwdConfig<TIn, Cell, DH, CS, WARPS, BT, RREG>;
auto bwd_kernel() { return backward_kernel<TIn, Cell, DH, CS, WARPS, BT, RREG>; }

// prepare() for the backward kernel: capable(), then its own attributes and cluster fit (a backward
// library's forward kernel, built with the backward's tiling, is never launched and not checked)
int prepare_bwd(int device) {
  static PerDevice cache;
  return cache.once(device, [device] {
    const int rc = capable(device);
    return rc != 0 ? rc : fit(bwd_kernel(), Bwd::smem(), "fused_cluster backward");
  });
}
#endif
}  // namespace

extern "C" {

// the configuration this library was built for, and its shared memory per block (bytes)
int frnn_config(int* out) {
  out[0] = Cell::G; out[1] = Cell::S; out[2] = DH; out[3] = CS; out[4] = WARPS; out[5] = BT; out[6] = RREG;
  out[7] = FRNN_DTYPE; out[8] = (int)Cfg::smem(); out[9] = Cfg::HP;
  return 0;
}

const char* frnn_error() { return g_error; }

// 0 when one cluster of this configuration can run on `device`, else 1 and frnn_error() says why
int frnn_check(int device) { return prepare(device); }

// pointers as in fused_cluster.cuh (FwdArgs); states_in = rhb = nullptr: save=false. 0 = queued.
int frnn_forward(int device, int T, int B, int NH, int reverse, const void* gx, const void* R, const void* b,
                 const void* s0, void* h, void* sT, float* states_in, float* rhb, void* stream) {
  int rc = prepare(device);
  if (rc != 0) return rc;
  FwdArgs a{T, B, NH, reverse, gx, R, b, s0, h, sT, states_in, rhb};
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg = launch_config(dim3(CS * ((B + BT - 1) / BT), NH), static_cast<cudaStream_t>(stream), &attr);
  cudaError_t e = cudaLaunchKernelEx(&cfg, kernel(), a);
  if (e != cudaSuccess) return fail("fused_cluster forward", e);
  return 0;
}

#if FRNN_CLUSTER_BWD
// the backward (fused_cluster.cuh backward_kernel): out = {smem bytes per block, HP, MG, BKS}
int frnn_bwd_config(int* out) {
  out[0] = (int)Bwd::smem(); out[1] = Bwd::HP; out[2] = Bwd::MG; out[3] = Bwd::BKS;
  return 0;
}

// 0 when one cluster of the backward can run on `device`, else 1 and frnn_error() says why
int frnn_bwd_check(int device) { return prepare_bwd(device); }

// pointers as in fused_cluster.cuh (BwdArgs). 0 = queued.
int frnn_backward(int device, int T, int B, int NH, int reverse, const void* dh, const void* dsT, const void* gx,
                  const void* R, const float* states_in, const float* rhb, void* dgx, float* drhb, void* ds0,
                  void* stream) {
  int rc = prepare_bwd(device);
  if (rc != 0) return rc;
  BwdArgs a{T, B, NH, reverse, dh, dsT, gx, R, states_in, rhb, dgx, drhb, ds0};
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg = launch_config(dim3(CS * ((B + BT - 1) / BT), NH), static_cast<cudaStream_t>(stream), &attr);
  cfg.dynamicSmemBytes = Bwd::smem();
  cudaError_t e = cudaLaunchKernelEx(&cfg, bwd_kernel(), a);
  if (e != cudaSuccess) return fail("fused_cluster backward", e);
  return 0;
}
#endif

}  // extern "C"
