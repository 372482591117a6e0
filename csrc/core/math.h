// Gate math shared by the CPU and CUDA kernels (SPEC §2.1, §2.2, §2.4, §2.6).
//
// Everything here is fp32 and header-only so that both backends, and the fused and unfused
// paths of one backend, run literally the same arithmetic. The contract requires residual_out
// of the fused op to be bit-identical to mhc_post on the same device; that holds because both
// call post_mix_element() below.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MHC_HD __host__ __device__ __forceinline__
#define MHC_UNROLL _Pragma("unroll")
#else
#define MHC_HD inline
#define MHC_UNROLL
#endif

namespace mhc {

// Largest hc_mult any backend accepts (SPEC §2.8: n in 1..8).
constexpr int kMaxHcMult = 8;

MHC_HD float sigmoidf_(float v) { return 1.0f / (1.0f + expf(-v)); }

// 1 / v for the Sinkhorn normalisers. On the GPU one MUFU.RCP (rcp.approx.ftz, within 1 ulp);
// the plain division there (rcp.approx without ftz under -prec-div=false) adds a denormal check
// and a branch around a slow path, which split the 20 rounds into basic blocks and put ~2.2 us
// on the critical path of the decode epilogue (benchmarks/NOTES.md, v7). The normalisers are
// sums of positive terms plus eps, never denormal in practice.
MHC_HD float sinkhorn_rcp(float v) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
#else
  return 1.0f / v;
#endif
}

// Round-to-nearest-even fp32 -> bf16 bits; NaN stays a quiet NaN of the same sign.
MHC_HD uint16_t f32_to_bf16_bits(float v) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(v);
#else
  std::memcpy(&u, &v, sizeof(u));
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

MHC_HD float bf16_bits_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
#endif
}

MHC_HD float round_bf16(float v) { return bf16_bits_to_f32(f32_to_bf16_bits(v)); }

// One element of mhc_post: post_j * x + sum_i comb[i][j] * res_i, in stream order, fp32.
// `comb_col` points at comb[0][j] with stride `comb_stride` between rows i.
template <int N>
MHC_HD float post_mix_element(float post_j, float x, const float* comb_col, int comb_stride,
                              const float* res) {
  float acc = post_j * x;
MHC_UNROLL
  for (int i = 0; i < N; ++i) acc += comb_col[i * comb_stride] * res[i];
  return acc;
}

// eps + sum_i v[i] * s[i], the normaliser of one Sinkhorn step over the matrix v scaled by s:
// pairs of terms through one multiply-add each (eps folded into the last pair), then the pairs
// added pairwise, so that the critical path is ceil(log2(N / 2)) + 2 operations instead of a
// chain of N adds, eps and the scaling multiply (NOTES.md, v11).
template <int N>
MHC_HD float sinkhorn_normaliser(const float (&v)[N], const float (&s)[N], float eps) {
  constexpr int P = (N + 1) / 2;
  float q[P];
MHC_UNROLL
  for (int m = 0; m < P; ++m) {
    const int i = 2 * m;
    float a = m == P - 1 ? v[i] * s[i] + eps : v[i] * s[i];
    if (i + 1 < N) a = v[i + 1] * s[i + 1] + a;
    q[m] = a;
  }
MHC_UNROLL
  for (int w = 1; w < P; w *= 2)
MHC_UNROLL
    for (int m = 0; m + w < P; m += 2 * w) q[m] += q[m + w];
  return q[0];
}

