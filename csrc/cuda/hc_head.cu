// hc_head on CUDA (SPEC §2.4): the mhc_pre pipeline of csrc/cuda/hc_main.cuh with n GEMM rows,
// sigmoid gates and no Sinkhorn. Same split of the work and the same bounds as mhc_pre
// (latency and streaming fn at decode, HBM bytes at prefill).
#include "core/flags.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/hc_main.cuh"
#include "ops.h"

namespace mhc {

Tensor hc_head_cuda(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,
                    const Tensor& hc_base, double rms_eps, double hc_eps) {
  constexpr const char* op = "hc_head";
  const StreamDims d = check_residual(op, residual);
  check_head_params(op, d, residual, fn, hc_scale, hc_base, rms_eps, hc_eps);
  const auto fopts = residual.options().dtype(at::kFloat);
  Tensor out = at::empty({d.T, d.H}, residual.options());
  if (d.T == 0) return out;

  const c10::cuda::CUDAGuard guard(residual.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int dev = residual.get_device();
  const Tensor res = cuda::aligned_contiguous(residual);
  const Tensor w = cuda::aligned_contiguous(fn);
  const Tensor scale = hc_scale.contiguous(), base = hc_base.contiguous();
  const Plan plan = plan_of(KernelType::HC_HEAD, d.T, d.n, d.H, cuda::num_sms(dev),
                            {false, batch_invariant_enabled(), false,
                             cuda::supports_clusters(dev)});
  record_plan(dev, plan);

  const cuda::HcCall call{cuda::Mode::HEAD, d.T, static_cast<int>(d.n), static_cast<int>(d.H),
                          cuda::bf16_ptr(res), nullptr, nullptr, nullptr, nullptr,
                          w.const_data_ptr<float>(), scale.const_data_ptr<float>(),
                          base.const_data_ptr<float>(), nullptr, nullptr, nullptr,
                          cuda::bf16_mut(out), static_cast<float>(rms_eps),
                          static_cast<float>(hc_eps), 0.f, 0.f, 0.f, 0};
  cuda::run_hc<cuda::Mode::HEAD>(plan, call, fopts, dev, stream);
  return out;
}

}  // namespace mhc
