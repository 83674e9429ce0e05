// Per-step cost of the synchronisation a persistent RNN kernel pays once per time step, with no
// math: __syncthreads() in one block, cluster.sync() plus one distributed-shared-memory read
// (sm_90+), a cooperative grid.sync() with one global read, and fused_cluster's own exchange
// (sm_90+): each block's segment of h sent to every peer by bulk copies that complete on the
// peer's mbarrier (fused_cluster.cuh FillBarriers / send_to_peers, the same code), no cluster
// barrier.
//
// Built as a plain shared library by flashrnn_compile.build.ensure_variant("bench/sync_floor.cu")
// and called through ctypes by benchmarks/suites/floor.py, which times the launches with CUDA
// events on the caller's stream: per-step cost = (time(2S steps) - time(S steps)) / S.
//
// Every kernel runs the same chain: each participant (thread, block of a cluster, block of the
// grid) holds v = 0; per step it publishes v into a double-buffered slot, synchronises, and sets
// v = (its neighbour's published v) + 1. After S steps every v equals S: the caller checks that,
// so a missing or broken barrier shows up as a wrong count, not only as a fast time. One barrier
// per step is enough with two buffers: a slot is rewritten two steps after it was read, and the
// barrier between the two orders them.
//
// The cluster kernel's body exists only for __CUDA_ARCH__ >= 900; the host entry points check the
// device and return an error code with a reason instead of launching where it cannot run.

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "fused/fused_cluster.cuh"

namespace cg = cooperative_groups;

