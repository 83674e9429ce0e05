// fused_cluster: the R of one head split by hidden units over the CS blocks of a thread-block
// cluster (sm_90+), one persistent cluster per (head, batch tile) for all T steps. Plain CUDA C++
// (no torch headers). Layouts as flashrnn_compile/reference.py and fused_block.cuh:
//   gx [T, B, NH, G, DH] T_IN   R [NH, G, DH, DH] T_IN (R[n, g, out, in])   b [NH, G, DH] T_IN
//   s0, sT [S, B, NH, DH] T_IN  h [T, B, NH, DH] T_IN
//   states_in [T, S, B, NH, DH] fp32, rhb [T, B, NH, G, DH] fp32 (saved by the forward when not
//   nullptr: what the alternating backward reads)
//
// Work split. Block `rank` of a cluster owns the DHB = DH / CS units rank * DHB .. + DHB - 1 (all
// G gates of them: G * DHB rows of R). Its warps are UGB = DHB / 16 unit groups times KS = WARPS /
// UGB K slices: warp (ug, ks) computes the G gate tiles of its 16 units over k-tiles ks * KTW ..
// + KTW - 1 (KTW = DH / 16 / KS) with m16n8k16 MMAs (fused_block.cuh WarpGemm: its R_REG_TILES
// A fragments in registers, the rest in shared memory, loaded once). Per step:
//   1. MMAs on h_{t-1} [BT][DH] (shared memory, all DH units) -> partial sums of the K slice, to
//      shared memory red[KS][G][BT][DHB + 4] fp32; cp.async of gx NS - 1 steps ahead was issued first
//   2. __syncthreads; each thread takes unit pairs (u, u + 1) of one batch column: sums the KS
//      partials, + b, + gx (ring stage), saves states_in / rhb, runs the cell (fp32 states stay in
//      its registers for all T steps), stores h_t to global, and stages the pair (one 32-bit word
//      per h piece) in the block's own slice of the next h buffer
//   3. __syncthreads; the exchange (distributed shared memory): THREADS / CS threads per receiving
//      block copy the staged slice into that block's next h buffer in 16-byte st.shared::cluster
//      stores, then each arrives (release, cluster scope) on the receiver's mbarrier of (buffer,
//      this block). Before its MMAs of the next step a warp waits (acquire) only on the mbarriers of
//      the blocks whose units its K slice reads: no cluster-wide barrier per step (FRNN_CLUSTER_SYNC
//      = 0 instead ends each step with barrier.cluster.arrive.release / wait.acquire).
// Why the double-buffered h needs no other barrier: block P writes this block's buffer X (read at
// step s + 1) in its exchange of step s, after its own MMAs of step s, which waited for this
// block's h of step s - 1, produced after this block's MMAs of step s - 1 had finished reading X.
// An mbarrier phase cannot complete twice before this block's warps saw it: P's next arrival on it
// (step s + 2) needs this block's h of step s + 1, produced after all of its waits of step s + 1.
// The last step sends nothing, so every store into a block's shared memory has been waited for
// before the block exits.
// Columns past the batch compute on zeros and store nothing. A cluster barrier before the loop
// makes every block's buffers and mbarriers initialised before a peer writes them.
//
// Precision as fused_block: bf16 / fp16 MMA operands, fp32 accumulate, h rounded to HP pieces of the
// input dtype (Config::HP: one for every cell), fp32 states and cell math (Precision<Cell>::MathFor).
//
// Template parameters = the planner's fused_cluster variables (csrc/fused/fused_cluster.cint):
//   CS = CLUSTER_SIZE, WARPS (a multiple of DHB / 16 whose quotient KS divides DH / 16), BT =
//   BATCH_TILE, RREG = R_REG_TILES (A fragments each warp keeps in registers).
#pragma once

