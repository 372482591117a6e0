// Fixed-order fp32 dot products of bf16 activations against fp32 weights.
//
// Compute-bound on the CPU (24 rows x K per token), so it is built twice through
// target_clones: an AVX2+FMA clone and a baseline one, chosen once at load time. The source
// fixes the arithmetic order; vectorisation maps the 8 lanes onto one register.
#include "cpu/dot.h"

#include <cstring>

namespace mhc::cpu {

namespace {
constexpr int kLanes = 8;
constexpr int64_t kBlock = 512;  // elements per fp32 partial before it is added in double

inline float bf16_to_f32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

inline float fold(const float (&a)[kLanes]) {
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}
}  // namespace

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=haswell", "default")))
#endif
void dot_rows(const uint16_t* const x[kDotTokens], int64_t K, const float* w, int64_t ldw, int N,
              float* d, float* sq) {
  double dsum[kDotTokens][kMaxDotRows];
  double ssum[kDotTokens] = {};
  for (int t = 0; t < kDotTokens; ++t)
    for (int o = 0; o < N; ++o) dsum[t][o] = 0.0;
  alignas(64) float xf[kDotTokens][kBlock];

  for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
    const int64_t len = K - k0 < kBlock ? K - k0 : kBlock;
    for (int t = 0; t < kDotTokens; ++t) {
      for (int64_t k = 0; k < len; ++k) xf[t][k] = bf16_to_f32(x[t][k0 + k]);
      for (int64_t k = len; k < (len + kLanes - 1) / kLanes * kLanes; ++k) xf[t][k] = 0.f;
    }
    const int64_t padded = (len + kLanes - 1) / kLanes * kLanes;
    for (int t = 0; t < kDotTokens; ++t) {
      float acc[kLanes] = {};
      for (int64_t k = 0; k < padded; k += kLanes)
        for (int l = 0; l < kLanes; ++l) acc[l] += xf[t][k + l] * xf[t][k + l];
      ssum[t] += fold(acc);
    }
    for (int o = 0; o < N; ++o) {
      const float* wr = w + o * ldw + k0;
      float acc[kDotTokens][kLanes] = {};
      int64_t k = 0;
      for (; k + kLanes <= len; k += kLanes)
        for (int t = 0; t < kDotTokens; ++t)
          for (int l = 0; l < kLanes; ++l) acc[t][l] += xf[t][k + l] * wr[k + l];
      for (int l = 0; k + l < len; ++l)  // short tail of the last block, same lane mapping
        for (int t = 0; t < kDotTokens; ++t) acc[t][l] += xf[t][k + l] * wr[k + l];
      for (int t = 0; t < kDotTokens; ++t) dsum[t][o] += fold(acc[t]);
    }
  }
  for (int t = 0; t < kDotTokens; ++t) {
    for (int o = 0; o < N; ++o) d[t * N + o] = static_cast<float>(dsum[t][o]);
    sq[t] = static_cast<float>(ssum[t]);
  }
}

}  // namespace mhc::cpu
