// The kernel of mhc_combine and mhc_post_combine (DeepSeek-V4.1, docs/spec.md §2.9).
//
// What: for one token, with POST first residual_out = mhc_post(x, residual, post, comb) of each
// 8-column vector (post_vec8, the function mhc_post runs, so residual_out is bit-identical to
// it), stored; then layer_input = bf16(Σ_i pre[i] · r[i]) of those vectors (combine8, mhc_pre's
// stream sum) with the carried pre, from registers; with NORM the row's Σ z² in the order of
// norm_tree.cuh (a function of H alone), then the RMSNorm of the thread's vectors, from
// registers (or from its own stores past HELD vectors). So mhc_post_combine's and
// mhc_shifted_post_pre's layer_input is bit-identical to mhc_combine of their residual_out.
// Grid: T CTAs (one token each), block combine_threads(H), every thread the same number of
// vectors (1 up to H = 4096, 2 up to H = 8192); or, the split combine at small T, T ·
// combine_split_ctas(H) CTAs of combine_split_threads(H), CTA r of a token its vectors
// [r · V, (r + 1) · V) (geometry.h), with NORM a cluster per token (CLUSTER) whose CTAs store
// their group sums into every CTA's shared memory between two cluster barriers (the first, all
// CTAs running, overlaps the row's loads). Dynamic shared memory: with NORM, 4 bytes per
// 32-column group of the row.
// Bound: HBM bytes, T·(10H + 16) (combine) or T·(20H + 96) (post_combine) at n = 4: residual
// (and x) read once, residual_out and layer_input written once.
#pragma once

#include "core/geometry.h"
#include "cuda/cluster.cuh"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"

