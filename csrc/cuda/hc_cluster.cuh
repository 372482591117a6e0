// The CLUSTER plan of mhc_pre, mhc_fused_post_pre and hc_head (csrc/core/plan.h, sm_90+).
// Included by hc_main.cuh after the device code it shares (Shape, gates, mma, post_vec8).
//
// Why: the other plans read the residual twice at prefill sizes, once for the K reduction and
// once for the weighted stream sum after the gates are known (18H bytes per token for pre at
// n = 4 instead of 10H). Here one thread-block cluster owns a block of BT = 16 tokens and each
// of its CS CTAs a slice of the hidden columns (all n streams), which it copies from HBM into
// shared memory once (cp.async, in stages, the tensor-core GEMM consuming each stage as it
// lands):
//  1. every CTA reduces its slice: per-warp partial dots (bf16 hi/lo mma.sync, common.cuh) and
//     sums of squares, added in warp order;
//  2. cluster barrier; CTA r then owns tokens j = r, r + CS, ...: it adds the CS partials of
//     its tokens in rank order through distributed shared memory, computes their pre gates and
//     writes them into every CTA's gate table; after the next cluster barrier each CTA has the
//     gates of all BT tokens. The owner runs the 20-round Sinkhorn of its tokens (post and comb
//     outputs) between arriving at that barrier and waiting on it, off the critical path;
//  3. each CTA writes the weighted stream sum of its slice from shared memory.
// The fused op also copies x, applies mhc_post in shared memory (post_vec8, the function behind
// mhc_post, so residual_out is bit-identical to it), stores residual_out and runs the same
// pipeline on the new residual: x and the residual are read once, residual_out written once.
// Every sum has a fixed order that depends on the plan only. Bank conflicts: a token row of the
// activations is padded so that rows g and g + 1 of an mma fragment load fall in different
// banks. Geometry (cluster size, K groups per CTA, BT, shared memory) is cluster_shape() of
// csrc/core/plan.cpp, shared with the planner.
// hc_head at n = 4, H = 4096 / 7168 runs hc_head_persist_kernel instead (below): persistent
// clusters that walk the token blocks with the next blocks' copies in flight, one cluster
// barrier per block and the warps split between the reduction and the stream sum, with the
// same sums in the same order.
#pragma once

#include <map>
#include <mutex>

namespace mhc::cuda {

constexpr int kClusterWarps = 8;  // must match kClusterWarps in csrc/core/plan.cpp
constexpr int kClusterMax = 16;   // largest cluster (non-portable on sm_90)

struct ClusterParams {
  const uint16_t* res;     // [T, N, H] residual (pre, head) or the fused op's input residual
  const uint16_t* x;       // fused: [T, H]
  const float* post_in;    // fused: [T, N]
  const float* comb_in;    // fused: [T, N, N]
  uint16_t* res_out;       // fused: [T, N, H]
  const float* fn;         // [M, N * H]
  const float* scale;
  const float* base;
  float* post_out;         // pre / fused: [T, N]
  float* comb_out;         // pre / fused: [T, N, N]
  uint16_t* out;           // [T, H]
  int64_t T;
  int H, G, gpc, CS, stages;  // hidden, K groups, groups per CTA, cluster size, copy stages
  float rms_eps, pre_eps, sinkhorn_eps, post_mult;
  int64_t repeat;
};

// 16-token mma tiles per cluster (plan.cpp's block_tokens). One tile: a CTA then needs ~75 KB
// at H = 7168 and two fit on an SM, whose tails overlap; two tiles measured slower (NOTES v4).
constexpr int kClusterTiles = 1;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release;" ::: "memory");
}
// Arrival that publishes nothing: unlike the release form, it does not wait until this
// thread's earlier global stores are visible cluster-wide.
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
}
__device__ __forceinline__ int cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return static_cast<int>(r);
}
// Shared-memory address of *p (this CTA's) in CTA `rank` of the cluster.
__device__ __forceinline__ uint32_t cluster_addr(const void* p, int rank) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
  return r;
}
__device__ __forceinline__ float ld_cluster(uint32_t addr) {
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void st_cluster(uint32_t addr, float v) {
  asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(addr), "f"(v) : "memory");
}
#endif

// cp.async.wait_group takes an immediate: this thread's groups still pending <= `pending`.
__device__ __forceinline__ void cp_async_wait_upto(int pending) {
  switch (pending) {
    case 3: cp_async_wait<3>(); break;
    case 2: cp_async_wait<2>(); break;
    case 1: cp_async_wait<1>(); break;
    default: cp_async_wait<0>(); break;
  }
}
constexpr int kClusterMaxStages = 4;

