// mhc_pre on the CPU (SPEC §2.1): the dot pass and the gates of each token (cpu::gate_tokens),
// then the weighted stream sum (cpu::stream_sum). A token's result never depends on T or its
// neighbours.
#include <ATen/ops/empty.h>

#include "core/math.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cpu/common.h"
#include "ops.h"

namespace mhc {

Pre3 mhc_pre_cpu(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,
                 const Tensor& hc_base, double rms_eps, double hc_pre_eps,
                 double hc_sinkhorn_eps, double hc_post_mult_value, int64_t sinkhorn_repeat,
                 const OptTensor& norm_weight, double norm_eps) {
  const StreamDims d = validate_mhc_pre(residual, fn, hc_scale, hc_base,
                                        {rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                                         hc_post_mult_value, sinkhorn_repeat, norm_eps},
                                        norm_weight);
  const int64_t T = d.T, n = d.n, H = d.H;
  Tensor post_mix = at::empty({T, n, 1}, residual.options().dtype(at::kFloat));
  Tensor comb_mix = at::empty({T, n, n}, residual.options().dtype(at::kFloat));
  Tensor layer_input = at::empty({T, H}, residual.options());
  if (T == 0) return {post_mix, comb_mix, layer_input};

  const Tensor res = residual.contiguous(), w = fn.contiguous();
  const Tensor scale = hc_scale.contiguous(), base = hc_base.contiguous();
  const Tensor w16 = norm_weight_bf16(norm_weight);
  const Tensor nw = w16.defined() ? w16.contiguous() : Tensor();
  record_plan(-1, plan_of(KernelType::MHC_PRE, T, n, H, 0, {nw.defined(), false, false}));
  const GateParams p = cpu::gate_params(scale, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                                        hc_post_mult_value, sinkhorn_repeat);
  const uint16_t* res_p = cpu::bf16_bits(res);
  const float* w_p = w.data_ptr<float>();
  const float* base_p = base.data_ptr<float>();
  const uint16_t* nw_p = nw.defined() ? cpu::bf16_bits(nw) : nullptr;
  float* post_p = post_mix.data_ptr<float>();
  float* comb_p = comb_mix.data_ptr<float>();
  uint16_t* out_p = cpu::bf16_bits(layer_input);
  const float norm_eps_f = static_cast<float>(norm_eps);

  MHC_DISPATCH_HC_MULT(n, N, [&] {
    cpu::gate_tokens<N>(res_p, T, H, w_p, base_p, p,
                        [&](int64_t t, const uint16_t* row, const float (&pre)[N],
                            const float (&post)[N], const float (&comb)[N][N], float* y) {
                          for (int i = 0; i < N; ++i) post_p[t * N + i] = post[i];
                          for (int j = 0; j < N; ++j)
                            for (int k = 0; k < N; ++k) comb_p[(t * N + j) * N + k] = comb[j][k];
                          cpu::stream_sum<N>(row, H, pre, nw_p, norm_eps_f, y, out_p + t * H);
                        });
  });
  return {post_mix, comb_mix, layer_input};
}

}  // namespace mhc
