// linear_bf16_fp32 on the CPU (SPEC §2.7): bf16 values are exact in fp32, so an fp32 GEMM of
// the upcast operands is the fp32-accumulated product.
#include <ATen/ops/mm.h>

#include "core/validate.h"
#include "ops.h"

namespace mhc {

Tensor linear_bf16_fp32_cpu(const Tensor& x, const Tensor& weight) {
  check_linear("linear_bf16_fp32", x, weight);
  return at::mm(x.to(at::kFloat), weight.to(at::kFloat).t());
}

}  // namespace mhc