// Weighted stream sum (SPEC §2.1 step 8, in stream order) of a cluster CTA's slice: tokens
// 0 .. live - 1 of the block from t0, vectors 0 .. nv - 1 of each stream row (a token's row is
// RS uint4 in `data`, a stream's SV) with their gates [BT][N], into columns h0 + 8 v of out;
// by threads th of nth.
template <int N>
__device__ __forceinline__ void cluster_stream_sum(const uint4* data, const float* gates,
                                                   uint16_t* out, int64_t t0, int live, int nv,
                                                   int SV, int RS, int H, int h0, int th,
                                                   int nth) {
  for (int idx = th; idx < live * nv; idx += nth) {
    const int t = idx / nv, v = idx % nv;
    uint4 r[N];
    float pre[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      r[i] = data[t * RS + i * SV + v];
      pre[i] = gates[t * N + i];
    }
    stg16(out + (t0 + t) * H + h0 + 8 * v, combine8<N>(r, pre));
  }
}

// grid (CS * token blocks), cluster (CS, 1, 1): CTA blockIdx.x is rank blockIdx.x % CS of token
// block blockIdx.x / CS. kClusterWarps warps. Dynamic shared memory, in
// this order: activations [BT][RS] uint4, fused x [BT][SV] uint4 and post/comb [BT][NC],
// per-warp partials [W][BT][MP], reduced dots of the owned tokens [BT][MP], gates [BT][N].
template <int N, Mode MODE>
__global__ void __launch_bounds__(kClusterWarps * 32, 2) hc_cluster_kernel(const ClusterParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, NT = Sh::NT, MP = Sh::MP, NC = Sh::NC;
  constexpr int TT = kClusterTiles;
  constexpr int BT = 16 * TT;
  constexpr int W = kClusterWarps;
  constexpr bool kFused = MODE == Mode::FUSED;
  extern __shared__ float4 smem_raw[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int rank = cluster_rank();
  const int CS = p.CS, H = p.H;
  const int64_t K = static_cast<int64_t>(N) * H;
  const int64_t T = p.T;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x / CS) * BT;
  const int gb = rank * p.gpc;
  const int ng = max(0, min(p.G, gb + p.gpc) - gb);  // K groups of this CTA
  const int h0 = gb * kGroupCols;
  const int SV = 4 * p.gpc;                           // 8-column vectors per stream row
  const int nv = h0 < H ? min(SV, (H - h0) / 8) : 0;  // of them inside H (H % 8 == 0)
  const int RS = N * SV + ((N * p.gpc) % 2 == 0 ? 4 : 0);

  uint4* data = reinterpret_cast<uint4*>(smem_raw);
  uint4* xs = data + BT * RS;
  float* coef = reinterpret_cast<float*>(xs + (kFused ? BT * SV : 0));
  float* red = coef + (kFused ? BT * NC : 0);
  float* dsum = red + W * BT * MP;
  float* gates = dsum + BT * MP;

  // fn of this CTA's slice into L2 while the previous kernel finishes (read-only weights).
  for (int idx = tid; idx < M * N * ng; idx += blockDim.x) {
    const int q = idx % ng, rest = idx / ng;
    prefetch_l2(p.fn + static_cast<int64_t>(rest / N) * K + static_cast<int64_t>(rest % N) * H +
                h0 + q * kGroupCols);
  }
  pdl_wait();
  pdl_trigger();

  if constexpr (kFused) load_block_coefs<N, NC>(coef, p.post_in, p.comb_in, t0, T, BT);

  // All copies up front, one commit group per stage of K groups (tokens past T and columns
  // past H are zero-filled, so they add nothing to the dots).
  const int stages = p.stages;
  const int gps = (p.gpc + stages - 1) / stages;
  constexpr int kRows = kFused ? N + 1 : N;  // fused: row N of a token is x
  for (int s = 0; s < stages; ++s) {
    const int q0 = s * gps, q1 = min(ng, q0 + gps);
    const int vcount = q1 > q0 ? 4 * (q1 - q0) : 0;
    for (int idx = tid; idx < BT * kRows * vcount; idx += blockDim.x) {
      const int v = 4 * q0 + idx % vcount, rest = idx / vcount;
      const int i = rest % kRows, t = rest / kRows;
      const int64_t tok = t0 + t;
      const bool ok = tok < T && v < nv;
      if (kFused && i == N) {
        cp_async16(xs + t * SV + v, ok ? p.x + tok * H + h0 + 8 * v : p.x, ok);
      } else {
        cp_async16(data + t * RS + i * SV + v, ok ? p.res + (tok * N + i) * H + h0 + 8 * v : p.res,
                   ok);
      }
    }
    cp_async_commit();
  }

  float acc[TT][NT][4] = {};  // per tile, 8-row block: the mma accumulators
  float ss[TT][2] = {};       // per tile: sums of squares of rows g and g + 8
  // Units (group q, stream i), u = q * N + i, go to warp u % W; fn one unit ahead.
  const int units = ng * N;
  const auto load_fn = [&](int uu, float4 (&fr)[NT][2]) {
    load_fn_unit<NT, M>(p.fn, K, H, h0 + (uu / N) * kGroupCols + 8 * c, uu % N, g, fr);
  };
  float4 fr[NT][2];
  int u = warp;
  if (u < units) load_fn(u, fr);
  for (int s = 0; s < stages; ++s) {
    cp_async_wait_upto(stages - 1 - s);
    __syncthreads();
    const int q0 = s * gps, q1 = min(ng, q0 + gps);
    if constexpr (kFused) {
      // mhc_post of the stage's columns, in place; residual_out stored from here.
      const int vcount = q1 > q0 ? 4 * (q1 - q0) : 0;
      for (int idx = tid; idx < BT * vcount; idx += blockDim.x) {
        const int t = idx / vcount, v = 4 * q0 + idx % vcount;
        const int64_t tok = t0 + t;
        if (tok >= T || v >= nv) continue;
        uint4 old[N], nw[N];
#pragma unroll
        for (int i = 0; i < N; ++i) old[i] = data[t * RS + i * SV + v];
        post_vec8_coefs<N>(coef + t * NC, xs[t * SV + v], old, nw);
#pragma unroll
        for (int i = 0; i < N; ++i) {
          data[t * RS + i * SV + v] = nw[i];
          stg16(p.res_out + (tok * N + i) * H + h0 + 8 * v, nw[i]);
        }
      }
      __syncthreads();
    }
    for (const int u_end = q1 * N; u < u_end; u += W) {
      float4 fr_next[NT][2];
      if (u + W < units) load_fn(u + W, fr_next);
      FnFrag<kParts> f[NT];
      fn_frags<NT>(fr, f);
      const uint4* col = data + (u % N) * SV + 4 * (u / N) + c;
#pragma unroll
      for (int tt = 0; tt < TT; ++tt) {
        if (t0 + 16 * tt >= T) continue;
        mma_tile<NT>(acc[tt], ss[tt], col[(16 * tt + g) * RS], col[(16 * tt + g + 8) * RS], f);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        fr[nt][0] = fr_next[nt][0];
        fr[nt][1] = fr_next[nt][1];
      }
    }
  }

  // This CTA's partial: warps' slices (every warp writes every row, zeros where it had no
  // unit), then their sum in warp order into slice 0.
  store_warp_partial<TT, NT, M, MP>(red + warp * BT * MP, acc, ss, BT);
  __syncthreads();
  add_warp_partials<M, MP, W>(red, BT, BT, W,
                              [&](int row, int m, float a) { red[row * MP + m] = a; });
  cluster_arrive();  // every CTA's partial is complete and visible to the cluster
  cluster_wait();

  // Owned tokens j = rank + k * CS: the CS partials in rank order.
  const int owned = rank < BT ? (BT - rank + CS - 1) / CS : 0;
  for (int idx = tid; idx < owned * (M + 1); idx += blockDim.x) {
    const int k = idx / (M + 1), m = idx % (M + 1);
    const float* src = red + (rank + k * CS) * MP + m;
    float v[kClusterMax];
#pragma unroll
    for (int r = 0; r < kClusterMax; ++r) v[r] = r < CS ? ld_cluster(cluster_addr(src, r)) : 0.f;
    float a = v[0];
#pragma unroll
    for (int r = 1; r < kClusterMax; ++r)
      if (r < CS) a += v[r];
    dsum[k * MP + m] = a;
  }
  __syncthreads();
  const float inv_k = 1.0f / static_cast<float>(K);
  const bool owner = warp == W - 1 && lane < owned;  // one lane per owned token
  if (owner) {
    const int j = rank + lane * CS;
    const float* d = dsum + lane * MP;
    float pre[N];
    head_gates<N>(d, d[M], inv_k, p.base, p.scale[0], p.rms_eps, p.pre_eps, pre);
    for (int r = 0; r < CS; ++r)
#pragma unroll
      for (int i = 0; i < N; ++i) st_cluster(cluster_addr(gates + j * N + i, r), pre[i]);
  }
  cluster_arrive();  // gates written everywhere; no remote access follows this barrier
  if constexpr (MODE != Mode::HEAD) {
    if (owner && t0 + rank + lane * CS < T) {
      const GateParams gp =
          gate_params(p.scale, p.rms_eps, p.pre_eps, p.sinkhorn_eps, p.post_mult, p.repeat);
      write_gates<N>(dsum + lane * MP, inv_k, p.base, gp, t0 + rank + lane * CS, p.post_out,
                     p.comb_out);
    }
  }
  cluster_wait();

  cluster_stream_sum<N>(data, gates, p.out, t0, T - t0 < BT ? static_cast<int>(T - t0) : BT, nv,
                        SV, RS, H, h0, tid, blockDim.x);
#endif
}