// Sinkhorn-Knopp on an N x N matrix of logits, in place (SPEC §2.6). Row softmax + eps, a
// column step, then (repeat - 1) x (row step, column step). repeat 0 and 1 both mean one column
// step. The fixed N keeps the matrix in registers on the GPU. Each step's scales multiply the
// matrix alongside the next step's normalisers, which take the scales as factors, so the
// dependency chain of a step is its normaliser and one reciprocal.
template <int N>
MHC_HD void sinkhorn(float (&c)[N][N], float eps, int64_t repeat) {
MHC_UNROLL
  for (int j = 0; j < N; ++j) {
    float mx = c[j][0];
MHC_UNROLL
    for (int k = 1; k < N; ++k) mx = fmaxf(mx, c[j][k]);
    float s = 0.f;
MHC_UNROLL
    for (int k = 0; k < N; ++k) {
      c[j][k] = expf(c[j][k] - mx);
      s += c[j][k];
    }
    const float inv = 1.0f / s;
MHC_UNROLL
    for (int k = 0; k < N; ++k) c[j][k] = c[j][k] * inv + eps;
  }
  // The matrix is c scaled by the last step's factors: columns by sc, or rows by rs.
  float sc[N], rs[N], col[N];
MHC_UNROLL
  for (int j = 0; j < N; ++j) rs[j] = 1.0f;
MHC_UNROLL
  for (int k = 0; k < N; ++k) {
MHC_UNROLL
    for (int j = 0; j < N; ++j) col[j] = c[j][k];
    sc[k] = sinkhorn_rcp(sinkhorn_normaliser<N>(col, rs, eps));
  }
  for (int64_t r = 1; r < repeat; ++r) {
MHC_UNROLL
    for (int j = 0; j < N; ++j) rs[j] = sinkhorn_rcp(sinkhorn_normaliser<N>(c[j], sc, eps));
MHC_UNROLL
    for (int j = 0; j < N; ++j)
MHC_UNROLL
      for (int k = 0; k < N; ++k) c[j][k] *= sc[k];
MHC_UNROLL
    for (int k = 0; k < N; ++k) {
MHC_UNROLL
      for (int j = 0; j < N; ++j) col[j] = c[j][k];
      sc[k] = sinkhorn_rcp(sinkhorn_normaliser<N>(col, rs, eps));
    }
MHC_UNROLL
    for (int j = 0; j < N; ++j)
MHC_UNROLL
      for (int k = 0; k < N; ++k) c[j][k] *= rs[j];
  }
MHC_UNROLL
  for (int j = 0; j < N; ++j)
MHC_UNROLL
    for (int k = 0; k < N; ++k) c[j][k] *= sc[k];
}

// Parameters of the gate epilogue of mhc_pre / fused (SPEC §2.1 steps 3-7).
struct GateParams {
  float rms_eps;
  float pre_eps;
  float sinkhorn_eps;
  float post_mult;
  int64_t sinkhorn_repeat;
  float scale[3];  // hc_scale
};

// From the raw GEMM outputs d[M3] and the sum of squares over K, produce pre[N], post[N] and
// comb[N][N]. `base` is hc_base [M3]. `inv_k` is 1/K.
template <int N>
MHC_HD void pre_gates(const float* d, float sqrsum, float inv_k, const float* base,
                      const GateParams& p, float (&pre)[N], float (&post)[N],
                      float (&comb)[N][N]) {
  const float r = 1.0f / sqrtf(sqrsum * inv_k + p.rms_eps);
MHC_UNROLL
  for (int i = 0; i < N; ++i) {
    pre[i] = sigmoidf_(d[i] * r * p.scale[0] + base[i]) + p.pre_eps;
    post[i] = sigmoidf_(d[N + i] * r * p.scale[1] + base[N + i]) * p.post_mult;
  }
MHC_UNROLL
  for (int j = 0; j < N; ++j)
MHC_UNROLL
    for (int k = 0; k < N; ++k)
      comb[j][k] = d[2 * N + j * N + k] * r * p.scale[2] + base[2 * N + j * N + k];
  sinkhorn<N>(comb, p.sinkhorn_eps, p.sinkhorn_repeat);
}

// hc_head gates (SPEC §2.4): pre[i] = sigmoid(mix[i] * scale + base[i]) + eps.
template <int N>
MHC_HD void head_gates(const float* d, float sqrsum, float inv_k, const float* base,
                       float scale, float rms_eps, float eps, float (&pre)[N]) {
  const float r = 1.0f / sqrtf(sqrsum * inv_k + rms_eps);
MHC_UNROLL
  for (int i = 0; i < N; ++i) pre[i] = sigmoidf_(d[i] * r * scale + base[i]) + eps;
}

}  // namespace mhc

// Runs the lambda body with `NAME` a constexpr int equal to the runtime hc_mult n (1..8);
// callers have validated n.
#define MHC_DISPATCH_HC_MULT(n, NAME, ...)          \
  [&] {                                             \
    switch (n) {                                    \
      case 1: { constexpr int NAME = 1; return __VA_ARGS__(); } \
      case 2: { constexpr int NAME = 2; return __VA_ARGS__(); } \
      case 3: { constexpr int NAME = 3; return __VA_ARGS__(); } \
      case 4: { constexpr int NAME = 4; return __VA_ARGS__(); } \
      case 5: { constexpr int NAME = 5; return __VA_ARGS__(); } \
      case 6: { constexpr int NAME = 6; return __VA_ARGS__(); } \
      case 7: { constexpr int NAME = 7; return __VA_ARGS__(); } \
      default: { constexpr int NAME = 8; return __VA_ARGS__(); } \
    }                                               \
  }()
