// mhc_pre (docs/spec.md §2.1) and mhc_stats (§2.9) on CUDA: validate, allocate, plan, and run
// the plan's kernels (cuda/hc_launch.cuh): a split-K GEMM on tensor cores and an epilogue with
// the gates and the weighted stream sum at decode sizes, one FULL_K kernel at prefill sizes.
// mhc_stats runs the same kernels without the stream sum (one translation unit, so that both
// ops share their kernel instances).
#include "core/flags.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/hc_launch.cuh"
#include "cuda/stats.h"
#include "ops.h"

namespace mhc {

Pre3 mhc_pre_cuda(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,
                  const Tensor& hc_base, double rms_eps, double hc_pre_eps,
                  double hc_sinkhorn_eps, double hc_post_mult_value, int64_t sinkhorn_repeat,
                  const OptTensor& norm_weight, double norm_eps) {
  const StreamDims d = validate_mhc_pre(residual, fn, hc_scale, hc_base,
                                        {rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                                         hc_post_mult_value, sinkhorn_repeat, norm_eps},
                                        norm_weight);
  const bool norm = norm_weight.has_value() && norm_weight->defined();
  const auto fopts = residual.options().dtype(at::kFloat);
  Tensor post_mix = at::empty({d.T, d.n, 1}, fopts);
  Tensor comb_mix = at::empty({d.T, d.n, d.n}, fopts);
  Tensor layer_input = at::empty({d.T, d.H}, residual.options());
  if (d.T == 0) return {post_mix, comb_mix, layer_input};

  const c10::cuda::CUDAGuard guard(residual.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int dev = residual.get_device();
  const Tensor res = cuda::aligned_contiguous(residual);
  const Tensor w = cuda::aligned_contiguous(fn);
  const Tensor scale = hc_scale.contiguous(), base = hc_base.contiguous();
  const Tensor nw = norm ? cuda::aligned_contiguous(norm_weight_bf16(norm_weight)) : Tensor();
  const Plan plan = plan_of(KernelType::MHC_PRE, d.T, d.n, d.H, cuda::num_sms(dev),
                            {norm, batch_invariant_enabled(), false,
                             cuda::supports_clusters(dev)});
  record_plan(dev, plan);

  cuda::HcCall call;
  call.T = d.T;
  call.n = static_cast<int>(d.n);
  call.H = static_cast<int>(d.H);
  call.res = cuda::bf16_ptr(res);
  call.fn = w.const_data_ptr<float>();
  call.scale = scale.const_data_ptr<float>();
  call.base = base.const_data_ptr<float>();
  call.norm_w = norm ? cuda::bf16_ptr(nw) : nullptr;
  call.post_out = post_mix.mutable_data_ptr<float>();
  call.comb_out = comb_mix.mutable_data_ptr<float>();
  call.out = cuda::bf16_mut(layer_input);
  call.rms_eps = static_cast<float>(rms_eps);
  call.pre_eps = static_cast<float>(hc_pre_eps);
  call.sinkhorn_eps = static_cast<float>(hc_sinkhorn_eps);
  call.post_mult = static_cast<float>(hc_post_mult_value);
  call.norm_eps = static_cast<float>(norm_eps);
  call.repeat = sinkhorn_repeat;
  cuda::run_hc<Mode::PRE>(plan, call, fopts, dev, stream);
  return {post_mix, comb_mix, layer_input};
}

namespace cuda {
void run_stats_plan(const Plan& plan, const Tensor& residual, const Tensor& fn,
                    const Tensor& hc_scale, const Tensor& hc_base, const PreArgs& a,
                    const Tensor& pre, const Tensor& post, const Tensor& comb) {
  const int dev = residual.get_device();
  const Tensor res = aligned_contiguous(residual);
  const Tensor w = aligned_contiguous(fn);
  const Tensor scale = hc_scale.contiguous(), base = hc_base.contiguous();
  HcCall call;
  call.T = res.size(0);
  call.n = static_cast<int>(res.size(1));
  call.H = static_cast<int>(res.size(2));
  call.res = bf16_ptr(res);
  call.fn = w.const_data_ptr<float>();
  call.scale = scale.const_data_ptr<float>();
  call.base = base.const_data_ptr<float>();
  call.pre_out = pre.mutable_data_ptr<float>();
  call.post_out = post.mutable_data_ptr<float>();
  call.comb_out = comb.mutable_data_ptr<float>();
  call.rms_eps = static_cast<float>(a.rms_eps);
  call.pre_eps = static_cast<float>(a.hc_pre_eps);
  call.sinkhorn_eps = static_cast<float>(a.hc_sinkhorn_eps);
  call.post_mult = static_cast<float>(a.hc_post_mult_value);
  call.repeat = a.sinkhorn_repeat;
  // The pre engine's kernels with call.out null: they write pre, post and comb, no stream sum.
  TORCH_INTERNAL_ASSERT(plan.kind == KernelType::MHC_STATS && !plan.norm,
                        "mhc_stats: not a stats plan");
  run_hc<Mode::PRE, false>(plan, call, residual.options().dtype(at::kFloat), dev,
                           at::cuda::getCurrentCUDAStream());
}
}  // namespace cuda

Pre3 mhc_stats_cuda(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,
                    const Tensor& hc_base, double rms_eps, double hc_pre_eps,
                    double hc_sinkhorn_eps, double hc_post_mult_value, int64_t sinkhorn_repeat) {
  const PreArgs a{rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, 0.0};
  const StreamDims d = validate_mhc_stats(residual, fn, hc_scale, hc_base, a);
  const auto fopts = residual.options().dtype(at::kFloat);
  Tensor pre_mix = at::empty({d.T, d.n}, fopts);
  Tensor post_mix = at::empty({d.T, d.n, 1}, fopts);
  Tensor comb_mix = at::empty({d.T, d.n, d.n}, fopts);
  if (d.T == 0) return {pre_mix, post_mix, comb_mix};

  const c10::cuda::CUDAGuard guard(residual.device());
  const int dev = residual.get_device();
  const Plan plan = plan_of(KernelType::MHC_STATS, d.T, d.n, d.H, cuda::num_sms(dev),
                            {false, batch_invariant_enabled(), false,
                             cuda::supports_clusters(dev)});
  record_plan(dev, plan);
  cuda::run_stats_plan(plan, residual, fn, hc_scale, hc_base, a, pre_mix, post_mix, comb_mix);
  return {pre_mix, post_mix, comb_mix};
}

}  // namespace mhc