// ---------------------------------------------------------------------------------------------
// The persistent CLUSTER kernel of hc_head at the specialised widths (n = 4, H = 4096 / 7168).
// Same cluster geometry, units, fragments and sums as hc_cluster_kernel (so the two give the
// same bits), but each cluster walks token blocks blk = cluster, cluster + clusters, ... and
// keeps the serial part of a block short, since that part (not HBM) bounds it (NOTES.md, v9,
// v11):
//  * NB shared-memory buffers filled with cp.async, NB blocks ahead; the writers wait for
//    their copies (cp.async.wait_group) and hand a landed buffer to the reducers through a
//    named barrier per buffer (no mbarriers: compute-sanitizer's racecheck and synccheck did
//    not track them, NOTES.md v11), one block ahead of the stream sum (two with ROT and 3
//    buffers: the rotated reducers take block il + 2 right after block il's gates; one ahead
//    there serialised their mma behind the stream sum, 153 against 141 us at T = 4096,
//    NOTES.md v12), and the block after the newest one in flight pulled into L2 by bulk
//    prefetches, so that the writers' wait for their copies is an L2 wait (v14);
//  * one cluster barrier per block: every CTA pushes its partial sums (M dots and the sum of
//    squares of each token) into a slot of every CTA's receive buffer (one slot per block
//    parity), then each CTA adds the CS partials of all its tokens in rank order itself and
//    computes their gates, with no remote loads and no second barrier;
//  * the warps in two roles, so that a block's weighted stream sum runs beside the next
//    block's reduction instead of after it: reducer warps 0 .. W/2 - 1 hold the fn fragments
//    in registers (hc_head: n rows, one 8-row block per unit; warp w those of the units that
//    warps w and w + W/2 own in hc_cluster_kernel, in two accumulators, so every sum keeps
//    that kernel's order), wait for a block's copies, run its mma, push the CTA's partial,
//    take the cluster barrier and write the block's gates (double-buffered); writer warps
//    W/2 .. W - 1 take the gates, write the stream sum and refill the buffer with the block NB
//    ahead (warp W/2 + w copies the token-stream rows 16w .. 16w + 15, 512 contiguous bytes
//    per warp instruction). Writers arrive at the next block's cluster barrier as soon as they
//    hold this block's gates, so that barrier waits for the reducers only;
//  * with ROT (H = 7168) the reducers run block il + 1's mma and push between arriving at
//    block il's barrier and waiting on it, so the barrier's latency hides behind that work
//    (a third receive slot: block il + 1's pushes may land while a CTA still reads block
//    il - 1's partials).
// Dynamic shared memory: activations [NB][BT][RS] uint4, receive [2 or 3][CS][BT][MP],
// per-warp partials [W][BT][MP], gates [2][BT][N] floats.
template <int N, int HS>
struct HeadPersistShape {
  static constexpr int G = HS / kGroupCols;                          // K groups
  static constexpr int GPC = (G + kClusterMax - 1) / kClusterMax;    // groups per CTA
  static constexpr int CS = (G + GPC - 1) / GPC;                     // CTAs per cluster
  static constexpr int SV = 4 * GPC;                                 // vectors per stream row
  static constexpr int RS = N * SV + ((N * GPC) % 2 == 0 ? 4 : 0);   // padded token row
  static constexpr int BT = 16 * kClusterTiles;
  static constexpr int UPW = (GPC * N + kClusterWarps - 1) / kClusterWarps;  // units per warp
  static constexpr int MP = Shape<N, Mode::HEAD>::MP;
  static_assert(HS % (kGroupCols * GPC) == 0 && G / GPC == CS, "every CTA owns GPC whole groups");
  static constexpr size_t bytes(int nb, int slots = 2) {
    return sizeof(uint4) * nb * BT * RS +
           sizeof(float) * (slots * CS * BT * MP + kClusterWarps * BT * MP + 2 * BT * N);
  }
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void st_cluster_v4(uint32_t addr, float4 v) {
  asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "f"(v.x),
               "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
}
#endif

// Named barriers of the persistent kernel: 1 its reducers, 2 the gates from the reducers to the
// writers, 3 its writers, 4 + b buffer b from the writers to the reducers.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Immediate barrier ids and counts, so that ptxas reserves only the barriers used.
template <int ID, int THREADS, bool ARRIVE = false>
__device__ __forceinline__ void named_sync() {
  if constexpr (ARRIVE)
    asm volatile("bar.arrive %0, %1;" ::"n"(ID), "n"(THREADS) : "memory");
  else
    asm volatile("bar.sync %0, %1;" ::"n"(ID), "n"(THREADS) : "memory");
}
template <int ID, int THREADS>
__device__ __forceinline__ void named_arrive() {
  named_sync<ID, THREADS, true>();
}
// Barrier 4 + b of buffer b < 3 (a switch over immediates): the reducers wait at it, the
// writers arrive (ARRIVE).
template <int THREADS, bool ARRIVE = false>
__device__ __forceinline__ void buffer_sync(int b) {
  switch (b) {
    case 0: named_sync<4, THREADS, ARRIVE>(); break;
    case 1: named_sync<5, THREADS, ARRIVE>(); break;
    default: named_sync<6, THREADS, ARRIVE>(); break;
  }
}
#endif

// Two CTAs per SM where their buffers fit (H = 4096 with 2 buffers: ~88 KB each).
template <int N, int HS, int NB, bool ROT = false>
__global__ void __launch_bounds__(kClusterWarps * 32,
                                  HeadPersistShape<N, HS>::bytes(NB, ROT ? 3 : 2) <= 113 * 1024
                                      ? 2
                                      : 1) hc_head_persist_kernel(const ClusterParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using PS = HeadPersistShape<N, HS>;
  constexpr int M = N, NT = 1, MP = PS::MP, BT = PS::BT, W = kClusterWarps;
  constexpr int CS = PS::CS, SV = PS::SV, RS = PS::RS, UPW = PS::UPW;
  constexpr int units = PS::GPC * N;
  constexpr int RW = W / 2, kHalf = RW * 32;  // reducer warps; threads per role
  constexpr int kSlots = ROT ? 3 : 2;          // receive slots
  // How many blocks ahead of the stream sum the writers hand buffers over: the rotated
  // reducers run one block further ahead, which a third buffer allows.
  constexpr int kAhead = ROT && NB >= 3 ? 2 : 1;
  constexpr int kRowsPerWriter = BT * N / RW;
  // When the writers issue block il's copies they also pull block il + kPrefetch into L2 (a
  // bulk prefetch per row: one instruction, no registers, nothing to wait for). Before it, a
  // writer waited for the copies it had just issued, from HBM, before each block's stream sum
  // (the hand-over above), with only one block's copies in flight per CTA; now they are L2 hits.
  // H100, cold, T = 4096 / 16384, us (NOTES.md, v14), no prefetch / distance 1 / 2: H = 7168
  // 175.8 / 150.3 / 150.9, 660.2 / 555.5 / 556.5; H = 4096 73.7 / 72.5 / 75.0, 273.4 / 260.4 /
  // 270.4. Another H100, T = 4096, none / 2 / 3 / 5: H = 7168 139.5 / 128.5 / 152.8 / 172.7,
  // H = 4096 77.2 / 78.9 / 90.4 / 93.6 (further ahead, the prefetched lines do not last).
  constexpr int kPrefetch = 1;
  static_assert(kRowsPerWriter <= 32, "one prefetched row per lane");
  constexpr int64_t K = static_cast<int64_t>(N) * HS;
  static_assert(kClusterTiles == 1, "one 16-token tile per block");
  static_assert(BT * N % RW == 0, "writer warps copy whole token-stream rows");
  static_assert(MP % 4 == 0 && BT * MP / 4 <= kHalf, "one float4 of the partial per reducer");
  static_assert(NB >= 2, "a buffer refills while the next one is reduced");
  static_assert(NB <= 3, "named barriers 4 .. 6 hand the buffers over");
  extern __shared__ float4 smem_raw[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int rank = cluster_rank();
  const int64_t T = p.T;
  const int64_t nblk = (T + BT - 1) / BT;
  const int64_t clusters = gridDim.x / CS;
  const int h0 = rank * PS::GPC * kGroupCols;
  const bool reducer = warp < RW;

  uint4* data = reinterpret_cast<uint4*>(smem_raw);
  float* recv = reinterpret_cast<float*>(data + NB * BT * RS);  // [kSlots][CS][BT][MP]
  float* red = recv + kSlots * CS * BT * MP;                      // [W][BT][MP]
  float* gates = red + W * BT * MP;                               // [2][BT][N]

  for (int idx = tid; idx < M * N * PS::GPC; idx += blockDim.x) {
    const int q = idx % PS::GPC, rest = idx / PS::GPC;
    prefetch_l2(p.fn + static_cast<int64_t>(rest / N) * K + static_cast<int64_t>(rest % N) * HS +
                h0 + q * kGroupCols);
  }
  // Distributed shared memory may be written only once every CTA of the cluster runs: this
  // barrier's wait comes before the first push below (compute-sanitizer's racecheck flagged
  // pushes into CTAs not yet started).
  cluster_arrive_relaxed();
  pdl_wait();
  pdl_trigger();

  const int64_t first = blockIdx.x / CS;
  const int64_t nloc = first < nblk ? (nblk - first + clusters - 1) / clusters : 0;
  const float inv_k = 1.0f / static_cast<float>(K);

  if (reducer) {
    // The units of hc_cluster_kernel's warps warp and warp + RW: u = warp + v RW + k W.
    FnFrag<kParts> f[2][UPW][NT];
#pragma unroll
    for (int v = 0; v < 2; ++v)
#pragma unroll
      for (int k = 0; k < UPW; ++k) {
        const int u = warp + v * RW + k * W;
        if (u < units) {
          float4 fr[NT][2];
          load_fn_unit<NT, M>(p.fn, K, HS, h0 + (u / N) * kGroupCols + 8 * c, u % N, g, fr);
          fn_frags<NT>(fr, f[v][k]);
        } else {
          f[v][k][0] = zero_frag<kParts>();
        }
      }
    // Block il: its mma, then this CTA's partial (warps in order) into slot il % kSlots of
    // every CTA's receive buffer.
    const auto reduce_push = [&](int64_t il) {
      const int b = static_cast<int>(il % NB);
      buffer_sync<2 * kHalf>(b);  // the writers' hand-over of block il's buffer
      const uint4* d = data + b * BT * RS;
#pragma unroll
      for (int v = 0; v < 2; ++v) {
        float acc[1][NT][4] = {};
        float ss[1][2] = {};
#pragma unroll
        for (int k = 0; k < UPW; ++k) {
          const int u = warp + v * RW + k * W;
          if (u < units) {
            const uint4* col = d + (u % N) * SV + 4 * (u / N) + c;
            mma_tile<NT>(acc[0], ss[0], col[g * RS], col[(g + 8) * RS], f[v][k]);
          }
        }
        store_warp_partial<1, NT, M, MP>(red + (warp + v * RW) * BT * MP, acc, ss, BT);
      }
      named_sync<1, kHalf>();
      if (tid < BT * MP / 4) {
        float4 a = reinterpret_cast<const float4*>(red)[tid];
        for (int w = 1; w < W; ++w) {
          const float4 q = reinterpret_cast<const float4*>(red + w * BT * MP)[tid];
          a.x += q.x;
          a.y += q.y;
          a.z += q.z;
          a.w += q.w;
        }
        float* slot = recv + ((static_cast<int>(il % kSlots) * CS + rank) * BT) * MP + 4 * tid;
#pragma unroll
        for (int r = 0; r < CS; ++r) st_cluster_v4(cluster_addr(slot, r), a);
      }
    };
    // Arrival at block il's cluster barrier: release from the threads that pushed.
    const auto arrive = [&] {
      if (tid < BT * MP / 4)
        cluster_arrive();
      else
        cluster_arrive_relaxed();
    };
    // hc_base / hc_scale once, for every block's gates (inputs: read after pdl_wait).
    float base[N];
#pragma unroll
    for (int i = 0; i < N; ++i) base[i] = tid < BT ? p.base[i] : 0.0f;
    const float scale = tid < BT ? p.scale[0] : 0.0f;
    // Block il's gates from the CS partials in rank order, for the writers.
    const auto gates_of = [&](int64_t il) {
      if (tid < BT) {
        const float* src = recv + (static_cast<int>(il % kSlots) * CS * BT + tid) * MP;
        float dd[MP];
#pragma unroll
        for (int m = 0; m <= M; ++m) {
          float a = src[m];
#pragma unroll
          for (int r = 1; r < CS; ++r) a += src[r * BT * MP + m];
          dd[m] = a;
        }
        float pre[N];
        head_gates<N>(dd, dd[M], inv_k, base, scale, p.rms_eps, p.pre_eps, pre);
#pragma unroll
        for (int i = 0; i < N; ++i) gates[((il & 1) * BT + tid) * N + i] = pre[i];
      }
      // The pushers are done with red (the cluster barrier says so too; this one is a CTA
      // barrier that racecheck follows), then the gates of block il go to the writers.
      named_sync<1, kHalf>();
      named_arrive<2, 2 * kHalf>();
    };
    cluster_wait();
    if constexpr (ROT) {  // block il + 1's mma and push between block il's arrival and wait
      if (nloc > 0) {
        reduce_push(0);
        arrive();
        named_sync<1, kHalf>();  // the pushers are done with red before block 1's partials
      }
      for (int64_t il = 0; il < nloc; ++il) {
        if (il + 1 < nloc) reduce_push(il + 1);
        cluster_wait();
        gates_of(il);
        if (il + 1 < nloc) arrive();
      }
    } else {
      for (int64_t il = 0; il < nloc; ++il) {
        reduce_push(il);
        arrive();
        cluster_wait();
        gates_of(il);
      }
    }
  } else {
    const int wt = tid - kHalf, ww = warp - RW;
    // Block il's slice into buffer b (tokens past T zero-filled), one commit group (empty past
    // the last block, so that the group count per block stays the same).
    const auto issue = [&](int64_t il, int b) {
      const int64_t blk = first + il * clusters;
      uint4* dst = data + b * BT * RS;
      if (il < nloc) {
#pragma unroll
        for (int k = 0; k < kRowsPerWriter; ++k) {
          const int row = kRowsPerWriter * ww + k, t = row / N, i = row % N;
          const int64_t tok = blk * BT + t;
          const bool ok = tok < T;
          const uint16_t* src = p.res + (ok ? (tok * N + i) * HS + h0 : 0);
#pragma unroll
          for (int v = lane; v < SV; v += 32)
            cp_async16(dst + t * RS + i * SV + v, src + 8 * v, ok);
        }
      }
      cp_async_commit();
      // The block after it into L2, one bulk prefetch per token-stream row (see kPrefetch).
      if (il + kPrefetch < nloc && lane < kRowsPerWriter) {
        const int64_t pblk = first + (il + kPrefetch) * clusters;
        const int row = kRowsPerWriter * ww + lane, t = row / N, i = row % N;
        const int64_t tok = pblk * BT + t;
        if (tok < T)
          bulk_prefetch_l2(p.res + (tok * N + i) * HS + h0, static_cast<uint32_t>(SV * 16));
      }
    };
    // Block j's copies have landed (each writer waited for its own): every writer sees them,
    // then the reducers may take buffer j % NB.
    const auto hand_over = [&](int64_t j) {
      named_sync<3, kHalf>();
      buffer_sync<2 * kHalf, true>(static_cast<int>(j % NB));
    };
#pragma unroll
    for (int k = 0; k < NB; ++k) issue(k, k);
    // Blocks 0 .. kAhead - 1 before the loop, then block il + kAhead at the start of block
    // il's iteration (its copies issued at the end of the previous one), where the writers
    // would otherwise wait for block il's gates: the reducers take that buffer right after
    // those gates (ROT: after block il + 1's, since they reduce one block ahead).
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      if (j < nloc) {
        cp_async_wait_upto(NB - 1 - j);  // block j's group
        hand_over(j);
      }
    }
    cluster_wait();
    if (nloc > 0) cluster_arrive_relaxed();  // block 0's barrier
    for (int64_t il = 0; il < nloc; ++il) {
      const int b = static_cast<int>(il % NB), par = static_cast<int>(il & 1);
      if (il + kAhead < nloc) {  // NB + il groups issued: those up to il + kAhead have landed
        cp_async_wait<NB - 1 - kAhead>();
        hand_over(il + kAhead);
      }
      cluster_wait();              // block il's barrier (the reducers' partials)
      named_sync<2, 2 * kHalf>();  // block il's gates
      if (il + 1 < nloc) cluster_arrive_relaxed();  // block il + 1's barrier, early
      const int64_t t0 = (first + il * clusters) * BT;
      const int live = T - t0 < BT ? static_cast<int>(T - t0) : BT;
      cluster_stream_sum<N>(data + b * BT * RS, gates + par * BT * N, p.out, t0, live, SV, SV, RS,
                            HS, h0, wt, kHalf);
      named_sync<3, kHalf>();  // every writer is done with buffer b
      issue(il + NB, b);
    }
  }
#endif
}

inline KernelType kernel_type_of(Mode mode) {
  return mode == Mode::PRE ? KernelType::MHC_PRE
                           : mode == Mode::FUSED ? KernelType::MHC_FUSED_POST_PRE
                                                 : KernelType::HC_HEAD;
}

// Raises a cluster kernel's dynamic shared memory limit to smem and allows clusters of more
// than 8 CTAs, once per kernel, device and size (smem_limit_below, common.cuh) rather than two
// driver calls on every launch.
template <typename Kernel>
void raise_cluster_limits(Kernel kernel, int device, size_t smem) {
  if (!smem_limit_below(reinterpret_cast<const void*>(kernel), device, smem)) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
}

// Launches a cluster kernel: grid `clusters` x cs CTAs, cluster (cs, 1, 1), programmatic
// stream serialisation where supported.
template <typename Kernel>
void launch_cluster(Kernel kernel, int device, int64_t clusters, int cs, size_t smem,
                    cudaStream_t stream, const ClusterParams& cp) {
  raise_cluster_limits(kernel, device, smem);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(clusters * cs));
  cfg.blockDim = dim3(kClusterWarps * 32);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cs);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_supported(device) ? 2 : 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, cp));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The persistent hc_head cluster kernel with NB buffers: as many clusters as fit on the device