namespace {

constexpr int kMaxThreads = 1024;

// ---- one block: __syncthreads ------------------------------------------------------------------
__global__ void block_sync_kernel(int steps, int* __restrict__ out) {
  __shared__ int buf[2][kMaxThreads];
  const int n = blockDim.x, t = threadIdx.x;
  int v = 0;
  for (int s = 0; s < steps; ++s) {
    int* slot = buf[s & 1];
    slot[t] = v;
    __syncthreads();
    v = slot[(t + 1) % n] + 1;
  }
  out[t] = v;
}

// ---- one cluster: cluster.sync + one DSMEM read (sm_90+) ----------------------------------------
__global__ void cluster_sync_kernel(int steps, int* __restrict__ out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ int buf[2];
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank(), size = cluster.num_blocks();
  int v = 0;
  for (int s = 0; s < steps; ++s) {
    if (threadIdx.x == 0) buf[s & 1] = v;
    cluster.sync();
    if (threadIdx.x == 0) {
      const int* remote = cluster.map_shared_rank(&buf[s & 1], (rank + 1) % size);
      v = *remote + 1;
    }
  }
  cluster.sync();  // no block leaves while a neighbour may still read its shared memory
  if (threadIdx.x == 0) out[blockIdx.x] = v;
#else
  if (threadIdx.x == 0) out[blockIdx.x] = -1;  // never launched: the host refuses below sm_90
#endif
}

// ---- the whole grid: cooperative grid.sync + one global read ------------------------------------
__global__ void grid_sync_kernel(int steps, volatile int* __restrict__ buf, int* __restrict__ out) {
  cg::grid_group grid = cg::this_grid();
  const int nb = gridDim.x, b = blockIdx.x;
  int v = 0;
  for (int s = 0; s < steps; ++s) {
    if (threadIdx.x == 0) buf[(s & 1) * nb + b] = v;
    grid.sync();
    if (threadIdx.x == 0) v = buf[(s & 1) * nb + (b + 1) % nb] + 1;
  }
  if (threadIdx.x == 0) out[b] = v;
}

// ---- one cluster: fused_cluster's exchange and two alternatives ------------------------------------
// Shared memory: h [2 buffers][CS source blocks][seg bytes] | 2 mbarriers. Per step every thread
// writes v into its words of the block's own segment of buffer s & 1, the segment reaches every
// peer, and the block sets v = (the next block's published v) + 1. MODE:
//   0 fused_cluster's exchange (the kernel's code: send_to_peers, FillBarriers): a proxy fence, a
//     block barrier, then lanes 0 .. CS - 2 of warp 0 each issue one bulk copy into a peer,
//     completing its bytes on the peer's mbarrier of that buffer;
//   1 the same copies issued by lane j / WARPS of warp j % WARPS (copy j), spread over the warps;
//   2 pull: a block barrier, then thread j < CS - 1 arrives (release, cluster scope) on peer j's
//     mbarrier of the buffer (CS - 1 arrivals complete it); every thread waits on its own (acquire,
//     cluster scope) and reads the peers' segments with 16-byte distributed-shared-memory loads into
//     its own buffer's slots; a block barrier ends the step.
// Buffer reuse: a block rewrites its segment of buffer b two steps later, after every peer has
// signalled (pull) or been sent (push) the step in between, which came after its reads of b.
template <int CS, int MODE>
__global__ void bulk_exchange_kernel(int steps, int seg, int* __restrict__ out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace fc = flashrnn::fused_cluster;
  extern __shared__ __align__(16) unsigned char sm[];
  const int tid = threadIdx.x, warps = blockDim.x / 32, rank = (int)fc::cluster_rank();
  const uint32_t base = (uint32_t)__cvta_generic_to_shared(sm), mb = base + (uint32_t)(2 * CS * seg);
  auto seg_at = [&](int buf, int src) { return base + (uint32_t)((buf * CS + src) * seg); };
  const fc::FillBarriers fills{mb, (uint32_t)((CS - 1) * seg)};
  // the thread that issues copy j (MODE 0, 1): peer (rank + 1 + j) % CS
  const int j = MODE == 1 ? (tid % 32) * warps + tid / 32 : tid;
  const bool issuer = MODE != 2 && (MODE == 1 ? tid % 32 < (CS - 1 + warps - 1) / warps && j < CS - 1 : tid < CS - 1);
  if (MODE == 2) {
    if (tid == 0) {
      fc::mbar_init(mb, CS - 1);
      fc::mbar_init(mb + 8, CS - 1);
      fc::mbar_init_fence();
    }
    __syncthreads();
  } else {
    fills.init(tid);
  }
  fc::cluster_arrive();  // every block's mbarriers are initialised before a peer completes or arrives on them
  fc::cluster_wait();
  int v = 0;
  for (int s = 0; s < steps; ++s) {
    const int buf = s & 1;
    if (issuer) fc::bulk_wait_read();  // the copies of step s - 2 read this segment
    __syncthreads();
    int* own = reinterpret_cast<int*>(sm + (buf * CS + rank) * seg);
    for (int i = tid; i < seg / 4; i += blockDim.x) own[i] = v;
    if (MODE == 2) {
      __syncthreads();
      if (tid < CS - 1) fc::mbar_arrive_remote(fc::map_rank(mb + 8 * buf, (uint32_t)((rank + 1 + tid) % CS)));
      fc::mbar_wait(mb + 8 * buf, (uint32_t)(s >> 1) & 1u);
      const int chunks = seg / 16;
      for (int i = tid; i < (CS - 1) * chunks; i += blockDim.x) {
        const int src = (rank + 1 + i / chunks) % CS;
        const uint32_t off = seg_at(buf, src) + (uint32_t)((i % chunks) * 16);
        uint4 w;
        asm volatile("ld.shared::cluster.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(w.x), "=r"(w.y), "=r"(w.z), "=r"(w.w) : "r"(fc::map_rank(off, (uint32_t)src)) : "memory");
        *reinterpret_cast<uint4*>(sm + (off - base)) = w;
      }
      __syncthreads();
    } else {
      fc::fence_proxy_async_smem();
      __syncthreads();
      if (issuer) {
        const uint32_t d = (uint32_t)((rank + 1 + j) % CS);
        fc::bulk_to_peer(fc::map_rank(seg_at(buf, rank), d), seg_at(buf, rank), (uint32_t)seg, fills.in_peer(buf, d));
        fc::bulk_commit();
      }
      fills.wait_and_rearm(buf, s >> 1, tid);
    }
    v = reinterpret_cast<const int*>(sm + (buf * CS + (rank + 1) % CS) * seg)[tid % (seg / 4)] + 1;
  }
  if (issuer) fc::bulk_wait_read();
  // MODE 0, 1: the re-arm after the last wait expects a fill that never comes (harmless: the block
  // exits). No block leaves while a peer may still read its shared memory (MODE 2) or copy into it.
  fc::cluster_arrive();
  fc::cluster_wait();
  out[blockIdx.x * blockDim.x + tid] = v;
#else
  out[blockIdx.x * blockDim.x + threadIdx.x] = -1;  // never launched: the host refuses below sm_90
#endif
}

void set_reason(char* reason, int len, const char* text) {
  if (reason != nullptr && len > 0) {
    std::snprintf(reason, static_cast<size_t>(len), "%s", text);
  }
}

int fail(cudaError_t err, char* reason, int len, const char* what) {
  char text[256];
  std::snprintf(text, sizeof(text), "%s: %s", what, cudaGetErrorString(err));
  set_reason(reason, len, text);
  return static_cast<int>(err) == 0 ? -1 : static_cast<int>(err);
}

int current_major(char* reason, int len, int* major) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return fail(err, reason, len, "cudaGetDevice");
  err = cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, dev);
  if (err != cudaSuccess) return fail(err, reason, len, "cudaDeviceGetAttribute");
  return 0;
}

