// bf16 packing of the CUDA kernels: 8 bf16 in a uint4 <-> 8 floats. No torch here, so that a
// standalone probe (tools/bf16_cvt_probe.cu) checks the very functions the kernels run.
//
// Outputs are rounded to nearest even, as core/math.h f32_to_bf16_bits rounds on the CPU, by one
// cvt.rn.bf16x2.f32 per pair of values (sm_80+). Bit-identical to f32_to_bf16_bits for every
// input that is not a NaN (the probe checks all 2^32 of them); a NaN comes out as a NaN, though
// not with the CPU's sign and payload. The integer form (f32_to_bf16_bits on the GPU) had cost
// ~6 instructions per value: a quarter of the fused main kernel's instructions
// (docs/performance.md, "bf16 packing").
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/math.h"

namespace mhc::cuda {

__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  f[0] = bf16_lo(v.x); f[1] = bf16_hi(v.x);
  f[2] = bf16_lo(v.y); f[3] = bf16_hi(v.y);
  f[4] = bf16_lo(v.z); f[5] = bf16_hi(v.z);
  f[6] = bf16_lo(v.w); f[7] = bf16_hi(v.w);
}

// bf16(a) in the low half, bf16(b) in the high half.
__device__ __forceinline__ uint32_t pack2(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));  // first source: high half
  return r;
#else
  return static_cast<uint32_t>(f32_to_bf16_bits(a)) |
         (static_cast<uint32_t>(f32_to_bf16_bits(b)) << 16);
#endif
}

__device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  return make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
}

}  // namespace mhc::cuda