// at once (cudaOccupancyMaxActiveClusters, asked once per device), at most one per block.
template <int N, int HS, int NB, bool ROT = false>
void run_head_persist(const ClusterParams& cp, int device, cudaStream_t stream) {
  using PS = HeadPersistShape<N, HS>;
  const auto kernel = hc_head_persist_kernel<N, HS, NB, ROT>;
  const size_t smem = PS::bytes(NB, ROT ? 3 : 2);
  static std::mutex mu;
  static std::map<int, int> fit;  // device -> clusters resident at once
  int clusters;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = fit.find(device);
    if (it == fit.end()) {
      raise_cluster_limits(kernel, device, smem);  // the occupancy query honours the limits
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(static_cast<unsigned>(PS::CS * 64));
      cfg.blockDim = dim3(kClusterWarps * 32);
      cfg.dynamicSmemBytes = smem;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = PS::CS;
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      int n = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, kernel, &cfg));
      TORCH_CHECK(n > 0, "hc_head: no cluster of ", PS::CS, " CTAs with ", smem,
                  " bytes of shared memory fits on device ", device);
      it = fit.emplace(device, n).first;
    }
    clusters = it->second;
  }
  const int64_t blocks = (cp.T + PS::BT - 1) / PS::BT;
  launch_cluster(kernel, device, std::min<int64_t>(blocks, clusters), PS::CS, smem, stream, cp);
}

