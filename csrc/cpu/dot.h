// The one dot-product kernel behind the CPU GEMMs of mhc_pre, hc_head and hc_prenorm_gemm.
#pragma once

#include <cstdint>

namespace mhc::cpu {

// Token rows handled by one call; unused slots repeat a real row so every token always runs
// through the same instructions (its result never depends on T or on its neighbours).
constexpr int kDotTokens = 4;
// Most weight rows per call: M3 = n(n + 2) = 80 at n = 8.
constexpr int kMaxDotRows = 80;

// For each slot t < kDotTokens and row o < N:
//   d[t * N + o] = sum_{k < K} f32(x[t][k]) * w[o * ldw + k],   sq[t] = sum_{k < K} f32(x[t][k])^2
// x[t] points at K bf16 values (as raw bits). Summation order is fixed: 8 fp32 lanes over
// blocks of 512 elements, lanes folded in a fixed tree, blocks added in double. Both outputs
// are therefore accurate to ~1e-7 relative for any K this pack sees.
void dot_rows(const uint16_t* const x[kDotTokens], int64_t K, const float* w, int64_t ldw, int N,
              float* d, float* sq);

}  // namespace mhc::cpu
