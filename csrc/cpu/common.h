// Small helpers shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <cmath>
#include <vector>

#include "core/math.h"
#include "cpu/dot.h"
#include "cpu/isa.h"

namespace mhc::cpu {

inline const uint16_t* bf16_bits(const at::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.const_data_ptr<at::BFloat16>());
}
inline uint16_t* bf16_bits(at::Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.mutable_data_ptr<at::BFloat16>());
}

inline GateParams gate_params(const at::Tensor& scale, double rms_eps, double pre_eps,
                              double sinkhorn_eps, double post_mult, int64_t repeat) {
  const float* s = scale.const_data_ptr<float>();
  return GateParams{static_cast<float>(rms_eps), static_cast<float>(pre_eps),
                    static_cast<float>(sinkhorn_eps), static_cast<float>(post_mult), repeat,
                    {s[0], s[1], s[2]}};
}

// Token indices of group g; slots past T repeat the group's first token (their results are
// discarded) so dot_rows always runs on kDotTokens real rows.
inline void token_group(int64_t g, int64_t T, int64_t (&tok)[kDotTokens]) {
  for (int s = 0; s < kDotTokens; ++s) {
    const int64_t t = g * kDotTokens + s;
    tok[s] = t < T ? t : g * kDotTokens;
  }
}

// mhc_post of one token (cpu/mhc_post.cpp): out [n][H] from x [H], r [n][H], post [n], comb
// [n][n] (i, j); every op that writes a new residual on the CPU goes through it.
void post_one_token(int64_t n, const uint16_t* x, const uint16_t* r, const float* post,
                    const float* comb, int64_t H, uint16_t* out);

// SPEC §2.1 steps 1-7 of T tokens of res [T, N, H] (bf16 bits) with fn [N(N+2), NH]: per group
// of kDotTokens tokens one fixed-order dot pass (dot_rows), then pre_gates of each token, handed
// to emit(t, row, pre, post, comb, y) with row the token's residual and y a scratch [H] of the
// worker. Parallel over token groups; a token's gates never depend on T or its neighbours.
template <int N, class Emit>
void gate_tokens(const uint16_t* res, int64_t T, int64_t H, const float* fn, const float* base,
                 const GateParams& p, Emit&& emit) {
  const int64_t K = N * H;
  constexpr int m3 = N * (N + 2);
  const float inv_k = 1.0f / static_cast<float>(K);
  const int64_t groups = (T + kDotTokens - 1) / kDotTokens;
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> y(H);
    for (int64_t g = g0; g < g1; ++g) {
      const uint16_t* rows[kDotTokens];
      int64_t tok[kDotTokens];
      token_group(g, T, tok);
      for (int s = 0; s < kDotTokens; ++s) rows[s] = res + tok[s] * K;
      float dots[kDotTokens * kMaxDotRows], sq[kDotTokens];
      dot_rows(rows, K, fn, K, m3, dots, sq);
      for (int s = 0; s < kDotTokens; ++s) {
        const int64_t t = g * kDotTokens + s;
        if (t >= T) break;
        float pre[N], post[N], comb[N][N];
        pre_gates<N>(dots + s * m3, sq[s], inv_k, base, p, pre, post, comb);
        emit(t, rows[s], pre, post, comb, y.data());
      }
    }
  });
}

// The gates of mhc_stats (SPEC §2.9) of T tokens of res [T, n, H] into pre [T, n],
// post [T, n], comb [T, n, n] (cpu/mhc_stats.cpp).
void stats_tokens(const uint16_t* res, int64_t T, int64_t n, int64_t H, const float* fn,
                  const float* base, const GateParams& p, float* pre, float* post, float* comb);

// out[h] = bf16(sum_i pre[i] * f32(res[i * H + h])) (SPEC §2.1 step 8), optionally followed by
// the folded RMSNorm of step 9 with weight nw (bf16 bits, may be null). y is scratch [H].
template <int N>
void stream_sum(const uint16_t* res, int64_t H, const float (&pre)[N], const uint16_t* nw,
                float norm_eps, float* y, uint16_t* out) {
  for (int64_t h = 0; h < H; ++h) {
    float acc = pre[0] * bf16_bits_to_f32(res[h]);
    for (int i = 1; i < N; ++i) acc += pre[i] * bf16_bits_to_f32(res[i * H + h]);
    y[h] = acc;
  }
  if (nw == nullptr) {
    for (int64_t h = 0; h < H; ++h) out[h] = f32_to_bf16_bits(y[h]);
    return;
  }
  float lanes[8] = {};
  for (int64_t h = 0; h < H; ++h) {
    const float z = round_bf16(y[h]);
    y[h] = z;
    lanes[h & 7] += z * z;
  }
  const float ss = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) +
                   ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
  const float rs = 1.0f / std::sqrt(ss / static_cast<float>(H) + norm_eps);
  for (int64_t h = 0; h < H; ++h) out[h] = f32_to_bf16_bits(y[h] * rs * bf16_bits_to_f32(nw[h]));
}

}  // namespace mhc::cpu
