// The main kernel of mhc_fused_post_pre (SPLIT_K and FULL_K plans).
//
// What: for a block of BT tokens and one split's run of K groups, residual_out = mhc_post(x,
// residual, post, comb) of its columns (post_vec8, the function mhc_post runs, so residual_out
// is bit-identical to mhc_post), stored, and fed from registers to the pre GEMM: d = fn · r_t,
// ss = Σ r_t² on mma.sync. SPLIT_K writes the partials for the epilogue (hc_epilogue.cuh),
// FULL_K goes on to the gates and the stream sum of residual_out (hc_main_common.cuh).
// Grid: (token blocks of Plan::block_tokens, splits); a work unit is a K group with all its
// output streams, or with HALF (Plan::split_streams, decode sizes, even n) half of them, so
// that twice the warps share the serial post mix. Inputs come by plain loads, or (Plan::fn_ring,
// prefill sizes) through a per-warp cp.async ring of two units (FusedRing, core/geometry.h),
// L2 evict_first while residual_out fits in L2 (Plan::evict_inputs).
// Bound: at decode, latency and streaming fn; at prefill, HBM bytes: x and the residual read
// once, residual_out written once and read back once by the stream sum.
#pragma once

#include "core/geometry.h"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"
#include "cuda/hc_main_common.cuh"

