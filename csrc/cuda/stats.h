// mhc_stats' kernels on a residual (defined in mhc_pre.cu, beside mhc_pre's instances of the same
// kernels): for mhc_stats and for the end of mhc_shifted_post_pre (mhc_combine.cu).
#pragma once

#include <ATen/core/Tensor.h>

#include "core/plan.h"
#include "core/validate.h"

namespace mhc::cuda {

// Writes pre [T, n], post [T, n, 1] and comb [T, n, n] of residual [T, n, H] (validated, T > 0)
// with the plan of kind MHC_STATS, on the current device and stream.
void run_stats_plan(const Plan& plan, const at::Tensor& residual, const at::Tensor& fn,
                    const at::Tensor& hc_scale, const at::Tensor& hc_base, const PreArgs& a,
                    const at::Tensor& pre, const at::Tensor& post, const at::Tensor& comb);

}  // namespace mhc::cuda
