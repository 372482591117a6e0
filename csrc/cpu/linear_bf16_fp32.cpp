// linear_bf16_fp32 on the CPU (SPEC §2.7): bf16 values are exact in fp32, so an fp32 GEMM of
// the upcast operands is the fp32-accumulated product. The operands are made contiguous so that
// BLAS sees one layout whatever the caller's strides: results are the same bits for any view.
#include <ATen/ops/mm.h>

#include "core/plan.h"
#include "core/validate.h"
#include "ops.h"

namespace mhc {

Tensor linear_bf16_fp32_cpu(const Tensor& x, const Tensor& weight) {
  const GemmDims g = check_linear("linear_bf16_fp32", x, weight);
  if (g.M > 0) record_plan(-1, plan_of(KernelType::LINEAR_BF16_FP32, g.M, 0, g.K, 0, {}));
  return at::mm(x.to(at::kFloat).contiguous(), weight.to(at::kFloat).contiguous().t());
}

}  // namespace mhc