namespace mhc::cuda {

template <int N, bool FULLK, bool NORM, int HS, bool HALF, bool RING>
__global__ void __launch_bounds__(kMainThreads, 1) hc_fused_main_kernel(const MainParams p) {
  constexpr Mode MODE = Mode::FUSED;
  static_assert(!HALF || N % 2 == 0, "half units: even n");
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, NT = Sh::NT, MP = Sh::MP, NC = Sh::NC;
  constexpr int TT = tiles_per_block(N, MODE, FULLK, false);
  constexpr int BT = 16 * TT;
  extern __shared__ float4 smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
  float* red = reinterpret_cast<float*>(smem_raw);
  float* coef = red + W * BT * MP;
  const int g = lane >> 2, c = lane & 3;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * BT;
  const int gb = blockIdx.y * p.gpc, ge = min(p.G, gb + p.gpc);
  const int H = HS > 0 ? HS : p.H;
  const int64_t K = static_cast<int64_t>(N) * H;
  const int64_t T = p.T;

  // Work units: a whole group or, with HALF, a group and half of its output streams, for which
  // the warp reads x and every input stream (the post mix needs them all) and writes and
  // reduces only its own.
  constexpr int kUnitStreams = HALF ? N / 2 : N;
  const int units = (ge - gb) * (N / kUnitStreams);

  const bool staged = p.fnf != nullptr;
  if (!FULLK && !staged) prefetch_fn_slice<N, MODE, kUnitStreams>(p, gb, units, H, K);
  pdl_wait();
  pdl_trigger();

  load_block_coefs<N, NC>(coef, p.post_in, p.comb_in, t0, T, BT);
  __syncthreads();

  float acc[TT][NT][4] = {};  // per tile, 8-row block: the mma accumulators
  float ss[TT][2] = {};       // per tile: sums of squares of rows g and g + 8
  constexpr int NS = kUnitStreams;  // output streams per unit
  // With RING (Plan::fn_ring), x and the input streams of a unit come through a per-warp
  // cp.async ring of FusedRing::kStages slots in shared memory (after red and coef), the
  // next unit's copies in flight while this one is mixed, stored and reduced.
  using FR = FusedRing<N, TT>;
  const uint64_t pol_in = l2_evict_first();
  uint4* aring =
      reinterpret_cast<uint4*>(coef + BT * NC) + warp * FR::kStages * FR::kSlot + lane;
  const auto stage_acts = [&](int k) {  // the warp's k-th unit into slot k % kStages
    if constexpr (RING) {
      const int uu = warp + k * W;
      if (uu < units) {
        const int h = (gb + uu / (N / NS)) * kGroupCols + 8 * c;
        uint4* slot = aring + (k % FR::kStages) * FR::kSlot;
#pragma unroll
        for (int tt = 0; tt < TT; ++tt)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int64_t t = t0 + 16 * tt + g + 8 * hf;
            const bool ok = h < H && t < T;
            uint4* row = slot + (2 * tt + hf) * (N + 1) * 32;
            if (p.evict_inputs) {  // Plan::evict_inputs
              cp_async16_pf256_hint(row, ok ? p.x + t * H + h : p.x, ok, pol_in);
#pragma unroll
              for (int i = 0; i < N; ++i)
                cp_async16_pf256_hint(row + (i + 1) * 32,
                                      ok ? p.res + (t * N + i) * H + h : p.res, ok, pol_in);
            } else {
              cp_async16_pf256(row, ok ? p.x + t * H + h : p.x, ok);
#pragma unroll
              for (int i = 0; i < N; ++i)
                cp_async16_pf256(row + (i + 1) * 32, ok ? p.res + (t * N + i) * H + h : p.res,
                                 ok);
            }
          }
      }
      cp_async_commit();  // one group per unit, empty past the end: the counts stay uniform
    }
  };
#pragma unroll
  for (int k = 0; k < FR::kStages - 1; ++k) stage_acts(k);
  for (int k = 0, u = warp; u < units; ++k, u += W) {
    stage_acts(k + FR::kStages - 1);
    const uint4* slot = aring + (k % FR::kStages) * FR::kSlot;
    const int gi = gb + u / (N / NS), j0 = (u % (N / NS)) * NS;
    const int h = gi * kGroupCols + 8 * c;
    const bool hv = h < H;
    // fn of the unit's streams first, so that all of its loads are in flight together
    // (where registers allow; otherwise stream by stream below).
    constexpr bool kPreload = NS * NT <= 12;
    float4 fr[kPreload ? NS : 1][NT][2];
#pragma unroll
    for (int q = 0; q < (kPreload ? NS : 0); ++q) {
      if (staged) load_staged_unit<NT>(p.fnf, static_cast<int64_t>(gi) * N + j0 + q, lane, fr[q]);
      else load_fn_unit<NT, M>(p.fn, K, H, h, j0 + q, g, fr[q]);
    }
    if constexpr (RING) cp_async_wait<FR::kStages - 1>();  // this unit's copies (this lane's)
    // Half units (decode sizes, no ring) issue the x and input-stream loads of all their rows
    // before the first post mix: the loads may not pass the residual_out stores of the row
    // before, so row by row each row had waited for HBM in turn (230 registers). Whole units
    // without the ring (T = 65 .. 511) keep loading row by row: with all rows in registers
    // they spill (docs/performance.md, "Half units of the fused op").
    uint4 xin[HALF ? TT : 1][2], oin[HALF ? TT : 1][2][N];
    if constexpr (HALF) {
#pragma unroll
      for (int tt = 0; tt < TT; ++tt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int64_t t = t0 + 16 * tt + g + 8 * hf;
          if (hv && t < T) {
            xin[tt][hf] = ldg16_pf256(p.x + t * H + h);
#pragma unroll
            for (int i = 0; i < N; ++i)
              oin[tt][hf][i] = ldg16_pf256(p.res + (t * N + i) * H + h);
          }
        }
    }
    // New residual of this lane's 8 columns, the unit's streams, both rows of each tile.
    uint4 r[TT][2][NS];
#pragma unroll
    for (int tt = 0; tt < TT; ++tt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int row = 16 * tt + g + 8 * hf;
        const int64_t t = t0 + row;
        if (hv && t < T) {
          uint4 xv, old[N];
          if constexpr (RING) {
            const uint4* rrow = slot + (2 * tt + hf) * (N + 1) * 32;
            xv = rrow[0];
#pragma unroll
            for (int i = 0; i < N; ++i) old[i] = rrow[(i + 1) * 32];
          } else if constexpr (HALF) {
            xv = xin[tt][hf];
#pragma unroll
            for (int i = 0; i < N; ++i) old[i] = oin[tt][hf][i];
          } else {
            xv = ldg16_pf256(p.x + t * H + h);
#pragma unroll
            for (int i = 0; i < N; ++i) old[i] = ldg16_pf256(p.res + (t * N + i) * H + h);
          }
          post_vec8_part<N, NS>(coef + row * NC, j0, xv, old, r[tt][hf]);
#pragma unroll
          for (int q = 0; q < NS; ++q)
            stg16(p.res_out + (t * N + j0 + q) * H + h, r[tt][hf][q]);
        } else {
#pragma unroll
          for (int q = 0; q < NS; ++q) r[tt][hf][q] = make_uint4(0u, 0u, 0u, 0u);
        }
      }
#pragma unroll
    for (int q = 0; q < NS; ++q) {
      const int i = j0 + q;
      FnFrag<kParts> f[NT];
      if constexpr (kPreload) {
        unit_frags<NT>(staged, fr[q], f);
      } else {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          f[nt] = !hv || 8 * nt + g >= M ? zero_frag<kParts>()
                  : staged
                      ? load_staged_frag(p.fnf, (static_cast<int64_t>(gi) * N + i) * NT + nt, lane)
                      : load_frag<kParts>(p.fn + (8 * nt + g) * K + static_cast<int64_t>(i) * H + h);
      }
#pragma unroll
      for (int tt = 0; tt < TT; ++tt) {
        if (t0 + 16 * tt >= T) continue;  // a tile past the last token (decode sizes)
        mma_tile<NT>(acc[tt], ss[tt], r[tt][0][q], r[tt][1][q], f);
      }
    }
  }
  if constexpr (RING) cp_async_wait<0>();
  main_kernel_tail<N, MODE, FULLK, NORM, HS, TT, RING>(p, red, acc, ss, t0, blockIdx.y, W,
                                                       units, H);
}

}  // namespace mhc::cuda
