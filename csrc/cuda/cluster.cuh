// Thread-block cluster primitives (sm_90+) of the hc_head cluster kernels and the split combine:
// cluster barriers, distributed shared memory loads and stores, and the named barriers and
// cp.async waits with runtime counts that the persistent kernel needs.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "cuda/common.cuh"

namespace mhc::cuda {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release;" ::: "memory");
}
// Arrival that publishes nothing: unlike the release form, it does not wait until this
// thread's earlier global stores are visible cluster-wide.
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
}
__device__ __forceinline__ int cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return static_cast<int>(r);
}
// Shared-memory address of *p (this CTA's) in CTA `rank` of the cluster.
__device__ __forceinline__ uint32_t cluster_addr(const void* p, int rank) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
  return r;
}
__device__ __forceinline__ float ld_cluster(uint32_t addr) {
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ void st_cluster(uint32_t addr, float v) {
  asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(addr), "f"(v) : "memory");
}
#endif

// cp.async.wait_group takes an immediate: this thread's groups still pending <= `pending`.
__device__ __forceinline__ void cp_async_wait_upto(int pending) {
  switch (pending) {
    case 3: cp_async_wait<3>(); break;
    case 2: cp_async_wait<2>(); break;
    case 1: cp_async_wait<1>(); break;
    default: cp_async_wait<0>(); break;
  }
}

// f(std::integral_constant<int, I>{}) for I = 0, 1, ...: a loop whose index is a constant
// expression in the body (e.g. a cp.async.wait_group immediate).
template <typename F, int... I>
__device__ __forceinline__ void for_each_index(std::integer_sequence<int, I...>, F&& f) {
  (f(std::integral_constant<int, I>{}), ...);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void st_cluster_v4(uint32_t addr, float4 v) {
  asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "f"(v.x),
               "f"(v.y), "f"(v.z), "f"(v.w)
               : "memory");
}
#endif

// Named barriers of the persistent kernel: 1 its reducers, 2 the gates from the reducers to the
// writers, 3 its writers, 4 + b buffer b from the writers to the reducers.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Immediate barrier ids and counts, so that ptxas reserves only the barriers used.
template <int ID, int THREADS, bool ARRIVE = false>
__device__ __forceinline__ void named_sync() {
  if constexpr (ARRIVE)
    asm volatile("bar.arrive %0, %1;" ::"n"(ID), "n"(THREADS) : "memory");
  else
    asm volatile("bar.sync %0, %1;" ::"n"(ID), "n"(THREADS) : "memory");
}
template <int ID, int THREADS>
__device__ __forceinline__ void named_arrive() {
  named_sync<ID, THREADS, true>();
}
// Barrier 4 + b of buffer b < 3 (a switch over immediates): the reducers wait at it, the
// writers arrive (ARRIVE).
template <int THREADS, bool ARRIVE = false>
__device__ __forceinline__ void buffer_sync(int b) {
  switch (b) {
    case 0: named_sync<4, THREADS, ARRIVE>(); break;
    case 1: named_sync<5, THREADS, ARRIVE>(); break;
    default: named_sync<6, THREADS, ARRIVE>(); break;
  }
}
#endif

}  // namespace mhc::cuda
