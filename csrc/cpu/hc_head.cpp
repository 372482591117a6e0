// hc_head on the CPU (SPEC §2.4): the mhc_pre pipeline with n gate rows and no Sinkhorn.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "core/math.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cpu/common.h"
#include "cpu/dot.h"
#include "ops.h"

namespace mhc {

Tensor hc_head_cpu(const Tensor& residual, const Tensor& fn, const Tensor& hc_scale,
                   const Tensor& hc_base, double rms_eps, double hc_eps) {
  const StreamDims d = validate_hc_head(residual, fn, hc_scale, hc_base, rms_eps, hc_eps);
  const int64_t T = d.T, n = d.n, H = d.H, K = d.K;
  Tensor out = at::empty({T, H}, residual.options());
  if (T == 0) return out;
  record_plan(-1, plan_of(KernelType::HC_HEAD, T, n, H, 0, {false, false, false}));

  const Tensor res = residual.contiguous(), w = fn.contiguous(), base = hc_base.contiguous();
  const float scale = hc_scale.contiguous().const_data_ptr<float>()[0];
  const uint16_t* res_p = cpu::bf16_bits(res);
  const float* w_p = w.const_data_ptr<float>();
  const float* base_p = base.const_data_ptr<float>();
  uint16_t* out_p = cpu::bf16_bits(out);
  const float inv_k = 1.0f / static_cast<float>(K);

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
        cpu::dot_rows(rows, K, w_p, K, N, dots, sq);
        for (int s = 0; s < cpu::kDotTokens; ++s) {
          const int64_t t = g * cpu::kDotTokens + s;
          if (t >= T) break;
          float pre[N];
          head_gates<N>(dots + s * N, sq[s], inv_k, base_p, scale, static_cast<float>(rms_eps),
                        static_cast<float>(hc_eps), pre);
          cpu::stream_sum<N>(rows[s], H, pre, nullptr, 0.f, y.data(), out_p + t * H);
        }
      }
    });
  });
  return out;
}

}  // namespace mhc
