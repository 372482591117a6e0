// Gate math shared by the CPU and CUDA kernels (SPEC §2.1, §2.2, §2.4, §2.6).
//
// Everything here is fp32 and header-only so that both backends, and the fused and unfused
// paths of one backend, run the same operations in the same order (the GPU's reciprocal, exp
// and rsqrt of the gates are its one-instruction approximations, the CPU's the exact forms;
// every kernel of one backend runs the same ones). The contract requires residual_out
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

// exp, 1 / v and 1 / sqrt(v) of the gates (rms, sigmoid, softmax, the Sinkhorn's
// normalisers). On the GPU one MUFU instruction each (ex2.approx of v·log2(e), rcp.approx.ftz,
// rsqrt.approx.ftz; a few ulp). expf, IEEE sqrtf and the division's denormal scaling put ~20
// dependent instructions on the epilogue's path to the gates, and the plain division's branch
// around its slow path splits the Sinkhorn's 20 rounds into basic blocks (docs/performance.md,
// "Gate math and the Sinkhorn chain"). Nothing here reaches denormals
// in practice (normalisers are sums of positive terms plus eps); the gates' bound is 1e-3
// (SPEC §3), the stream sums' 5e-4·Σ pre·|res|. The CPU keeps the exact forms.
#if defined(__CUDA_ARCH__)
MHC_HD float gate_exp(float v) { return __expf(v); }
MHC_HD float gate_rcp(float v) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
MHC_HD float gate_rsqrt(float v) {
  float r;
  asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
}
#else
MHC_HD float gate_exp(float v) { return expf(v); }
MHC_HD float gate_rcp(float v) { return 1.0f / v; }
MHC_HD float gate_rsqrt(float v) { return 1.0f / sqrtf(v); }
#endif

MHC_HD float sigmoidf_(float v) { return gate_rcp(1.0f + gate_exp(-v)); }

// Round-to-nearest-even fp32 -> bf16 bits; NaN stays a quiet NaN of the same sign. The CUDA
// kernels pack their outputs with cvt.rn.bf16x2.f32 instead (cuda/bf16.cuh): the same bits for
// every input but NaN, whose sign and payload they do not keep.
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

// Row softmax + eps of an N x N matrix of logits, in place (SPEC §2.6 step 1).
template <int N>
MHC_HD void softmax_eps(float (&c)[N][N], float eps) {
MHC_UNROLL
  for (int j = 0; j < N; ++j) {
    float mx = c[j][0];
MHC_UNROLL
    for (int k = 1; k < N; ++k) mx = fmaxf(mx, c[j][k]);
    float s = 0.f;
MHC_UNROLL
    for (int k = 0; k < N; ++k) {
      c[j][k] = gate_exp(c[j][k] - mx);
      s += c[j][k];
    }
    const float inv = gate_rcp(s);  // s in [1, N]
MHC_UNROLL
    for (int k = 0; k < N; ++k) c[j][k] = c[j][k] * inv + eps;
  }
}

// Sinkhorn-Knopp on an N x N matrix of logits, in place (SPEC §2.6): row softmax + eps (the
// matrix C0), a column step, then (repeat - 1) x (row step, column step); repeat 0 and 1 both
// mean one column step. The fixed N keeps everything in registers on the GPU.
//
// C0 itself is never rescaled: the current matrix is diag(r) C0 diag(s), and only the scale
// vectors move. A row step sets r_j = 1 / (e_j + sum_k C0[j][k] s_k) with e_j = eps / r_j,
// which is the reference's C[j][k] / (sum_k C[j][k] + eps) for C = diag(r) C0 diag(s); the
// column step likewise sets s_k. A step's denominator is 1 / r_j for the next one (u_j), so
// e_j costs one multiply off the critical path.
//
// The dependency chain of a step is one reciprocal and the normaliser's multiply-adds, in
// index order: a step issues its N reciprocals in index order, and each normaliser of the
// next step takes them in that order, so it has done all but its last multiply-add when the
// last reciprocal lands; all N of its reciprocals then issue back to back, and each step
// waits for the reciprocal's latency once. (Rescaling the matrix by each step's scales, with
// normalisers as trees over them, lets ptxas put those multiplies right behind the first
// reciprocal, and in-order issue holds the other normalisers behind it: two reciprocal
// latencies a step; docs/performance.md, "Gate math and the Sinkhorn chain".)
template <int N>
MHC_HD void sinkhorn(float (&c)[N][N], float eps, int64_t repeat) {
  softmax_eps<N>(c, eps);
  float r[N], s[N], u[N], w[N];  // u = 1 / r, w = 1 / s
MHC_UNROLL
  for (int k = 0; k < N; ++k) {  // the first column step: r = 1
    float a = c[0][k] + eps;
MHC_UNROLL
    for (int j = 1; j < N; ++j) a += c[j][k];
    w[k] = a;
    s[k] = gate_rcp(a);
  }
MHC_UNROLL
  for (int j = 0; j < N; ++j) r[j] = u[j] = 1.0f;
  for (int64_t it = 1; it < repeat; ++it) {
MHC_UNROLL
    for (int j = 0; j < N; ++j) {
      float a = eps * u[j];
MHC_UNROLL
      for (int k = 0; k < N; ++k) a = c[j][k] * s[k] + a;
      u[j] = a;
    }
MHC_UNROLL
    for (int j = 0; j < N; ++j) r[j] = gate_rcp(u[j]);
MHC_UNROLL
    for (int k = 0; k < N; ++k) {
      float a = eps * w[k];
MHC_UNROLL
      for (int j = 0; j < N; ++j) a = c[j][k] * r[j] + a;
      w[k] = a;
    }
MHC_UNROLL
    for (int k = 0; k < N; ++k) s[k] = gate_rcp(w[k]);
  }
MHC_UNROLL
  for (int j = 0; j < N; ++j)
MHC_UNROLL
    for (int k = 0; k < N; ++k) c[j][k] = c[j][k] * r[j] * s[k];
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
  const float r = gate_rsqrt(sqrsum * inv_k + p.rms_eps);
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
  const float r = gate_rsqrt(sqrsum * inv_k + rms_eps);
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
