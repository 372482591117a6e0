// The one-block-per-cluster kernel of hc_head's CLUSTER plans (sm_90+; n <= 4, any H; the
// persistent kernel of hc_head_persistent.cuh serves n = 4, H = 4096 / 7168).
//
// Why: SPLIT_K / FULL_K read the residual twice at prefill sizes, once for the K reduction and
// once for the weighted stream sum after the gates are known. Here one cluster owns a block of
// BT = 16 tokens and each of its CS CTAs a slice of the hidden columns (all n streams), which it
// copies from HBM into shared memory once (cp.async, in stages, the tensor-core GEMM consuming
// each stage as it lands):
//  1. every CTA reduces its slice: per-warp partial dots (bf16 hi / lo mma.sync) and sums of
//     squares, added in warp order;
//  2. cluster barrier; CTA r then owns tokens j = r, r + CS, ...: it adds the CS partials of its
//     tokens in rank order through distributed shared memory, computes their gates and writes
//     them into every CTA's gate table; after the next cluster barrier each CTA has the gates
//     of all BT tokens;
//  3. each CTA writes the weighted stream sum of its slice from shared memory.
// Grid: CS * token blocks CTAs, clusters of CS (head_cluster_shape, core/geometry.h).
// Bound: HBM bytes, the residual read once. Bank conflicts: a token row of the activations is
// padded so that rows g and g + 1 of an mma fragment load fall in different banks.
#pragma once

#include "core/geometry.h"
#include "cuda/cluster.cuh"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"

namespace mhc::cuda {

// CTA blockIdx.x is rank blockIdx.x % CS of token block blockIdx.x / CS; kClusterWarps warps.
// Dynamic shared memory, in this order: activations [BT][RS] uint4, per-warp partials
// [W][BT][MP], reduced dots of the owned tokens [BT][MP], gates [BT][N].
template <int N>
__global__ void __launch_bounds__(kClusterWarps * 32, 2) hc_cluster_kernel(const ClusterParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using Sh = Shape<N, Mode::HEAD>;
  constexpr int M = Sh::M, NT = Sh::NT, MP = Sh::MP;
  constexpr int TT = kClusterTiles;
  constexpr int BT = 16 * TT;
  constexpr int W = kClusterWarps;
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
  float* red = reinterpret_cast<float*>(data + BT * RS);
  float* dsum = red + W * BT * MP;
  float* gates = dsum + BT * MP;

  // fn of this CTA's slice into L2 while the previous kernel finishes (read-only weights).
  // Loops before the stage barriers run a warp-uniform trip count (lanes past the end skip the
  // body), so that every warp reaches those barriers converged.
  for (int base = tid - lane; base < M * N * ng; base += blockDim.x) {
    const int idx = base + lane;
    if (idx >= M * N * ng) continue;
    const int q = idx % ng, rest = idx / ng;
    prefetch_l2(p.fn + static_cast<int64_t>(rest / N) * K + static_cast<int64_t>(rest % N) * H +
                h0 + q * kGroupCols);
  }
  pdl_wait();
  pdl_trigger();

  // All copies up front, one commit group per stage of K groups (tokens past T and columns
  // past H are zero-filled, so they add nothing to the dots). Always kClusterMaxStages groups,
  // empty past `stages`, so that stage s waits with the immediate kClusterMaxStages - 1 - s.
  const int stages = p.stages;
  const int gps = (p.gpc + stages - 1) / stages;
  for (int s = 0; s < kClusterMaxStages; ++s) {
    const int q0 = s * gps, q1 = min(ng, q0 + gps);
    const int vcount = q1 > q0 ? 4 * (q1 - q0) : 0;
    for (int base = tid - lane; base < BT * N * vcount; base += blockDim.x) {
      const int idx = base + lane;
      if (idx >= BT * N * vcount) continue;
      const int v = 4 * q0 + idx % vcount, rest = idx / vcount;
      const int i = rest % N, t = rest / N;
      const int64_t tok = t0 + t;
      const bool ok = tok < T && v < nv;
      cp_async16(data + t * RS + i * SV + v, ok ? p.res + (tok * N + i) * H + h0 + 8 * v : p.res,
                 ok);
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
  // Stage by stage, each unrolled so that its cp.async wait takes an immediate count (no
  // branch over the counts before the block barrier).
  for_each_index(std::make_integer_sequence<int, kClusterMaxStages>{}, [&](auto stage) {
    constexpr int s = decltype(stage)::value;
    if (s >= stages) return;
    cp_async_wait<kClusterMaxStages - 1 - s>();
    __syncthreads();
    const int q0 = s * gps, q1 = min(ng, q0 + gps);
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
  });

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
  cluster_wait();

  cluster_stream_sum<N>(data, gates, p.out, t0, T - t0 < BT ? static_cast<int>(T - t0) : BT, nv,
                        SV, RS, H, h0, tid, blockDim.x);
#endif
}

}  // namespace mhc::cuda
