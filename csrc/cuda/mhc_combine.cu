// mhc_combine, mhc_post_combine and mhc_shifted_post_pre on CUDA (docs/spec.md §2.9): validate,
// allocate, plan, launch hc_combine.cuh's kernel; the shifted boundary then runs mhc_stats'
// kernels (cuda/stats.h) on residual_out, the plan's last launches (launches_of), or where the
// plan is the fused boundary the fused op's kernels (cuda/boundary.h) instead of both.
#include "core/flags.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/boundary.h"
#include "cuda/common.cuh"
#include "cuda/hc_combine.cuh"
#include "cuda/stats.h"
#include "ops.h"

namespace mhc {

namespace {

struct Combined {
  Tensor residual_out, layer_input;
};

// The combine kernel of `plan` (its first launch) on validated inputs; x undefined for
// mhc_combine. The caller holds the device guard.
Combined launch_combine(const Plan& plan, const Tensor& x, const Tensor& residual,
                        const Tensor& post_mix, const Tensor& comb_mix, const Tensor& pre_mix,
                        const OptTensor& norm_weight, double norm_eps, const StreamDims& d) {
  const bool post = x.defined();
  Combined r;
  r.residual_out = post ? at::empty({d.T, d.n, d.H}, residual.options()) : Tensor();
  r.layer_input = at::empty({d.T, d.H}, residual.options());
  if (d.T == 0) return r;
  const int dev = residual.get_device();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const Tensor res = cuda::aligned_contiguous(residual);
  const Tensor pre = pre_mix.contiguous();
  const Tensor xc = post ? cuda::aligned_contiguous(x) : Tensor();
  const Tensor pst = post ? post_mix.contiguous() : Tensor();
  const Tensor cmb = post ? comb_mix.contiguous() : Tensor();
  const Tensor w16 = norm_weight_bf16(norm_weight);
  const Tensor nw = w16.defined() ? cuda::aligned_contiguous(w16) : Tensor();
  const bool norm = nw.defined();
  TORCH_INTERNAL_ASSERT(norm == plan.norm, "plan and call disagree on the folded norm");

  cuda::CombineParams p{};
  p.x = post ? cuda::bf16_ptr(xc) : nullptr;
  p.res = cuda::bf16_ptr(res);
  p.post = post ? pst.const_data_ptr<float>() : nullptr;
  p.comb = post ? cmb.const_data_ptr<float>() : nullptr;
  p.pre = pre.const_data_ptr<float>();
  p.norm_w = norm ? cuda::bf16_ptr(nw) : nullptr;
  p.res_out = post ? cuda::bf16_mut(r.residual_out) : nullptr;
  p.out = cuda::bf16_mut(r.layer_input);
  p.H = static_cast<int>(d.H);
  p.norm_eps = static_cast<float>(norm_eps);
  const Launch l = launches_of(plan, d.T, d.n, d.H, {}).step[0];
  TORCH_INTERNAL_ASSERT(l.role == KernelRole::COMBINE && l.block <= kCombineMaxThreads);
  const bool split = plan.num_splits > 1;
  p.ctas = plan.num_splits;
  p.vectors = split ? combine_split_vectors(d.H) : static_cast<int>(d.H / 8);
  TORCH_INTERNAL_ASSERT(l.grid_x == d.T * p.ctas && (l.cluster > 0) == (split && norm));
  const dim3 grid(static_cast<unsigned>(l.grid_x)), block(static_cast<unsigned>(l.block));
  MHC_DISPATCH_HC_MULT(d.n, N, [&] {
    // hc_combine_kernel<N, POST, NORM, SPLIT>, indexed [post][norm][split]
    using Kernel = void (*)(cuda::CombineParams);
    const Kernel kernels[2][2][2] = {
        {{cuda::hc_combine_kernel<N, false, false, false>,
          cuda::hc_combine_kernel<N, false, false, true>},
         {cuda::hc_combine_kernel<N, false, true, false>,
          cuda::hc_combine_kernel<N, false, true, true>}},
        {{cuda::hc_combine_kernel<N, true, false, false>,
          cuda::hc_combine_kernel<N, true, false, true>},
         {cuda::hc_combine_kernel<N, true, true, false>,
          cuda::hc_combine_kernel<N, true, true, true>}}};
    cuda::launch_clustered(kernels[post][norm][split], dev, grid, block,
                           static_cast<size_t>(l.smem), stream, l.cluster, p);
  });
  return r;
}

Plan combine_plan(KernelType kind, const StreamDims& d, int dev, bool norm) {
  return plan_of(kind, d.T, d.n, d.H, cuda::num_sms(dev),
                 {norm, batch_invariant_enabled(), false, cuda::supports_clusters(dev)});
}

bool has_norm(const OptTensor& w) { return w.has_value() && w->defined(); }

}  // namespace

Tensor mhc_combine_cuda(const Tensor& residual, const Tensor& pre_mix,
                        const OptTensor& norm_weight, double norm_eps) {
  const StreamDims d = validate_mhc_combine(residual, pre_mix, norm_weight, norm_eps);
  if (d.T == 0) return at::empty({d.T, d.H}, residual.options());
  const c10::cuda::CUDAGuard guard(residual.device());
  const int dev = residual.get_device();
  const Plan plan = combine_plan(KernelType::MHC_COMBINE, d, dev, has_norm(norm_weight));
  record_plan(dev, plan);
  return launch_combine(plan, Tensor(), residual, Tensor(), Tensor(), pre_mix, norm_weight,
                        norm_eps, d)
      .layer_input;
}

std::tuple<Tensor, Tensor> mhc_post_combine_cuda(const Tensor& x, const Tensor& residual,
                                                 const Tensor& post_mix,
                                                 const Tensor& comb_mix, const Tensor& pre_mix,
                                                 const OptTensor& norm_weight, double norm_eps) {
  const StreamDims d =
      validate_mhc_post_combine(x, residual, post_mix, comb_mix, pre_mix, norm_weight, norm_eps);
  if (d.T == 0)
    return {at::empty({d.T, d.n, d.H}, residual.options()), at::empty({d.T, d.H}, residual.options())};
  const c10::cuda::CUDAGuard guard(residual.device());
  const int dev = residual.get_device();
  const Plan plan = combine_plan(KernelType::MHC_POST_COMBINE, d, dev, has_norm(norm_weight));
  record_plan(dev, plan);
  Combined r =
      launch_combine(plan, x, residual, post_mix, comb_mix, pre_mix, norm_weight, norm_eps, d);
  return {r.residual_out, r.layer_input};
}

Shifted5 mhc_shifted_post_pre_cuda(const Tensor& x, const Tensor& residual,
                                   const Tensor& post_mix, const Tensor& comb_mix,
                                   const Tensor& pre_mix, const Tensor& fn,
                                   const Tensor& hc_scale, const Tensor& hc_base,
                                   double rms_eps, double hc_pre_eps, double hc_sinkhorn_eps,
                                   double hc_post_mult_value, int64_t sinkhorn_repeat,
                                   const OptTensor& norm_weight, double norm_eps) {
  const PreArgs a{rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat,
                  norm_eps};
  const StreamDims d = validate_mhc_shifted_post_pre(x, residual, post_mix, comb_mix, pre_mix,
                                                     fn, hc_scale, hc_base, a, norm_weight);
  const auto fopts = residual.options().dtype(at::kFloat);
  Tensor next_pre = at::empty({d.T, d.n}, fopts);
  Tensor next_post = at::empty({d.T, d.n, 1}, fopts);
  Tensor next_comb = at::empty({d.T, d.n, d.n}, fopts);
  if (d.T == 0)
    return {at::empty({d.T, d.n, d.H}, residual.options()), at::empty({d.T, d.H}, residual.options()),
            next_pre, next_post, next_comb};
  const c10::cuda::CUDAGuard guard(residual.device());
  const int dev = residual.get_device();
  // One plan for the boundary: the fused op's kernels, or the combine kernel of
  // mhc_post_combine, then mhc_stats' kernels.
  const Plan plan = combine_plan(KernelType::MHC_SHIFTED_POST_PRE, d, dev, has_norm(norm_weight));
  record_plan(dev, plan);
  if (plan.fused_boundary) {
    const cuda::BoundaryOutputs out{at::empty({d.T, d.n, d.H}, residual.options()),
                                    at::empty({d.T, d.H}, residual.options()), next_pre,
                                    next_post, next_comb};
    cuda::run_fused_boundary(plan, x, residual, post_mix, comb_mix, pre_mix, fn, hc_scale,
                             hc_base, a, norm_weight_bf16(norm_weight), out);
    return {out.residual_out, out.layer_input, next_pre, next_post, next_comb};
  }
  Combined r = launch_combine(shifted_combine_plan(plan), x, residual, post_mix, comb_mix,
                              pre_mix, norm_weight, norm_eps, d);
  Plan stats = plan;
  stats.kind = KernelType::MHC_STATS;
  stats.norm = false;
  cuda::run_stats_plan(stats, r.residual_out, fn, hc_scale, hc_base, a, next_pre, next_post,
                       next_comb);
  return {r.residual_out, r.layer_input, next_pre, next_post, next_comb};
}

}  // namespace mhc