// One cluster of `cluster` blocks of `threads` threads on `stream`; `attr` holds the cluster
// dimension the returned configuration points to.
cudaLaunchConfig_t cluster_config(int cluster, int threads, cudaStream_t stream, cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = cluster;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cfg.gridDim = dim3(cluster);
  cfg.blockDim = dim3(threads);
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

}  // namespace

extern "C" {

// Launch __syncthreads chain: one block of `threads` threads, `steps` steps; out[threads].
int floor_block(int threads, int steps, int* out, void* stream, char* reason, int len) {
  if (threads < 1 || threads > kMaxThreads) {
    set_reason(reason, len, "threads: expected 1 .. 1024");
    return -1;
  }
  block_sync_kernel<<<1, threads, 0, static_cast<cudaStream_t>(stream)>>>(steps, out);
  cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? 0 : fail(err, reason, len, "block_sync_kernel launch");
}

// 0 on a device of compute capability 9.0 or newer, else an error code with `what` needs it as
// the reason
int need_sm90(char* reason, int len, const char* what) {
  int major = 0;
  int rc = current_major(reason, len, &major);
  if (rc != 0) return rc;
  if (major < 9) {
    char text[160];
    std::snprintf(text, sizeof(text), "%s need compute capability 9.0 or newer", what);
    set_reason(reason, len, text);
    return -1;
  }
  return 0;
}

// How many clusters of `cluster` blocks (`threads` each) can be resident at once; 0 with a
// reason when the device or the size cannot take them (non-portable sizes > 8 are requested).
int floor_cluster_capacity(int cluster, int threads, int* clusters, char* reason, int len) {
  *clusters = 0;
  int rc = need_sm90(reason, len, "thread-block clusters");
  if (rc != 0) return rc;
  if (cluster > 8) {
    cudaError_t err = cudaFuncSetAttribute(cluster_sync_kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err != cudaSuccess) return fail(err, reason, len, "non-portable cluster size refused");
  }
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg = cluster_config(cluster, threads, nullptr, &attr);
  cudaError_t err = cudaOccupancyMaxActiveClusters(clusters, cluster_sync_kernel, &cfg);
  if (err != cudaSuccess) return fail(err, reason, len, "cudaOccupancyMaxActiveClusters");
  if (*clusters == 0) {
    set_reason(reason, len, "no cluster of this size fits on the device");
    return -1;
  }
  return 0;
}

// Launch the cluster chain: one cluster of `cluster` blocks, `steps` steps; out[cluster].
int floor_cluster(int cluster, int threads, int steps, int* out, void* stream, char* reason, int len) {
  int fits = 0;
  int rc = floor_cluster_capacity(cluster, threads, &fits, reason, len);
  if (rc != 0) return rc;
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg = cluster_config(cluster, threads, static_cast<cudaStream_t>(stream), &attr);
  cudaError_t err = cudaLaunchKernelEx(&cfg, cluster_sync_kernel, steps, out);
  if (err == cudaSuccess) err = cudaGetLastError();
  return err == cudaSuccess ? 0 : fail(err, reason, len, "cluster_sync_kernel launch");
}

// Launch the exchange chain `mode` (bulk_exchange_kernel's MODE: 0 fused_cluster's, 1 its copies
// issued from every warp, 2 pull): one cluster of `cluster` (2, 8 or 16) blocks of `threads`
// (a multiple of 32), `steps` steps, `seg` bytes a block and step (a multiple of 16);
// out[cluster * threads].
int floor_bulk(int cluster, int threads, int steps, int seg, int mode, int* out, void* stream, char* reason, int len) {
  int rc = need_sm90(reason, len, "thread-block clusters and bulk copies");
  if (rc != 0) return rc;
  if (seg < 16 || seg % 16 != 0) {
    set_reason(reason, len, "seg: expected a positive multiple of 16 bytes");
    return -1;
  }
  using K = void (*)(int, int, int*);
  const K kernels[3][3] = {{bulk_exchange_kernel<2, 0>, bulk_exchange_kernel<8, 0>, bulk_exchange_kernel<16, 0>},
                           {bulk_exchange_kernel<2, 1>, bulk_exchange_kernel<8, 1>, bulk_exchange_kernel<16, 1>},
                           {bulk_exchange_kernel<2, 2>, bulk_exchange_kernel<8, 2>, bulk_exchange_kernel<16, 2>}};
  const int ci = cluster == 2 ? 0 : cluster == 8 ? 1 : cluster == 16 ? 2 : -1;
  if (ci < 0 || mode < 0 || mode > 2 || threads % 32 != 0) {
    set_reason(reason, len, "cluster: expected 2, 8 or 16 blocks; mode: 0, 1 or 2; threads: a multiple of 32");
    return -1;
  }
  const K kernel = kernels[mode][ci];
  const int smem = 2 * cluster * seg + 16;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err == cudaSuccess && cluster > 8) err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (err != cudaSuccess) return fail(err, reason, len, "bulk_exchange_kernel attributes");
  cudaLaunchAttribute attr;
  cudaLaunchConfig_t cfg = cluster_config(cluster, threads, static_cast<cudaStream_t>(stream), &attr);
  cfg.dynamicSmemBytes = smem;
  err = cudaLaunchKernelEx(&cfg, kernel, steps, seg, out);
  if (err == cudaSuccess) err = cudaGetLastError();
  return err == cudaSuccess ? 0 : fail(err, reason, len, "bulk_exchange_kernel launch");
}

