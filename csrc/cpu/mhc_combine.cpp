// mhc_combine, mhc_post_combine and mhc_shifted_post_pre on the CPU (SPEC §2.9). Per token: the
// new residual through mhc_post's own token function (so residual_out is bit-identical to
// mhc_post), then the weighted stream sum with the carried pre_mix and the folded RMSNorm
// through mhc_pre's (cpu::stream_sum); the shifted boundary adds mhc_stats of residual_out.
// Parallel over tokens; a token's result never depends on T or its neighbours.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "core/math.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cpu/common.h"
#include "ops.h"

namespace mhc {

namespace {

// residual_out (when x is given: mhc_post of x, residual) and layer_input of T tokens.
// src: the residual to combine (the input, or residual_out as it is written).
void combine_tokens(int64_t T, int64_t n, int64_t H, const uint16_t* x, const uint16_t* res,
                    const float* post, const float* comb, const float* pre, const uint16_t* nw,
                    float norm_eps, uint16_t* res_out, uint16_t* out) {
  MHC_DISPATCH_HC_MULT(n, N, [&] {
    const int64_t grain = std::max<int64_t>(1, 32768 / (N * H));
    at::parallel_for(0, T, grain, [&](int64_t t0, int64_t t1) {
      std::vector<float> y(H);
      for (int64_t t = t0; t < t1; ++t) {
        const uint16_t* src = res + t * N * H;
        if (x != nullptr) {
          cpu::post_one_token(N, x + t * H, src, post + t * N, comb + t * N * N, H,
                              res_out + t * N * H);
          src = res_out + t * N * H;
        }
        float p[N];
        for (int i = 0; i < N; ++i) p[i] = pre[t * N + i];
        cpu::stream_sum<N>(src, H, p, nw, norm_eps, y.data(), out + t * H);
      }
    });
  });
}

struct Combined {
  Tensor residual_out, layer_input;
};

// Validated inputs; x undefined for mhc_combine.
Combined run_combine(KernelType kind, const Tensor& x, const Tensor& residual,
                     const Tensor& post_mix, const Tensor& comb_mix, const Tensor& pre_mix,
                     const OptTensor& norm_weight, double norm_eps, const StreamDims& d,
                     bool record) {
  const bool post = x.defined();
  Combined r;
  r.residual_out = post ? at::empty({d.T, d.n, d.H}, residual.options()) : Tensor();
  r.layer_input = at::empty({d.T, d.H}, residual.options());
  if (d.T == 0) return r;
  const Tensor w16 = norm_weight_bf16(norm_weight);
  const Tensor nw = w16.defined() ? w16.contiguous() : Tensor();
  if (record) record_plan(-1, plan_of(kind, d.T, d.n, d.H, 0, {nw.defined(), false, false}));
  const Tensor res = residual.contiguous(), pre = pre_mix.contiguous();
  const Tensor xc = post ? x.contiguous() : Tensor();
  const Tensor pst = post ? post_mix.contiguous() : Tensor();
  const Tensor cmb = post ? comb_mix.contiguous() : Tensor();
  combine_tokens(d.T, d.n, d.H, post ? cpu::bf16_bits(xc) : nullptr, cpu::bf16_bits(res),
                 post ? pst.const_data_ptr<float>() : nullptr,
                 post ? cmb.const_data_ptr<float>() : nullptr, pre.const_data_ptr<float>(),
                 nw.defined() ? cpu::bf16_bits(nw) : nullptr, static_cast<float>(norm_eps),
                 post ? cpu::bf16_bits(r.residual_out) : nullptr, cpu::bf16_bits(r.layer_input));
  return r;
}

}  // namespace

Tensor mhc_combine_cpu(const Tensor& residual, const Tensor& pre_mix,
                       const OptTensor& norm_weight, double norm_eps) {
  const StreamDims d = validate_mhc_combine(residual, pre_mix, norm_weight, norm_eps);
  return run_combine(KernelType::MHC_COMBINE, Tensor(), residual, Tensor(), Tensor(), pre_mix,
                     norm_weight, norm_eps, d, true)
      .layer_input;
}

std::tuple<Tensor, Tensor> mhc_post_combine_cpu(const Tensor& x, const Tensor& residual,
                                                const Tensor& post_mix, const Tensor& comb_mix,
                                                const Tensor& pre_mix,
                                                const OptTensor& norm_weight, double norm_eps) {
  const StreamDims d =
      validate_mhc_post_combine(x, residual, post_mix, comb_mix, pre_mix, norm_weight, norm_eps);
  Combined r = run_combine(KernelType::MHC_POST_COMBINE, x, residual, post_mix, comb_mix,
                           pre_mix, norm_weight, norm_eps, d, true);
  return {r.residual_out, r.layer_input};
}

Shifted5 mhc_shifted_post_pre_cpu(const Tensor& x, const Tensor& residual,
                                  const Tensor& post_mix, const Tensor& comb_mix,
                                  const Tensor& pre_mix, const Tensor& fn,
                                  const Tensor& hc_scale, const Tensor& hc_base, double rms_eps,
                                  double hc_pre_eps, double hc_sinkhorn_eps,
                                  double hc_post_mult_value, int64_t sinkhorn_repeat,
                                  const OptTensor& norm_weight, double norm_eps) {
  const StreamDims d = validate_mhc_shifted_post_pre(
      x, residual, post_mix, comb_mix, pre_mix, fn, hc_scale, hc_base,
      {rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, norm_eps},
      norm_weight);
  const auto fopts = residual.options().dtype(at::kFloat);
  Tensor next_pre = at::empty({d.T, d.n}, fopts);
  Tensor next_post = at::empty({d.T, d.n, 1}, fopts);
  Tensor next_comb = at::empty({d.T, d.n, d.n}, fopts);
  Combined r = run_combine(KernelType::MHC_POST_COMBINE, x, residual, post_mix, comb_mix,
                           pre_mix, norm_weight, norm_eps, d, false);
  if (d.T == 0) return {r.residual_out, r.layer_input, next_pre, next_post, next_comb};
  const bool norm = norm_weight.has_value() && norm_weight->defined();
  record_plan(-1, plan_of(KernelType::MHC_SHIFTED_POST_PRE, d.T, d.n, d.H, 0, {norm}));
  const Tensor w = fn.contiguous(), scale = hc_scale.contiguous(), base = hc_base.contiguous();
  const GateParams p = cpu::gate_params(scale, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                                        hc_post_mult_value, sinkhorn_repeat);
  cpu::stats_tokens(cpu::bf16_bits(r.residual_out), d.T, d.n, d.H, w.const_data_ptr<float>(),
                    base.const_data_ptr<float>(), p, next_pre.mutable_data_ptr<float>(),
                    next_post.mutable_data_ptr<float>(), next_comb.mutable_data_ptr<float>());
  return {r.residual_out, r.layer_input, next_pre, next_post, next_comb};
}

}  // namespace mhc