namespace mhc::cuda {

// Vectors of a thread loaded together and kept in registers between the combine and the norm
// pass: up to n = 4 all of them up to H = 8192 (combine_threads), where the norm pass then
// reads no global memory; one above n = 4 (registers).
constexpr int combine_held(int n) { return n <= 4 ? 2 : 1; }

// SPLIT: p.ctas CTAs per token, with NORM one cluster (CLUSTER). Without SPLIT the indices are
// compile-time whole rows (the one-CTA kernel keeps its registers: 2 CTAs per SM at H = 5120).
template <int N, bool POST, bool NORM, bool SPLIT>
__global__ void __launch_bounds__(kCombineMaxThreads) hc_combine_kernel(const CombineParams p) {
  constexpr bool CLUSTER = SPLIT && NORM;
  extern __shared__ float gsum[];  // NORM: the row's group sums S(g) (norm_tree.cuh)
  const int64_t t = SPLIT ? blockIdx.x / p.ctas : blockIdx.x;
  const int tid = threadIdx.x, nth = blockDim.x, lane = tid & 31;
  const int H = p.H, nv = H / 8;
  // This CTA's vectors [v0, v1) of the row, v0 a multiple of 32.
  const int v0 = SPLIT ? static_cast<int>(blockIdx.x % p.ctas) * p.vectors : 0;
  const int v1 = SPLIT ? min(nv, v0 + p.vectors) : nv;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // A CTA may store into another's shared memory only once that one runs: every CTA arrives
  // here and waits before its first store (the loads are in flight meanwhile).
  if constexpr (CLUSTER) cluster_arrive_relaxed();
#endif
  pdl_wait();
  pdl_trigger();
  float pre[N];
#pragma unroll
  for (int i = 0; i < N; ++i) pre[i] = __ldg(p.pre + t * N + i);
  float post[N], comb[N * N];
  if constexpr (POST) {
#pragma unroll
    for (int j = 0; j < N; ++j) post[j] = __ldg(p.post + t * N + j);
#pragma unroll
    for (int q = 0; q < N * N; ++q) comb[q] = __ldg(p.comb + t * N * N + q);
  }
  const uint64_t pol = l2_evict_first();
  uint16_t* out = p.out + t * H;
  // One vector v = base + lane in two steps: load (x and the n streams), then finish: post
  // (POST), combine, z stored, or with NORM kept for the norm pass (held: the thread's first
  // HELD vectors, whose loads are all issued before the first finish) or stored and read
  // back by it. Called by whole warps (base warp-uniform; the group sums shuffle).
  const auto load = [&](int base, uint4 (&in)[N + 1]) {
    const int v = base + lane;
    if (v >= v1) return;
    const int64_t h = 8 * static_cast<int64_t>(v);
#pragma unroll
    for (int i = 0; i < N; ++i) in[i] = ldg16_hint(p.res + (t * N + i) * H + h, pol);
    if constexpr (POST) in[N] = ldg16_hint(p.x + t * H + h, pol);
  };
  const auto finish = [&](int base, const uint4 (&in)[N + 1], bool hold, uint4& held) {
    const int v = base + lane;
    const bool live = v < v1;
    float q = 0.f;
    if (live) {
      const int64_t h = 8 * static_cast<int64_t>(v);
      uint4 r[N];
      if constexpr (POST) {
        uint4 old[N];
#pragma unroll
        for (int i = 0; i < N; ++i) old[i] = in[i];
        post_vec8<N>(post, comb, in[N], old, r);
#pragma unroll
        for (int j = 0; j < N; ++j) stg16_hint(p.res_out + (t * N + j) * H + h, r[j], pol);
      } else {
#pragma unroll
        for (int i = 0; i < N; ++i) r[i] = in[i];
      }
      const uint4 z = combine8<N>(r, pre);
      if constexpr (NORM) {
        if (hold) held = z;
        else stg16(out + h, z);  // read back by this thread's norm pass
        q = vec8_sumsq(z);
      } else {
        stg16_hint(out + h, z, pol);
      }
    }
    if constexpr (NORM) {
      const float S = group4_sum(q);
      if (live && (lane & 3) == 0) {
        if constexpr (CLUSTER) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          for (int r = 0; r < p.ctas; ++r) st_cluster(cluster_addr(&gsum[v >> 2], r), S);
#endif
        } else {
          gsum[v >> 2] = S;
        }
      }
    }
  };
  // Vectors v = v0 + tid, v0 + tid + nth, ...: the first HELD unrolled, then the rest.
  constexpr int HELD = combine_held(N);
  const int w0 = v0 + tid - lane;  // this warp's first vector
  uint4 in[HELD][N + 1], held[HELD], wv[HELD];
#pragma unroll
  for (int k = 0; k < HELD; ++k) load(w0 + k * nth, in[k]);
  // With NORM the held vectors' norm weights too, in flight with the row's loads: after the
  // barrier the norm pass then waits for no global load.
  if constexpr (NORM) {
#pragma unroll
    for (int k = 0; k < HELD; ++k)
      if (v0 + tid + k * nth < v1) wv[k] = ldg16(p.norm_w + 8 * (v0 + tid + k * nth));
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (CLUSTER) cluster_wait();  // every CTA of the cluster runs
#endif
#pragma unroll
  for (int k = 0; k < HELD; ++k)
    if (w0 + k * nth < v1) finish(w0 + k * nth, in[k], true, held[k]);
  for (int base = w0 + HELD * nth; base < v1; base += nth) {
    uint4 one[N + 1], spare;
    load(base, one);
    finish(base, one, false, spare);
  }
  if constexpr (NORM) {
    // Every group sum of the row in this CTA's shared memory (with CLUSTER stored by the
    // cluster's CTAs; after the barrier no CTA touches another's shared memory, so each may
    // exit when done).
    if constexpr (CLUSTER) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      cluster_arrive();
      cluster_wait();
#endif
    } else {
      __syncthreads();
    }
    const float rs = norm_rs(row_sumsq(gsum, (nv + 3) / 4, lane), H, p.norm_eps);
    norm_held_pass<HELD>(out, p.norm_w, held, wv, rs, v0 + tid, nth, v1);
  }
}

}  // namespace mhc::cuda