#include "fused/fused_block.cuh"

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
// whose units its K slice reads; 0: one cluster barrier per step
#ifndef FRNN_CLUSTER_SYNC
#define FRNN_CLUSTER_SYNC 0
#endif
// timing probes only (results are wrong): 1 no stores to peers, 2 a block barrier instead of the
// cluster barrier, 3 no MMAs; 0 the kernel
#ifndef FRNN_CLUSTER_ABLATE
#define FRNN_CLUSTER_ABLATE 0
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

// One thread's share of streaming ROWS rows x CHUNKS 16-byte chunks of gx into a ring stage each
// step: shared addresses (stage 0) and global addresses (first step) fixed before the time loop;
// a row past the batch copies nothing (its stage rows stay zero).
template <int THREADS, int ROWS, int CHUNKS>
struct StageCopy {
  static constexpr int TOTAL = ROWS * CHUNKS, CH = (TOTAL + THREADS - 1) / THREADS;
  uint32_t dst[CH];
  const unsigned char* src[CH];  // nullptr: a slot past the tile or a row past the batch
  // row r lands at dst_base + r * dst_row; src_of(r): its global address at the first step, or nullptr
  template <typename F>
  __device__ void init(uint32_t dst_base, int dst_row, F src_of, int tid) {
#pragma unroll
    for (int k = 0; k < CH; ++k) {
      const int i = k * THREADS + tid, r = i / CHUNKS, c = i % CHUNKS;
      const unsigned char* row = i < TOTAL ? src_of(r) : nullptr;
      dst[k] = dst_base + r * dst_row + c * 16;
      src[k] = row != nullptr ? row + c * 16 : nullptr;
    }
  }
  __device__ void issue(uint32_t stage_off, long long t_off) const {
#pragma unroll
    for (int k = 0; k < CH; ++k)
      if (src[k] != nullptr) fused::cp_async16(dst[k] + stage_off, src[k] + t_off);
  }
};

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
  static constexpr int DHB = DH / CS, UGB = DHB / 16, KS = WARPS / (UGB > 0 ? UGB : 1);
  static constexpr int KT = DH / 16, KTW = KT / (KS > 0 ? KS : 1), NT = BT / 8;
  static_assert(DH % CS == 0 && DHB % 16 == 0, "each block owns a multiple of 16 units");
  static_assert(BT % 8 == 0, "the batch tile is a multiple of the MMA N side (8)");
  static_assert(WARPS % UGB == 0 && KS >= 1 && KT % KS == 0, "WARPS = DHB / 16 unit groups x KS K slices, KS | DH / 16");
  static_assert(CS >= 1 && CS <= 16, "at most 16 blocks per cluster");
  using Gemm = WarpGemm<Op, G, KTW, NT, HP, RREG, WARPS>;
  static constexpr int NP = BT * DHB / 2;               // unit pairs (u, u + 1) x batch columns
  static constexpr int PPT = (NP + THREADS - 1) / THREADS;  // pairs per thread
  static constexpr int NS = 4;                           // gx ring stages (3 steps ahead)
  // shared-memory rows (elements), padded: conflict-free B fragments / partial-sum stores
  static constexpr int XF = DH + 8;    // h row (Op)
  static constexpr int RP = DHB + 4;   // red row (fp32)
  __host__ __device__ static constexpr size_t align16(size_t x) { return (x + 15) / 16 * 16; }
  // a_smem | xs [2][HP][BT][XF] Op | red [KS][G][BT][RP] f32 | NS stages of gx [BT][G][DHB] Op
  static constexpr size_t A_BYTES = align16(Gemm::smem_a_bytes());
  static constexpr size_t X_BYTES = align16((size_t)2 * HP * BT * XF * sizeof(Op));
  static constexpr size_t RED_BYTES = align16((size_t)KS * G * BT * RP * 4);
  static constexpr size_t STAGE = align16((size_t)BT * G * DHB * sizeof(Op));
  static constexpr size_t X_OFF = A_BYTES, RED_OFF = X_OFF + X_BYTES, RING_OFF = RED_OFF + RED_BYTES;
  // SYNC 1: mbarriers [2][CS] (h buffer, source block) after the ring
  static constexpr size_t MB_OFF = RING_OFF + NS * STAGE;
  static constexpr int TPP = THREADS / CS;  // SYNC 1: threads sending to one peer (and arriving on its mbarrier)
  __host__ __device__ static constexpr size_t smem() { return MB_OFF + (FRNN_CLUSTER_SYNC ? 2 * CS * 8 : 0); }
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
  Op* xs = reinterpret_cast<Op*>(smem + C::X_OFF);         // [2][HP][BT][XF]
  float* red = reinterpret_cast<float*>(smem + C::RED_OFF);  // [KS][G][BT][RP]
  unsigned char* ring = smem + C::RING_OFF;                // NS x gx [BT][G][DHB]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, t4 = lane & 3;
  const int ug = warp % C::UGB, ks = warp / C::UGB;
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
  for (int i = tid; i < 2 * HP * BT * XF; i += C::THREADS) xs[i] = to_op(0.0f, (Op*)nullptr);
  __syncthreads();  // zeros before the cp.async copies and h0 land
  auto prefetch = [&](int step) {  // the gx stage of `step` (if any), one commit group always
    if (step < T) gxc.issue((uint32_t)((step % NS) * C::STAGE), (long long)(t_first + dstep * step) * gx_t);
    cp_async_commit();
  };
