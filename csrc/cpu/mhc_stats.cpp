// mhc_stats on the CPU (SPEC §2.9): mhc_pre's dot pass and gates (cpu::gate_tokens) with pre
// kept and no stream sum.
#include <ATen/ops/empty.h>

#include "core/math.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cpu/common.h"
#include "ops.h"

namespace mhc {

namespace cpu {
void stats_tokens(const uint16_t* res, int64_t T, int64_t n, int64_t H, const float* fn,
                  const float* base, const GateParams& p, float* pre_p, float* post_p,
                  float* comb_p) {
  MHC_DISPATCH_HC_MULT(n, N, [&] {
    gate_tokens<N>(res, T, H, fn, base, p,
                   [&](int64_t t, const uint16_t*, const float (&pre)[N], const float (&post)[N],
                       const float (&comb)[N][N], float*) {
                     for (int i = 0; i < N; ++i) pre_p[t * N + i] = pre[i];
                     for (int i = 0; i < N; ++i) post_p[t * N + i] = post[i];
                     for (int j = 0; j < N; ++j)
                       for (int k = 0; k < N; ++k) comb_p[(t * N + j) * N + k] = comb[j][k];
                   });
  });
}
}  // namespace cpu

Pre3 mhc_stats_cpu(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,
                   const Tensor& hc_base, double rms_eps, double hc_pre_eps,
                   double hc_sinkhorn_eps, double hc_post_mult_value, int64_t sinkhorn_repeat) {
  const StreamDims d = validate_mhc_stats(
      residual, fn, hc_scale, hc_base,
      {rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, 0.0});
  const auto fopts = residual.options().dtype(at::kFloat);
  Tensor pre_mix = at::empty({d.T, d.n}, fopts);
  Tensor post_mix = at::empty({d.T, d.n, 1}, fopts);
  Tensor comb_mix = at::empty({d.T, d.n, d.n}, fopts);
  if (d.T == 0) return {pre_mix, post_mix, comb_mix};
  record_plan(-1, plan_of(KernelType::MHC_STATS, d.T, d.n, d.H, 0, {}));
  const Tensor res = residual.contiguous(), w = fn.contiguous();
  const Tensor scale = hc_scale.contiguous(), base = hc_base.contiguous();
  const GateParams p = cpu::gate_params(scale, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                                        hc_post_mult_value, sinkhorn_repeat);
  cpu::stats_tokens(cpu::bf16_bits(res), d.T, d.n, d.H, w.const_data_ptr<float>(),
                    base.const_data_ptr<float>(), p, pre_mix.mutable_data_ptr<float>(),
                    post_mix.mutable_data_ptr<float>(), comb_mix.mutable_data_ptr<float>());
  return {pre_mix, post_mix, comb_mix};
}

}  // namespace mhc
