// The only TORCH_LIBRARY(mhc): every schema once (SPEC §2), then one impl block per backend.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(mhc, m) {
  // split-K skinny GEMM + RMS + sigmoid gates + Sinkhorn + weighted stream sum (SPEC §2.1)
  m.def(
      "mhc_pre(Tensor residual, Tensor fn, Tensor hc_scale, Tensor hc_base, "
      "float rms_eps=1e-6, float hc_pre_eps=1e-6, float hc_sinkhorn_eps=1e-6, "
      "float hc_post_mult_value=2.0, int sinkhorn_repeat=20, "
      "Tensor? norm_weight=None, float norm_eps=1e-6) "
      "-> (Tensor post_mix, Tensor comb_mix, Tensor layer_input)");
  // new streams: post * x + comb^T @ old streams (SPEC §2.2)
  m.def("mhc_post(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix) -> Tensor");
  // mhc_post then mhc_pre in one call (SPEC §2.3)
  m.def(
      "mhc_fused_post_pre(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix, "
      "Tensor fn, Tensor hc_scale, Tensor hc_base, "
      "float rms_eps=1e-6, float hc_pre_eps=1e-6, float hc_sinkhorn_eps=1e-6, "
      "float hc_post_mult_value=2.0, int sinkhorn_repeat=20, "
      "Tensor? norm_weight=None, float norm_eps=1e-6) "
      "-> (Tensor residual_out, Tensor post_mix_out, Tensor comb_mix_out, Tensor layer_input)");
  // final collapse of the streams before the last RMSNorm (SPEC §2.4)
  m.def(
      "hc_head(Tensor residual, Tensor fn, Tensor hc_scale, Tensor hc_base, "
      "float rms_eps=1e-6, float hc_eps=1e-6) -> Tensor");
  // DeepSeek-V4.1 (SPEC §2.9): the gates of mhc_pre with pre kept
  m.def(
      "mhc_stats(Tensor residual, Tensor fn, Tensor hc_scale, Tensor hc_base, "
      "float rms_eps=1e-6, float hc_pre_eps=1e-6, float hc_sinkhorn_eps=1e-6, "
      "float hc_post_mult_value=2.0, int sinkhorn_repeat=20) "
      "-> (Tensor pre_mix, Tensor post_mix, Tensor comb_mix)");
  // the weighted stream sum with a given (carried) pre, optionally RMS-normed (SPEC §2.9)
  m.def(
      "mhc_combine(Tensor residual, Tensor pre_mix, Tensor? norm_weight=None, "
      "float norm_eps=1e-6) -> Tensor layer_input");
  // mhc_post, then mhc_combine of its result with the carried pre (SPEC §2.9)
  m.def(
      "mhc_post_combine(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix, "
      "Tensor pre_mix, Tensor? norm_weight=None, float norm_eps=1e-6) "
      "-> (Tensor residual_out, Tensor layer_input)");
  // the V4.1 boundary: mhc_post_combine, then mhc_stats of the new residual (SPEC §2.9)
  m.def(
      "mhc_shifted_post_pre(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix, "
      "Tensor pre_mix, Tensor fn, Tensor hc_scale, Tensor hc_base, "
      "float rms_eps=1e-6, float hc_pre_eps=1e-6, float hc_sinkhorn_eps=1e-6, "
      "float hc_post_mult_value=2.0, int sinkhorn_repeat=20, "
      "Tensor? norm_weight=None, float norm_eps=1e-6) "
      "-> (Tensor residual_out, Tensor layer_input, Tensor next_pre_mix, Tensor next_post_mix, "
      "Tensor next_comb_mix)");
  // split-K x @ fn^T and sum of squares per split (SPEC §2.5)
  m.def("hc_prenorm_gemm(Tensor x, Tensor fn, int num_splits=1) -> (Tensor out, Tensor sqrsum)");
  // DeepGEMM-compatible form of hc_prenorm_gemm writing into out / sqrsum (SPEC §2.5)
  m.def(
      "tf32_hc_prenorm_gemm(Tensor x, Tensor fn, Tensor(a!) out, Tensor(b!) sqrsum, "
      "int? num_splits=None) -> ()");
  // bf16 x bf16 -> fp32 GEMM with fp32 accumulation (SPEC §2.7)
  m.def("linear_bf16_fp32(Tensor x, Tensor weight) -> Tensor");
}

#define MHC_IMPL_OPS(m, BACKEND)                                          \
  m.impl("mhc_pre", &mhc::mhc_pre_##BACKEND);                             \
  m.impl("mhc_post", &mhc::mhc_post_##BACKEND);                           \
  m.impl("mhc_fused_post_pre", &mhc::mhc_fused_post_pre_##BACKEND);       \
  m.impl("hc_head", &mhc::hc_head_##BACKEND);                             \
  m.impl("mhc_stats", &mhc::mhc_stats_##BACKEND);                         \
  m.impl("mhc_combine", &mhc::mhc_combine_##BACKEND);                     \
  m.impl("mhc_post_combine", &mhc::mhc_post_combine_##BACKEND);           \
  m.impl("mhc_shifted_post_pre", &mhc::mhc_shifted_post_pre_##BACKEND);   \
  m.impl("hc_prenorm_gemm", &mhc::hc_prenorm_gemm_##BACKEND);             \
  m.impl("tf32_hc_prenorm_gemm", &mhc::tf32_hc_prenorm_gemm_##BACKEND);   \
  m.impl("linear_bf16_fp32", &mhc::linear_bf16_fp32_##BACKEND)

TORCH_LIBRARY_IMPL(mhc, CPU, m) { MHC_IMPL_OPS(m, cpu); }

#ifdef MHC_WITH_CUDA
TORCH_LIBRARY_IMPL(mhc, CUDA, m) { MHC_IMPL_OPS(m, cuda); }
#endif
