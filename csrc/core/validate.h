// Argument validation shared by the CPU and CUDA entry points and by the fakes: every backend,
// the meta device and torch.compile's fake tensors reject exactly the same inputs with exactly
// the same messages, before any work is launched.
//
// Each check is a template over the integer type of sizes: int64_t for real tensors (the
// default, what the kernels use), c10::SymInt for the fakes (mhc_ops/_fake.py reaches the
// validate_<op> functions through mhc_ops._C), where sizes may be symbolic under dynamic
// shapes and a comparison installs a guard, as it would in a Python fake.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace mhc {

// Most Sinkhorn rounds an op accepts (SPEC §2.6). Upstream runs 20; the bound turns a wrong count
// (say 2^63 - 1) into an error instead of a kernel that runs for ever: every round is a serial
// row and column normalisation of each token's n x n matrix.
constexpr int64_t kMaxSinkhornRepeat = 1000;

template <class I>
struct StreamDimsT {
  I T;  // tokens
  I n;  // hc_mult
  I H;  // hidden size
  I K;  // n * H
};
using StreamDims = StreamDimsT<int64_t>;

template <class I>
struct GemmDimsT {
  I M, N, K;
};
using GemmDims = GemmDimsT<int64_t>;

struct PreArgs {
  double rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value;
  int64_t sinkhorn_repeat;
  double norm_eps;
};

// ---- Checks of one argument group, in the order the op entry points call them.

// residual [T, n, H] bf16 with 1 <= n <= 8 and H % 8 == 0.
template <class I = int64_t>
StreamDimsT<I> check_residual(const char* op, const at::Tensor& residual);

// fn [n(n+2), K], hc_scale [3], hc_base [n(n+2)] fp32, norm_weight [H] bf16, eps >= 0,
// 0 <= sinkhorn_repeat <= kMaxSinkhornRepeat.
template <class I>
void check_pre_params(const char* op, const StreamDimsT<I>& d, const at::Tensor& residual,
                      const at::Tensor& fn, const at::Tensor& hc_scale,
                      const at::Tensor& hc_base, const PreArgs& a,
                      const std::optional<at::Tensor>& norm_weight);

// x [T, H] bf16, post_mix [T, n, 1] or [T, n] fp32, comb_mix [T, n, n] fp32.
template <class I>
void check_post_args(const char* op, const StreamDimsT<I>& d, const at::Tensor& residual,
                     const at::Tensor& x, const at::Tensor& post_mix,
                     const at::Tensor& comb_mix);

// fn [n, K], hc_scale [1], hc_base [n] fp32.
template <class I>
void check_head_params(const char* op, const StreamDimsT<I>& d, const at::Tensor& residual,
                       const at::Tensor& fn, const at::Tensor& hc_scale,
                       const at::Tensor& hc_base, double rms_eps, double hc_eps);

// x [M, K] bf16, fn [N, K] fp32 with 1 <= N <= 32, 1 <= num_splits <= ceil(K / 64).
template <class I = int64_t>
GemmDimsT<I> check_prenorm(const char* op, const at::Tensor& x, const at::Tensor& fn,
                           int64_t num_splits);

// DeepGEMM form: out [M, N] and sqrsum [M] when num_splits is None, else [S, M, N] / [S, M];
// neither may overlap itself, the other or x (PyTorch's rule for out= arguments).
template <class I>
void check_prenorm_outputs(const char* op, const GemmDimsT<I>& g, const at::Tensor& x,
                           const at::Tensor& out, const at::Tensor& sqrsum,
                           std::optional<int64_t> num_splits);

// x [M, K] bf16, weight [N, K] bf16.
template <class I = int64_t>
GemmDimsT<I> check_linear(const char* op, const at::Tensor& x, const at::Tensor& weight);

// norm_weight as the kernels read it: bf16 (a float32 weight is rounded to bf16 once, per call,
// as sglang and vLLM do; docs/spec.md §2.8), or undefined without the folded norm.
inline at::Tensor norm_weight_bf16(const std::optional<at::Tensor>& w) {
  if (!w.has_value() || !w->defined()) return at::Tensor();
  return w->scalar_type() == at::kBFloat16 ? *w : w->to(at::kBFloat16);
}

// ---- Every check of one op, in order: what its entry points (CPU, CUDA) and its fake run.

template <class I = int64_t>
StreamDimsT<I> validate_mhc_pre(const at::Tensor& residual, const at::Tensor& fn,
                                const at::Tensor& hc_scale, const at::Tensor& hc_base,
                                const PreArgs& a, const std::optional<at::Tensor>& norm_weight);

template <class I = int64_t>
StreamDimsT<I> validate_mhc_post(const at::Tensor& x, const at::Tensor& residual,
                                 const at::Tensor& post_mix, const at::Tensor& comb_mix);

template <class I = int64_t>
StreamDimsT<I> validate_mhc_fused_post_pre(const at::Tensor& x, const at::Tensor& residual,
                                           const at::Tensor& post_mix,
                                           const at::Tensor& comb_mix, const at::Tensor& fn,
                                           const at::Tensor& hc_scale,
                                           const at::Tensor& hc_base, const PreArgs& a,
                                           const std::optional<at::Tensor>& norm_weight);

template <class I = int64_t>
StreamDimsT<I> validate_hc_head(const at::Tensor& residual, const at::Tensor& fn,
                                const at::Tensor& hc_scale, const at::Tensor& hc_base,
                                double rms_eps, double hc_eps);

// DeepSeek-V4.1 (SPEC §2.9). pre_mix: float32 [T, n] or [T, n, 1].
template <class I = int64_t>
StreamDimsT<I> validate_mhc_stats(const at::Tensor& residual, const at::Tensor& fn,
                                  const at::Tensor& hc_scale, const at::Tensor& hc_base,
                                  const PreArgs& a);

template <class I = int64_t>
StreamDimsT<I> validate_mhc_combine(const at::Tensor& residual, const at::Tensor& pre_mix,
                                    const std::optional<at::Tensor>& norm_weight,
                                    double norm_eps);

template <class I = int64_t>
StreamDimsT<I> validate_mhc_post_combine(const at::Tensor& x, const at::Tensor& residual,
                                         const at::Tensor& post_mix, const at::Tensor& comb_mix,
                                         const at::Tensor& pre_mix,
                                         const std::optional<at::Tensor>& norm_weight,
                                         double norm_eps);

template <class I = int64_t>
StreamDimsT<I> validate_mhc_shifted_post_pre(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& post_mix,
    const at::Tensor& comb_mix, const at::Tensor& pre_mix, const at::Tensor& fn,
    const at::Tensor& hc_scale, const at::Tensor& hc_base, const PreArgs& a,
    const std::optional<at::Tensor>& norm_weight);

template <class I = int64_t>
GemmDimsT<I> validate_hc_prenorm_gemm(const at::Tensor& x, const at::Tensor& fn,
                                      int64_t num_splits);

// check_prenorm, check_prenorm_outputs, and neither output overlapping fn.
template <class I = int64_t>
GemmDimsT<I> validate_tf32_hc_prenorm_gemm(const at::Tensor& x, const at::Tensor& fn,
                                           const at::Tensor& out, const at::Tensor& sqrsum,
                                           std::optional<int64_t> num_splits);

template <class I = int64_t>
GemmDimsT<I> validate_linear_bf16_fp32(const at::Tensor& x, const at::Tensor& weight);

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
