// mhc_post's load and store schemes at prefill sizes, n = 4, outside the library (docs/
// performance.md, "mhc_post load and store schemes"). Each scheme computes new[t, j, h] =
// bf16(post[t, j]·x[t, h] + Σ_i comb[t, i, j]·residual[t, i, h]) with the same arithmetic:
//   0  the library's kernel: grid (T, H / 1024), 128 threads, one 16-byte vector per thread
//      and stream
//   1  as 0, the new streams stored through shared memory, one cp.async.bulk store per warp
//      and stream (512 bytes)
//   2  a token per CTA (grid T): 128 threads walk H in 1024-column steps, each step's mix after
//      the next step's loads are issued
//   3  as 0 with st.global.cs (streaming) stores
//   4  as 0 with L2::256B prefetch hints on the loads
//   5  as 2 with 256 threads (2048-column steps)
// Every scheme's output is compared bit for bit with scheme 0's. Timing: CUDA events around
// each launch, a 128 MB memset before it (L2 cold), median of 15; beside them one
// device-to-device copy of the residual, the copy rate at that size.
// Standalone (no torch), on the GPU machine:
//   nvcc -O3 -std=c++20 -arch=sm_90 -Icsrc tools/post_schemes_probe.cu -o /tmp/psp && /tmp/psp
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/bf16.cuh"  // the kernels' bf16 unpacking and rounding

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

constexpr int N = 4;
struct P {
  const uint16_t* x; const uint16_t* res; const float* post; const float* comb; uint16_t* out;
  int H;
};

__device__ __forceinline__ uint4 ldg16(const uint16_t* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint4 ldg16_pf(const uint16_t* p) {
  uint4 v;
  asm("ld.global.nc.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ void stg16(uint16_t* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }
__device__ __forceinline__ void stg16_cs(uint16_t* p, uint4 v) {
  asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}
using mhc::cuda::bf16_hi;
using mhc::cuda::bf16_lo;
using mhc::cuda::pack2;
__device__ __forceinline__ void mix(const float* post, const float* comb, uint4 xv, const uint4* old, uint4* nv) {
  const uint32_t* xw = &xv.x;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    uint32_t o[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      float a = post[j] * bf16_lo(xw[q]), b = post[j] * bf16_hi(xw[q]);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const uint32_t w = (&old[i].x)[q];
        a = fmaf(comb[i * N + j], bf16_lo(w), a);
        b = fmaf(comb[i * N + j], bf16_hi(w), b);
      }
      o[q] = pack2(a, b);
    }
    nv[j] = make_uint4(o[0], o[1], o[2], o[3]);
  }
}
__device__ __forceinline__ void gates(const P& p, int64_t t, float* post, float* comb) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p.post + t * N));
  post[0] = a.x; post[1] = a.y; post[2] = a.z; post[3] = a.w;
#pragma unroll
  for (int q = 0; q < N; ++q) {
    const float4 c = __ldg(reinterpret_cast<const float4*>(p.comb + t * N * N) + q);
    comb[4 * q] = c.x; comb[4 * q + 1] = c.y; comb[4 * q + 2] = c.z; comb[4 * q + 3] = c.w;
  }
}

template <int MODE>  // 0 plain, 3 .cs stores, 4 prefetch-hinted loads
__global__ void __launch_bounds__(128, 8) k_vec(const P p) {
  const int64_t t = blockIdx.x;
  const int v = blockIdx.y * 128 + threadIdx.x;
  if (v >= p.H / 8) return;
  float post[N], comb[N * N];
  gates(p, t, post, comb);
  const int64_t h = 8 * int64_t(v);
  uint4 xv, old[N], nv[N];
  xv = MODE == 4 ? ldg16_pf(p.x + t * p.H + h) : ldg16(p.x + t * p.H + h);
#pragma unroll
  for (int i = 0; i < N; ++i) old[i] = MODE == 4 ? ldg16_pf(p.res + (t * N + i) * p.H + h) : ldg16(p.res + (t * N + i) * p.H + h);
  mix(post, comb, xv, old, nv);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (MODE == 3) stg16_cs(p.out + (t * N + j) * p.H + h, nv[j]);
    else stg16(p.out + (t * N + j) * p.H + h, nv[j]);
  }
}

__global__ void __launch_bounds__(128, 8) k_bulk(const P p) {
  __shared__ alignas(128) uint4 buf[N][128];
  const int64_t t = blockIdx.x;
  const int v0 = blockIdx.y * 128;
  const int v = v0 + threadIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wv0 = v0 + 32 * warp;  // first vector of this warp
  if (wv0 >= p.H / 8) return;
  const int wn = min(32, p.H / 8 - wv0);
  if (v < p.H / 8) {
    float post[N], comb[N * N];
    gates(p, t, post, comb);
    const int64_t h = 8 * int64_t(v);
    uint4 xv = ldg16(p.x + t * p.H + h), old[N], nv[N];
#pragma unroll
    for (int i = 0; i < N; ++i) old[i] = ldg16(p.res + (t * N + i) * p.H + h);
    mix(post, comb, xv, old, nv);
#pragma unroll
    for (int j = 0; j < N; ++j) buf[j][threadIdx.x] = nv[j];
  }
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  __syncwarp();
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      uint16_t* g = p.out + (t * N + j) * p.H + 8 * int64_t(wv0);
      const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(&buf[j][32 * warp]));
      asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(g), "r"(s), "r"(wn * 16) : "memory");
    }
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
  }
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS) k_row(const P p) {
  const int64_t t = blockIdx.x;
  float post[N], comb[N * N];
  gates(p, t, post, comb);
  const int nvec = p.H / 8;
  int v = threadIdx.x;
  uint4 xv, old[N];
  auto load = [&](int vv, uint4& x_, uint4* o_) {
    const int64_t h = 8 * int64_t(vv);
    x_ = ldg16(p.x + t * p.H + h);
#pragma unroll
    for (int i = 0; i < N; ++i) o_[i] = ldg16(p.res + (t * N + i) * p.H + h);
  };
  if (v < nvec) load(v, xv, old);
  for (; v < nvec; v += THREADS) {
    uint4 xn, on[N], nv[N];
    const bool more = v + THREADS < nvec;
    if (more) load(v + THREADS, xn, on);
    mix(post, comb, xv, old, nv);
    const int64_t h = 8 * int64_t(v);
#pragma unroll
    for (int j = 0; j < N; ++j) stg16(p.out + (t * N + j) * p.H + h, nv[j]);
    if (more) { xv = xn; for (int i = 0; i < N; ++i) old[i] = on[i]; }
  }
}

