// The pipelined kernel of mhc_pre and mhc_stats, in study builds only (the pipe_tokens knob;
// the planner takes it or it goes once measured): the SPLIT_K plan of a token chunk over all T
// in one persistent launch, so that the second read of a block's residual rows (the weighted
// stream sum) follows its first (the split GEMM) closely enough to hit L2, and stats runs as one
// kernel.
//
// What: the work of the SPLIT_K plan at C tokens (Plan::block_tokens = 64, S splits, no ring,
// raw fn), as items in one fixed order: for step k, the S GEMM items of token block k (the main
// kernel's K loop and partials, reg_k_loop and main_kernel_tail), then the finish items of block
// k - lag (two tokens each: the epilogue's partial sums in split order, gates, Sinkhorn, stream
// sum and folded norm, in hc_epilogue_kernel's order), so the outputs are the chunked plan's
// bits. CTA x takes items x, x + grid, ...; a finish item waits (spinning on a per-block count
// that the block's GEMM items raise) until its S partials are written. Items are taken in
// increasing order by every CTA, and a finish item depends only on earlier items, so the
// earliest waiting item's GEMM items are running or done: no deadlock while every CTA of the
// grid (one per SM at most) runs, which nothing else can hold back for good.
// Grid: min(items, SMs) CTAs of 8 GEMM warps and a gate warp. Shared memory: the main kernel's
// (red and the rings); a finish item reuses its first bytes.
// Bound: HBM bytes of one residual read and the outputs, if the reread hits L2 (a block's rows
// 2nH · 64 bytes, `lag` + 1 steps of blocks in flight), and L2 for fn (once per GEMM item).
#pragma once

#include "core/geometry.h"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"
#include "cuda/hc_main_common.cuh"
#include "cuda/hc_main_prehead.cuh"

