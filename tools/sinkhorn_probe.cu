// Latency of the 20-round Sinkhorn on one thread, the tail of the SPLIT_K epilogue at decode
// sizes (docs/performance.md, "Gate math and the Sinkhorn chain"): clock64 around 32 chained
// calls (each input the logits plus 1e-3 of the last output, so none can be hoisted) on 64
// random 4 x 4 logit matrices,
// one active lane as in the epilogue's gate warp, and each form's largest error against a
// float64 Sinkhorn of docs/spec.md §2.6. Forms:
//   rescaled  the matrix rescaled by every step's scales, normalisers as trees
//   tree      only the scale vectors move (diag(r) C0 diag(s)), normalisers as trees
//   chain     core/math.h sinkhorn<4>: the scale vectors, normalisers as multiply-add chains in
//             the order the previous step issued its reciprocals
// Standalone (no torch), on the GPU machine:
//   nvcc -O3 -std=c++20 -arch=sm_90 -prec-div=false -Icsrc tools/sinkhorn_probe.cu \
//     -o /tmp/skp && /tmp/skp
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/math.h"

namespace {

using mhc::gate_rcp;

// eps + sum_i v[i] * s[i] as the rescaled form's tree: pairs through one multiply-add each,
// eps folded into the last pair, pairs added pairwise.
template <int N>
__device__ __forceinline__ float tree_normaliser(const float (&v)[N], const float (&s)[N],
                                                 float eps) {
  constexpr int P = (N + 1) / 2;
  float q[P];
#pragma unroll
  for (int m = 0; m < P; ++m) {
    const int i = 2 * m;
    float a = m == P - 1 ? v[i] * s[i] + eps : v[i] * s[i];
    if (i + 1 < N) a = v[i + 1] * s[i + 1] + a;
    q[m] = a;
  }
#pragma unroll
  for (int w = 1; w < P; w *= 2)
#pragma unroll
    for (int m = 0; m + w < P; m += 2 * w) q[m] += q[m + w];
  return q[0];
}

template <int N>
__device__ __forceinline__ void sinkhorn_rescaled(float (&c)[N][N], float eps, int64_t repeat) {
  mhc::softmax_eps<N>(c, eps);
  float sc[N], rs[N], col[N];
#pragma unroll
  for (int j = 0; j < N; ++j) rs[j] = 1.0f;
#pragma unroll
  for (int k = 0; k < N; ++k) {
#pragma unroll
    for (int j = 0; j < N; ++j) col[j] = c[j][k];
    sc[k] = gate_rcp(tree_normaliser<N>(col, rs, eps));
  }
  for (int64_t r = 1; r < repeat; ++r) {
#pragma unroll
    for (int j = 0; j < N; ++j) rs[j] = gate_rcp(tree_normaliser<N>(c[j], sc, eps));
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
      for (int k = 0; k < N; ++k) c[j][k] *= sc[k];
#pragma unroll
    for (int k = 0; k < N; ++k) {
#pragma unroll
      for (int j = 0; j < N; ++j) col[j] = c[j][k];
      sc[k] = gate_rcp(tree_normaliser<N>(col, rs, eps));
    }
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
      for (int k = 0; k < N; ++k) c[j][k] *= rs[j];
  }
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int k = 0; k < N; ++k) c[j][k] *= sc[k];
}

template <int N>
__device__ __forceinline__ void sinkhorn_tree(float (&c)[N][N], float eps, int64_t repeat) {
  mhc::softmax_eps<N>(c, eps);
  float r[N], s[N], u[N], w[N], col[N], e[N];  // u = 1 / r, w = 1 / s
#pragma unroll
  for (int j = 0; j < N; ++j) r[j] = u[j] = w[j] = 1.0f;
#pragma unroll
  for (int k = 0; k < N; ++k) {
#pragma unroll
    for (int j = 0; j < N; ++j) col[j] = c[j][k];
    w[k] = tree_normaliser<N>(col, r, eps);
    s[k] = gate_rcp(w[k]);
  }
  for (int64_t it = 1; it < repeat; ++it) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      u[j] = tree_normaliser<N>(c[j], s, eps * u[j]);
      r[j] = gate_rcp(u[j]);
    }
#pragma unroll
    for (int k = 0; k < N; ++k) e[k] = eps * w[k];
#pragma unroll
    for (int k = 0; k < N; ++k) {
#pragma unroll
      for (int j = 0; j < N; ++j) col[j] = c[j][k];
      w[k] = tree_normaliser<N>(col, r, e[k]);
      s[k] = gate_rcp(w[k]);
    }
  }
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int k = 0; k < N; ++k) c[j][k] = c[j][k] * r[j] * s[k];
}

__device__ __forceinline__ uint64_t clk() {
  uint64_t v;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(v)::"memory");
  return v;
}