static void launch(int variant, const P& p, int64_t T, cudaStream_t s) {
  const dim3 g(static_cast<unsigned>(T), (p.H / 8 + 127) / 128);
  switch (variant) {
    case 0: k_vec<0><<<g, 128, 0, s>>>(p); break;
    case 1: k_bulk<<<g, 128, 0, s>>>(p); break;
    case 2: k_row<128><<<static_cast<unsigned>(T), 128, 0, s>>>(p); break;
    case 3: k_vec<3><<<g, 128, 0, s>>>(p); break;
    case 4: k_vec<4><<<g, 128, 0, s>>>(p); break;
    case 5: k_row<256><<<static_cast<unsigned>(T), 256, 0, s>>>(p); break;
  }
}

int main(int argc, char** argv) {
  const int64_t Ts[] = {512, 4096, 16384};
  const int Hs[] = {4096, 7168, 5120};
  void* flush; CK(cudaMalloc(&flush, 128 << 20));
  cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
  int dev; CK(cudaGetDevice(&dev)); cudaDeviceProp prop; CK(cudaGetDeviceProperties(&prop, dev));
  printf("%s\n", prop.name);
  for (int H : Hs) for (int64_t T : Ts) {
    const size_t nx = T * H, nr = T * N * H;
    uint16_t *x, *res, *out, *ref; float *post, *comb;
    CK(cudaMalloc(&x, nx * 2)); CK(cudaMalloc(&res, nr * 2)); CK(cudaMalloc(&out, nr * 2)); CK(cudaMalloc(&ref, nr * 2));
    CK(cudaMalloc(&post, T * N * 4)); CK(cudaMalloc(&comb, T * N * N * 4));
    {
      std::vector<uint16_t> hb(nr); uint32_t st = 12345;
      for (auto& b : hb) { st = st * 1664525u + 1013904223u; b = 0x3f00 | ((st >> 16) & 0x80ff); }
      CK(cudaMemcpy(res, hb.data(), nr * 2, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(x, hb.data(), nx * 2, cudaMemcpyHostToDevice));
      std::vector<float> hf(T * N * N);
      for (auto& f : hf) { st = st * 1664525u + 1013904223u; f = (st >> 8) * (1.0f / 16777216.0f); }
      CK(cudaMemcpy(comb, hf.data(), T * N * N * 4, cudaMemcpyHostToDevice));
      CK(cudaMemcpy(post, hf.data(), T * N * 4, cudaMemcpyHostToDevice));
    }
    const P p0{x, res, post, comb, ref, H};
    launch(0, p0, T, 0); CK(cudaDeviceSynchronize());
    const double bytes = double(T) * (18.0 * H + 80);
    for (int variant = 0; variant <= 5; ++variant) {
      const P p{x, res, post, comb, out, H};
      CK(cudaMemset(out, 0xff, nr * 2));
      launch(variant, p, T, 0);
      CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
      std::vector<uint16_t> a(nr), b(nr);
      CK(cudaMemcpy(a.data(), ref, nr * 2, cudaMemcpyDeviceToHost));
      CK(cudaMemcpy(b.data(), out, nr * 2, cudaMemcpyDeviceToHost));
      const bool same = memcmp(a.data(), b.data(), nr * 2) == 0;
      std::vector<float> ts;
      for (int r = 0; r < 15; ++r) {
        CK(cudaMemsetAsync(flush, r, 128 << 20, 0));
        CK(cudaEventRecord(e0, 0)); launch(variant, p, T, 0); CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1)); float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); ts.push_back(ms * 1000);
      }
      std::sort(ts.begin(), ts.end());
      printf("H %5d T %6ld variant %d: %8.2f us (min %8.2f) %6.0f GB/s %s\n", H, (long)T, variant, ts[7], ts[0], bytes / ts[7] * 1e-3, same ? "same" : "DIFFERS");
    }
    // copy-rate reference: one D2D memcpy of the same bytes' worth (read + write)
    std::vector<float> ts;
    for (int r = 0; r < 15; ++r) {
      CK(cudaMemsetAsync(flush, r, 128 << 20, 0));
      CK(cudaEventRecord(e0, 0)); CK(cudaMemcpyAsync(out, res, nr * 2, cudaMemcpyDeviceToDevice, 0)); CK(cudaEventRecord(e1, 0));
      CK(cudaEventSynchronize(e1)); float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); ts.push_back(ms * 1000);
    }
    std::sort(ts.begin(), ts.end());
    printf("H %5d T %6ld memcpy of the residual: %8.2f us %6.0f GB/s (read+write)\n", H, (long)T, ts[7], 2.0 * nr * 2 / ts[7] * 1e-3);
    cudaFree(x); cudaFree(res); cudaFree(out); cudaFree(ref); cudaFree(post); cudaFree(comb);
  }
  return 0;
}
