// The fused shifted boundary of mhc_shifted_post_pre (Plan::fused_boundary): the fused op's main
// kernel and an epilogue that combines residual_out with the carried pre. Defined in
// mhc_fused_post_pre.cu beside the fused op's instances of the same kernels; called by
// mhc_combine.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include "core/plan.h"
#include "core/validate.h"

namespace mhc::cuda {

struct BoundaryOutputs {
  at::Tensor residual_out, layer_input, next_pre, next_post, next_comb;
};

// Runs `plan` (kind MHC_SHIFTED_POST_PRE, fused_boundary) on validated inputs (T > 0) on the
// current device and stream; norm_weight undefined without the folded norm.
void run_fused_boundary(const Plan& plan, const at::Tensor& x, const at::Tensor& residual,
                        const at::Tensor& post_mix, const at::Tensor& comb_mix,
                        const at::Tensor& pre_mix, const at::Tensor& fn,
                        const at::Tensor& hc_scale, const at::Tensor& hc_base, const PreArgs& a,
                        const at::Tensor& norm_weight, const BoundaryOutputs& out);

}  // namespace mhc::cuda
