// Argument validation shared by the CPU and CUDA entry points: both backends reject exactly
// the same inputs with exactly the same messages, before any work is launched.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mhc {

struct StreamDims {
  int64_t T;   // tokens
  int64_t n;   // hc_mult
  int64_t H;   // hidden size
  int64_t K;   // n * H
};

struct PreArgs {
  double rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value;
  int64_t sinkhorn_repeat;
  double norm_eps;
};

// residual [T, n, H] bf16 with 1 <= n <= 8 and H % 8 == 0.
StreamDims check_residual(const char* op, const at::Tensor& residual);

// fn [n(n+2), K], hc_scale [3], hc_base [n(n+2)] fp32, norm_weight [H] bf16, scalars.
void check_pre_params(const char* op, const StreamDims& d, const at::Tensor& residual,
                      const at::Tensor& fn, const at::Tensor& hc_scale,
                      const at::Tensor& hc_base, const PreArgs& a,
                      const std::optional<at::Tensor>& norm_weight);

// x [T, H] bf16, post_mix [T, n, 1] or [T, n] fp32, comb_mix [T, n, n] fp32.
void check_post_args(const char* op, const StreamDims& d, const at::Tensor& residual,
                     const at::Tensor& x, const at::Tensor& post_mix,
                     const at::Tensor& comb_mix);

// fn [n, K], hc_scale [1], hc_base [n] fp32.
void check_head_params(const char* op, const StreamDims& d, const at::Tensor& residual,
                       const at::Tensor& fn, const at::Tensor& hc_scale,
                       const at::Tensor& hc_base, double rms_eps, double hc_eps);

struct GemmDims {
  int64_t M, N, K;
};

// x [M, K] bf16, fn [N, K] fp32 with 1 <= N <= 32, 1 <= num_splits <= ceil(K / 64).
GemmDims check_prenorm(const char* op, const at::Tensor& x, const at::Tensor& fn,
                       int64_t num_splits);

// DeepGEMM form: out [M, N] and sqrsum [M] when num_splits is None, else [S, M, N] / [S, M].
void check_prenorm_outputs(const char* op, const GemmDims& g, const at::Tensor& x,
                           const at::Tensor& out, const at::Tensor& sqrsum,
                           std::optional<int64_t> num_splits);

// x [M, K] bf16, weight [N, K] bf16.
GemmDims check_linear(const char* op, const at::Tensor& x, const at::Tensor& weight);

// Number of 64-wide K blocks, and the [k_begin, k_end) range of split s of S (SPEC §2.5).
inline int64_t k_blocks(int64_t K) { return (K + 63) / 64; }
inline void split_range(int64_t K, int64_t S, int64_t s, int64_t* k0, int64_t* k1) {
  const int64_t B = k_blocks(K), q = B / S, rem = B % S;
  const int64_t b0 = s * q + (s < rem ? s : rem);
  const int64_t nb = q + (s < rem ? 1 : 0);
  *k0 = b0 * 64 < K ? b0 * 64 : K;
  *k1 = (b0 + nb) * 64 < K ? (b0 + nb) * 64 : K;
}

}  // namespace mhc
