// fused_cluster: the R of one head split by hidden units over the CS blocks of a thread-block
// cluster (sm_90+), one persistent cluster per (head, batch tile) for all T steps. Plain CUDA C++
// (no torch headers). Layouts as flashrnn_compile/reference.py and fused_block.cuh:
//   gx [T, B, NH, G, DH] T_IN   R [NH, G, DH, DH] T_IN (R[n, g, out, in])   b [NH, G, DH] T_IN
//   s0, sT [S, B, NH, DH] T_IN  h [T, B, NH, DH] T_IN
//   states_in [T, S, B, NH, DH] fp32, rhb [T, B, NH, G, DH] fp32 (saved by the forward when not
//   nullptr: what the alternating backward reads)
//
// Work split. Block `rank` of a cluster owns the DHB = DH / CS units rank * DHB .. + DHB - 1 (all
// G gates of them: G * DHB rows, M = G * DHB / 16 m-tiles of R). Its warps are MGR groups of MTW
// consecutive m-tiles (tile j: gate j % G of unit group j / G) times KS K slices (by default MGR =
// DHB / 16 and MTW = G: a warp has the G gates of 16 units; FRNN_CLUSTER_KSLICES sets KS): warp
// (mgr, ks) multiplies its MTW tiles over k-tiles ks * KTW .. + KTW - 1 (KTW = DH / 16 / KS) with
// m16n8k16 MMAs (mma.cuh WarpGemm: its R_REG_TILES A fragments in registers, the rest in shared
// memory, loaded once). Per step (FRNN_CLUSTER_SYNC = 2, the default):
//   1. wait for the mbarrier of this step's h buffer (every peer's h_{t-1} has landed; thread 0 then
//      re-arms it for its next fill); MMAs on h_{t-1} (shared memory, all DH units, laid out by
//      source block [CS][HP][BT][DHB + 8]) -> partial sums of the K slice, to shared memory
//      red[KS][G][BT][DHB + 4] fp32; cp.async of gx NS - 1 steps ahead was issued first
//   2. __syncthreads; each thread takes unit pairs (u, u + 1) of one batch column: sums the KS
//      partials, + b, + gx (ring stage), saves states_in / rhb, runs the cell (fp32 states stay in
//      its registers for all T steps), stores h_t to global, and writes the pair (one 32-bit word per
//      h piece) into the block's own segment of the next h buffer
//   3. fence.proxy.async, __syncthreads; lanes 0 .. CS - 2 of warp 0 each issue one bulk copy (the
//      copy engine: cp.async.bulk shared::cta -> shared::cluster) of that segment into the same place
//      of one peer, completing its bytes on the peer's mbarrier of that buffer. No thread stores into
//      a peer and no cluster barrier is met per step.
// Why two h buffers and these waits suffice: block P writes this block's buffer X (read at step
// s + 1) in its exchange of step s, after its own MMAs of step s, which waited for this block's h of
// step s - 1, sent after this block's MMAs of step s - 1 had finished reading X. An mbarrier phase
// cannot complete twice before this block's warps saw it: the next fill of a buffer needs this
// block's h of the step after, produced after every warp's wait. The copies of step s - 2 read the
// segment rewritten at step s: their issuers wait for that (cp.async.bulk.wait_group.read) at the
// start of step s, before the block barrier after the MMAs. The last step sends nothing, so every
// copy into a block has been waited for before it exits.
// SYNC 0 (a timing switch) ends each step with 16-byte st.shared::cluster stores of the segment by
// all threads and barrier.cluster.arrive.release / wait.acquire: 9% slower at LSTM 1x768 (H200), its
// release fence waiting for the stores (ncu: 22% of the samples); SYNC 1, mbarriers per source block
// that the storing threads arrive on, was slower than SYNC 0 (session 4).
// Columns past the batch compute on zeros and store nothing. A cluster barrier before the loop
// makes every block's buffers and mbarriers initialised before a peer writes them.
//
// Precision as fused_block: bf16 / fp16 MMA operands, fp32 accumulate, h rounded to HP pieces of the
// input dtype (Config::HP: one for every cell), fp32 states and cell math (Precision<Cell>::MathFor).
//
// The backward kernel (built with FRNN_CLUSTER_BWD=1 only) is described at backward_kernel below.
//
// Template parameters = the planner's fused_cluster variables (csrc/fused/fused_cluster.cint):
//   CS = CLUSTER_SIZE, WARPS (by default a multiple of DHB / 16 whose quotient KS divides DH / 16),
//   BT = BATCH_TILE, RREG = R_REG_TILES (A fragments each warp keeps in registers).
#pragma once

#include "fused/fused_block.cuh"
#include "fused/split_common.cuh"
#include "fused/step_clock.cuh"

#ifndef FRNN_CLUSTER_H_PIECES
#define FRNN_CLUSTER_H_PIECES 1
#endif
// 1: the h exchange stages a block's new units in its own buffer, then copies them to the peers
// in 16-byte distributed-shared-memory stores (one block barrier more); 0: each thread stores its
// unit pair (4 bytes) into every peer directly
#ifndef FRNN_CLUSTER_VEC
#define FRNN_CLUSTER_VEC 1
#endif
// 1: after its copies, each sending thread arrives (release, cluster scope) on an mbarrier of the
// receiving block, one per (h buffer, source block), and a warp waits (acquire) only for the blocks
// whose units its K slice reads; 0: one cluster barrier per step; 2: h buffers laid out by source
// block ([2][CS][HP][BT][DHB + 8]), each block's new units sent by CS - 1 bulk copies (the copy
// engine, cp.async.bulk shared::cta -> shared::cluster) that complete bytes on one mbarrier per h
// buffer of the receiver; no thread stores into a peer and no cluster barrier per step
#ifndef FRNN_CLUSTER_SYNC
#define FRNN_CLUSTER_SYNC 2
#endif
// K slices per block (0: WARPS / (DHB / 16), each warp all G gate tiles of one 16-unit group); else
// the block's G * DHB / 16 m-tiles are split into WARPS / KSLICES groups of consecutive tiles
// (tile j = gate j % G of unit group j / G) times KSLICES slices of the DH / 16 k-tiles: fewer,
// fatter warps hold more of R in registers
#ifndef FRNN_CLUSTER_KSLICES
#define FRNN_CLUSTER_KSLICES 0
#endif
// timing probes only (results are wrong): 1 no stores to peers, 2 a block barrier instead of the
// cluster barrier, 3 no MMAs; 0 the kernel
#ifndef FRNN_CLUSTER_ABLATE
#define FRNN_CLUSTER_ABLATE 0
#endif
// timing probe (results stay right): 1 = lane 0 of every warp of the first cluster prints the mean
// SM clocks a step spends in each phase of the forward's and the backward's loops (step_clock.cuh
// StepClock; benchmarks/profile_cluster.py)
#ifndef FRNN_CLUSTER_PROFILE
#define FRNN_CLUSTER_PROFILE 0
#endif

