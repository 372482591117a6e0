// The kernel of mhc_combine and mhc_post_combine (DeepSeek-V4.1, docs/spec.md §2.9).
//
// What: for one token, with POST first residual_out = mhc_post(x, residual, post, comb) of each
// 8-column vector (post_vec8, the function mhc_post runs, so residual_out is bit-identical to
// it), stored; then layer_input = bf16(Σ_i pre[i] · r[i]) of those vectors (combine8, mhc_pre's
// stream sum) with the carried pre, from registers; with NORM the row's Σ z² (each thread over
// its vectors in order, then the warps in a fixed order), and a second pass over the thread's
// own layer_input vectors that applies the RMSNorm. Both ops run this kernel with the same
// block size (combine_threads(H), core/geometry.h), so the norm of a row is reduced in the
// same order: mhc_post_combine's layer_input is bit-identical to mhc_combine of its
// residual_out.
// Grid: T CTAs (one token each); block: combine_threads(H), every thread the same number of
// vectors (1 up to H = 4096, 2 up to H = 8192).
// Bound: HBM bytes, T·(10H + 16) (combine) or T·(20H + 96) (post_combine) at n = 4: residual
// (and x) read once, residual_out and layer_input written once.
#pragma once

#include "core/geometry.h"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"

namespace mhc::cuda {

template <int N, bool POST, bool NORM>
__global__ void __launch_bounds__(kCombineMaxThreads) hc_combine_kernel(const CombineParams p) {
  __shared__ float wsum[kCombineMaxThreads / 32];
  const int64_t t = blockIdx.x;
  const int tid = threadIdx.x, nth = blockDim.x;
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
  float ssq = 0.f;
#pragma unroll 2
  for (int v = tid; v < nv; v += nth) {
    const int64_t h = 8 * static_cast<int64_t>(v);
    uint4 r[N];
    if constexpr (POST) {
      uint4 old[N];
      const uint4 xv = ldg16_hint(p.x + t * H + h, pol);
#pragma unroll
      for (int i = 0; i < N; ++i) old[i] = ldg16_hint(p.res + (t * N + i) * H + h, pol);
      post_vec8<N>(post, comb, xv, old, r);
#pragma unroll
      for (int j = 0; j < N; ++j) stg16_hint(p.res_out + (t * N + j) * H + h, r[j], pol);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) r[i] = ldg16_hint(p.res + (t * N + i) * H + h, pol);
    }
    combine_store<N, NORM>(r, pre, out + h, pol, ssq);
  }
  if constexpr (NORM) {
    const float s = warp_sum(ssq);
    if ((tid & 31) == 0) wsum[tid >> 5] = s;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < nth / 32; ++w) total += wsum[w];  // the same order in every thread
    const float rs = 1.0f / sqrtf(total / static_cast<float>(H) + p.norm_eps);
    for (int v = tid; v < nv; v += nth) norm_vec8(out, p.norm_w, rs, v);  // its own stores
  }
}

}  // namespace mhc::cuda
