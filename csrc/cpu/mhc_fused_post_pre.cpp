// mhc_fused_post_pre on the CPU: literally mhc_post then mhc_pre (SPEC §2.3). The CPU gains
// nothing from fusing, and composing keeps residual_out bit-identical to mhc_post.
#include "core/plan.h"
#include "core/validate.h"
#include "ops.h"

namespace mhc {

Fused4 mhc_fused_post_pre_cpu(const Tensor& x, const Tensor& residual, const Tensor& post_mix,
                              const Tensor& comb_mix, const Tensor& fn, const Tensor& hc_scale,
                              const Tensor& hc_base, double rms_eps, double hc_pre_eps,
                              double hc_sinkhorn_eps, double hc_post_mult_value,
                              int64_t sinkhorn_repeat, const OptTensor& norm_weight,
                              double norm_eps) {
  const StreamDims d = validate_mhc_fused_post_pre(
      x, residual, post_mix, comb_mix, fn, hc_scale, hc_base,
      {rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, norm_eps},
      norm_weight);
  if (d.T > 0)
    record_plan(-1, plan_of(KernelType::MHC_FUSED_POST_PRE, d.T, d.n, d.H, 0,
                            {norm_weight.has_value() && norm_weight->defined(), false, false}));
  Tensor residual_out = mhc_post_cpu(x, residual, post_mix, comb_mix);
  auto [post_out, comb_out, layer_input] =
      mhc_pre_cpu(residual_out, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                  hc_post_mult_value, sinkhorn_repeat, norm_weight, norm_eps);
  return {residual_out, post_out, comb_out, layer_input};
}

}  // namespace mhc