namespace flashrnn {
namespace fused_cluster {

using fused::In;
using fused::Precision;
using fused::WarpGemm;
using fused::cp_async_commit;
using fused::cp_async_wait;
using fused::split;
using fused::to_op;
using fused_split::StageCopy;
using fused_split::StepClock;
using fused_split::unit_pairs;
using fused_split::load_pair_bias_states;
using fused_split::load_pair_states;
using fused_split::store_pair_states;
using fused_split::unpack2f;

template <typename TIn, typename Cell, int DH, int CS, int WARPS, int BT, int RREG>
struct Config {
  static constexpr int G = Cell::G, S = Cell::S, THREADS = 32 * WARPS;
  // h as HP pieces of the input dtype in R h: one for every cell. fused_block keeps two for the
  // cells whose gradient jumps (Precision::JUMPS) because its backward kernel failed the 2x bound
  // with one; this family's backward is the alternating one (fp32 operands), and with one piece
  // slstm and elman_relu stayed within 2x (H100, 4 seeds x T 17 / 64 x both directions x bf16 /
  // fp16, DH 64, gradients included; fused_cluster.md). FRNN_CLUSTER_H_PIECES=2 forces two.
  static constexpr int HP = FRNN_CLUSTER_H_PIECES;
  using Math = typename Precision<Cell>::template MathFor<typename In<TIn>::Math>;
  using Op = typename In<TIn>::Op;
  static constexpr int DHB = DH / CS, UGB = DHB / 16;
  static constexpr int KS = FRNN_CLUSTER_KSLICES > 0 ? FRNN_CLUSTER_KSLICES : WARPS / (UGB > 0 ? UGB : 1);
  static constexpr int MGR = WARPS / (KS > 0 ? KS : 1), MTW = G * UGB / (MGR > 0 ? MGR : 1);  // m-tile groups, m-tiles a warp
  static constexpr int KT = DH / 16, KTW = KT / (KS > 0 ? KS : 1), NT = BT / 8;
  static_assert(DH % CS == 0 && DHB % 16 == 0, "each block owns a multiple of 16 units");
  static_assert(BT % 8 == 0, "the batch tile is a multiple of the MMA N side (8)");
  static_assert(KS >= 1 && WARPS % KS == 0 && KT % KS == 0 && (G * UGB) % MGR == 0,
                "WARPS = m-tile groups x KS K slices, KS | DH / 16, the groups divide the G * DHB / 16 m-tiles");
  static_assert(CS >= 1 && CS <= 16, "at most 16 blocks per cluster");
  // more than 12 k-tiles a warp: their B fragments stream through a ring of 8 (registers for R)
  using Gemm = WarpGemm<Op, MTW, KTW, NT, HP, RREG, WARPS, KTW, (KTW > 12 ? 8 : 0)>;
  static constexpr int NP = BT * DHB / 2;               // unit pairs (u, u + 1) x batch columns
  static constexpr int PPT = (NP + THREADS - 1) / THREADS;  // pairs per thread
  static constexpr int NS = 4;                           // gx ring stages (3 steps ahead)
  // shared-memory rows (elements), padded: conflict-free B fragments / partial-sum stores
  static constexpr int XF = DH + 8;    // h row (Op)
  static constexpr int RP = DHB + 4;   // red row (fp32)
  // SYNC 2: h by source block, xs [2][CS][HP][BT][XP] (XP / 2 words = 4 mod 8: conflict-free B
  // fragments); one source's rows are one contiguous bulk copy of SEG_BYTES
  static constexpr bool BY_SOURCE = FRNN_CLUSTER_SYNC == 2;
  static constexpr int XP = DHB + 8;
  static constexpr int SEG = HP * BT * XP;  // elements of one source block's h
  static constexpr int SEG_BYTES = SEG * (int)sizeof(Op);
  static constexpr int X_ELEMS = BY_SOURCE ? 2 * CS * SEG : 2 * HP * BT * XF;
  // element (buffer, piece, column n, unit u of the head) of xs
  __host__ __device__ static constexpr int xoff(int buf, int hp, int n, int u) {
    return BY_SOURCE ? ((buf * CS + u / DHB) * HP + hp) * BT * XP + n * XP + u % DHB : ((buf * HP + hp) * BT + n) * XF + u;
  }
  __host__ __device__ static constexpr size_t align16(size_t x) { return (x + 15) / 16 * 16; }
  // a_smem | xs (X_ELEMS Op) | red [KS][G][BT][RP] f32 | NS stages of gx [BT][G][DHB] Op | mbarriers
  static constexpr size_t A_BYTES = align16(Gemm::smem_a_bytes());
  static constexpr size_t X_BYTES = align16((size_t)X_ELEMS * sizeof(Op));
  static constexpr size_t RED_BYTES = align16((size_t)KS * G * BT * RP * 4);
  static constexpr size_t STAGE = align16((size_t)BT * G * DHB * sizeof(Op));
  static constexpr size_t X_OFF = A_BYTES, RED_OFF = X_OFF + X_BYTES, RING_OFF = RED_OFF + RED_BYTES;
  // SYNC 1: mbarriers [2][CS] (h buffer, source block) after the ring; SYNC 2: [2] (h buffer)
  static constexpr size_t MB_OFF = RING_OFF + NS * STAGE;
  static constexpr int TPP = THREADS / CS;  // SYNC 1: threads sending to one peer (and arriving on its mbarrier)
  static constexpr int NMB = FRNN_CLUSTER_SYNC == 1 ? 2 * CS : FRNN_CLUSTER_SYNC == 2 ? 2 : 0;
  __host__ __device__ static constexpr size_t smem() { return MB_OFF + NMB * 8; }
};

struct FwdArgs {
  int T, B, NH, reverse;
  const void* gx; const void* R; const void* b; const void* s0;
  void* h; void* sT; float* states_in; float* rhb;  // states_in, rhb: nullptr = save=false
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FRNN_CLUSTER_ARCH 1
#else
#define FRNN_CLUSTER_ARCH 0
#endif

#if FRNN_CLUSTER_ARCH
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
// the shared::cluster address of `local` (a shared-window address) in block `rank` of the cluster
__device__ __forceinline__ uint32_t map_rank(uint32_t local, uint32_t rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(local), "r"(rank));
  return r;
}
__device__ __forceinline__ void st_cluster(uint32_t addr, uint32_t v) {
  asm volatile("st.shared::cluster.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void st_cluster16(uint32_t addr, uint4 v) {
  asm volatile("st.shared::cluster.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ void mbar_init(uint32_t addr, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// arrive on an mbarrier of block `rank`'s shared memory (addr: shared::cluster), releasing this
// thread's earlier stores at cluster scope
__device__ __forceinline__ void mbar_arrive_remote(uint32_t addr) {
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(addr) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t addr, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred P1;\nWAIT_LOOP:\n"
      " mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 P1, [%0], %1;\n"
      " @!P1 bra WAIT_LOOP;\n}\n" ::"r"(addr), "r"(parity) : "memory");
}
// SYNC 2: this thread's arrival on a local mbarrier that also expects `bytes` more (copy engine)
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t addr, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(addr), "r"(bytes) : "memory");
}
// this thread's shared-memory writes become visible to the copy engine (the async proxy)
__device__ __forceinline__ void fence_proxy_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// `bytes` (a multiple of 16, both addresses 16-byte aligned) of this block's shared memory at `src`
// into a peer's at `dst` (shared::cluster), completing them on the peer's mbarrier `mbar`
__device__ __forceinline__ void bulk_to_peer(uint32_t dst, uint32_t src, uint32_t bytes, uint32_t mbar) {
  asm volatile("cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"(dst), "r"(src), "r"(bytes), "r"(mbar) : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// this thread's bulk copies have read their sources
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// the same wait with acquire at CTA scope: enough for bytes the copy engine completed on the mbarrier
// (SYNC 2, BWD_SYNC 2). The cluster-scope acquire invalidates L1 (CCTL.IVALL), which waits for
// every global load in flight, the gx prefetch just issued among them (ncu: 20% of the forward's
// samples at LSTM 1x768).
__device__ __forceinline__ void mbar_wait_cta(uint32_t addr, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred P1;\nWAIT_LOOP:\n"
      " mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 P1, [%0], %1;\n"
      " @!P1 bra WAIT_LOOP;\n}\n" ::"r"(addr), "r"(parity) : "memory");
}
// SYNC 2 / BWD_SYNC 2: one mbarrier per receive buffer (2, 8 bytes apart from `base`). A phase is
// one fill of its buffer: thread 0's arrival, expecting the `bytes` the CS - 1 peers' bulk copies
// complete on it, and those bytes. The forward and the backward share this protocol.
struct FillBarriers {
  uint32_t base, bytes;
  // thread 0 initialises both; a block barrier orders that before its first arms (racecheck), which
  // arm both for their first fill (before the cluster barrier that lets a peer send)
  __device__ void init(int tid) const {
    if (tid == 0) {
      mbar_init(base, 1);
      mbar_init(base + 8, 1);
      mbar_init_fence();
    }
    __syncthreads();
    if (tid == 0) {
      mbar_arrive_expect_tx(base, bytes);
      mbar_arrive_expect_tx(base + 8, bytes);
    }
  }
  // every thread: fill `fill` of buffer `buf` has landed
  __device__ void wait(int buf, int fill) const { mbar_wait_cta(base + 8 * buf, (uint32_t)fill & 1u); }
  // wait(), then thread 0 arms the buffer for its next fill: that fill needs a step of this block
  // that comes after every thread's wait, so the phase cannot complete twice unseen
  __device__ void wait_and_rearm(int buf, int fill, int tid) const {
    wait(buf, fill);
    if (tid == 0) mbar_arrive_expect_tx(base + 8 * buf, bytes);
  }
  // buffer `buf`'s mbarrier in block `rank` (shared::cluster address), where a copy completes
  __device__ uint32_t in_peer(int buf, uint32_t rank) const { return map_rank(base + 8 * buf, rank); }
};

// after every thread's shared-memory writes of the step: make them visible to the copy engine,
// barrier, then (when `send`) lanes 0 .. CS - 2 of warp 0 each issue one bulk copy of `bytes` to
// peer d = rank + 1 + lane (mod CS), from src(d) (this block's shared-window address) to the place
// that dst(d) names in d's shared memory, completing on d's mbarrier of buffer `buf`. The addresses
// are computed by the sending lanes only.
template <int CS, typename Src, typename Dst>
__device__ __forceinline__ void send_to_peers(bool send, int tid, int rank, uint32_t bytes, const FillBarriers& fb, int buf,
                                              Src src, Dst dst) {
  fence_proxy_async_smem();
  __syncthreads();
  if (send && tid < CS - 1) {
    const uint32_t d = (uint32_t)((rank + 1 + tid) % CS);
    bulk_to_peer(map_rank(dst(d), d), src(d), bytes, fb.in_peer(buf, d));
    bulk_commit();
  }
}

__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release;\n" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory"); }
#endif

template <typename TIn, typename Cell, int DH, int CS, int WARPS, int BT, int RREG>
__global__ void __launch_bounds__(32 * WARPS, 1) forward_kernel(FwdArgs p) {
#if FRNN_CLUSTER_ARCH
  using C = Config<TIn, Cell, DH, CS, WARPS, BT, RREG>;
  using Op = typename C::Op;
  using M = typename C::Math;
  constexpr int G = C::G, S = C::S, HP = C::HP, NT = C::NT, NS = C::NS, XF = C::XF, RP = C::RP, DHB = C::DHB;
  constexpr int PPT = C::PPT, NP = C::NP;
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* a_smem = reinterpret_cast<uint32_t*>(smem);
  Op* xs = reinterpret_cast<Op*>(smem + C::X_OFF);         // [2][HP][BT][XF] or SYNC 2 [2][CS][HP][BT][XP]
  float* red = reinterpret_cast<float*>(smem + C::RED_OFF);  // [KS][G][BT][RP]
  unsigned char* ring = smem + C::RING_OFF;                // NS x gx [BT][G][DHB]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
  const int mgr = warp % C::MGR, ks = warp / C::MGR;  // default KSLICES: mgr = the warp's unit group, its tiles its G gates
  const int rank = (int)cluster_rank(), tile = blockIdx.x / CS, nh = blockIdx.y, bt0 = tile * BT;
  const int T = p.T, B = p.B, NH = p.NH, nb = B - bt0 < BT ? B - bt0 : BT;
  const int u0 = rank * DHB;  // the block's first unit
  const TIn* R = static_cast<const TIn*>(p.R) + (size_t)nh * G * DH * DH;
  const TIn* bias = static_cast<const TIn*>(p.b) + (size_t)nh * G * DH;
  const int BND = B * NH * DH;  // one [B, NH, DH] slice (the module checks it fits an int)
  const int dstep = p.reverse ? -1 : 1, t_first = p.reverse ? T - 1 : 0;

  // gx stage rows r = n * G + g: DHB units of gate g, batch column n
  const unsigned char* gx0 = static_cast<const unsigned char*>(p.gx) + (((size_t)bt0 * NH + nh) * G * DH + u0) * sizeof(TIn);
  const long long gx_t = (long long)B * NH * G * DH * sizeof(TIn);
  StageCopy<C::THREADS, BT * G, DHB * (int)sizeof(TIn) / 16> gxc;
  gxc.init((uint32_t)__cvta_generic_to_shared(ring), DHB * (int)sizeof(TIn), [&](int r) {
    const int n = r / G, g = r % G;
    return n < nb ? gx0 + ((size_t)n * NH * G * DH + (size_t)g * DH) * sizeof(TIn) : nullptr;
  }, tid);
  for (int i = tid; i < (int)(NS * C::STAGE / 4); i += C::THREADS) reinterpret_cast<uint32_t*>(ring)[i] = 0u;
  for (int i = tid; i < C::X_ELEMS; i += C::THREADS) xs[i] = to_op(0.0f, (Op*)nullptr);
  __syncthreads();  // zeros before the cp.async copies and h0 land
  auto prefetch = [&](int step) {  // the gx stage of `step` (if any), one commit group always
    if (step < T) gxc.issue((uint32_t)((step % NS) * C::STAGE), (long long)(t_first + dstep * step) * gx_t);
    cp_async_commit();
  };
#pragma unroll 1
  for (int s = 0; s < NS - 1; ++s) prefetch(s);

  typename C::Gemm gemm;  // tile mt = block tile j = mgr * MTW + mt: gate j % G of unit group j / G, k-tiles ks * KTW ..
  gemm.load([&](int mt, int r, int k) {
    const int j = mgr * C::MTW + mt;
    return In<TIn>::load(R[((size_t)(j % G) * DH + u0 + (j / G) * 16 + r) * DH + k]);
  }, a_smem, warp, lane, ks * C::KTW);

  // h0 of all DH units into buffer 0 (every block reads all of s0[0] of its batch tile itself)
  const TIn* s0 = static_cast<const TIn*>(p.s0);
  for (int i = tid; i < nb * DH; i += C::THREADS) {
    const int n = i / DH, u = i % DH;
    Op pc[HP];
    split<Op, HP>(In<TIn>::load(s0[((size_t)(bt0 + n) * NH + nh) * DH + u]), pc);
#pragma unroll
    for (int hp = 0; hp < HP; ++hp) xs[C::xoff(0, hp, n, u)] = pc[hp];
  }

  // the thread's unit pairs: pair q = tid + k * THREADS -> column n = q / (DHB / 2), unit u = 2 (q % (DHB / 2))
  float st[PPT][2][S], bb[PPT][2][G];
  int pn[PPT], pu[PPT];
  bool pok[PPT];  // a pair of this block and a column inside the batch
  unit_pairs<PPT, C::THREADS, DHB>(tid, NP, nb, pn, pu, pok);
  load_pair_bias_states<TIn, PPT, G, S>(bias, s0, DH, NH, nh, BND, bt0, u0, pn, pu, pok, bb, st);
  // shared-window address of the thread's h words in buffer 0 (piece 0); peers: mapa of it
  const uint32_t xs_s = (uint32_t)__cvta_generic_to_shared(xs);
  const uint32_t mb_s = (uint32_t)__cvta_generic_to_shared(smem + C::MB_OFF);  // SYNC 1: mbar[2][CS], SYNC 2: mbar[2]
  if (FRNN_CLUSTER_SYNC == 1 && tid == 0) {
    for (int i = 0; i < 2 * CS; ++i) mbar_init(mb_s + 8 * i, C::TPP);
    mbar_init_fence();
  }
  // SYNC 2: buffer b's mbarrier completes a phase when this block's thread 0 has armed it (one
  // arrival, expecting the CS - 1 peers' bytes) and all those bytes have landed; both buffers are
  // armed for their first fill here, and each again right after thread 0 has waited for a fill
  const FillBarriers fills{mb_s, (uint32_t)((CS - 1) * C::SEG_BYTES)};
  if (FRNN_CLUSTER_SYNC == 2) fills.init(tid);
  // SYNC 1: the k-slice's source blocks (whose units its k-tiles read)
  const int src0 = ks * C::KTW * 16 / DHB, src1 = ((ks + 1) * C::KTW * 16 - 1) / DHB;
  TIn* hout = static_cast<TIn*>(p.h);
  cluster_arrive();  // every block's buffers (and mbarriers) are initialised before any peer writes them
  cluster_wait();
  // phases: 0 prefetch and copy-read wait, 1 the peers' h, 2 MMAs, 3 partial sums, 4 gx wait and
  // barrier, 5 cell, 6 send (proxy fence, barrier, bulk copies)
  StepClock<FRNN_CLUSTER_PROFILE != 0, 7> clk;
  clk.start();

#pragma unroll 1
  for (int step = 0; step < T; ++step) {
    const int t = t_first + dstep * step, cur = step & 1;
    prefetch(step + NS - 1);  // into the stage step - 1 used (every thread is past it)
    if (FRNN_CLUSTER_SYNC == 2 && tid < CS - 1) bulk_wait_read();  // the copies of step - 1 (and before) read their segment
    clk.mark(0);
    {
      float acc[C::MTW][NT][4];
      if (FRNN_CLUSTER_ABLATE == 3) {
#pragma unroll
        for (int g = 0; g < C::MTW; ++g)
#pragma unroll
          for (int i = 0; i < NT; ++i)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[g][i][r] = 0.0f;
      } else {
        if (FRNN_CLUSTER_SYNC == 1 && FRNN_CLUSTER_ABLATE == 0 && step > 0)  // h_{t-1} of the k-slice's sources has landed (fill (step - 1) / 2 of buffer cur)
          for (int src = src0; src <= src1; ++src) mbar_wait(mb_s + 8 * (cur * CS + src), (uint32_t)((step - 1) >> 1) & 1u);
        if (FRNN_CLUSTER_SYNC == 2 && step > 0) {  // every peer's h_{t-1} has landed (fill (step - 1) / 2 of buffer cur)
          fills.wait_and_rearm(cur, (step - 1) >> 1, tid);  // its next fill (h of step + 1) needs this block's h of `step`
        }
        clk.mark(1);
        if (C::BY_SOURCE)
          gemm.template run<BT, C::XP, DHB, C::SEG>(a_smem, xs + C::xoff(cur, 0, 0, 0), 0, warp, lane, acc, [] {});
        else
          gemm.template run<BT, XF>(a_smem, xs + cur * HP * BT * XF, 0, warp, lane, acc, [] {});
        clk.mark(2);
      }
      // partial sums of the warp's K slice: tile mt = gate j % G, rows gq, gq + 8 of unit group j / G,
      // columns 2 t4, 2 t4 + 1
#pragma unroll
      for (int mt = 0; mt < C::MTW; ++mt)
#pragma unroll
        for (int i = 0; i < NT; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int j = mgr * C::MTW + mt, g = j % G;
            const int n = i * 8 + 2 * t4 + (r & 1), u = (j / G) * 16 + gq + 8 * (r >> 1);
            red[((ks * G + g) * BT + n) * RP + u] = acc[mt][i][r];
          }
    }
    clk.mark(3);
    cp_async_wait<NS - 1>();  // this thread's copies of stage `step` landed; the barrier shows them to all
    __syncthreads();
    clk.mark(4);
    const Op* gxs = reinterpret_cast<const Op*>(ring + (step % NS) * C::STAGE);
    TIn* ht = hout + (size_t)t * BND;
    float* sit = p.states_in + (size_t)t * S * BND;  // (unused without save)
    float* rht = p.rhb + (size_t)t * G * BND;
    const int nxt = cur ^ 1;
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      if (PPT * C::THREADS != NP && tid + k * C::THREADS >= NP) break;
      const int n = pn[k], u = pu[k];
      float rhb[2][G], gxv[2][G], sn[2][S];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float2 a = make_float2(bb[k][0][g], bb[k][1][g]);
#pragma unroll
        for (int s = 0; s < C::KS; ++s) {
          const float2 v = *reinterpret_cast<const float2*>(red + ((s * G + g) * BT + n) * RP + u);
          a.x += v.x;
          a.y += v.y;
        }
        rhb[0][g] = a.x;
        rhb[1][g] = a.y;
        const Op* gp = gxs + (n * G + g) * DHB + u;
        gxv[0][g] = In<TIn>::load(gp[0]);
        gxv[1][g] = In<TIn>::load(gp[1]);
      }
      const size_t so = ((size_t)(bt0 + n) * NH + nh) * DH + u0 + u;  // (b, nh, unit) in [B, NH, DH]
      if (pok[k] && p.states_in != nullptr) {
#pragma unroll
        for (int s = 0; s < S; ++s) *reinterpret_cast<float2*>(sit + s * BND + so) = make_float2(st[k][0][s], st[k][1][s]);
        const size_t go = ((size_t)(bt0 + n) * NH + nh) * G * DH + u0 + u;
#pragma unroll
        for (int g = 0; g < G; ++g) *reinterpret_cast<float2*>(rht + go + g * DH) = make_float2(rhb[0][g], rhb[1][g]);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        Cell::template forward<M>(gxv[j], rhb[j], st[k][j], sn[j]);
#pragma unroll
        for (int s = 0; s < S; ++s) st[k][j][s] = sn[j][s];
      }
      if (pok[k]) {
        TIn o[2] = {In<TIn>::store(sn[0][0]), In<TIn>::store(sn[1][0])};
        *reinterpret_cast<uint32_t*>(ht + so) = fused::pack2(o[0], o[1]);
      }
      // the pair's h pieces into the next buffer of every block (itself included), starting at the
      // next rank so that the blocks' stores spread over the cluster
      Op pa[HP], pb[HP];
      split<Op, HP>(sn[0][0], pa);
      split<Op, HP>(sn[1][0], pb);
#pragma unroll
      for (int hp = 0; hp < HP; ++hp) {
        const uint32_t word = fused::pack2(pa[hp], pb[hp]);
        const int off = C::xoff(nxt, hp, n, u0 + u);
        if (FRNN_CLUSTER_VEC || FRNN_CLUSTER_ABLATE == 1 || C::BY_SOURCE) {
          *reinterpret_cast<uint32_t*>(xs + off) = word;  // own buffer; the copy below sends it
        } else {
          const uint32_t local = xs_s + (uint32_t)(off * sizeof(Op));
#pragma unroll
          for (int c = 0; c < CS; ++c) st_cluster(map_rank(local, (uint32_t)((rank + 1 + c) % CS)), word);
        }
      }
    }
    clk.mark(5);
    if (FRNN_CLUSTER_SYNC == 2) {
      // the block's new units (its segment of buffer nxt) to each peer's same segment: one bulk copy
      // per peer by lanes 0 .. CS - 2 of warp 0, after every thread's writes are visible to the copy
      // engine; the copies of step - 2 read that segment before this step's cell rewrote it (their
      // issuers waited for that at this step's start, before the block barrier after the MMAs)
      auto seg = [&](uint32_t) { return xs_s + (uint32_t)(C::xoff(nxt, 0, 0, u0) * sizeof(Op)); };
      send_to_peers<CS>(step + 1 < T, tid, rank, (uint32_t)C::SEG_BYTES, fills, nxt, seg, seg);
    } else if (FRNN_CLUSTER_SYNC == 1 && FRNN_CLUSTER_ABLATE == 0) {
      // TPP threads per receiving block copy the block's new units (HP x BT rows of DHB units, staged
      // in its own buffer) in 16-byte chunks, then each arrives on the receiver's mbarrier of
      // (buffer nxt, this block); the last step's h goes nowhere
      constexpr int CPR = DHB * (int)sizeof(Op) / 16, CHUNKS = HP * BT * CPR, TPP = C::TPP;
      __syncthreads();  // the staged units (and this step's use of red and the ring stage) are complete
      if (step + 1 < T && tid < TPP * CS) {
        const int d = (rank + 1 + tid / TPP) % CS, i = tid % TPP;
        if (d != rank)
          for (int ch = i; ch < CHUNKS; ch += TPP) {
            const int row = ch / CPR;
            const uint32_t off = (uint32_t)(((nxt * HP * BT + row) * XF + u0) * sizeof(Op) + (ch % CPR) * 16);
            const uint4 v = *reinterpret_cast<const uint4*>(reinterpret_cast<const unsigned char*>(xs) + off);
            st_cluster16(map_rank(xs_s + off, (uint32_t)d), v);
          }
        mbar_arrive_remote(map_rank(mb_s + 8 * (nxt * CS + rank), (uint32_t)d));
      }
    } else if (FRNN_CLUSTER_VEC && FRNN_CLUSTER_ABLATE != 1) {
      // the block's new units (HP x BT rows of DHB units) to the CS - 1 peers in 16-byte chunks
      constexpr int CPR = DHB * (int)sizeof(Op) / 16, CHUNKS = HP * BT * CPR, JOBS = CHUNKS * (CS - 1);
      __syncthreads();
#pragma unroll
      for (int k = 0; k < (JOBS + C::THREADS - 1) / C::THREADS; ++k) {
        const int j = tid + k * C::THREADS;
        if (JOBS % C::THREADS != 0 && j >= JOBS) break;
        const int ch = j % CHUNKS, peer = (rank + 1 + j / CHUNKS) % CS, row = ch / CPR;
        const uint32_t off = (uint32_t)(((nxt * HP * BT + row) * XF + u0) * sizeof(Op) + (ch % CPR) * 16);
        const uint4 v = *reinterpret_cast<const uint4*>(reinterpret_cast<const unsigned char*>(xs) + off);
        st_cluster16(map_rank(xs_s + off, (uint32_t)peer), v);
      }
    }
    if (FRNN_CLUSTER_SYNC == 2 || (FRNN_CLUSTER_SYNC == 1 && FRNN_CLUSTER_ABLATE == 0)) {
      // no cluster barrier: receivers wait on their mbarriers
    } else if (FRNN_CLUSTER_ABLATE == 2) {
      __syncthreads();
    } else {
      cluster_arrive();  // h_t is in every block (release), and this block is done with red and the ring stage
      cluster_wait();
    }
    clk.mark(6);
  }
  if (blockIdx.x < CS && blockIdx.y == 0) clk.report("fwd", rank, warp, lane, T);
  if (FRNN_CLUSTER_ABLATE == 2) {  // no block leaves while a peer may still write its buffers
    cluster_arrive();
    cluster_wait();
  }
  cp_async_wait<0>();
  if (FRNN_CLUSTER_SYNC == 2 && tid < CS - 1) bulk_wait_read();  // no copy still reads this block's shared memory
  TIn* sT = static_cast<TIn*>(p.sT);
  store_pair_states<TIn, PPT, S>(sT, DH, NH, nh, BND, bt0, u0, pn, pu, pok, st);
