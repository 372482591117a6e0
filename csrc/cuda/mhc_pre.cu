// mhc_pre on CUDA (SPEC §2.1): validation, plan, and the kernels of csrc/cuda/hc_main.cuh
// (split-K GEMM on tensor cores + epilogue with the gates and the weighted stream sum, or the
// single FULL_K kernel at large T). Designed against latency at decode sizes and HBM bytes at
// prefill sizes; see hc_main.cuh for the split of the work over the grid.
#include "core/flags.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/hc_main.cuh"
#include "ops.h"

namespace mhc {

Pre3 mhc_pre_cuda(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,
                  const Tensor& hc_base, double rms_eps, double hc_pre_eps,
                  double hc_sinkhorn_eps, double hc_post_mult_value, int64_t sinkhorn_repeat,
                  const OptTensor& norm_weight, double norm_eps) {
  constexpr const char* op = "mhc_pre";
  const StreamDims d = check_residual(op, residual);
  check_pre_params(op, d, residual, fn, hc_scale, hc_base,
                   {rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat,
                    norm_eps},
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
  const Tensor nw = norm ? cuda::aligned_contiguous(*norm_weight) : Tensor();
  const Plan plan = plan_of(KernelType::MHC_PRE, d.T, d.n, d.H, cuda::num_sms(dev),
                            {norm, batch_invariant_enabled(), false,
                             cuda::supports_clusters(dev)});
  record_plan(dev, plan);

  const cuda::HcCall call{cuda::Mode::PRE, d.T, static_cast<int>(d.n), static_cast<int>(d.H),
                          cuda::bf16_ptr(res), nullptr, nullptr, nullptr, nullptr,
                          w.const_data_ptr<float>(), scale.const_data_ptr<float>(),
                          base.const_data_ptr<float>(), norm ? cuda::bf16_ptr(nw) : nullptr,
                          post_mix.mutable_data_ptr<float>(), comb_mix.mutable_data_ptr<float>(),
                          cuda::bf16_mut(layer_input), static_cast<float>(rms_eps),
                          static_cast<float>(hc_pre_eps), static_cast<float>(hc_sinkhorn_eps),
                          static_cast<float>(hc_post_mult_value), static_cast<float>(norm_eps),
                          sinkhorn_repeat};
  cuda::run_hc<cuda::Mode::PRE>(plan, call, fopts, dev, stream);
  return {post_mix, comb_mix, layer_input};
}

}  // namespace mhc
