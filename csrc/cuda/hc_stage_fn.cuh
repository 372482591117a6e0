// Staged fn (Plan::staged_fn): the B fragments (bf16 hi / lo terms) of every (group, stream,
// 8-row block) of fn, written once per call as uint4 [G][N][NT][kParts][32 lanes], so that the
// main kernel's fn loads are whole coalesced 512-byte warp loads and its loop does no hi / lo
// split. Grid: one warp per (group, stream, 8-row block), 8 warps per CTA. Bound: a few
// microseconds of fn traffic (1.5-2.75 MB at n = 4), paid once per call at prefill sizes.
#pragma once

#include "core/geometry.h"
#include "cuda/common.cuh"

namespace mhc::cuda {

// Writes the staged fn: one warp per (group, stream, 8-row block), lane (g, c) splitting the
// same 8 values that load_fn_unit gives it (zeros past H and past the M rows).
template <int N, Mode MODE>
__global__ void __launch_bounds__(256) hc_stage_fn_kernel(const float* fn, uint4* fnf, int H,
                                                         int G) {
  using Sh = Shape<N, MODE>;
  constexpr int NT = Sh::NT, M = Sh::M;
  pdl_wait();
  pdl_trigger();
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (item >= static_cast<int64_t>(G) * N * NT) return;
  const int nt = static_cast<int>(item % NT);
  const int64_t unit = item / NT;  // gi * N + i
  const int i = static_cast<int>(unit % N), gi = static_cast<int>(unit / N);
  const int h = gi * kGroupCols + 8 * c, row = 8 * nt + g;
  FnFrag<kParts> f = zero_frag<kParts>();
  if (h < H && row < M)
    f = load_frag<kParts>(fn + row * (static_cast<int64_t>(N) * H) + static_cast<int64_t>(i) * H + h);
#pragma unroll
  for (int k = 0; k < kParts; ++k)
    fnf[(item * kParts + k) * 32 + lane] =
        make_uint4(f.part[k][0], f.part[k][1], f.part[k][2], f.part[k][3]);
}

}  // namespace mhc::cuda