template <int N, Mode MODE>
void run_cluster(const Plan& plan, const HcCall& a, int device, cudaStream_t stream) {
  const ClusterShape cs = cluster_shape(kernel_type_of(MODE), N, a.H);
  TORCH_INTERNAL_ASSERT(cs.size > 0 && cs.size == plan.num_splits &&
                            cs.block_tokens == plan.block_tokens &&
                            cs.block_tokens == 16 * kClusterTiles,
                        "cluster plan does not match the kernel");
  const int G = (a.H + kGroupCols - 1) / kGroupCols;
  const ClusterParams cp{a.res, a.x, a.post_in, a.comb_in, a.res_out, a.fn, a.scale, a.base,
                         a.post_out, a.comb_out, a.out, a.T, a.H, G, cs.groups, cs.size,
                         std::min(kClusterMaxStages, cs.groups), a.rms_eps, a.pre_eps,
                         a.sinkhorn_eps, a.post_mult, a.repeat};
  if constexpr (MODE == Mode::HEAD && N == 4) {
    // hc_head at the specialised widths: the persistent kernel with 2 buffers at H = 4096 (two
    // CTAs of ~97 KB per SM; with 3, one per SM: T = 4096 103.2 against 79.1 us), and with 3
    // buffers and the rotated reduction at H = 7168 (one CTA per SM either way; T = 4096 141.0
    // us, against 153.3 unrotated and 178.8 rotated with 2 buffers; rotated at H = 4096: 86.2
    // against 81.6 us; NOTES.md, v11 and v12).
    // cluster_buffers() overrides it for studies; 1 selects the one-block kernel below.
    const int64_t nb = cluster_buffers();
    if (persistent_head_cluster(KernelType::HC_HEAD, N, a.H) && nb != 1) {
      TORCH_INTERNAL_ASSERT(plan.hidden_spec == a.H, "persistent hc_head plan without its width");
      if (a.H == 4096)
        return nb == 3 ? run_head_persist<N, 4096, 3, false>(cp, device, stream)
                       : run_head_persist<N, 4096, 2, false>(cp, device, stream);
      return nb == 2 ? run_head_persist<N, 7168, 2, true>(cp, device, stream)
                     : run_head_persist<N, 7168, 3, true>(cp, device, stream);
    }
  }
  const auto kernel = hc_cluster_kernel<N, MODE>;
  const int64_t blocks = (a.T + cs.block_tokens - 1) / cs.block_tokens;
  launch_cluster(kernel, device, blocks, cs.size, static_cast<size_t>(cs.smem_bytes), stream, cp);
}

}  // namespace mhc::cuda
