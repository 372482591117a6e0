// mhc_post on the CPU (SPEC §2.2): one pass over the residual, parallel over tokens, each
// element through core/math.h post_mix_element() as on the GPU. Written so the compiler
// vectorises over h; an AVX2 build of the same loop is chosen when the CPU has it.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "core/math.h"
#include "core/plan.h"
#include "core/validate.h"
#include "cpu/common.h"
#include "ops.h"

namespace mhc {

namespace {
// One token: out[j][h] for every stream j. x [H], r [N][H], post [N], comb [N][N] (i, j).
template <int N>
MHC_CPU_INLINE void post_token(const uint16_t* x, const uint16_t* r, const float* post,
                               const float* comb, int64_t H, uint16_t* out) {
  for (int j = 0; j < N; ++j) {
    float cj[N];
    for (int i = 0; i < N; ++i) cj[i] = comb[i * N + j];
    const float pj = post[j];
    uint16_t* o = out + j * H;
    for (int64_t h = 0; h < H; ++h) {
      float rv[N];
      for (int i = 0; i < N; ++i) rv[i] = bf16_bits_to_f32(r[i * H + h]);
      o[h] = f32_to_bf16_bits(post_mix_element<N>(pj, bf16_bits_to_f32(x[h]), cj, 1, rv));
    }
  }
}

#define MHC_POST_TOKEN_SWITCH                                  \
  switch (n) {                                                 \
    case 1: return post_token<1>(x, r, post, comb, H, out);    \
    case 2: return post_token<2>(x, r, post, comb, H, out);    \
    case 3: return post_token<3>(x, r, post, comb, H, out);    \
    case 4: return post_token<4>(x, r, post, comb, H, out);    \
    case 5: return post_token<5>(x, r, post, comb, H, out);    \
    case 6: return post_token<6>(x, r, post, comb, H, out);    \
    case 7: return post_token<7>(x, r, post, comb, H, out);    \
    default: return post_token<8>(x, r, post, comb, H, out);   \
  }

MHC_CPU_AVX2 void post_token_avx2(int64_t n, const uint16_t* x, const uint16_t* r,
                                  const float* post, const float* comb, int64_t H,
                                  uint16_t* out) {
  MHC_POST_TOKEN_SWITCH
}

void post_token_base(int64_t n, const uint16_t* x, const uint16_t* r, const float* post,
                     const float* comb, int64_t H, uint16_t* out) {
  MHC_POST_TOKEN_SWITCH
}
#undef MHC_POST_TOKEN_SWITCH
}  // namespace

namespace cpu {
void post_one_token(int64_t n, const uint16_t* x, const uint16_t* r, const float* post,
                    const float* comb, int64_t H, uint16_t* out) {
  static const auto token = cpu::has_avx2() ? post_token_avx2 : post_token_base;
  token(n, x, r, post, comb, H, out);
}
}  // namespace cpu

Tensor mhc_post_cpu(const Tensor& x, const Tensor& residual, const Tensor& post_mix,
                    const Tensor& comb_mix) {
  const StreamDims d = validate_mhc_post(x, residual, post_mix, comb_mix);
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

  const int64_t grain = std::max<int64_t>(1, 32768 / (n * H));
  at::parallel_for(0, T, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      cpu::post_one_token(n, x_p + t * H, res_p + t * n * H, post_p + t * n, comb_p + t * n * n,
                          H, out_p + t * n * H);
  });
  return out;
}

}  // namespace mhc