#pragma unroll 1
  for (int s = 0; s < NS - 1; ++s) prefetch(s);

  typename C::Gemm gemm;  // tile g = gate g of the warp's 16 units, k-tiles ks * KTW ..
  gemm.load([&](int g, int r, int k) { return In<TIn>::load(R[((size_t)g * DH + u0 + ug * 16 + r) * DH + k]); },
            a_smem, warp, lane, ks * C::KTW);

  // h0 of all DH units into buffer 0 (every block reads all of s0[0] of its batch tile itself)
  const TIn* s0 = static_cast<const TIn*>(p.s0);
  for (int i = tid; i < nb * DH; i += C::THREADS) {
    const int n = i / DH, u = i % DH;
    Op pc[HP];
    split<Op, HP>(In<TIn>::load(s0[((size_t)(bt0 + n) * NH + nh) * DH + u]), pc);
#pragma unroll
    for (int hp = 0; hp < HP; ++hp) xs[(hp * BT + n) * XF + u] = pc[hp];
  }

  // the thread's unit pairs: pair q = tid + k * THREADS -> column n = q / (DHB / 2), unit u = 2 (q % (DHB / 2))
  float st[PPT][2][S], bb[PPT][2][G];
  int pn[PPT], pu[PPT];
  bool pok[PPT];  // a pair of this block and a column inside the batch
#pragma unroll
  for (int k = 0; k < PPT; ++k) {
    const int q = tid + k * C::THREADS;
    const bool in = q < NP;
    pn[k] = in ? q / (DHB / 2) : 0;
    pu[k] = in ? 2 * (q % (DHB / 2)) : 0;
    pok[k] = in && pn[k] < nb;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int g = 0; g < G; ++g) bb[k][j][g] = In<TIn>::load(bias[g * DH + u0 + pu[k] + j]);
#pragma unroll
      for (int s = 0; s < S; ++s)
        st[k][j][s] = pok[k] ? In<TIn>::load(s0[(size_t)s * BND + ((size_t)(bt0 + pn[k]) * NH + nh) * DH + u0 + pu[k] + j]) : 0.0f;
    }
  }
  // shared-window address of the thread's h words in buffer 0 (piece 0); peers: mapa of it
  const uint32_t xs_s = (uint32_t)__cvta_generic_to_shared(xs);
  const uint32_t mb_s = (uint32_t)__cvta_generic_to_shared(smem + C::MB_OFF);  // SYNC 1: mbar[2][CS], 8 bytes each
  if (FRNN_CLUSTER_SYNC && tid == 0) {
    for (int i = 0; i < 2 * CS; ++i) mbar_init(mb_s + 8 * i, C::TPP);
    mbar_init_fence();
  }
  // SYNC 1: the k-slice's source blocks (whose units its k-tiles read)
  const int src0 = ks * C::KTW * 16 / DHB, src1 = ((ks + 1) * C::KTW * 16 - 1) / DHB;
  TIn* hout = static_cast<TIn*>(p.h);
  cluster_arrive();  // every block's buffers (and mbarriers) are initialised before any peer writes them
  cluster_wait();

