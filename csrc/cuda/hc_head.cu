// hc_head on CUDA (docs/spec.md §2.4): validate, allocate, plan, and run the plan's kernels
// (cuda/hc_launch.cuh): the mhc_pre pipeline with n GEMM rows, sigmoid gates and no Sinkhorn
// at decode sizes, and from T = 256 a CLUSTER plan that reads the residual once (at n = 4,
// H = 4096 / 7168 the persistent kernel of cuda/hc_head_persistent.cuh).
#include "core/flags.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cuda/hc_launch.cuh"
#include "ops.h"

namespace mhc {

Tensor hc_head_cuda(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,
                    const Tensor& hc_base, double rms_eps, double hc_eps) {
  const StreamDims d = validate_hc_head(residual, fn, hc_scale, hc_base, rms_eps, hc_eps);
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

  cuda::HcCall call;
  call.T = d.T;
  call.n = static_cast<int>(d.n);
  call.H = static_cast<int>(d.H);
  call.res = cuda::bf16_ptr(res);
  call.fn = w.const_data_ptr<float>();
  call.scale = scale.const_data_ptr<float>();
  call.base = base.const_data_ptr<float>();
  call.out = cuda::bf16_mut(out);
  call.rms_eps = static_cast<float>(rms_eps);
  call.pre_eps = static_cast<float>(hc_eps);
  cuda::run_hc<Mode::HEAD>(plan, call, fopts, dev, stream);
  return out;
}

}  // namespace mhc
