// The main kernel of mhc_pre and hc_head (SPLIT_K and FULL_K plans).
//
// What: for a block of BT tokens and one split's run of K groups, d = fn · x_t (M = n(n+2) rows
// for pre, n for head) and ss = Σ x_t² on mma.sync (bf16 hi / lo terms of fn, fp32 sums); SPLIT_K
// writes them as this split's partials for the epilogue (hc_epilogue.cuh), FULL_K (whole K)
// goes on to the gates and the weighted stream sum (hc_main_common.cuh).
// Grid: (token blocks of Plan::block_tokens, splits); Plan::main_warps warps take (group,
// stream) units in turn, unit u going to warp u % W. The activations stream through a per-warp
// cp.async ring; fn comes one unit ahead in registers, or (Plan::fn_ring, prefill sizes)
// through the same ring as ready slots (MainRing, core/geometry.h). SMALL: the 32-token decode
// blocks.
// Bound: at decode, latency and streaming fn (the whole GPU reads it once); at prefill, HBM
// bytes (the residual once here, once more in the stream sum), fn once per block from L2.
#pragma once

#include "core/geometry.h"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"
#include "cuda/hc_main_common.cuh"

namespace mhc::cuda {

// The K loop of pre / head without the ring, for the tokens t0 .. t0 + 16 TT - 1 and the units
// of one split (groups gb ..): warp `warp` of W takes units warp, warp + W, ...; its ring of
// kRegStages units lies after red [W][16 TT][MP]. Shared by hc_prehead_main_kernel and the
// pipelined study kernel (hc_pipe.cuh), so that both add the same products in the same order.
template <int N, Mode MODE, int TT>
__device__ __forceinline__ void reg_k_loop(const MainParams& p, float* red, int64_t t0, int gb,
                                           int units, int H, int64_t K, int W, int warp, int lane,
                                           int g, int c, bool staged,
                                           float (&acc)[TT][Shape<N, MODE>::NT][4],
                                           float (&ss)[TT][2]) {
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, NT = Sh::NT, MP = Sh::MP;
  const int64_t T = p.T;
  // One (group, stream) unit: this lane's 8 fn values of each 8-row block (raw fp32, in
  // registers, prefetched one unit ahead: L2 hits) and its 8 activations of rows g, g + 8
  // of every tile (HBM), which stream through a per-warp ring of kRegStages units in shared
  // memory with cp.async, so each warp keeps several units of loads in flight.
  uint4* ring =
      reinterpret_cast<uint4*>(red + W * 16 * TT * MP) + warp * kRegStages * 2 * TT * 32 + lane;
  const auto stage_x = [&](int k) {  // the warp's k-th unit into slot k % kRegStages
    const int uu = warp + k * W;
    if (uu < units) {
      const int gi = gb + uu / N, i = uu % N;
      const int h = gi * kGroupCols + 8 * c;
      uint4* slot = ring + (k % kRegStages) * 2 * TT * 32;
      copy_unit_acts<N, TT>(slot, p.res, t0, T, H, h, i, g);
    }
    cp_async_commit();  // one group per unit, empty past the end: the counts stay uniform
  };
  const auto load_fn = [&](int uu, float4 (&fr)[NT][2]) {
    if (staged) load_staged_unit<NT>(p.fnf, static_cast<int64_t>(gb) * N + uu, lane, fr);
    else load_fn_unit<NT, M>(p.fn, K, H, (gb + uu / N) * kGroupCols + 8 * c, uu % N, g, fr);
  };
#pragma unroll
  for (int k = 0; k < kRegStages - 1; ++k) stage_x(k);
  float4 fr[NT][2];
  if (warp < units) load_fn(warp, fr);
  for (int k = 0, u = warp; u < units; ++k, u += W) {
    stage_x(k + kRegStages - 1);
    float4 fr_next[NT][2];
    if (u + W < units) load_fn(u + W, fr_next);
    FnFrag<kParts> f[NT];
    unit_frags<NT>(staged, fr, f);
    cp_async_wait<kRegStages - 1>();  // this unit's group has landed (this lane's own slots)
    const uint4* slot = ring + (k % kRegStages) * 2 * TT * 32;
#pragma unroll
    for (int tt = 0; tt < TT; ++tt) {
      if (t0 + 16 * tt >= T) continue;  // a tile past the last token (decode sizes)
      mma_tile<NT>(acc[tt], ss[tt], slot[(2 * tt) * 32], slot[(2 * tt + 1) * 32], f);
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      fr[nt][0] = fr_next[nt][0];
      fr[nt][1] = fr_next[nt][1];
    }
  }
}

template <int N, Mode MODE, bool FULLK, bool NORM, int HS, bool RING, bool SMALL>
__global__ void __launch_bounds__(kMainThreads, 1) hc_prehead_main_kernel(const MainParams p) {
  static_assert(MODE != Mode::FUSED, "the fused op has its own main kernel");
  static_assert(!SMALL || (!FULLK && !RING), "SMALL: pre / head SPLIT_K");
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, NT = Sh::NT;
  constexpr int TT = tiles_per_block(N, MODE, FULLK, SMALL);
  extern __shared__ float4 smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
  float* red = reinterpret_cast<float*>(smem_raw);
  const int g = lane >> 2, c = lane & 3;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * (16 * TT);
  const int gb = blockIdx.y * p.gpc, ge = min(p.G, gb + p.gpc);
  const int H = HS > 0 ? HS : p.H;
  const int64_t K = static_cast<int64_t>(N) * H;
  const int64_t T = p.T;
  const int units = (ge - gb) * N;  // (group, stream) units of this split

  const bool staged = p.fnf != nullptr;
  if (!FULLK && !staged) prefetch_fn_slice<N, MODE, 1>(p, gb, units, H, K);
  pdl_wait();
  pdl_trigger();

  float acc[TT][NT][4] = {};  // per tile, 8-row block: the mma accumulators
  float ss[TT][2] = {};       // per tile: sums of squares of rows g and g + 8
  if constexpr (!RING) {
    reg_k_loop<N, MODE, TT>(p, red, t0, gb, units, H, K, W, warp, lane, g, c, staged, acc, ss);
  } else {
    // One (group, stream) unit: this lane's 8 activations of rows g, g + 8 of every tile (HBM)
    // and its 8 fn values of each 8-row block (L2; raw fp32, or the staged hi / lo terms),
    // both streamed through a per-warp ring of Ring::kStages units in shared memory with
    // cp.async, so each warp keeps several units of loads in flight. (fn used to come one unit
    // ahead in registers: ncu put 28% of the kernel's stall samples on waiting for it.)
    using Ring = MainRing<N, MODE, FULLK>;
    constexpr int kStages = Ring::kStages;
    uint4* ring = reinterpret_cast<uint4*>(smem_raw) + warp * kStages * Ring::kSlot + lane;
    const auto stage_x = [&](int k) {  // the warp's k-th unit into slot k % kStages
      const int uu = warp + k * W;
      if (uu < units) {
        const int gi = gb + uu / N, i = uu % N;
        const int h = gi * kGroupCols + 8 * c;
        uint4* slot = ring + (k % kStages) * Ring::kSlot;
        copy_unit_acts<N, TT>(slot, p.res, t0, T, H, h, i, g);
        // fn slot [NT][kParts][32 lanes]: lane (g, c)'s 8 values of row 8 nt + g, columns
        // h .. h + 7, as two 16-byte halves. Staged fn is stored in that order. Raw fn is
        // copied so that each instruction covers whole sectors: copy k2 of lane (g, c) takes
        // the row's 16-byte chunk q = 4 k2 + c (columns 4q .. 4q + 3 of the group), which is
        // half q % 2 of lane (g, q / 2) (so the lanes read each other's copies: __syncwarp).
        uint4* fslot = slot - lane + 2 * TT * 32;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int k2 = 0; k2 < kParts; ++k2) {
            if (staged) {
              const int64_t unit = static_cast<int64_t>(gi) * N + i;
              cp_async16(fslot + (nt * kParts + k2) * 32 + lane,
                         p.fnf + ((unit * NT + nt) * kParts + k2) * 32 + lane, true);
            } else {
              static_assert(kParts == 2, "raw fn halves: two 16-byte chunks per lane");
              const int q = 4 * k2 + c, hq = gi * kGroupCols + 8 * (q >> 1);
              const bool ok = hq < H && 8 * nt + g < M;
              const float* src =
                  p.fn + (8 * nt + g) * K + static_cast<int64_t>(i) * H + gi * kGroupCols + 4 * q;
              cp_async16(fslot + (nt * kParts + (q & 1)) * 32 + 4 * g + (q >> 1), ok ? src : p.fn,
                         ok);
            }
          }
      }
      cp_async_commit();  // one group per unit, empty past the end: the counts stay uniform
    };
#pragma unroll
    for (int k = 0; k < kStages - 1; ++k) stage_x(k);
    for (int k = 0, u = warp; u < units; ++k, u += W) {
      if (!staged) __syncwarp();  // raw fn: the slot refilled next was read by other lanes
      stage_x(k + kStages - 1);
      cp_async_wait<kStages - 1>();  // this unit's group has landed (this lane's copies)
      if (!staged) __syncwarp();      // raw fn: every lane's copies, for the other lanes
      const uint4* slot = ring + (k % kStages) * Ring::kSlot;
      float4 fr[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int k2 = 0; k2 < kParts; ++k2) {
          const uint4 v = slot[(2 * TT + nt * kParts + k2) * 32];
          fr[nt][k2] = make_float4(__uint_as_float(v.x), __uint_as_float(v.y),
                                   __uint_as_float(v.z), __uint_as_float(v.w));
        }
      FnFrag<kParts> f[NT];
      unit_frags<NT>(staged, fr, f);
#pragma unroll
      for (int tt = 0; tt < TT; ++tt) {
        if (t0 + 16 * tt >= T) continue;  // a tile past the last token (decode sizes)
        mma_tile<NT>(acc[tt], ss[tt], slot[(2 * tt) * 32], slot[(2 * tt + 1) * 32], f);
      }
    }
  }
  cp_async_wait<0>();  // no copy may still target shared memory when the reduction reuses it
  main_kernel_tail<N, MODE, FULLK, NORM, HS, TT, RING>(p, red, acc, ss, t0, blockIdx.y, W,
                                                       units, H);
}

}  // namespace mhc::cuda
