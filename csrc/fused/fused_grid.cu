// One fused_grid configuration as a small shared library with a C entry API (no torch): built per
// configuration by flashrnn_compile/build.py (`ensure_variant`) with
//   -DFRNN_CELL=LstmCell -DFRNN_DTYPE=1 (1 bfloat16, 2 float16) -DFRNN_DH=1024 -DFRNN_GRID_SPLIT=64
//   -DFRNN_WARPS=8 -DFRNN_BATCH_TILE=16 -DFRNN_R_REG_TILES=16
// and called through ctypes by flashrnn_compile/kernels/fused_grid.py on the caller's stream.
// sm_80 and newer (no clusters): a cooperative launch (cudaLaunchCooperativeKernel) of
// GRID_SPLIT x ceil(B / BATCH_TILE) x NH blocks, all resident at once, or no launch and an error.
// Without defines (CI's nvcc_check, sm_80 and sm_90) it compiles a small default configuration.
#include <cuda_runtime.h>
#include <stdio.h>

#include "fused/fused_grid.cuh"

#ifndef FRNN_CELL
#define FRNN_CELL LstmCell
#endif
#ifndef FRNN_DTYPE
#define FRNN_DTYPE 1
#endif
#ifndef FRNN_DH
#define FRNN_DH 64
#endif
#ifndef FRNN_GRID_SPLIT
#define FRNN_GRID_SPLIT 2
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

// 1: the library also holds the backward kernel and frnn_backward (kernels/fused_grid.py's backward)
#ifndef FRNN_GRID_BWD
#define FRNN_GRID_BWD 0
#endif

#include "fused/library.cuh"

namespace {
using namespace flashrnn;
using namespace flashrnn::fused_grid;
using Cell = flashrnn::FRNN_CELL;
constexpr int DH = FRNN_DH, GS = FRNN_GRID_SPLIT, WARPS = FRNN_WARPS, BT = FRNN_BATCH_TILE, RREG = FRNN_R_REG_TILES;
using Cfg = Config<TIn, Cell, DH, GS, WARPS, BT, RREG>;

auto kernel() { return forward_kernel<TIn, Cell, DH, GS, WARPS, BT, RREG>; }

// whether kernel k (smem bytes, threads per block) can run on `device`: 0 and *resident = the
// blocks of it the device holds at once, else 1 and the message in g_error (what: its prefix)
template <typename K>
int check_uncached(K k, size_t smem, int threads, const char* what, int device, int* resident) {
  int coop = 0, sms = 0, per_sm = 0;
  char where[256];
  cudaError_t e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (e != cudaSuccess) return fail("fused_grid: cooperative launch attribute", e);
  if (!coop) return fail_msg("fused_grid: the device does not support cooperative launches");
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return fail("fused_grid: multiprocessor count", e);
  e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  snprintf(where, sizeof(where), "%s: shared memory attribute", what);
  if (e != cudaSuccess) return fail(where, e);
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, threads, smem);
  snprintf(where, sizeof(where), "%s: cudaOccupancyMaxActiveBlocksPerMultiprocessor", what);
  if (e != cudaSuccess) return fail(where, e);
  if (per_sm < 1) {
    snprintf(g_error, sizeof(g_error), "%s: no block of this configuration fits on an SM (shared memory "
             "or registers per block)", what);
    return 1;
  }
  *resident = per_sm * sms;
  return 0;
}

// check_uncached() once per device: 0 ready (resident[device] = the blocks of the kernel the device
// holds at once), else 1 and the message (replayed into g_error on every later call)
struct PerDevice {
  int done[64] = {0}, status[64] = {0}, resident[64] = {0};
  char message[64][512];
  template <typename F>
  int once(int device, F check) {
    if (device < 0 || device >= 64) return fail_msg("fused_grid: device index out of range");
    if (!done[device]) {
      const int rc = check(&resident[device]);
      if (rc != 0) snprintf(message[device], sizeof(message[device]), "%s", g_error);
      status[device] = rc;
      done[device] = 1;
    } else if (status[device] != 0) {
      snprintf(g_error, sizeof(g_error), "%s", message[device]);
    }
    return status[device];
  }
};
PerDevice g_dev;

int prepare(int device) {
  return g_dev.once(device, [device](int* resident) {
    return check_uncached(kernel(), Cfg::smem(), Cfg::THREADS, "fused_grid", device, resident);
  });
}

