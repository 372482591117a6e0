// compute-sanitizer synccheck on the skeleton of hc_cluster_kernel (csrc/cuda/hc_cluster.cuh) up
// to its copy-stage barriers, outside the library, in variants that switch its parts on one by
// one, to tell which part synccheck's "Barrier error detected. Divergent thread(s) in warp."
// reports on hc_cluster_kernel come with (benchmarks/results/sanitize_h100.txt).
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -lineinfo \
//     -o synccheck_cluster_probe tools/synccheck_cluster_probe.cu
//   compute-sanitizer --tool synccheck ./synccheck_cluster_probe VARIANT [H] [T]
//
// VARIANT bits: 1 cluster launch (CTA rank from %cluster_ctarank, a cluster barrier at the
// end), 2 PDL attribute + griddepcontrol, 4 fn prefetch loop, 8 cp.async copies (else loads and
// stores), 16 warp-uniform loop trip counts, 32 __syncwarp before each stage barrier, 64
// barrier.sync (not .aligned) instead of __syncthreads. Defaults: H = 4104, T = 2053 (the
// sanitizer call whose hc_head runs the one-block cluster plan).
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)
struct P { const uint16_t* res; const uint16_t* fn; float* out; int64_t T; int H; int gpc; int CS; };
template <int V>
__global__ void __launch_bounds__(256, 2) k(const P p) {
  extern __shared__ uint4 data[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  unsigned rank = 0;
  if (V & 1) asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
  const int N = 4, BT = 16;
  const int gb = rank * p.gpc, G = (p.H + 63) / 64;
  const int ng = max(0, min(G, gb + p.gpc) - gb);
  const int h0 = gb * 64, SV = 4 * p.gpc, nv = h0 < p.H ? min(SV, (p.H - h0) / 8) : 0;
  const int RS = N * SV + ((N * p.gpc) % 2 == 0 ? 4 : 0);
  const int64_t t0 = static_cast<int64_t>(blockIdx.x / p.CS) * BT;
  if (V & 4) {
    for (int idx = tid; idx < 6 * N * ng; idx += blockDim.x)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p.fn + (idx / ng) * 64 + (idx % ng) * 64));
  }
  if (V & 2) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
  }
  const int stages = 4, gps = (p.gpc + stages - 1) / stages;
  for (int s = 0; s < 4; ++s) {
    const int q0 = s * gps, q1 = min(ng, q0 + gps);
    const int vcount = q1 > q0 ? 4 * (q1 - q0) : 0;
    const int total = BT * N * vcount;
    for (int base = (V & 16) ? tid - lane : tid; base < total; base += blockDim.x) {
      const int idx = (V & 16) ? base + lane : base;
      if (idx >= total) continue;
      const int v = 4 * q0 + idx % vcount, rest = idx / vcount;
      const int i = rest % N, t = rest / N;
      const int64_t tok = t0 + t;
      const bool ok = tok < p.T && v < nv;
      const uint16_t* src = ok ? p.res + (tok * N + i) * p.H + h0 + 8 * v : p.res;
      if (V & 8) {
        const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(data + t * RS + i * SV + v));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0) : "memory");
      } else {
        data[t * RS + i * SV + v] = ok ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
      }
    }
    if (V & 8) asm volatile("cp.async.commit_group;" ::: "memory");
  }
  float acc = 0.f;
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    if (V & 8) {
      if (s == 0) asm volatile("cp.async.wait_group 3;" ::: "memory");
      if (s == 1) asm volatile("cp.async.wait_group 2;" ::: "memory");
      if (s == 2) asm volatile("cp.async.wait_group 1;" ::: "memory");
      if (s == 3) asm volatile("cp.async.wait_group 0;" ::: "memory");
    }
    if (V & 32) __syncwarp();
    if (V & 64) asm volatile("barrier.sync 0;" ::: "memory");
    else __syncthreads();
    const int q0 = s * gps, q1 = min(ng, q0 + gps);
    for (int u = q0 * N + warp; u < q1 * N; u += 8) {
      const uint4 w = data[(lane % 16) * RS + (u % N) * SV + 4 * (u / N) + (lane & 3)];
      acc += __uint_as_float(w.x & 0x7f7fffff) * 1e-30f;
    }
  }
  if (V & 1) {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
  }
  p.out[blockIdx.x * blockDim.x + tid] = acc;
}
template <int V>
int run(int H, int64_t T) {
  const int N = 4, G = (H + 63) / 64, CS = G < 16 ? G : 16, gpc = (G + CS - 1) / CS;
  const int SV = 4 * gpc, RS = N * SV + ((N * gpc) % 2 == 0 ? 4 : 0);
  const size_t smem = 16ull * 16 * RS;
  const int blocks = static_cast<int>((T + 15) / 16) * CS;
  uint16_t *res, *fn; float* out;
  CK(cudaMalloc(&res, T * N * H * 2)); CK(cudaMalloc(&fn, 24ull * N * H * 2));
  CK(cudaMalloc(&out, blocks * 256 * 4));
  CK(cudaMemset(res, 0x3c, T * N * H * 2));
  CK(cudaFuncSetAttribute(k<V>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  if (V & 1) CK(cudaFuncSetAttribute(k<V>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks); cfg.blockDim = dim3(256); cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[2]; int na = 0;
  if (V & 1) { attr[na].id = cudaLaunchAttributeClusterDimension; attr[na].val.clusterDim.x = CS; attr[na].val.clusterDim.y = 1; attr[na].val.clusterDim.z = 1; ++na; }
  if (V & 2) { attr[na].id = cudaLaunchAttributeProgrammaticStreamSerialization; attr[na].val.programmaticStreamSerializationAllowed = 1; ++na; }
  cfg.attrs = attr; cfg.numAttrs = na;
  const P p{res, fn, out, T, H, gpc, CS};
  CK(cudaLaunchKernelEx(&cfg, k<V>, p));
  CK(cudaDeviceSynchronize());
  printf("variant %d H %d T %lld CS %d gpc %d blocks %d smem %zu: ran\n", V, H, (long long)T, CS, gpc, blocks, smem);
  return 0;
}
#define CASE(v) case v: return run<v>(H, T);
int main(int argc, char** argv) {
  const int v = atoi(argv[1]);
  const int H = argc > 2 ? atoi(argv[2]) : 4104;
  const int64_t T = argc > 3 ? atoll(argv[3]) : 2053;
  switch (v) {
    CASE(15) CASE(14) CASE(13) CASE(11) CASE(7) CASE(31) CASE(47) CASE(79) CASE(8) CASE(0) CASE(1) CASE(9) CASE(10)
    CASE(17) CASE(81) CASE(113) CASE(3) CASE(5)
    default: printf("unknown variant %d\n", v); return 2;
  }
}