#else
  __trap();  // thread-block clusters need sm_90 (the host entry refuses other devices first)
#endif
}


// ---------------------------------------------------------------------------------------------
// Backward (built only with -DFRNN_CLUSTER_BWD=1: the library the Python backward loads when
// FLASHRNN_CLUSTER_BWD=1; the default library keeps only the forward). Persistent over all T steps
// in the reverse of the forward's order, one cluster of CS blocks per (head, batch tile) as the
// forward, block `rank` owning the DHB units u0 = rank * DHB .. + DHB - 1 (all G gates of them):
//   backward  dgx [T, B, NH, G, DH] T_IN, drhb [T, B, NH, G, DH] fp32 (dR, db: one GEMM outside,
//             fused_block._weight_grads), ds0 [S, B, NH, DH] T_IN
// Per step (forward time t):
//   1. each thread takes unit pairs (u, u + 1) of one batch column (as the forward): dh_rec = the
//      sum of the NSLOT partials in recv[buffer of the step before] (zero at the first step),
//      ds_new[0] = ds[0] + dh_rec + dh_t, the cell's backward from the step's gx, rhb, states_in
//      (registers, loaded during the step before) gives dgx = drhb (stored) and the pointwise ds
//      (registers for all T steps); drhb goes to shared memory as HP pieces of the input dtype,
//      X [HP][BT][XK] (row = batch column, K = (g, o) of the block's own units, contiguous)
//   2. the next step's inputs are loaded into registers; __syncthreads
//   3. the block's PARTIAL dh_prev for all DH units: P[k][n] = sum_(g, o own) R[g][u0 + o][k] X[(g, o)][n]
//      (m16n8k16 MMAs, A = the block's rows of R transposed, WarpGemm: R_REG_TILES fragments in
//      registers, the rest in shared memory). Warp w = (mg, kk): MG = gcd(WARPS, DH / 16) groups of
//      MT = DH / 16 / MG m-tiles (output units) times BKS = WARPS / MG slices of the G * DHB / 16
//      k-tiles. The reduce-scatter (FRNN_CLUSTER_BWD_SYNC = 2, the default): each accumulator
//      element (unit k, column n) is written into this block's shared memory, at the owner block
//      k / DHB's chunk of a staging area [CS][BKS][BT][DHB + 4] (the own block's straight into its
//      recv[step & 1][slot = rank * BKS + kk][n][k % DHB]); fence.proxy.async, __syncthreads, and
//      lanes 0 .. CS - 2 of warp 0 each issue one bulk copy of a peer's chunk into its recv[step & 1]
//      at slots rank * BKS .., completing the bytes on the peer's mbarrier of that buffer
//   4. (next step) wait for the mbarrier of recv[step & 1]; thread 0 re-arms it for its next fill
// Why two recv buffers suffice: block P writes recv[b] of Q in step s after its own cell of step s,
// which waited for P's fill of step s - 1, holding Q's partials of step s - 1, sent after Q's cell of
// step s - 1 had read recv[b] (the partials of step s - 2). A phase cannot complete twice before all
// of Q's threads saw it: the next fill needs Q's partials of the next step, sent after every wait.
// The staging area is rewritten after the next step's block barrier, and its copies' issuers wait
// (cp.async.bulk.wait_group.read) before it. The last step's partials are waited for before ds0:
// no copy into a block is in flight when it exits. X is single-buffered: every warp's MMAs of step s
// end before the block barrier before the copies, and X is written again only after it.
// BWD_SYNC 0 (and configurations whose staging area would not fit): the accumulators are stored
// into their owners' recv with 4-byte st.shared::cluster, and one cluster barrier ends the step;
// 13% slower (fwd+bwd, LSTM 1x768, H200): the barrier's release fence waits for the stores and the
// step's global stores (ncu: 28% of the samples).
// At the end ds0 = ds (+ dh_rec of the last step's partials for state 0).
// Columns past the batch compute on zeros, put zero drhb in X and store nothing.
// Precision: MMA operands 16-bit (R exact; drhb as HP pieces: two for the cells whose gradient
// jumps, Precision<Cell>::JUMPS, as fused_block's backward; FRNN_CLUSTER_BWD_PIECES forces 1 or
// 2), fp32 accumulate and fp32 partial sums across the cluster; fp32 states and cell math
// (Config::Math, the forward's).

