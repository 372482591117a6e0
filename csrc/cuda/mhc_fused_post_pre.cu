// mhc_fused_post_pre on CUDA (docs/spec.md §2.3): validate, allocate, plan, and run the plan's
// kernels (cuda/hc_launch.cuh). The fused main kernel (cuda/hc_main_fused.cuh) computes each
// new residual element with post_vec8 (the device function mhc_post uses, so residual_out is
// bit-identical to mhc_post), stores it and feeds the same registers to the pre GEMM; the
// epilogue (SPLIT_K) or the rest of the FULL_K kernel computes the gates and the stream sum
// from residual_out. The fused shifted boundary of mhc_shifted_post_pre (cuda/boundary.h) runs
// the same kernels, its epilogue combining with the carried pre.
#include "core/flags.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/boundary.h"
#include "cuda/hc_fused_instances.h"
#include "ops.h"

namespace mhc {

namespace cuda {
namespace {

// The inputs of the fused kernels, contiguous and 16-byte aligned where vector loads read them,
// kept alive while the call's kernels are enqueued.
struct FusedInputs {
  Tensor x, res, post_in, comb_in, fn, scale, base, norm_w;
};

FusedInputs fused_inputs(const Tensor& x, const Tensor& residual, const Tensor& post_mix,
                         const Tensor& comb_mix, const Tensor& fn, const Tensor& hc_scale,
                         const Tensor& hc_base, const Tensor& norm_w16) {
  return {aligned_contiguous(x),
          aligned_contiguous(residual),
          post_mix.contiguous(),
          comb_mix.contiguous(),
          aligned_contiguous(fn),
          hc_scale.contiguous(),
          hc_base.contiguous(),
          norm_w16.defined() ? aligned_contiguous(norm_w16) : Tensor()};
}

HcCall fused_call(const FusedInputs& in, const PreArgs& a, const Tensor& residual_out,
                  const Tensor& post_out, const Tensor& comb_out, const Tensor& layer_input) {
  HcCall call;
  call.T = in.res.size(0);
  call.n = static_cast<int>(in.res.size(1));
  call.H = static_cast<int>(in.res.size(2));
  call.res = bf16_ptr(in.res);
  call.x = bf16_ptr(in.x);
  call.post_in = in.post_in.const_data_ptr<float>();
  call.comb_in = in.comb_in.const_data_ptr<float>();
  call.res_out = bf16_mut(residual_out);
  call.fn = in.fn.const_data_ptr<float>();
  call.scale = in.scale.const_data_ptr<float>();
  call.base = in.base.const_data_ptr<float>();
  call.norm_w = in.norm_w.defined() ? bf16_ptr(in.norm_w) : nullptr;
  call.post_out = post_out.mutable_data_ptr<float>();
  call.comb_out = comb_out.mutable_data_ptr<float>();
  call.out = bf16_mut(layer_input);
  call.rms_eps = static_cast<float>(a.rms_eps);
  call.pre_eps = static_cast<float>(a.hc_pre_eps);
  call.sinkhorn_eps = static_cast<float>(a.hc_sinkhorn_eps);
  call.post_mult = static_cast<float>(a.hc_post_mult_value);
  call.norm_eps = static_cast<float>(a.norm_eps);
  call.repeat = a.sinkhorn_repeat;
  return call;
}

}  // namespace

void run_fused_boundary(const Plan& plan, const Tensor& x, const Tensor& residual,
                        const Tensor& post_mix, const Tensor& comb_mix, const Tensor& pre_mix,
                        const Tensor& fn, const Tensor& hc_scale, const Tensor& hc_base,
                        const PreArgs& a, const Tensor& norm_weight, const BoundaryOutputs& out) {
  TORCH_INTERNAL_ASSERT(plan.kind == KernelType::MHC_SHIFTED_POST_PRE && plan.fused_boundary,
                        "mhc_shifted_post_pre: not a fused boundary plan");
  const FusedInputs in =
      fused_inputs(x, residual, post_mix, comb_mix, fn, hc_scale, hc_base, norm_weight);
  const Tensor pre = pre_mix.contiguous();
  HcCall call = fused_call(in, a, out.residual_out, out.next_post, out.next_comb,
                           out.layer_input);
  call.pre_in = pre.const_data_ptr<float>();
  call.pre_out = out.next_pre.mutable_data_ptr<float>();
  run_hc<Mode::FUSED>(plan, call, residual.options().dtype(at::kFloat), residual.get_device(),
                      at::cuda::getCurrentCUDAStream());
}

}  // namespace cuda

Fused4 mhc_fused_post_pre_cuda(const Tensor& x, const Tensor& residual, const Tensor& post_mix,
                               const Tensor& comb_mix, const Tensor& fn, const Tensor& hc_scale,
                               const Tensor& hc_base, double rms_eps, double hc_pre_eps,
                               double hc_sinkhorn_eps, double hc_post_mult_value,
                               int64_t sinkhorn_repeat, const OptTensor& norm_weight,
                               double norm_eps) {
  const PreArgs a{rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat,
                  norm_eps};
  const StreamDims d = validate_mhc_fused_post_pre(x, residual, post_mix, comb_mix, fn, hc_scale,
                                                   hc_base, a, norm_weight);
  const bool norm = norm_weight.has_value() && norm_weight->defined();
  const auto fopts = residual.options().dtype(at::kFloat);
  Tensor residual_out = at::empty({d.T, d.n, d.H}, residual.options());
  Tensor post_out = at::empty({d.T, d.n, 1}, fopts);
  Tensor comb_out = at::empty({d.T, d.n, d.n}, fopts);
  Tensor layer_input = at::empty({d.T, d.H}, residual.options());
  if (d.T == 0) return {residual_out, post_out, comb_out, layer_input};

  const c10::cuda::CUDAGuard guard(residual.device());
  const int dev = residual.get_device();
  const cuda::FusedInputs in = cuda::fused_inputs(
      x, residual, post_mix, comb_mix, fn, hc_scale, hc_base,
      norm ? norm_weight_bf16(norm_weight) : Tensor());
  const Plan plan = plan_of(KernelType::MHC_FUSED_POST_PRE, d.T, d.n, d.H, cuda::num_sms(dev),
                            {norm, batch_invariant_enabled(), false,
                             cuda::supports_clusters(dev)});
  record_plan(dev, plan);
  cuda::run_hc<Mode::FUSED>(plan, cuda::fused_call(in, a, residual_out, post_out, comb_out,
                                                   layer_input),
                            fopts, dev, at::cuda::getCurrentCUDAStream());
  return {residual_out, post_out, comb_out, layer_input};
}

}  // namespace mhc
