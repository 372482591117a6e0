// The bf16 x bf16 -> fp32 GEMM kernel behind linear_bf16_fp32 on the CPU.
#pragma once

#include <cstdint>

namespace mhc::cpu {

// out[t * ldo + n] = sum_{k < K} f32(x[t * ldx + k]) * f32(w[n * ldw + k]); x and w are bf16
// bits with unit stride along K (any row stride).
struct Bf16Gemm {
  const uint16_t* x;
  int64_t ldx;
  const uint16_t* w;
  int64_t ldw;
  int64_t K;
  float* out;
  int64_t ldo;
};

// Writes the block of outputs t in [t0, t1), n in [n0, n1), using (t1 - t0) * (n1 - n0) * 32
// bytes of per-thread scratch. Every output is summed in one fixed order: K is taken in groups
// of 16 (the last one zero-padded); fp32 lane l (of 8) adds, group after group, the product at
// 16g + 2l and then the one at 16g + 2l + 1; the lanes then fold as
// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)). An output's bits therefore depend only on
// its row of x and its row of w: not on the block bounds, T, N or the thread that computes it,
// nor on the CPU's instruction set (a bf16 product is exact in fp32, so a fused multiply-add
// rounds as a multiply then an add does).
void gemm_bf16_block(const Bf16Gemm& g, int64_t t0, int64_t t1, int64_t n0, int64_t n1);

}  // namespace mhc::cpu
