// The persistent CLUSTER kernel of hc_head at the specialised widths (n = 4, H = 4096 / 7168).
// Same cluster geometry, units, fragments and sums as hc_cluster_kernel (so the two give the
// same bits), but each cluster walks token blocks blk = cluster, cluster + clusters, ... and
// keeps the serial part of a block short, since that part (not HBM) bounds it
// (docs/performance.md, "Cluster plans and the persistent hc_head"):
//  * NB shared-memory buffers filled with cp.async, NB blocks ahead; the writers wait for
//    their copies (cp.async.wait_group) and hand a landed buffer to the reducers through a
//    named barrier per buffer (no mbarriers: compute-sanitizer's racecheck and synccheck do
//    not track them), one block ahead of the stream sum (two with ROT and 3 buffers: the
//    rotated reducers take block il + 2 right after block il's gates; one ahead there
//    serialises their mma behind the stream sum), and the block after the newest one in
//    flight pulled into L2 by bulk prefetches, so that the writers' wait for their copies is
//    an L2 wait;
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
// Grid: min(token blocks, clusters resident at once) clusters of CS CTAs (Plan::cluster_buffers
// buffers, Plan::cluster_rotated), geometry HeadPersistShape (core/geometry.h).
// Bound: HBM bytes (the residual read once) and, per block, the serial chain copy -> mma ->
// cluster barrier -> gates -> stream sum, which the two roles and the buffers overlap.
#pragma once

#include "core/geometry.h"
#include "cuda/cluster.cuh"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"

namespace mhc::cuda {

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
  // bulk prefetch per row: one instruction, no registers, nothing to wait for), so that their
  // wait for the copies before each block's stream sum is an L2 wait; further ahead the
  // prefetched lines do not last (docs/performance.md, "Cluster plans and the persistent
  // hc_head").
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

}  // namespace mhc::cuda
