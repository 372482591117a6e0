// Checks the kernels' bf16 packing (csrc/cuda/bf16.cuh pack2: cvt.rn.bf16x2.f32) against the
// CPU's rounding (core/math.h f32_to_bf16_bits) for all 2^32 fp32 bit patterns: the low half
// takes pattern u, the high half another pattern (u * 2654435761, a bijection), so every
// pattern goes through both halves. Non-NaN inputs must give the same bits; a NaN must give a
// NaN. Prints the counts and the first mismatch of each kind, exits 1 on any mismatch.
// Standalone (no torch), on the GPU machine:
//   nvcc -O3 -std=c++20 -arch=sm_90 -Icsrc tools/bf16_cvt_probe.cu -o /tmp/bfp && /tmp/bfp
#include <cstdio>

#include "cuda/bf16.cuh"

namespace {

struct Result {
  unsigned long long bad_value, bad_nan, checked;
  unsigned first_value, first_nan;
};

__device__ bool is_nan_bits(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }

// one half: the input's bits u and the packed result's half h
__device__ void check(uint32_t u, uint16_t h, Result* r) {
  if (is_nan_bits(u)) {
    if ((h & 0x7fffu) <= 0x7f80u) {
      if (atomicAdd(&r->bad_nan, 1ull) == 0) r->first_nan = u;
    }
  } else if (h != mhc::f32_to_bf16_bits(__uint_as_float(u))) {
    if (atomicAdd(&r->bad_value, 1ull) == 0) r->first_value = u;
  }
}

__global__ void probe(uint64_t begin, uint64_t count, Result* r) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  unsigned long long n = 0;
  for (uint64_t i = begin + blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x;
       i < begin + count; i += stride) {
    const uint32_t lo = static_cast<uint32_t>(i), hi = lo * 2654435761u;
    const uint32_t p = mhc::cuda::pack2(__uint_as_float(lo), __uint_as_float(hi));
    check(lo, static_cast<uint16_t>(p & 0xffffu), r);
    check(hi, static_cast<uint16_t>(p >> 16), r);
    n += 2;
  }
  atomicAdd(&r->checked, n);
}

}  // namespace

int main() {
  Result* r = nullptr;
  if (cudaMallocManaged(&r, sizeof(Result)) != cudaSuccess) return 2;
  *r = Result{0, 0, 0, 0, 0};
  probe<<<132 * 16, 256>>>(0, uint64_t{1} << 32, r);
  if (cudaDeviceSynchronize() != cudaSuccess) {
    std::printf("launch failed: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 2;
  }
  std::printf("bf16 pack2 vs f32_to_bf16_bits: %llu values checked, %llu non-NaN mismatches",
              r->checked, r->bad_value);
  if (r->bad_value) std::printf(" (first input 0x%08x)", r->first_value);
  std::printf(", %llu NaN inputs not packed as NaN", r->bad_nan);
  if (r->bad_nan) std::printf(" (first input 0x%08x)", r->first_nan);
  std::printf("\n");
  return r->bad_value || r->bad_nan ? 1 : 0;
}
