// The kernel of mhc_combine and mhc_post_combine (DeepSeek-V4.1, docs/spec.md §2.9).
//
// What: for one token, with POST first residual_out = mhc_post(x, residual, post, comb) of each
// 8-column vector (post_vec8, the function mhc_post runs, so residual_out is bit-identical to
// it), stored; then layer_input = bf16(Σ_i pre[i] · r[i]) of those vectors (combine8, mhc_pre's
// stream sum) with the carried pre, from registers; with NORM the row's Σ z² in the order of
// norm_tree.cuh (a function of H alone), then the RMSNorm of the thread's vectors, from
// registers (or from its own stores past HELD vectors). So mhc_post_combine's and
// mhc_shifted_post_pre's layer_input is bit-identical to mhc_combine of their residual_out.
// Grid: T CTAs (one token each); block: combine_threads(H), every thread the same number of
// vectors (1 up to H = 4096, 2 up to H = 8192); dynamic shared memory: with NORM, 4 bytes per
// 32-column group.
// Bound: HBM bytes, T·(10H + 16) (combine) or T·(20H + 96) (post_combine) at n = 4: residual
// (and x) read once, residual_out and layer_input written once.
#pragma once

#include "core/geometry.h"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"

namespace mhc::cuda {

// Vectors of a thread loaded together and kept in registers between the combine and the norm
// pass: up to n = 4 all of them up to H = 8192 (combine_threads), where the norm pass then
// reads no global memory; one above n = 4 (registers).
constexpr int combine_held(int n) { return n <= 4 ? 2 : 1; }

template <int N, bool POST, bool NORM>
__global__ void __launch_bounds__(kCombineMaxThreads) hc_combine_kernel(const CombineParams p) {
  extern __shared__ float gsum[];  // NORM: the row's group sums S(g) (norm_tree.cuh)
  const int64_t t = blockIdx.x;
  const int tid = threadIdx.x, nth = blockDim.x, lane = tid & 31;
  const int H = p.H, nv = H / 8;
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
    if (v >= nv) return;
    const int64_t h = 8 * static_cast<int64_t>(v);
#pragma unroll
    for (int i = 0; i < N; ++i) in[i] = ldg16_hint(p.res + (t * N + i) * H + h, pol);
    if constexpr (POST) in[N] = ldg16_hint(p.x + t * H + h, pol);
  };
  const auto finish = [&](int base, const uint4 (&in)[N + 1], bool hold, uint4& held) {
    const int v = base + lane;
    const bool live = v < nv;
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
      if (live && (lane & 3) == 0) gsum[v >> 2] = S;
    }
  };
  // Vectors v = tid, tid + nth, ...: the first HELD unrolled, then the rest.
  constexpr int HELD = combine_held(N);
  uint4 in[HELD][N + 1], held[HELD], wv[HELD];
#pragma unroll
  for (int k = 0; k < HELD; ++k) load(tid - lane + k * nth, in[k]);
  // With NORM the held vectors' norm weights too, in flight with the row's loads: after the
  // barrier the norm pass then waits for no global load.
  if constexpr (NORM) {
#pragma unroll
    for (int k = 0; k < HELD; ++k)
      if (tid + k * nth < nv) wv[k] = ldg16(p.norm_w + 8 * (tid + k * nth));
  }
#pragma unroll
  for (int k = 0; k < HELD; ++k)
    if (tid - lane + k * nth < nv) finish(tid - lane + k * nth, in[k], true, held[k]);
  for (int base = tid - lane + HELD * nth; base < nv; base += nth) {
    uint4 one[N + 1], spare;
    load(base, one);
    finish(base, one, false, spare);
  }
  if constexpr (NORM) {
    __syncthreads();
    const float rs = norm_rs(row_sumsq(gsum, (nv + 3) / 4, lane), H, p.norm_eps);
#pragma unroll
    for (int k = 0; k < HELD; ++k) {
      const int v = tid + k * nth;
      if (v < nv) stg16(out + 8 * v, norm8(held[k], wv[k], rs));
    }
    for (int v = tid + HELD * nth; v < nv; v += nth)
      norm_vec8(out, p.norm_w, rs, v);  // its own stores
  }
}

}  // namespace mhc::cuda