// 0: HP of the backward by the cell (Precision<Cell>::JUMPS ? 2 : 1); 1 or 2: forced
#ifndef FRNN_CLUSTER_BWD_PIECES
#define FRNN_CLUSTER_BWD_PIECES 0
#endif

// 1: a step's inputs (gx, rhb, states_in, dh of the thread's pairs) are loaded into registers
// during the step before (their latency hidden behind the MMAs and the barrier); 0: at the step's start
#ifndef FRNN_CLUSTER_BWD_PREFETCH
#define FRNN_CLUSTER_BWD_PREFETCH 1
#endif

// timing probes of the backward only (results are wrong): 1 the partial sums go to the block's own
// recv (no distributed-shared-memory stores), 2 no MMAs, 3 a block barrier instead of the cluster
// barrier per step; 0 the kernel
#ifndef FRNN_CLUSTER_BWD_ABLATE
#define FRNN_CLUSTER_BWD_ABLATE 0
#endif

// 0: each warp stores its partial sums into their owners' recv (4-byte st.shared::cluster) and the
// cluster meets at one barrier per step; 2: the warps write them into the block's own shared memory
// (a staging area per owner, the own block's straight into its recv), and CS - 1 bulk copies (the
// copy engine) carry each owner's share into its recv, completing bytes on the owner's mbarrier of
// that recv buffer: no thread stores into a peer and no cluster barrier per step. A configuration whose
// staging area does not fit the 227 KiB of shared memory an sm_90 block may have takes 0 (BwdConfig::BULK).
#ifndef FRNN_CLUSTER_BWD_SYNC
#define FRNN_CLUSTER_BWD_SYNC 2
#endif

