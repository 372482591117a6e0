// linear_bf16_fp32 on the CPU (SPEC §2.7): bf16 x bf16 -> fp32 with fp32 accumulation, by the
// fixed-order kernel of cpu/gemm_bf16.cpp, which reads both operands as bf16 in place. Every
// output is summed in an order that depends on K alone, so results are the same bits for any
// strides of the inputs, any T (a token's row does not depend on its batch) and any thread
// count. Parallel over blocks of tokens x weight rows.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "core/plan.h"
#include "core/validate.h"
#include "cpu/common.h"
#include "cpu/gemm_bf16.h"
#include "ops.h"

namespace mhc {

namespace {
// A block's accumulators (8 fp32 per output, 512 KB at this size) stay in L2.
constexpr int64_t kBlockTokens = 64;
constexpr int64_t kBlockRows = 256;

// The kernel reads rows with unit stride along K; any row stride is fine.
Tensor rows_unit_stride(const Tensor& t) {
  return t.size(1) <= 1 || t.stride(1) == 1 ? t : t.contiguous();
}
}  // namespace

Tensor linear_bf16_fp32_cpu(const Tensor& x, const Tensor& weight) {
  const GemmDims g = validate_linear_bf16_fp32(x, weight);
  if (g.M > 0) record_plan(-1, plan_of(KernelType::LINEAR_BF16_FP32, g.M, 0, g.K, 0, {}));
  Tensor out = at::empty({g.M, g.N}, x.options().dtype(at::kFloat));
  const int64_t T = g.M, N = g.N;
  if (T == 0 || N == 0) return out;

  const Tensor xr = rows_unit_stride(x), wr = rows_unit_stride(weight);
  const cpu::Bf16Gemm gemm{cpu::bf16_bits(xr), xr.stride(0), cpu::bf16_bits(wr), wr.stride(0),
                           g.K, out.data_ptr<float>(), N};

  // Blocks of at most kBlockTokens x kBlockRows. When there are few, tokens and then weight
  // rows are split further (a single token: the threads share the weight rows) so that every
  // thread gets as many blocks. Only speed depends on this split, never the bits.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t tparts = ceil_div(T, kBlockTokens), nparts = ceil_div(N, kBlockRows);
  if (tparts * nparts < 4 * threads) {
    tparts = std::min(T, ceil_div(tparts, threads) * threads);
    if ((tparts * nparts) % threads != 0) nparts = std::min(N, ceil_div(nparts, threads) * threads);
  }
  const int64_t tb = ceil_div(T, tparts), nb = ceil_div(N, nparts);
  const int64_t nblocks = ceil_div(N, nb);
  at::parallel_for(0, ceil_div(T, tb) * nblocks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t0 = i / nblocks * tb, n0 = i % nblocks * nb;
      cpu::gemm_bf16_block(gemm, t0, std::min(T, t0 + tb), n0, std::min(N, n0 + nb));
    }
  });
  return out;
}

}  // namespace mhc
