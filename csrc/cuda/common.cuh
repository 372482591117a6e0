// Helpers shared by the CUDA kernels of every family: programmatic dependent launch, 16-byte
// loads and stores (their bf16 packing: cuda/bf16.cuh), the bf16 hi/lo tensor-core dot
// product, the post element of mhc_post / fused, and the host side (launch with PDL, SM count
// per device, alignment checks).
//
// The skinny GEMMs (x [T, K] bf16 against fn [M, K] fp32, M <= 80) run on mma.sync.m16n8k16
// with fp32 accumulation: x (bf16) is the A operand as is; fn is split into hi = bf16(fn) and
// lo = bf16(fn - hi) (a third term for the prenorm GEMM), B operands whose products are exact
// in fp32, so the GEMM is accurate to ~2^-18 relative per product with two terms (far inside
// the gate bounds of SPEC §3, where TF32-truncated fn is not) and ~2^-27 with three.
// K is walked in chunks of 32: lane (g = lane / 4, c = lane % 4) loads 8 consecutive k of its
// token row with one 16-byte load, and A and B use the same permutation of k inside the chunk
// (logical k {2c, 2c+1, 2c+8, 2c+9} of step s <-> physical 8c + 4s + {0, 1, 2, 3}), which
// leaves the dot product unchanged and needs no shared-memory staging.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "core/math.h"
#include "cuda/bf16.cuh"