__host__ __device__ constexpr int gcd_int(int a, int b) { return b == 0 ? a : gcd_int(b, a % b); }

template <typename TIn, typename Cell, int DH, int CS, int WARPS, int BT, int RREG>
struct BwdConfig {
  using F = Config<TIn, Cell, DH, CS, WARPS, BT, RREG>;
  static constexpr int G = Cell::G, S = Cell::S, THREADS = 32 * WARPS;
  static constexpr int HP = FRNN_CLUSTER_BWD_PIECES > 0 ? FRNN_CLUSTER_BWD_PIECES : (Precision<Cell>::JUMPS ? 2 : 1);
  using Math = typename F::Math;
  using Op = typename F::Op;
  static constexpr int DHB = F::DHB, UGB = F::UGB, NT = BT / 8;
  static constexpr int KT = DH / 16;            // m-tiles of the partial (all DH output units)
  static constexpr int GK = G * UGB;            // k-tiles: (g, o) of the block's own units
  static constexpr int MG = gcd_int(WARPS, KT), BKS = WARPS / MG, MT = KT / MG, KTW = GK / BKS;
  static_assert(GK % BKS == 0, "WARPS / gcd(WARPS, DH / 16) K slices divide the G * DH / CLUSTER_SIZE / 16 k-tiles");
  static_assert(DHB % 16 == 0 && BT % 8 == 0, "MMA tile shapes");
  using Gemm = WarpGemm<Op, MT, KTW, NT, HP, RREG, WARPS>;
  static constexpr int NP = BT * DHB / 2;                   // unit pairs x batch columns
  static constexpr int PPT = (NP + THREADS - 1) / THREADS;  // pairs per thread
  static constexpr int NSLOT = CS * BKS;                    // partials a block receives per step
  static constexpr int XK = G * DHB + 8;  // X row (Op): XK / 2 words = 4 mod 8, conflict-free B fragments
  static constexpr int RP = DHB + 4;      // recv row (fp32), as the forward's red
  __host__ __device__ static constexpr size_t align16(size_t x) { return (x + 15) / 16 * 16; }
  // BWD_SYNC 2: one owner's share of a block's partials, [BKS][BT][RP] fp32 (a multiple of 16 bytes)
  static constexpr int CHUNK = BKS * BT * RP;
  // a_smem | X [HP][BT][XK] Op | recv [2][NSLOT][BT][RP] f32 | BWD_SYNC 2: stage [CS][BKS][BT][RP] f32, mbarriers [2]
  static constexpr size_t A_BYTES = align16(Gemm::smem_a_bytes());
  static constexpr size_t X_BYTES = align16((size_t)HP * BT * XK * sizeof(Op));
  static constexpr size_t RECV_BYTES = align16((size_t)2 * NSLOT * BT * RP * 4);
  static constexpr bool BULK = FRNN_CLUSTER_BWD_SYNC == 2 && A_BYTES + X_BYTES + RECV_BYTES + (size_t)CS * CHUNK * 4 + 16 <= 232448;
  static constexpr size_t STAGE_BYTES = BULK ? (size_t)CS * CHUNK * 4 : 0;
  static constexpr size_t X_OFF = A_BYTES, RECV_OFF = X_OFF + X_BYTES, STAGE_OFF = RECV_OFF + RECV_BYTES;
  static constexpr size_t MB_OFF = STAGE_OFF + STAGE_BYTES;
  __host__ __device__ static constexpr size_t smem() { return MB_OFF + (BULK ? 16 : 0); }
};

