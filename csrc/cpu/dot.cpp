// Fixed-order fp32 dot products of bf16 activations against fp32 weights.
//
// Compute-bound on the CPU (n(n+2) rows x K per token). The 8 lanes are written as a GCC
// vector type so the arithmetic order is the source's on every target; an AVX2+FMA build and
// a baseline one of the same source are chosen once, by what the CPU supports. Three weight
// rows x four tokens keep twelve accumulators in registers, and each activation vector is
// loaded once for the three rows.
#include "cpu/dot.h"

#include <cstring>

#include "cpu/isa.h"

// The helpers below take 32-byte vectors by value; they are always inlined into dot_rows, so
// no call crosses the ABI boundary GCC warns about, and they inherit each build's target.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mhc::cpu {

namespace {
constexpr int kLanes = 8;
constexpr int64_t kBlock = 512;  // elements per fp32 partial before it is added in double

typedef float v8f __attribute__((vector_size(32)));

MHC_CPU_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

MHC_CPU_INLINE float bf16_to_f32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

// Lanes folded in a fixed tree; `tail` adds the scalar lanes of a short last block first.
MHC_CPU_INLINE float fold(v8f v, const float (&tail)[kLanes]) {
  float a[kLanes];
  std::memcpy(a, &v, sizeof(a));
  for (int l = 0; l < kLanes; ++l) a[l] += tail[l];
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

// acc[t] += x[t] . w over [0, len) of one block; full vectors, then the scalar tail lanes.
template <int R>
MHC_CPU_INLINE void block_rows(const float (&xf)[kDotTokens][kBlock], int64_t len, const float* const* w,
                       double (*dsum)[kMaxDotRows], int o) {
  v8f acc[R][kDotTokens] = {};
  const int64_t full = len / kLanes * kLanes;
  for (int64_t k = 0; k < full; k += kLanes) {
    v8f xv[kDotTokens];
    for (int t = 0; t < kDotTokens; ++t) xv[t] = load8(&xf[t][k]);
    for (int r = 0; r < R; ++r) {
      const v8f wv = load8(w[r] + k);
      for (int t = 0; t < kDotTokens; ++t) acc[r][t] += xv[t] * wv;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < kDotTokens; ++t) {
      float tail[kLanes] = {};
      for (int64_t k = full; k < len; ++k) tail[k - full] = xf[t][k] * w[r][k];
      dsum[t][o + r] += fold(acc[r][t], tail);
    }
  }
}

MHC_CPU_INLINE void dot_rows_impl(const uint16_t* const x[kDotTokens], int64_t K, const float* w,
                              int64_t ldw, int N, float* d, float* sq) {
  double dsum[kDotTokens][kMaxDotRows];
  double ssum[kDotTokens] = {};
  for (int t = 0; t < kDotTokens; ++t)
    for (int o = 0; o < N; ++o) dsum[t][o] = 0.0;
  alignas(64) float xf[kDotTokens][kBlock];

  for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
    const int64_t len = K - k0 < kBlock ? K - k0 : kBlock;
    const int64_t padded = (len + kLanes - 1) / kLanes * kLanes;
    for (int t = 0; t < kDotTokens; ++t) {
      for (int64_t k = 0; k < len; ++k) xf[t][k] = bf16_to_f32(x[t][k0 + k]);
      for (int64_t k = len; k < padded; ++k) xf[t][k] = 0.f;
      v8f acc = {};
      for (int64_t k = 0; k < padded; k += kLanes) {
        const v8f v = load8(&xf[t][k]);
        acc += v * v;
      }
      const float none[kLanes] = {};
      ssum[t] += fold(acc, none);
    }
    int o = 0;
    for (; o + 3 <= N; o += 3) {
      const float* rows[3] = {w + o * ldw + k0, w + (o + 1) * ldw + k0, w + (o + 2) * ldw + k0};
      block_rows<3>(xf, len, rows, dsum, o);
    }
    if (N - o == 2) {
      const float* rows[2] = {w + o * ldw + k0, w + (o + 1) * ldw + k0};
      block_rows<2>(xf, len, rows, dsum, o);
    } else if (N - o == 1) {
      const float* rows[1] = {w + o * ldw + k0};
      block_rows<1>(xf, len, rows, dsum, o);
    }
  }
  for (int t = 0; t < kDotTokens; ++t) {
    for (int o = 0; o < N; ++o) d[t * N + o] = static_cast<float>(dsum[t][o]);
    sq[t] = static_cast<float>(ssum[t]);
  }
}

}  // namespace

MHC_CPU_AVX2 static void dot_rows_avx2(const uint16_t* const x[kDotTokens], int64_t K,
                                       const float* w, int64_t ldw, int N, float* d, float* sq) {
  dot_rows_impl(x, K, w, ldw, N, d, sq);
}

void dot_rows(const uint16_t* const x[kDotTokens], int64_t K, const float* w, int64_t ldw, int N,
              float* d, float* sq) {
  if (has_avx2()) return dot_rows_avx2(x, K, w, ldw, N, d, sq);
  dot_rows_impl(x, K, w, ldw, N, d, sq);
}

}  // namespace mhc::cpu