namespace mhc::cuda {

// ---------------------------------------------------------------------------------------------
// Programmatic dependent launch (sm_90+; no-ops below, where launches are fully serialised).
// A kernel launched with PDL may start while its predecessor in the stream still runs: it must
// call pdl_wait() before touching any global memory the predecessor may read or write.
// pdl_trigger() lets the next kernel in the stream launch early (it waits the same way).

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// cp.async (sm_80+): 16 bytes global -> shared without registers; bytes = 0 zero-fills.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}
// cp_async16 / 16 read-only bytes whose L2 miss fetches the 256 bytes around the request
// (the .L2::256B prefetch-size hint). The main kernels read 64-byte pieces of many token rows,
// and the neighbouring pieces of the same rows are read by other warps of the CTA moments
// later (docs/performance.md, "The fn ring").
__device__ __forceinline__ void cp_async16_pf256(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ uint4 ldg16_pf256(const uint16_t* p) {
  uint4 v;
  asm("ld.global.nc.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// L2 eviction priority evict_first (sm_80+: createpolicy, carried by the .L2::cache_hint forms
// below) for the last read of the residual and for outputs nothing reads back: their lines
// leave L2 before the lines that are still to be read (the rest of the residual, fn).
__device__ __forceinline__ uint64_t l2_evict_first() {
  uint64_t pol = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
#endif
  return pol;
}
// cp_async16_pf256 with a policy.
__device__ __forceinline__ void cp_async16_pf256_hint(void* smem, const void* gmem, bool valid,
                                                      uint64_t pol) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint.L2::256B [%0], [%1], 16, %2, %3;"
               ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0), "l"(pol)
               : "memory");
}
// 16-byte read-only (non-coherent) and coherent (.cg) loads and a 16-byte store, with a policy.
__device__ __forceinline__ uint4 ldg16_hint(const uint16_t* p, uint64_t pol) {
  uint4 v;
  asm("ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "l"(pol));
  return v;
}
__device__ __forceinline__ uint4 ldcg16_hint(const uint16_t* p, uint64_t pol) {
  uint4 v;
  asm volatile("ld.global.cg.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p), "l"(pol)
               : "memory");
  return v;
}
__device__ __forceinline__ void stg16_hint(uint16_t* p, const uint4& v, uint64_t pol) {
  asm volatile("st.global.L2::cache_hint.v4.u32 [%0], {%1, %2, %3, %4}, %5;" ::"l"(p),
               "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "l"(pol)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

// A hint only (no data is returned), so it is safe before pdl_wait() on read-only weights.
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Bulk L2 prefetch (sm_90+, the TMA unit): `bytes` (a multiple of 16) from 16-byte aligned
// `p` into L2, one instruction for a whole contiguous row, no registers, no completion to wait
// for. Callers pass only rows that lie inside the tensor.
__device__ __forceinline__ void bulk_prefetch_l2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// 16-byte global loads and stores of 8 bf16 (their packing: cuda/bf16.cuh).

__device__ __forceinline__ uint4 ldg16(const uint16_t* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

__device__ __forceinline__ void stg16(uint16_t* p, const uint4& v) {
  *reinterpret_cast<uint4*>(p) = v;
}

// Sum over the 4 lanes of an mma quad (lanes 4g .. 4g + 3, which hold one row's columns):
// v + lane^1, then + lane^2, the same order on every lane.
template <typename V>
__device__ __forceinline__ V quad_sum(V v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// sum of squares of 8 bf16 values added to s, in element order.
__device__ __forceinline__ float add_sumsq8(const uint4& v, float s) {
  float f[8];
  unpack8(v, f);
#pragma unroll
  for (int e = 0; e < 8; ++e) s = fmaf(f[e], f[e], s);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core dot products.

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// B fragments of one 8-row block of fn over one 32-wide K chunk, split into PARTS bf16 terms
// (hi = bf16(fn), then bf16 of what is left): 2 terms leave |fn - hi - lo| <= 2^-18 |fn|, 3
// terms 2^-27 |fn|. part[p][0], part[p][1] feed k16 step 0 (b0, b1), part[p][2], [3] step 1.
template <int PARTS>
struct FnFrag {
  uint32_t part[PARTS][4];
};

// From the 8 fp32 fn values this lane owns (row 8*nt + g, k = chunk + 8c .. + 7).
template <int PARTS>
__device__ __forceinline__ FnFrag<PARTS> make_frag(const float (&f)[8]) {
  FnFrag<PARTS> r;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    float a = f[2 * q], b = f[2 * q + 1];
#pragma unroll
    for (int k = 0; k < PARTS; ++k) {
      const uint32_t h = pack2(a, b);
      r.part[k][q] = h;
      a -= bf16_lo(h);  // exact: bf16_lo(h) is a rounding of a
      b -= bf16_hi(h);
    }
  }
  return r;
}

template <int PARTS>
__device__ __forceinline__ FnFrag<PARTS> zero_frag() {
  FnFrag<PARTS> r;
#pragma unroll
  for (int k = 0; k < PARTS; ++k)
#pragma unroll
    for (int q = 0; q < 4; ++q) r.part[k][q] = 0u;
  return r;
}

// Loads the lane's 8 fn values at p (16-byte aligned) and splits them.
template <int PARTS>
__device__ __forceinline__ FnFrag<PARTS> load_frag(const float* p) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p));
  const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  const float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  return make_frag<PARTS>(f);
}

// acc (16 tokens x 8 outputs) += x chunk (rows g: v0, g + 8: v1) . fn chunk, term by term.
template <int PARTS>
__device__ __forceinline__ void mma_chunk(float (&acc)[4], const uint4& v0, const uint4& v1,
                                          const FnFrag<PARTS>& f) {
  const uint32_t a0[4] = {v0.x, v1.x, v0.y, v1.y};
#pragma unroll
  for (int k = 0; k < PARTS; ++k) mma_bf16(acc, a0, f.part[k][0], f.part[k][1]);
  const uint32_t a1[4] = {v0.z, v1.z, v0.w, v1.w};
#pragma unroll
  for (int k = 0; k < PARTS; ++k) mma_bf16(acc, a1, f.part[k][2], f.part[k][3]);
}

// ---------------------------------------------------------------------------------------------
// mhc_post of 8 consecutive h of one token (SPEC §2.2). mhc_post and the fused op both build
// on post_stream8, so residual_out of the fused op is bit-identical to mhc_post.
// Output stream j of 8 columns: x and the input streams unpacked to fp32 (xf, rf), comb[i][j]
// at comb_col[i * stride].
template <int N>
__device__ __forceinline__ uint4 post_stream8(float post_j, const float* comb_col, int stride,
                                              const float (&xf)[8], const float (&rf)[N][8]) {
  float o[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    float col[N];
#pragma unroll
    for (int i = 0; i < N; ++i) col[i] = rf[i][e];
    o[e] = post_mix_element<N>(post_j, xf[e], comb_col, stride, col);
  }
  return pack8(o);
}

// Every output stream: post [N], comb [N][N] row-major (comb[i][j] at i * N + j), x and res[i]
// 8 bf16 each.
template <int N>
__device__ __forceinline__ void post_vec8(const float (&post)[N], const float (&comb)[N * N],
                                          const uint4& xv, const uint4 (&res)[N],
                                          uint4 (&out)[N]) {
  float xf[8], rf[N][8];
  unpack8(xv, xf);
#pragma unroll
  for (int i = 0; i < N; ++i) unpack8(res[i], rf[i]);
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = post_stream8<N>(post[j], comb + j, N, xf, rf);
}

// ---------------------------------------------------------------------------------------------
// Host side.

inline const uint16_t* bf16_ptr(const at::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.const_data_ptr<at::BFloat16>());
}
inline uint16_t* bf16_mut(const at::Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.mutable_data_ptr<at::BFloat16>());
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// t itself when it is contiguous and 16-byte aligned, else an aligned contiguous copy.
inline at::Tensor aligned_contiguous(const at::Tensor& t) {
  if (t.is_contiguous() && aligned16(t.const_data_ptr())) return t;
  at::Tensor c = at::empty(t.sizes(), t.options());
  c.copy_(t);
  return c;
}

inline int num_sms(int device) {
  return at::cuda::getDeviceProperties(device)->multiProcessorCount;
}

inline bool pdl_supported(int device) { return at::cuda::getDeviceProperties(device)->major >= 9; }

// Thread-block clusters with distributed shared memory (the CLUSTER plans): sm_90+.
inline bool supports_clusters(int device) {
  return at::cuda::getDeviceProperties(device)->major >= 9;
}

// Whether kernel's dynamic shared memory limit on device is still below smem; if so it is
// recorded as raised, and the caller raises it (cudaFuncSetAttribute once per kernel, device and
// size, instead of a driver call on every launch).
inline bool smem_limit_below(const void* kernel, int device, size_t smem) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> raised;
  std::lock_guard<std::mutex> lock(mu);
  size_t& limit = raised[{kernel, device}];
  if (limit >= smem) return false;
  limit = smem;
  return true;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) in thread-block clusters of `cluster`
// CTAs along x (0: no cluster), with programmatic stream serialisation where the device
// supports it, and raises dynamic shared memory past 48 KB.
template <typename... Params, typename... Args>
void launch_clustered(void (*kernel)(Params...), int device, dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream, int cluster, Args&&... args) {
  if (smem > 48 * 1024 && smem_limit_below(reinterpret_cast<const void*>(kernel), device, smem))
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int na = 0;
  if (cluster > 0) {
    attr[na].id = cudaLaunchAttributeClusterDimension;
    attr[na].val.clusterDim.x = static_cast<unsigned>(cluster);
    attr[na].val.clusterDim.y = 1;
    attr[na].val.clusterDim.z = 1;
    ++na;
  }
  if (pdl_supported(device)) {
    attr[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[na].val.programmaticStreamSerializationAllowed = 1;
    ++na;
  }
  cfg.attrs = attr;
  cfg.numAttrs = na;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// launch_clustered without clusters.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), int device, dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, Args&&... args) {
  launch_clustered(kernel, device, grid, block, smem, stream, 0, std::forward<Args>(args)...);
}

}  // namespace mhc::cuda