struct BwdArgs {
  int T, B, NH, reverse;
  const void* dh; const void* dsT; const void* gx; const void* R;  // dh [T, B, NH, DH], dsT [S, B, NH, DH]
  const float* states_in; const float* rhb;                          // saved by the forward
  void* dgx; float* drhb; void* ds0;                                 // outputs
};

template <typename TIn, typename Cell, int DH, int CS, int WARPS, int BT, int RREG>
__global__ void __launch_bounds__(32 * WARPS, 1) backward_kernel(BwdArgs p) {
#if FRNN_CLUSTER_ARCH
  using C = BwdConfig<TIn, Cell, DH, CS, WARPS, BT, RREG>;
  using Op = typename C::Op;
  using M = typename C::Math;
  constexpr int G = C::G, S = C::S, HP = C::HP, NT = C::NT, MT = C::MT, XK = C::XK, RP = C::RP, DHB = C::DHB;
  constexpr int PPT = C::PPT, NP = C::NP, NSLOT = C::NSLOT;
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* a_smem = reinterpret_cast<uint32_t*>(smem);
  Op* xs = reinterpret_cast<Op*>(smem + C::X_OFF);              // [HP][BT][XK]
  float* recv = reinterpret_cast<float*>(smem + C::RECV_OFF);  // [2][NSLOT][BT][RP]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
  const int mg = warp % C::MG, kk = warp / C::MG;
  const int rank = (int)cluster_rank(), tile = blockIdx.x / CS, nh = blockIdx.y, bt0 = tile * BT;
  const int T = p.T, B = p.B, NH = p.NH, nb = B - bt0 < BT ? B - bt0 : BT;
  const int u0 = rank * DHB;
  const TIn* R = static_cast<const TIn*>(p.R) + (size_t)nh * G * DH * DH;
  const int BND = B * NH * DH;  // one [B, NH, DH] slice (the module checks G x and S x it fit an int)
  const int GBND = G * BND;     // one [B, NH, G, DH] slice
  // processing order: the reverse of the forward's
  const int dstep = p.reverse ? 1 : -1, t_first = p.reverse ? 0 : T - 1;

  for (int i = tid; i < HP * BT * XK; i += C::THREADS) xs[i] = to_op(0.0f, (Op*)nullptr);
  typename C::Gemm gemm;  // A[k][(g, o)] = R[g][u0 + o][k]: tile mt = output units (mg * MT + mt) * 16 ..
  gemm.load([&](int mt, int r, int k) {
    const int g = k / DHB, o = k % DHB;
    return In<TIn>::load(R[((size_t)g * DH + u0 + o) * DH + (mg * MT + mt) * 16 + r]);
  }, a_smem, warp, lane, kk * C::KTW);

  // the thread's unit pairs (as the forward): pair q = tid + k * THREADS -> column n, unit u
  float ds[PPT][2][S];
  int pn[PPT], pu[PPT];
  bool pok[PPT];
  unit_pairs<PPT, C::THREADS, DHB>(tid, NP, nb, pn, pu, pok);
  load_pair_states<TIn, PPT, S>(static_cast<const TIn*>(p.dsT), DH, NH, nh, BND, bt0, u0, pn, pu, pok, ds);
  // a step's inputs of the thread's pairs, loaded one step ahead (zeros past the batch)
  fused_split::PairStepInputs<TIn, Cell, PPT> in;
  auto load_inputs = [&](int t) {
    in.load(static_cast<const TIn*>(p.gx), static_cast<const TIn*>(p.dh), p.rhb, p.states_in, t, GBND, BND, DH, NH, nh,
            bt0, u0, pn, pu, pok);
  };
  // dh_rec of pair k from the partials in recv buffer `buf`
  auto dh_rec = [&](int k, int buf) {
    float2 a = make_float2(0.0f, 0.0f);
#pragma unroll 4
    for (int sl = 0; sl < NSLOT; ++sl) {
      const float2 v = *reinterpret_cast<const float2*>(recv + ((buf * NSLOT + sl) * BT + pn[k]) * RP + pu[k]);
      a.x += v.x;
      a.y += v.y;
    }
    return a;
  };
  // the warp's partial-sum stores: m-tile mt (output units m0 = (mg * MT + mt) * 16 ..) belongs to
  // block m0 / DHB, at its unit m0 % DHB of slot rank * BKS + kk (buffer 0; shared::cluster address).
  // BWD_SYNC 2: shared-window addresses in this block, the own block's recv (buffer 0) or the
  // owner's staging chunk (slot kk)
  const uint32_t recv_s = (uint32_t)__cvta_generic_to_shared(recv);
  const uint32_t stage_s = (uint32_t)__cvta_generic_to_shared(smem + C::STAGE_OFF);
  const uint32_t mb_s = (uint32_t)__cvta_generic_to_shared(smem + C::MB_OFF);  // BWD_SYNC 2: mbar[2] (recv buffer)
  uint32_t dst[MT];
  bool own[MT];  // BWD_SYNC 2: the m-tile is this block's (straight into recv, which is double-buffered)
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m0 = (mg * MT + mt) * 16, owner = FRNN_CLUSTER_BWD_ABLATE == 1 ? rank : m0 / DHB;
    own[mt] = owner == rank;
    if (C::BULK)
      dst[mt] = own[mt] ? recv_s + (uint32_t)((((rank * C::BKS + kk) * BT) * RP + m0 % DHB) * 4)
                        : stage_s + (uint32_t)((((owner * C::BKS + kk) * BT) * RP + m0 % DHB) * 4);
    else
      dst[mt] = map_rank(recv_s + (uint32_t)((((rank * C::BKS + kk) * BT) * RP + m0 % DHB) * 4), (uint32_t)owner);
  }
  // BWD_SYNC 2: recv buffer b's mbarrier completes a phase when thread 0 has armed it (one arrival
  // expecting the CS - 1 peers' chunks) and those bytes have landed; both armed here for their first
  // fill, each again by thread 0 right after it waited for a fill (the next fill needs this block's
  // partials of the step after, sent after every thread's wait)
  const FillBarriers fills{mb_s, (uint32_t)((CS - 1) * C::CHUNK * 4)};
  if (C::BULK) fills.init(tid);
  TIn* dgxp = static_cast<TIn*>(p.dgx);
  cluster_arrive();  // every block of the cluster runs (its recv exists) before a peer stores into it
  cluster_wait();
  if (FRNN_CLUSTER_BWD_PREFETCH && T > 0) load_inputs(t_first);
  // phases: 0 copy-read wait and the peers' partials, 1 cell, 2 next inputs issued and barrier,
  // 3 MMAs, 4 partial-sum stores, 5 send (proxy fence, barrier, bulk copies)
  StepClock<FRNN_CLUSTER_PROFILE != 0, 6> clk;
  clk.start();