template <int FORM>
__global__ void probe(const float* logits, float* out, long long* cyc, int cases, int reps,
                      float eps, int64_t repeat) {
  if (threadIdx.x != 0) return;
  for (int cs = 0; cs < cases; ++cs) {
    float l[16], c[4][4];
    for (int q = 0; q < 16; ++q) l[q] = logits[cs * 16 + q];
    float fb = 0.f;
    const uint64_t t0 = clk();
    for (int it = 0; it < reps; ++it) {
#pragma unroll
      for (int q = 0; q < 16; ++q) c[q / 4][q % 4] = l[q] + 1e-3f * fb;
      if constexpr (FORM == 0) sinkhorn_rescaled<4>(c, eps, repeat);
      if constexpr (FORM == 1) sinkhorn_tree<4>(c, eps, repeat);
      if constexpr (FORM == 2) mhc::sinkhorn<4>(c, eps, repeat);
      fb = c[it & 3][(it >> 2) & 3];
    }
    out[cs] = fb;
    const uint64_t t1 = clk();
    cyc[cs] = static_cast<long long>(t1 - t0) / reps;
    for (int q = 0; q < 16; ++q) out[cases + cs * 16 + q] = c[q / 4][q % 4];
  }
}

void launch(int form, const float* l, float* out, long long* cyc, int cases, int reps, float eps,
            int repeat) {
  if (form == 0) probe<0><<<1, 32>>>(l, out, cyc, cases, reps, eps, repeat);
  if (form == 1) probe<1><<<1, 32>>>(l, out, cyc, cases, reps, eps, repeat);
  if (form == 2) probe<2><<<1, 32>>>(l, out, cyc, cases, reps, eps, repeat);
}

void reference(const float* l, double (&c)[4][4], double eps, int repeat) {
  for (int j = 0; j < 4; ++j) {
    double mx = l[4 * j], s = 0;
    for (int k = 1; k < 4; ++k) mx = std::max(mx, static_cast<double>(l[4 * j + k]));
    for (int k = 0; k < 4; ++k) s += (c[j][k] = std::exp(l[4 * j + k] - mx));
    for (int k = 0; k < 4; ++k) c[j][k] = c[j][k] / s + eps;
  }
  const auto col = [&] {
    for (int k = 0; k < 4; ++k) {
      double s = eps;
      for (int j = 0; j < 4; ++j) s += c[j][k];
      for (int j = 0; j < 4; ++j) c[j][k] /= s;
    }
  };
  col();
  for (int r = 1; r < repeat; ++r) {
    for (int j = 0; j < 4; ++j) {
      double s = eps;
      for (int k = 0; k < 4; ++k) s += c[j][k];
      for (int k = 0; k < 4; ++k) c[j][k] /= s;
    }
    col();
  }
}

}  // namespace

int main() {
  const int cases = 64, reps = 32, repeat = 20;
  const float eps = 1e-6f;
  std::vector<float> h(cases * 16);
  srand(1234);
  for (auto& v : h) v = 4.0f * (static_cast<float>(rand()) / RAND_MAX - 0.5f);
  float *dl, *dout;
  long long* dcyc;
  cudaMalloc(&dl, h.size() * sizeof(float));
  cudaMalloc(&dout, (cases + cases * 16) * sizeof(float));
  cudaMalloc(&dcyc, cases * sizeof(long long));
  cudaMemcpy(dl, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice);
  const char* names[] = {"rescaled", "tree", "chain"};
  for (int form = 0; form < 3; ++form) {
    for (int pass = 0; pass < 2; ++pass)  // the first pass warms the instruction cache
      launch(form, dl, dout, dcyc, cases, reps, eps, repeat);
    std::vector<long long> cyc(cases);
    cudaMemcpy(cyc.data(), dcyc, cases * sizeof(long long), cudaMemcpyDeviceToHost);
    std::sort(cyc.begin(), cyc.end());
    launch(form, dl, dout, dcyc, cases, 1, eps, repeat);  // one call per case: the logits
    std::vector<float> o(cases * 16);
    cudaMemcpy(o.data(), dout + cases, o.size() * sizeof(float), cudaMemcpyDeviceToHost);
    if (cudaDeviceSynchronize() != cudaSuccess) {
      std::printf("CUDA error\n");
      return 1;
    }
    double worst = 0;
    for (int cs = 0; cs < cases; ++cs) {
      double r[4][4];
      reference(&h[cs * 16], r, eps, repeat);
      for (int q = 0; q < 16; ++q) worst = std::max(worst, std::abs(o[cs * 16 + q] - r[q / 4][q % 4]));
    }
    std::printf("%-6s cycles per %d-round Sinkhorn: median %lld  min %lld  max %lld   max |err| %.3g\n",
                names[form], repeat, cyc[cases / 2], cyc[0], cyc[cases - 1], worst);
  }
  return 0;
}
