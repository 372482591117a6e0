// The parts of the two main kernels (hc_main_prehead.cuh, hc_main_fused.cuh) before and after
// their K loops: the L2 prefetch of a split's fn slice, and the tail that adds the warps' sums
// and either writes this split's partials (SPLIT_K) or computes the gates and the weighted
// stream sum of the CTA's tokens (FULL_K). One definition, so that both kernels reduce a
// token's sums in the same order.
//
// Main-kernel dynamic shared memory: red [W][BT][MP] floats (one slice per warp), then the
// fused op's gates of the tokens [BT][NC] or the pre / head activation ring; with the ring of
// pre / head (Plan::fn_ring) red overlays the ring after the loop.
#pragma once

#include "core/geometry.h"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"

namespace mhc::cuda {

// Pulls this CTA's slice of fn into L2 while the previous kernel finishes: the fn rows of the
// units [gb, ...) that warp `warp` of W will take, NS streams per unit.
template <int N, Mode MODE, int NS>
__device__ __forceinline__ void prefetch_fn_slice(const MainParams& p, int gb, int units, int H,
                                                  int64_t K) {
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, NT = Sh::NT;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  for (int u = warp; u < units; u += W) {
    const int gi = gb + u / (N / NS), i0 = (u % (N / NS)) * NS;
    const int h = gi * kGroupCols + 8 * c;
    if (h >= H) continue;
#pragma unroll
    for (int i = i0; i < i0 + NS; ++i)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        if (8 * nt + g < M) prefetch_l2(p.fn + (8 * nt + g) * K + static_cast<int64_t>(i) * H + h);
  }
}

// After the K loop: each working warp's sums (W warps took the units), then the warps in warp
// order, for the live rows; SPLIT_K writes them into split `split`'s partials, FULL_K computes
// the gates and streams the weighted sum of the CTA's tokens (src: the residual, or
// residual_out for the fused op).
template <int N, Mode MODE, bool FULLK, bool NORM, int HS, int TT, bool RING>
__device__ __forceinline__ void main_kernel_tail(const MainParams& p, float* red,
                                                 const float (&acc)[TT][Shape<N, MODE>::NT][4],
                                                 float (&ss)[TT][2], int64_t t0, int split,
                                                 int W, int units, int H) {
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, NT = Sh::NT, MP = Sh::MP;
  constexpr int BT = 16 * TT;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t K = static_cast<int64_t>(N) * H;
  const int64_t T = p.T;
  // Each working warp's sums, then the warps in warp order, for the live rows (slice 0).
  const int nwork = min(W, units);  // warps that own at least one unit
  const int rows = T - t0 < BT ? static_cast<int>(T - t0) : BT;  // live token rows
  if constexpr (RING) __syncthreads();  // red overlays the other warps' rings
  if (warp < nwork) store_warp_partial<TT, NT, M, MP>(red + warp * BT * MP, acc, ss, rows);
  __syncthreads();

  if constexpr (!FULLK) {  // the sums straight into this split's partials (padding zeroed)
    const auto to_ws = [&](int row, int m, float a) {
      float* o = p.ws + ((t0 + row) * p.S + split) * MP;
      o[m] = a;
      if (m == M)
#pragma unroll
        for (int q = M + 1; q < MP; ++q) o[q] = 0.f;
    };
    add_warp_partials<M, MP, kMainThreads / 32>(red, BT, rows, nwork, to_ws);
  } else {
    const auto in_place = [&](int row, int m, float a) { red[row * MP + m] = a; };
    add_warp_partials<M, MP, kMainThreads / 32>(red, BT, rows, nwork, in_place);
    __syncthreads();
    // Gates: lane l of every warp computes pre of token t0 + l (BT <= 32); the last warp also
    // runs pre_gates (Sinkhorn) for its lane's token and writes post / comb.
    static_assert(BT <= 32, "FULL_K gates take one token per lane");
    const float inv_k = 1.0f / static_cast<float>(K);
    const int64_t tl = t0 + lane;
    const bool lv = lane < BT && tl < T;
    float pre[N];
#pragma unroll
    for (int i = 0; i < N; ++i) pre[i] = 0.f;
    if (lv) {
      const float* d = red + lane * MP;
      head_gates<N>(d, d[M], inv_k, p.base, p.scale[0], p.rms_eps, p.pre_eps, pre);
    }
    if constexpr (MODE != Mode::HEAD) {
      if (warp == W - 1 && lv) {
        const GateParams gp =
            gate_params(p.scale, p.rms_eps, p.pre_eps, p.sinkhorn_eps, p.post_mult, p.repeat);
        write_gates<N>(red + lane * MP, inv_k, p.base, gp, tl, p.pre_out, p.post_out,
                       p.comb_out);
      }
    }
    if (p.out == nullptr) return;  // mhc_stats: the gates only
    const uint16_t* src = MODE == Mode::FUSED ? p.res_out : p.res;
    for (int j = warp; j < BT; j += W) {
      const int64_t t = t0 + j;
      if (t >= T) break;
      float pj[N];
#pragma unroll
      for (int i = 0; i < N; ++i) pj[i] = __shfl_sync(0xffffffffu, pre[i], j);
      uint16_t* out = p.out + t * H;
      const float ssq = stream_pass<N, NORM, HS, 32, MODE == Mode::FUSED, true>(src + t * K, pj,
                                                                               out, H, lane, H / 8);
      if constexpr (NORM) {
        const float rs = 1.0f / sqrtf(warp_sum(ssq) / static_cast<float>(H) + p.norm_eps);
        norm_pass<HS, 32>(out, p.norm_w, rs, lane, H / 8);
      }
    }
  }
}

}  // namespace mhc::cuda