// Launch the grid chain cooperatively: `blocks` blocks of `threads`, `steps` steps;
// buf[2 * blocks] scratch, out[blocks].
int floor_grid(int blocks, int threads, int steps, int* buf, int* out, void* stream, char* reason, int len) {
  int dev = 0, coop = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, grid_sync_kernel, threads, 0);
  if (err != cudaSuccess) return fail(err, reason, len, "device query");
  if (!coop) {
    set_reason(reason, len, "the device does not support cooperative launches");
    return -1;
  }
  if (blocks < 1 || blocks > sms * per_sm) {
    char text[128];
    std::snprintf(text, sizeof(text), "blocks=%d: expected 1 .. %d co-resident blocks", blocks, sms * per_sm);
    set_reason(reason, len, text);
    return -1;
  }
  void* args[] = {&steps, &buf, &out};
  err = cudaLaunchCooperativeKernel(reinterpret_cast<void*>(grid_sync_kernel), dim3(blocks), dim3(threads), args, 0,
                                    static_cast<cudaStream_t>(stream));
  if (err == cudaSuccess) err = cudaGetLastError();
  return err == cudaSuccess ? 0 : fail(err, reason, len, "grid_sync_kernel cooperative launch");
}

// Number of streaming multiprocessors of the current device (the default grid size).
int floor_sm_count(int* sms) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return -1;
  return cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess ? 0 : -1;
}

}  // extern "C"