#pragma unroll 1
  for (int step = 0; step < T; ++step) {
    const int t = t_first + dstep * step, cur = step & 1;
    prefetch(step + NS - 1);  // into the stage step - 1 used (every thread is past it)
    {
      float acc[G][NT][4];
      if (FRNN_CLUSTER_ABLATE == 3) {
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
          for (int i = 0; i < NT; ++i)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[g][i][r] = 0.0f;
      } else {
        if (FRNN_CLUSTER_SYNC && FRNN_CLUSTER_ABLATE == 0 && step > 0)  // h_{t-1} of the k-slice's sources has landed (fill (step - 1) / 2 of buffer cur)
          for (int src = src0; src <= src1; ++src) mbar_wait(mb_s + 8 * (cur * CS + src), (uint32_t)((step - 1) >> 1) & 1u);
        gemm.template run<BT, XF>(a_smem, xs + cur * HP * BT * XF, 0, warp, lane, acc, [] {});
      }
      // partial sums of the warp's K slice: rows gq, gq + 8 of unit group ug, columns 2 t4, 2 t4 + 1
#pragma unroll
      for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < NT; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int n = i * 8 + 2 * t4 + (r & 1), u = ug * 16 + gq + 8 * (r >> 1);
            red[((ks * G + g) * BT + n) * RP + u] = acc[g][i][r];
          }
    }
    cp_async_wait<NS - 1>();  // this thread's copies of stage `step` landed; the barrier shows them to all
    __syncthreads();
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
        const int off = ((nxt * HP + hp) * BT + n) * XF + u0 + u;
        if (FRNN_CLUSTER_VEC || FRNN_CLUSTER_ABLATE == 1) {
          *reinterpret_cast<uint32_t*>(xs + off) = word;  // own buffer; the copy below sends it
        } else {
          const uint32_t local = xs_s + (uint32_t)(off * sizeof(Op));
#pragma unroll
          for (int c = 0; c < CS; ++c) st_cluster(map_rank(local, (uint32_t)((rank + 1 + c) % CS)), word);
        }
      }
    }
    if (FRNN_CLUSTER_SYNC && FRNN_CLUSTER_ABLATE == 0) {
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
    if (FRNN_CLUSTER_SYNC && FRNN_CLUSTER_ABLATE == 0) {
      // no cluster barrier: receivers wait on their mbarriers
    } else if (FRNN_CLUSTER_ABLATE == 2) {
      __syncthreads();
    } else {
      cluster_arrive();  // h_t is in every block (release), and this block is done with red and the ring stage
      cluster_wait();
    }
  }
  if (FRNN_CLUSTER_ABLATE == 2) {  // no block leaves while a peer may still write its buffers
    cluster_arrive();
    cluster_wait();
  }
  cp_async_wait<0>();
  TIn* sT = static_cast<TIn*>(p.sT);
#pragma unroll
  for (int k = 0; k < PPT; ++k)
    if (pok[k])
#pragma unroll
      for (int s = 0; s < S; ++s) {
        TIn o[2] = {In<TIn>::store(st[k][0][s]), In<TIn>::store(st[k][1][s])};
        *reinterpret_cast<uint32_t*>(sT + (size_t)s * BND + ((size_t)(bt0 + pn[k]) * NH + nh) * DH + u0 + pu[k]) =
            fused::pack2(o[0], o[1]);
      }
#else
  __trap();  // thread-block clusters need sm_90 (the host entry refuses other devices first)
#endif
}

}  // namespace fused_cluster
}  // namespace flashrnn