namespace mhc::cuda {

inline constexpr int kPipeTiles = 4;                  // 64-token blocks
inline constexpr int kPipeWarps = 8;                  // GEMM warps (Plan::main_warps)
inline constexpr int kPipeThreads = kPipeWarps * 32 + 32;  // and the gate warp
inline constexpr int kPipeTokens = 2;                 // tokens of a finish item

struct PipeParams {
  int* done;       // [blocks] GEMM items finished per token block; zero at launch
  int64_t blocks;  // token blocks
  int fin;         // finish items per block
  int lag;         // steps from a block's GEMM items to its finish items
};

__device__ __forceinline__ void red_release_gpu(int* p, int v) {
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

template <int N, bool NORM, int HS>
__global__ void __launch_bounds__(kPipeThreads, 1) hc_pipe_kernel(const MainParams p,
                                                                  const PipeParams q) {
  using Sh = Shape<N, Mode::PRE>;
  constexpr int M = Sh::M, NT = Sh::NT, MP = Sh::MP, TT = kPipeTiles, BT = 16 * TT;
  constexpr int kRuns = split_runs(MP);
  static_assert(kPipeTokens * kEpiThreads == kPipeWarps * 32, "a finish token per 4 warps");
  static_assert(BT % kPipeTokens == 0, "whole finish items per block");
  extern __shared__ float4 smem_raw[];
  float* red = reinterpret_cast<float*>(smem_raw);
  __shared__ float gsm[M + 3];                       // hc_base [M], hc_scale [3]
  __shared__ float wsum[kPipeTokens][kEpiThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int H = HS > 0 ? HS : p.H;
  const int64_t K = static_cast<int64_t>(N) * H;
  const int64_t T = p.T;
  const int S = p.S;
  pdl_wait();
  pdl_trigger();
  if (tid < M) gsm[tid] = p.base[tid];
  else if (tid < M + 3) gsm[tid] = p.scale[tid - M];
  __syncthreads();

  const int per_step = S + q.fin;
  const int64_t items = (q.blocks + q.lag) * per_step;
  const float inv_k = 1.0f / static_cast<float>(K);
  for (int64_t pos = blockIdx.x; pos < items; pos += gridDim.x) {
    const int64_t step = pos / per_step;
    const int r = static_cast<int>(pos % per_step);
    if (r < S) {  // GEMM item (block step, split r): the main kernel's work, then the count
      if (step >= q.blocks) continue;
      const int64_t t0 = step * BT;
      const int gb = r * p.gpc, ge = min(p.G, gb + p.gpc);
      const int units = (ge - gb) * N;
      float acc[TT][NT][4] = {};
      float ss[TT][2] = {};
      if (warp < kPipeWarps)
        reg_k_loop<N, Mode::PRE, TT>(p, red, t0, gb, units, H, K, kPipeWarps, warp, lane, g, c,
                                     false, acc, ss);
      cp_async_wait<0>();
      __syncthreads();  // every ring is done before red overlays it
      main_kernel_tail<N, Mode::PRE, false, false, 0, TT, false>(p, red, acc, ss, t0, r,
                                                                 kPipeWarps, units, H);
      __threadfence();  // this thread's partials, before the count below
      __syncthreads();
      if (tid == 0) red_release_gpu(q.done + step, 1);
      continue;
    }
    // Finish item (block step - lag, f): tokens t0 + kPipeTokens f + k, k = 0, 1; the stream
    // threads of token k are threads kEpiThreads k .. + kEpiThreads - 1, its gate thread lane k
    // of the gate warp.
    const int64_t blk = step - q.lag;
    if (blk < 0 || blk >= q.blocks) continue;
    const int f = r - S;
    if (tid == 0) {  // a count that never completes is a bug: trap after seconds, not hang
      for (int64_t spins = 0; ld_acquire_gpu(q.done + blk) < S; ++spins) {
        if (spins > (int64_t{1} << 26)) __trap();
        __nanosleep(64);
      }
    }
    __syncthreads();
    const bool gate = warp == kPipeWarps;
    const int k = gate ? lane : tid / kEpiThreads, et = tid % kEpiThreads;
    const int64_t t = blk * BT + kPipeTokens * f + k;
    float* part = red + k * (S + 5) * MP;  // [S][MP], then psum [4][MP], then dsum [MP]
    float* psum = part + S * MP;
    float* dsum = psum + 4 * MP;
    // Partials of token t in L2 (cp.async.cg: not an L1 copy from before the count).
    if (!gate && t < T) {
      const float4* w4 = reinterpret_cast<const float4*>(p.ws + t * S * MP);
      for (int idx = et; idx < S * MP / 4; idx += kEpiThreads)
        cp_async16(reinterpret_cast<float4*>(part) + idx, w4 + idx, true);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    // Their sum in split order, as the epilogue adds them: kRuns contiguous runs, then the runs.
    const int parts = min(kRuns, S);
    if (!gate && t < T && et < parts * MP) {
      const int pm = et % MP, pq = et / MP;
      // The epilogue's run bounds (written out there before its pdl_wait, as SASS it keeps;
      // the bit-identity test against the chunked plan holds the two equal).
      const int s0 = pq * (S / parts) + min(pq, S % parts);
      const int s1 = s0 + S / parts + (pq < S % parts ? 1 : 0);
      psum[pq * MP + pm] = run_sum(part, MP, s0, s1, pm);
    }
    __syncthreads();
    if (!gate && t < T && et < MP) dsum[et] = runs_total<kRuns>(psum, MP, parts, et);
    __syncthreads();
    if (gate) {
      if (lane < kPipeTokens && t < T) {
        const GateParams gp =
            gate_params(gsm + M, p.rms_eps, p.pre_eps, p.sinkhorn_eps, p.post_mult, p.repeat);
        write_gates<N>(dsum, inv_k, gsm, gp, t, p.pre_out, p.post_out, p.comb_out);
      }
    } else if (t < T && p.out != nullptr) {  // (mhc_stats: the gates only)
      float pre[N];
      head_gates<N>(dsum, dsum[M], inv_k, gsm, gsm[M], p.rms_eps, p.pre_eps, pre);
      uint16_t* out = p.out + t * H;
      const float ssq =
          stream_pass<N, NORM, HS, kEpiThreads, false>(p.res + t * K, pre, out, H, et, H / 8);
      if constexpr (NORM) {
        const float s = warp_sum(ssq);
        if (lane == 0) wsum[k][et >> 5] = s;
        // The token's four warps only (barrier 1 + k of kEpiThreads threads).
        asm volatile("bar.sync %0, %1;" ::"r"(1 + k), "n"(kEpiThreads) : "memory");
        const float total = (wsum[k][0] + wsum[k][1]) + (wsum[k][2] + wsum[k][3]);
        const float rs = 1.0f / sqrtf(total / static_cast<float>(H) + p.norm_eps);
        norm_pass<HS, kEpiThreads>(out, p.norm_w, rs, et, H / 8);
      }
    }
    __syncthreads();  // red is the next item's
  }
}

}  // namespace mhc::cuda
