// hc_prenorm_gemm / tf32_hc_prenorm_gemm on the CPU (SPEC §2.5): exact fp32 products, one
// dot_rows pass per (token group, split) over that split's K range.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "core/plan.h"
#include "core/validate.h"
#include "cpu/common.h"
#include "cpu/dot.h"
#include "ops.h"

namespace mhc {

namespace {
// out [S, M, N], sqrsum [S, M], both contiguous fp32.
void prenorm_into(const Tensor& x, const Tensor& fn, int64_t S, float* out, float* sqrsum) {
  const int64_t M = x.size(0), K = x.size(1), N = fn.size(0);
  record_plan(-1, plan_of(KernelType::PRENORM_GEMM, M, 1, K, 0, {}));
  const Tensor xc = x.contiguous(), w = fn.contiguous();
  const uint16_t* x_p = cpu::bf16_bits(xc);
  const float* w_p = w.const_data_ptr<float>();
  const int64_t groups = (M + cpu::kDotTokens - 1) / cpu::kDotTokens;
  at::parallel_for(0, groups * S, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t g = i / S, s = i % S;
      int64_t k0, k1;
      split_range(K, S, s, &k0, &k1);
      int64_t tok[cpu::kDotTokens];
      cpu::token_group(g, M, tok);
      const uint16_t* rows[cpu::kDotTokens];
      for (int j = 0; j < cpu::kDotTokens; ++j) rows[j] = x_p + tok[j] * K + k0;
      float dots[cpu::kDotTokens * cpu::kMaxDotRows], sq[cpu::kDotTokens];
      cpu::dot_rows(rows, k1 - k0, w_p + k0, K, static_cast<int>(N), dots, sq);
      for (int j = 0; j < cpu::kDotTokens; ++j) {
        const int64_t m = g * cpu::kDotTokens + j;
        if (m >= M) break;
        for (int64_t o = 0; o < N; ++o) out[(s * M + m) * N + o] = dots[j * N + o];
        sqrsum[s * M + m] = sq[j];
      }
    }
  });
}
}  // namespace

std::tuple<Tensor, Tensor> hc_prenorm_gemm_cpu(const Tensor& x, const Tensor& fn,
                                               int64_t num_splits) {
  const GemmDims g = validate_hc_prenorm_gemm(x, fn, num_splits);
  Tensor out = at::empty({num_splits, g.M, g.N}, x.options().dtype(at::kFloat));
  Tensor sqrsum = at::empty({num_splits, g.M}, x.options().dtype(at::kFloat));
  if (g.M > 0) prenorm_into(x, fn, num_splits, out.data_ptr<float>(), sqrsum.data_ptr<float>());
  return {out, sqrsum};
}

void tf32_hc_prenorm_gemm_cpu(const Tensor& x, const Tensor& fn, const Tensor& out,
                              const Tensor& sqrsum, std::optional<int64_t> num_splits) {
  const GemmDims g = validate_tf32_hc_prenorm_gemm(x, fn, out, sqrsum, num_splits);
  if (g.M == 0) return;
  const int64_t S = num_splits.value_or(1);
  if (out.is_contiguous() && sqrsum.is_contiguous()) {
    prenorm_into(x, fn, S, out.data_ptr<float>(), sqrsum.data_ptr<float>());
    return;
  }
  Tensor o = at::empty({S, g.M, g.N}, out.options());
  Tensor q = at::empty({S, g.M}, sqrsum.options());
  prenorm_into(x, fn, S, o.data_ptr<float>(), q.data_ptr<float>());
  out.copy_(o.view(out.sizes()));
  sqrsum.copy_(q.view(sqrsum.sizes()));
}

}  // namespace mhc