// a cooperative launch of `blocks` blocks of kernel k (arguments a) after zeroing the group flags
template <typename K, typename A>
int launch(K k, A a, unsigned* flags, long long blocks, int resident, int nbt, int NH, size_t smem, const char* what,
           cudaStream_t s) {
  if (blocks > resident) {
    snprintf(g_error, sizeof(g_error), "%s: %lld blocks (GRID_SPLIT %d x %d batch tiles x %d heads) are more than the "
             "%d the device holds at once (a cooperative grid must be resident)", what, blocks, GS, nbt, NH, resident);
    return 1;
  }
  cudaError_t e = cudaMemsetAsync(flags, 0, (size_t)blocks * sizeof(unsigned), s);
  if (e != cudaSuccess) return fail("fused_grid: zeroing the flags", e);
  void* kargs[] = {&a};
  e = cudaLaunchCooperativeKernel((const void*)k, dim3(GS * nbt, NH), dim3(Cfg::THREADS), kargs, smem, s);
  if (e != cudaSuccess) return fail(what, e);
  return 0;
}

#if FRNN_GRID_BWD
using Bwd = BwdConfig<TIn, Cell, DH, GS, WARPS, BT, RREG>;
auto bwd_kernel() { return backward_kernel<TIn, Cell, DH, GS, WARPS, BT, RREG>; }
PerDevice g_bwd;

int prepare_bwd(int device) {
  return g_bwd.once(device, [device](int* resident) {
    return check_uncached(bwd_kernel(), Bwd::smem(), Bwd::THREADS, "fused_grid backward", device, resident);
  });
}
#endif
}  // namespace

extern "C" {

// the configuration this library was built for, and its shared memory per block (bytes)
int frnn_config(int* out) {
  out[0] = Cell::G; out[1] = Cell::S; out[2] = DH; out[3] = GS; out[4] = WARPS; out[5] = BT; out[6] = RREG;
  out[7] = FRNN_DTYPE; out[8] = (int)Cfg::smem(); out[9] = 1;
  return 0;
}

const char* frnn_error() { return g_error; }

// 0 when this configuration can run on `device` (*resident: how many of its blocks the device
// holds at once; a launch needs GRID_SPLIT x ceil(B / BATCH_TILE) x NH of them), else 1 and
// frnn_error() says why
int frnn_check(int device, int* resident) {
  const int rc = prepare(device);
  *resident = rc == 0 ? g_dev.resident[device] : 0;
  return rc;
}

// pointers as in fused_grid.cuh (FwdArgs); states_in = rhb = nullptr: save=false; flags: NH x
// ceil(B / BATCH_TILE) x GRID_SPLIT 32-bit words of scratch (zeroed here, on the stream, before
// the launch). 0 = queued.
int frnn_forward(int device, int T, int B, int NH, int reverse, const void* gx, const void* R, const void* b,
                 const void* s0, void* h, void* sT, float* states_in, float* rhb, unsigned* flags, void* stream) {
  int rc = prepare(device);
  if (rc != 0) return rc;
  const int nbt = (B + BT - 1) / BT;
  FwdArgs a{T, B, NH, reverse, gx, R, b, s0, h, sT, states_in, rhb, flags};
  return launch(kernel(), a, flags, (long long)GS * nbt * NH, g_dev.resident[device], nbt, NH, Cfg::smem(),
                "fused_grid forward", static_cast<cudaStream_t>(stream));
}

#if FRNN_GRID_BWD
// the backward (fused_grid.cuh backward_kernel): out = {smem bytes per block, K slices, drhb pieces}
int frnn_bwd_config(int* out) {
  out[0] = (int)Bwd::smem(); out[1] = Bwd::KS; out[2] = Bwd::HP;
  return 0;
}

// 0 when the backward can run on `device` (*resident: how many of its blocks the device holds at once)
int frnn_bwd_check(int device, int* resident) {
  const int rc = prepare_bwd(device);
  *resident = rc == 0 ? g_bwd.resident[device] : 0;
  return rc;
}

// pointers as in fused_grid.cuh (BwdArgs); ex: 2 x HP x B x NH x G x DH T_IN of scratch; flags as the
// forward's (zeroed here). 0 = queued.
int frnn_backward(int device, int T, int B, int NH, int reverse, const void* dh, const void* dsT, const void* gx,
                  const void* R, const float* states_in, const float* rhb, void* dgx, float* drhb, void* ds0, void* ex,
                  unsigned* flags, void* stream) {
  int rc = prepare_bwd(device);
  if (rc != 0) return rc;
  const int nbt = (B + BT - 1) / BT;
  BwdArgs a{T, B, NH, reverse, dh, dsT, gx, R, states_in, rhb, dgx, drhb, ds0, ex, flags};
  return launch(bwd_kernel(), a, flags, (long long)GS * nbt * NH, g_bwd.resident[device], nbt, NH, Bwd::smem(),
                "fused_grid backward", static_cast<cudaStream_t>(stream));
}
#endif

}  // extern "C"
