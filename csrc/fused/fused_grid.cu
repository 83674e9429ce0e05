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

#include "fused/library.cuh"

namespace {
using namespace flashrnn;
using namespace flashrnn::fused_grid;
using Cell = flashrnn::FRNN_CELL;
constexpr int DH = FRNN_DH, GS = FRNN_GRID_SPLIT, WARPS = FRNN_WARPS, BT = FRNN_BATCH_TILE, RREG = FRNN_R_REG_TILES;
using Cfg = Config<TIn, Cell, DH, GS, WARPS, BT, RREG>;

auto kernel() { return forward_kernel<TIn, Cell, DH, GS, WARPS, BT, RREG>; }

// per device, once: 0 ready (resident[device] = the blocks of this configuration the device
// holds at once), else 1 and the message (replayed into g_error on every later call)
struct PerDevice {
  int done[64] = {0}, status[64] = {0}, resident[64] = {0};
  char message[64][512];
};
PerDevice g_dev;

int check_uncached(int device, int* resident) {
  int coop = 0, sms = 0, per_sm = 0;
  cudaError_t e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device);
  if (e != cudaSuccess) return fail("fused_grid: cooperative launch attribute", e);
  if (!coop) {
    snprintf(g_error, sizeof(g_error), "fused_grid: the device does not support cooperative launches");
    return 1;
  }
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return fail("fused_grid: multiprocessor count", e);
  e = cudaFuncSetAttribute(kernel(), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)Cfg::smem());
  if (e != cudaSuccess) return fail("fused_grid: shared memory attribute", e);
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel(), Cfg::THREADS, Cfg::smem());
  if (e != cudaSuccess) return fail("fused_grid: cudaOccupancyMaxActiveBlocksPerMultiprocessor", e);
  if (per_sm < 1) {
    snprintf(g_error, sizeof(g_error), "fused_grid: no block of this configuration fits on an SM (shared memory "
             "or registers per block)");
    return 1;
  }
  *resident = per_sm * sms;
  return 0;
}

int prepare(int device) {
  if (device < 0 || device >= 64) {
    snprintf(g_error, sizeof(g_error), "fused_grid: device index out of range");
    return 1;
  }
  if (!g_dev.done[device]) {
    const int rc = check_uncached(device, &g_dev.resident[device]);
    if (rc != 0) snprintf(g_dev.message[device], sizeof(g_dev.message[device]), "%s", g_error);
    g_dev.status[device] = rc;
    g_dev.done[device] = 1;
  } else if (g_dev.status[device] != 0) {
    snprintf(g_error, sizeof(g_error), "%s", g_dev.message[device]);
  }
  return g_dev.status[device];
}
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
  const long long blocks = (long long)GS * nbt * NH;
  if (blocks > g_dev.resident[device]) {
    snprintf(g_error, sizeof(g_error), "fused_grid: %lld blocks (GRID_SPLIT %d x %d batch tiles x %d heads) are more "
             "than the %d the device holds at once (a cooperative grid must be resident)", blocks, GS, nbt, NH,
             g_dev.resident[device]);
    return 1;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaMemsetAsync(flags, 0, (size_t)blocks * sizeof(unsigned), s);
  if (e != cudaSuccess) return fail("fused_grid: zeroing the flags", e);
  FwdArgs a{T, B, NH, reverse, gx, R, b, s0, h, sT, states_in, rhb, flags};
  void* kargs[] = {&a};
  e = cudaLaunchCooperativeKernel((const void*)kernel(), dim3(GS * nbt, NH), dim3(Cfg::THREADS), kargs, Cfg::smem(), s);
  if (e != cudaSuccess) return fail("fused_grid forward", e);
  return 0;
}

}  // extern "C"