#pragma unroll 1
  for (int step = 0; step < T; ++step) {
    const int t = t_first + dstep * step;
    if (!FRNN_CLUSTER_BWD_PREFETCH) load_inputs(t);
    if (C::BULK) {
      if (tid < CS - 1) bulk_wait_read();  // the copies of step - 1 read the staging area (rewritten after the next block barrier)
      if (step > 0) {  // the peers' partials of step - 1 are in recv[(step - 1) & 1] (its fill (step - 1) / 2)
        fills.wait_and_rearm((step - 1) & 1, (step - 1) >> 1, tid);
      }
    }
    clk.mark(0);
#pragma unroll
    for (int k = 0; k < PPT; ++k) {
      if (PPT * C::THREADS != NP && tid + k * C::THREADS >= NP) break;
      const int n = pn[k], u = pu[k];
      const float2 rec = step > 0 ? dh_rec(k, (step - 1) & 1) : make_float2(0.0f, 0.0f);
      float dg[2][G], dr[2][G];
      in.template cell<M>(k, rec, ds[k], dg, dr);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int g = 0; g < G; ++g) dr[j][g] = pok[k] ? dr[j][g] : 0.0f;  // past the batch: nothing into X
      }
      if (pok[k]) {
        const size_t go = (size_t)t * GBND + ((size_t)(bt0 + n) * NH + nh) * G * DH + u0 + u;
#pragma unroll
        for (int g = 0; g < G; ++g) {
          *reinterpret_cast<uint32_t*>(dgxp + go + (size_t)g * DH) = fused::pack2(In<TIn>::store(dg[0][g]), In<TIn>::store(dg[1][g]));
          *reinterpret_cast<float2*>(p.drhb + go + (size_t)g * DH) = make_float2(dr[0][g], dr[1][g]);
        }
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
        Op pa[HP], pb[HP];
        split<Op, HP>(dr[0][g], pa);
        split<Op, HP>(dr[1][g], pb);
#pragma unroll
        for (int hp = 0; hp < HP; ++hp)
          *reinterpret_cast<uint32_t*>(xs + (hp * BT + n) * XK + g * DHB + u) = fused::pack2(pa[hp], pb[hp]);
      }
    }
    clk.mark(1);
    if (FRNN_CLUSTER_BWD_PREFETCH && step + 1 < T) load_inputs(t + dstep);  // in flight during the MMAs and the barrier
    __syncthreads();  // X complete
    clk.mark(2);
    float acc[MT][NT][4];
    if (FRNN_CLUSTER_BWD_ABLATE == 2) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < NT; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[mt][i][r] = 0.0f;
    } else {
      gemm.template run<BT, XK>(a_smem, xs, 0, warp, lane, acc, [] {});
    }
    clk.mark(3);
    const uint32_t boff = (uint32_t)((step & 1) * NSLOT * BT * RP * 4);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < NT; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int n = i * 8 + 2 * t4 + (r & 1), ul = gq + 8 * (r >> 1);
          if (C::BULK) {
            const uint32_t a = dst[mt] + (own[mt] ? boff : 0u) + (uint32_t)((n * RP + ul) * 4);
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(a), "r"(__float_as_uint(acc[mt][i][r])) : "memory");
          } else {
            st_cluster(dst[mt] + boff + (uint32_t)((n * RP + ul) * 4), __float_as_uint(acc[mt][i][r]));
          }
        }
    clk.mark(4);
    if (C::BULK) {
      // each peer's chunk of the staging area into its recv[step & 1] at slots rank * BKS .., by
      // lanes 0 .. CS - 2 of warp 0, after every warp's writes are visible to the copy engine
      send_to_peers<CS>(true, tid, rank, (uint32_t)(C::CHUNK * 4), fills, step & 1,
                        [&](uint32_t d) { return stage_s + d * (uint32_t)(C::CHUNK * 4); },
                        [&](uint32_t) { return recv_s + boff + (uint32_t)(rank * C::BKS * BT * RP * 4); });
    } else if (FRNN_CLUSTER_BWD_ABLATE == 3) {
      __syncthreads();
    } else {
      cluster_arrive();  // the partials are in their owners (release), and this block is done with X and recv[step - 1]
      cluster_wait();
    }
    clk.mark(5);
  }
  if (blockIdx.x < CS && blockIdx.y == 0) clk.report("bwd", rank, warp, lane, T);
  if (FRNN_CLUSTER_BWD_ABLATE == 3) {  // no block leaves while a peer may still store into it
    cluster_arrive();
    cluster_wait();
  }
  if (C::BULK) {
    if (tid < CS - 1) bulk_wait_read();  // no copy still reads this block's shared memory
    if (T > 0) fills.wait((T - 1) & 1, (T - 1) >> 1);  // the last step's partials
  }
#pragma unroll
  for (int k = 0; k < PPT; ++k) {  // ds0 = ds, with the dh_rec of the state before the first step on h
    if (!pok[k]) continue;
    const float2 rec = T > 0 ? dh_rec(k, (T - 1) & 1) : make_float2(0.0f, 0.0f);
    ds[k][0][0] += rec.x;
    ds[k][1][0] += rec.y;
  }
  store_pair_states<TIn, PPT, S>(static_cast<TIn*>(p.ds0), DH, NH, nh, BND, bt0, u0, pn, pu, pok, ds);
#else
  __trap();  // thread-block clusters need sm_90
#endif
}

}  // namespace fused_cluster
}  // namespace flashrnn
