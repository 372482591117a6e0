// mhc_fused_post_pre on CUDA (docs/spec.md §2.3): validate, allocate, plan, and run the plan's
// kernels (cuda/hc_launch.cuh). The fused main kernel (cuda/hc_main_fused.cuh) computes each
// new residual element with post_vec8 (the device function mhc_post uses, so residual_out is
// bit-identical to mhc_post), stores it and feeds the same registers to the pre GEMM; the
// epilogue (SPLIT_K) or the rest of the FULL_K kernel computes the gates and the stream sum
// from residual_out.
#include "core/flags.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/hc_fused_instances.h"
#include "ops.h"

namespace mhc {

Fused4 mhc_fused_post_pre_cuda(const Tensor& x, const Tensor& residual, const Tensor& post_mix,
                               const Tensor& comb_mix, const Tensor& fn, const Tensor& hc_scale,
                               const Tensor& hc_base, double rms_eps, double hc_pre_eps,
                               double hc_sinkhorn_eps, double hc_post_mult_value,
                               int64_t sinkhorn_repeat, const OptTensor& norm_weight,
                               double norm_eps) {
  const StreamDims d = validate_mhc_fused_post_pre(
      x, residual, post_mix, comb_mix, fn, hc_scale, hc_base,
      {rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, norm_eps},
      norm_weight);
  const bool norm = norm_weight.has_value() && norm_weight->defined();
  const auto fopts = residual.options().dtype(at::kFloat);
  Tensor residual_out = at::empty({d.T, d.n, d.H}, residual.options());
  Tensor post_out = at::empty({d.T, d.n, 1}, fopts);
  Tensor comb_out = at::empty({d.T, d.n, d.n}, fopts);
  Tensor layer_input = at::empty({d.T, d.H}, residual.options());
  if (d.T == 0) return {residual_out, post_out, comb_out, layer_input};

  const c10::cuda::CUDAGuard guard(residual.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int dev = residual.get_device();
  const Tensor xc = cuda::aligned_contiguous(x);
  const Tensor res = cuda::aligned_contiguous(residual);
  const Tensor post_in = post_mix.contiguous(), comb_in = comb_mix.contiguous();
  const Tensor w = cuda::aligned_contiguous(fn);
  const Tensor scale = hc_scale.contiguous(), base = hc_base.contiguous();
  const Tensor nw = norm ? cuda::aligned_contiguous(norm_weight_bf16(norm_weight)) : Tensor();
  const Plan plan = plan_of(KernelType::MHC_FUSED_POST_PRE, d.T, d.n, d.H, cuda::num_sms(dev),
                            {norm, batch_invariant_enabled(), false,
                             cuda::supports_clusters(dev)});
  record_plan(dev, plan);

  cuda::HcCall call;
  call.T = d.T;
  call.n = static_cast<int>(d.n);
  call.H = static_cast<int>(d.H);
  call.res = cuda::bf16_ptr(res);
  call.x = cuda::bf16_ptr(xc);
  call.post_in = post_in.const_data_ptr<float>();
  call.comb_in = comb_in.const_data_ptr<float>();
  call.res_out = cuda::bf16_mut(residual_out);
  call.fn = w.const_data_ptr<float>();
  call.scale = scale.const_data_ptr<float>();
  call.base = base.const_data_ptr<float>();
  call.norm_w = norm ? cuda::bf16_ptr(nw) : nullptr;
  call.post_out = post_out.mutable_data_ptr<float>();
  call.comb_out = comb_out.mutable_data_ptr<float>();
  call.out = cuda::bf16_mut(layer_input);
  call.rms_eps = static_cast<float>(rms_eps);
  call.pre_eps = static_cast<float>(hc_pre_eps);
  call.sinkhorn_eps = static_cast<float>(hc_sinkhorn_eps);
  call.post_mult = static_cast<float>(hc_post_mult_value);
  call.norm_eps = static_cast<float>(norm_eps);
  call.repeat = sinkhorn_repeat;
  cuda::run_hc<Mode::FUSED>(plan, call, fopts, dev, stream);
  return {residual_out, post_out, comb_out, layer_input};
}

}  // namespace mhc
