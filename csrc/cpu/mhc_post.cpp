// mhc_post on the CPU (SPEC §2.2): one pass over the residual, parallel over tokens, each
// element through core/math.h post_mix_element() as on the GPU.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "core/math.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cpu/common.h"
#include "ops.h"

namespace mhc {

Tensor mhc_post_cpu(const Tensor& x, const Tensor& residual, const Tensor& post_mix,
                    const Tensor& comb_mix) {
  constexpr const char* op = "mhc_post";
  const StreamDims d = check_residual(op, residual);
  check_post_args(op, d, residual, x, post_mix, comb_mix);
  const int64_t T = d.T, n = d.n, H = d.H;
  Tensor out = at::empty({T, n, H}, residual.options());
  if (T == 0) return out;
  record_plan(-1, plan_of(KernelType::MHC_POST, T, n, H, 0, {false, false, false}));

  const Tensor xc = x.contiguous(), res = residual.contiguous();
  const Tensor post = post_mix.contiguous(), comb = comb_mix.contiguous();
  const uint16_t* x_p = cpu::bf16_bits(xc);
  const uint16_t* res_p = cpu::bf16_bits(res);
  const float* post_p = post.const_data_ptr<float>();
  const float* comb_p = comb.const_data_ptr<float>();
  uint16_t* out_p = cpu::bf16_bits(out);

  MHC_DISPATCH_HC_MULT(n, N, [&] {
    const int64_t grain = std::max<int64_t>(1, 32768 / (N * H));
    at::parallel_for(0, T, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const uint16_t* r = res_p + t * N * H;
        const float* c = comb_p + t * N * N;
        for (int64_t h = 0; h < H; ++h) {
          float rv[N];
          for (int i = 0; i < N; ++i) rv[i] = bf16_bits_to_f32(r[i * H + h]);
          const float xv = bf16_bits_to_f32(x_p[t * H + h]);
          for (int j = 0; j < N; ++j)
            out_p[(t * N + j) * H + h] =
                f32_to_bf16_bits(post_mix_element<N>(post_p[t * N + j], xv, c + j, N, rv));
        }
      }
    });
  });
  return out;
}

}  // namespace mhc
