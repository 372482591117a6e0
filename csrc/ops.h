// Entry points of every op, per backend. Shapes: T tokens, n = hc_mult, H hidden,
// K = n * H, M3 = n * (n + 2). Schemas and semantics: SPEC.md §2, csrc/registration.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace mhc {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using Pre3 = std::tuple<Tensor, Tensor, Tensor>;
using Fused4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Shifted5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

#define MHC_DECLARE_OPS(BACKEND)                                                              \
  /* residual [T,n,H] bf16, fn [M3,K] f32, hc_scale [3], hc_base [M3], norm_weight [H] bf16 */ \
  /* -> post_mix [T,n,1] f32, comb_mix [T,n,n] f32, layer_input [T,H] bf16 */                 \
  Pre3 mhc_pre_##BACKEND(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,    \
                         const Tensor& hc_base, double rms_eps, double hc_pre_eps,            \
                         double hc_sinkhorn_eps, double hc_post_mult_value,                   \
                         int64_t sinkhorn_repeat, const OptTensor& norm_weight,               \
                         double norm_eps);                                                    \
  /* x [T,H] bf16, residual [T,n,H] bf16, post_mix [T,n(,1)] f32, comb_mix [T,n,n] f32 */     \
  /* -> [T,n,H] bf16 */                                                                       \
  Tensor mhc_post_##BACKEND(const Tensor& x, const Tensor& residual, const Tensor& post_mix,  \
                            const Tensor& comb_mix);                                          \
  /* mhc_post followed by mhc_pre -> residual_out, post_mix_out, comb_mix_out, layer_input */ \
  Fused4 mhc_fused_post_pre_##BACKEND(                                                        \
      const Tensor& x, const Tensor& residual, const Tensor& post_mix,                        \
      const Tensor& comb_mix, const Tensor& fn, const Tensor& hc_scale,                       \
      const Tensor& hc_base, double rms_eps, double hc_pre_eps, double hc_sinkhorn_eps,       \
      double hc_post_mult_value, int64_t sinkhorn_repeat, const OptTensor& norm_weight,       \
      double norm_eps);                                                                       \
  /* residual [T,n,H] bf16, fn [n,K] f32, hc_scale [1], hc_base [n] -> [T,H] bf16 */          \
  Tensor hc_head_##BACKEND(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,   \
                           const Tensor& hc_base, double rms_eps, double hc_eps);             \
  /* SPEC §2.9. residual [T,n,H] bf16, fn [M3,K] -> pre_mix [T,n], post_mix [T,n,1], */     \
  /* comb_mix [T,n,n] f32 */                                                                  \
  Pre3 mhc_stats_##BACKEND(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,  \
                           const Tensor& hc_base, double rms_eps, double hc_pre_eps,          \
                           double hc_sinkhorn_eps, double hc_post_mult_value,                 \
                           int64_t sinkhorn_repeat);                                          \
  /* residual [T,n,H] bf16, pre_mix [T,n(,1)] f32 -> layer_input [T,H] bf16 */                \
  Tensor mhc_combine_##BACKEND(const Tensor& residual, const Tensor& pre_mix,                 \
                               const OptTensor& norm_weight, double norm_eps);                \
  /* mhc_post, then mhc_combine of its result -> residual_out, layer_input */                 \
  std::tuple<Tensor, Tensor> mhc_post_combine_##BACKEND(                                      \
      const Tensor& x, const Tensor& residual, const Tensor& post_mix,                        \
      const Tensor& comb_mix, const Tensor& pre_mix, const OptTensor& norm_weight,            \
      double norm_eps);                                                                       \
  /* mhc_post_combine, then mhc_stats of residual_out -> residual_out, layer_input, */        \
  /* next_pre_mix, next_post_mix, next_comb_mix */                                            \
  Shifted5 mhc_shifted_post_pre_##BACKEND(                                                    \
      const Tensor& x, const Tensor& residual, const Tensor& post_mix,                        \
      const Tensor& comb_mix, const Tensor& pre_mix, const Tensor& fn,                        \
      const Tensor& hc_scale, const Tensor& hc_base, double rms_eps, double hc_pre_eps,       \
      double hc_sinkhorn_eps, double hc_post_mult_value, int64_t sinkhorn_repeat,             \
      const OptTensor& norm_weight, double norm_eps);                                         \
  /* x [M,K] bf16, fn [N,K] f32 -> out [S,M,N] f32, sqrsum [S,M] f32 */                       \
  std::tuple<Tensor, Tensor> hc_prenorm_gemm_##BACKEND(const Tensor& x, const Tensor& fn,     \
                                                       int64_t num_splits);                   \
  /* DeepGEMM form: writes out [M,N] / [S,M,N] and sqrsum [M] / [S,M] */                      \
  void tf32_hc_prenorm_gemm_##BACKEND(const Tensor& x, const Tensor& fn, const Tensor& out,   \
                                      const Tensor& sqrsum, std::optional<int64_t> num_splits); \
  /* x [M,K] bf16, weight [N,K] bf16 -> [M,N] f32 */                                          \
  Tensor linear_bf16_fp32_##BACKEND(const Tensor& x, const Tensor& weight);

MHC_DECLARE_OPS(cpu)
#ifdef MHC_WITH_CUDA
MHC_DECLARE_OPS(cuda)
#endif

#undef MHC_DECLARE_OPS

}  // namespace mhc
