// mhc_pre on the CPU (SPEC §2.1): per group of 4 tokens, one fixed-order dot pass against fn
// (cpu/dot.cpp), then the gate epilogue and the weighted stream sum from core/math.h.
// Parallel over token groups; a token's result never depends on T or its neighbours.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "core/math.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cpu/common.h"
#include "cpu/dot.h"
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
  const int64_t T = d.T, n = d.n, H = d.H, K = d.K, m3 = n * (n + 2);
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
  const float inv_k = 1.0f / static_cast<float>(K);
  const float norm_eps_f = static_cast<float>(norm_eps);

  MHC_DISPATCH_HC_MULT(n, N, [&] {
    const int64_t groups = (T + cpu::kDotTokens - 1) / cpu::kDotTokens;
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      std::vector<float> y(H);
      for (int64_t g = g0; g < g1; ++g) {
        const uint16_t* rows[cpu::kDotTokens];
        int64_t tok[cpu::kDotTokens];
        cpu::token_group(g, T, tok);
        for (int s = 0; s < cpu::kDotTokens; ++s) rows[s] = res_p + tok[s] * K;
        float dots[cpu::kDotTokens * cpu::kMaxDotRows], sq[cpu::kDotTokens];
        cpu::dot_rows(rows, K, w_p, K, static_cast<int>(m3), dots, sq);
        for (int s = 0; s < cpu::kDotTokens; ++s) {
          const int64_t t = g * cpu::kDotTokens + s;
          if (t >= T) break;
          float pre[N], post[N], comb[N][N];
          pre_gates<N>(dots + s * m3, sq[s], inv_k, base_p, p, pre, post, comb);
          for (int i = 0; i < N; ++i) post_p[t * N + i] = post[i];
          for (int j = 0; j < N; ++j)
            for (int k = 0; k < N; ++k) comb_p[(t * N + j) * N + k] = comb[j][k];
          cpu::stream_sum<N>(rows[s], H, pre, nw_p, norm_eps_f, y.data(), out_p + t * H);
        }
      }
    });
  });
  return {post_mix, comb_mix, layer_input};
}

}  // namespace mhc
