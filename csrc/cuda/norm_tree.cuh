// The folded RMSNorm of a layer_input row in the DeepSeek-V4.1 ops (mhc_combine,
// mhc_post_combine, mhc_shifted_post_pre): Σ z² in one order that depends on H alone, so that
// every kernel that writes a layer_input gets the same bits (docs/spec.md §2.9), whatever its
// block size (one CTA per token in hc_combine.cuh; a kernel that splits a row across CTAs can
// follow the same steps):
//  1. q(v) = Σ_e z[8v + e]², e ascending (fmaf), per 8-column vector v;
//  2. S(g) = (q(4g) + q(4g + 1)) + (q(4g + 2) + q(4g + 3)) per 32-column group g, the vectors
//     held by four consecutive lanes (an xor butterfly), vectors past H counting 0;
//  3. a(l) = Σ_k S(l + 32k), k ascending, for l = 0 .. 31, and the row's sum the 32-lane xor
//     butterfly of a (warp_sum: every lane ends with the same bits).
// Then rs = 1 / sqrt(sum / H + eps), and out = bf16(z · rs · w) per element (norm8).
#pragma once

#include <cstdint>

#include "cuda/common.cuh"

namespace mhc::cuda {

__device__ __forceinline__ float vec8_sumsq(const uint4& z8) {
  float z[8];
  unpack8(z8, z);
  float q = 0.f;
#pragma unroll
  for (int e = 0; e < 8; ++e) q = fmaf(z[e], z[e], q);
  return q;
}

// Step 2: called by all 32 lanes, lanes 4k .. 4k + 3 holding the vectors of one group.
__device__ __forceinline__ float group4_sum(float q) {
  q += __shfl_xor_sync(0xffffffffu, q, 1);
  q += __shfl_xor_sync(0xffffffffu, q, 2);
  return q;
}

// Step 3 over the G group sums S [G] of a row (shared memory): called by all 32 lanes of a warp.
__device__ __forceinline__ float row_sumsq(const float* S, int G, int lane) {
  float a = 0.f;
  for (int g = lane; g < G; g += 32) a += S[g];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
  return a;
}

__device__ __forceinline__ float norm_rs(float sumsq, int H, float eps) {
  return 1.0f / sqrtf(sumsq / static_cast<float>(H) + eps);
}

// bf16(z · rs · w) of one 8-column vector; w8: the norm weight's 8 columns (loaded already,
// or read here from w8p).
__device__ __forceinline__ uint4 norm8(const uint4& z8, const uint4& w8, float rs) {
  float z[8], wf[8], o[8];
  unpack8(z8, z);
  unpack8(w8, wf);
#pragma unroll
  for (int e = 0; e < 8; ++e) o[e] = z[e] * rs * wf[e];
  return pack8(o);
}
__device__ __forceinline__ uint4 norm8(const uint4& z8, const uint16_t* __restrict__ w8p,
                                       float rs) {
  return norm8(z8, ldg16(w8p), rs);
}

}  // namespace mhc::cuda
