// The epilogue of SPLIT_K plans (pre, fused, head).
//
// What: for one token, the main kernel's per-split partials added in split order (in runs, in
// order), the gates (pre / head sigmoids; for pre / fused a dedicated warp runs the Sinkhorn and
// writes post and comb), then the weighted stream sum of one chunk of H (optionally
// RMS-normalised, which takes the whole row in one CTA).
// Grid: T * Plan::epilogue_chunks CTAs (token, chunk of H); block: 128 stream threads, plus the
// gate warp for pre / fused. Launched with programmatic dependent launch, so it is resident when
// the main kernel ends: for pre / head it has already loaded its residual chunk into registers.
// CARRY (the fused shifted boundary, Plan::fused_boundary): the gate warp writes the next pre
// too, and the stream threads combine residual_out with the carried pre instead of the gates'
// (hc_combine.cuh's arithmetic, the norm in norm_tree.cuh's order: layer_input is bit-identical
// to mhc_combine of residual_out), beside the Sinkhorn rather than after it.
// Dynamic shared memory: partials [S][MP], run sums [4][MP], with CARRY and NORM the group sums
// [ceil(H / 32)] (more where Plan::epilogue_ctas_per_sm caps the CTAs per SM through it).
// Bound: at decode, latency (the chain partials -> gates -> stores); at prefill, HBM bytes of
// the second read of the residual (or residual_out) and the output.
#pragma once

#include "core/geometry.h"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_fragments.cuh"
#include "cuda/norm_tree.cuh"

namespace mhc::cuda {

// Vectors of a stream thread that the fused boundary's combine loads at once and keeps in
// registers (with the norm weights) up to the norm pass: a whole row up to H = 5120 at n <= 4
// (640 vectors over 128 threads); the rest go through a loop that stores z and reads it back.
constexpr int carry_held(int n) { return n <= 4 ? 5 : 2; }

// The fused boundary's layer_input row t, vectors v0 .. v1 - 1 (the whole row with NORM): z =
// combine8(residual_out, carried pre) as hc_combine_kernel computes it; with NORM each vector's
// Σ z², the 32-column group sums S(g) (4 consecutive lanes, warp-uniform bases from a multiple
// of 4) into gsum, then the row's sum and the norm of this thread's vectors, all in
// norm_tree.cuh's order. Called by the kEpiThreads stream threads.
template <int N, bool NORM>
__device__ __forceinline__ void carry_combine(const EpiParams& p, const uint16_t* __restrict__ src,
                                              const float (&pre)[N], float* gsum, int64_t t,
                                              int v0, int v1) {
  constexpr int CH = carry_held(N);
  const int tid = threadIdx.x, lane = tid & 31;
  const int H = p.H;
  uint16_t* out = p.out + t * H;
  const uint64_t pol = l2_evict_first();
  // z of vector v = base + lane (base warp-uniform): stored (without NORM, or past the held
  // vectors, for this thread's norm pass to read back), its group sum into gsum.
  const auto finish = [&](int base, const uint4 (&r)[N], bool hold, uint4& z) {
    const int v = base + lane;
    const bool live = v < v1;
    float q = 0.f;
    if (live) {
      z = combine8<N>(r, pre);
      if constexpr (NORM) {
        if (!hold) stg16(out + 8 * v, z);
        q = vec8_sumsq(z);
      } else {
        stg16_hint(out + 8 * v, z, pol);
      }
    }
    if constexpr (NORM) {
      const float S = group4_sum(q);
      if (live && (lane & 3) == 0) gsum[v >> 2] = S;
    }
  };
  const auto load = [&](int v, uint4 (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) r[i] = ldg16_hint(src + static_cast<int64_t>(i) * H + 8 * v, pol);
  };
  // The held vectors' loads (and norm weights) all in flight before the first combine.
  uint4 r[CH][N], z[CH], w[CH];
#pragma unroll
  for (int k = 0; k < CH; ++k) {
    const int v = v0 + tid + k * kEpiThreads;
    if (v < v1) {
      load(v, r[k]);
      if constexpr (NORM) w[k] = ldg16(p.norm_w + 8 * v);
    }
  }
#pragma unroll
  for (int k = 0; k < CH; ++k) {
    const int base = v0 + tid - lane + k * kEpiThreads;
    if (base < v1) finish(base, r[k], true, z[k]);
  }
  for (int base = v0 + tid - lane + CH * kEpiThreads; base < v1; base += kEpiThreads) {
    uint4 one[N], spare;
    if (base + lane < v1) load(base + lane, one);
    finish(base, one, false, spare);
  }
  if constexpr (NORM) {
    asm volatile("bar.sync 1, %0;" ::"n"(kEpiThreads) : "memory");
    const float rs = norm_rs(row_sumsq(gsum, (v1 + 3) / 4, lane), H, p.norm_eps);
    norm_held_pass<CH>(out, p.norm_w, z, w, rs, v0 + tid, kEpiThreads, v1);
  }
}

// Launch bounds of one block per SM leave the register count to the code: held to 32
// registers, the H = 4096 instance ran the decode epilogue 2.5-4.5 us slower
// (docs/performance.md, "Decode latency chain").
template <int N, Mode MODE, bool NORM, int HS, bool CARRY = false>
__global__ void __launch_bounds__(kEpiThreads + 32, 1) hc_epilogue_kernel(const EpiParams p) {
  static_assert(!CARRY || (MODE == Mode::PRE && HS == 0), "CARRY: the fused boundary, any H");
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, MP = Sh::MP;
  constexpr int kRuns = split_runs(MP);
  extern __shared__ float4 smem_raw[];
  float* part = reinterpret_cast<float*>(smem_raw);
  float* psum = part + p.S * MP;
  __shared__ float dsum[MP];
  __shared__ float wsum[kEpiThreads / 32];

  const int tid = threadIdx.x;
  const int64_t t = blockIdx.x / p.HC;
  const int chunk = blockIdx.x % p.HC;
  const int H = HS > 0 ? HS : p.H;
  const int64_t K = static_cast<int64_t>(N) * H;
  const int v0 = chunk * p.CW, v1 = min(H / 8, v0 + p.CW);
  const uint16_t* src = p.src + t * K;

  // pre / head: src is the residual, an input of the call. This grid starts only once every
  // main-kernel CTA has triggered it, which each does after its own pdl_wait: the residual's
  // writer has completed. So a chunk of at most kEpiHeld vectors per stream thread is loaded
  // into registers here, its latency hidden behind the main kernel and the partials; longer
  // chunks (the folded norm's whole rows) are prefetched into L2.
  const uint64_t pol = l2_evict_first();
  const bool held = p.src_is_input && v1 - v0 <= kEpiHeld * kEpiThreads;
  uint4 r[kEpiHeld][N];
  if (p.src_is_input && tid < kEpiThreads) {
    if (held) {
#pragma unroll
      for (int j = 0; j < kEpiHeld; ++j) {
        const int v = v0 + tid + j * kEpiThreads;
        if (v < v1)
#pragma unroll
          for (int i = 0; i < N; ++i)
            r[j][i] = ldg16_hint(src + static_cast<int64_t>(i) * H + 8 * v, pol);
      }
    } else {
      for (int v = v0 + tid; v < v1; v += kEpiThreads)
#pragma unroll
        for (int i = 0; i < N; ++i) prefetch_l2(src + static_cast<int64_t>(i) * H + 8 * v);
    }
  }
  // hc_base and hc_scale are inputs of the call too (the main kernel never writes them): into
  // shared memory here, not one more L2 round trip between the partials' sum and the gates
  // (and not in registers, which the stream sum's occupancy needs).
  constexpr int kScales = MODE == Mode::HEAD ? 1 : 3;
  static_assert(M + kScales <= kEpiThreads, "one stream thread per hc_base / hc_scale value");
  __shared__ float gsm[M + kScales];  // hc_base [M], hc_scale [kScales]
  if (tid < M) gsm[tid] = p.base[tid];
  else if (tid < M + kScales) gsm[tid] = p.scale[tid - M];
  // This thread's run of the partials (integer divisions by the split count) before the wait,
  // off the path from the main kernel's end to the gates.
  const int parts = min(kRuns, p.S);
  const int pm = tid % MP, pq = tid / MP;
  const int s0 = pq * (p.S / parts) + min(pq, p.S % parts);
  const int s1 = s0 + p.S / parts + (pq < p.S % parts ? 1 : 0);
  // CARRY: the carried pre is an input of the call as well.
  float cpre[N];
  if constexpr (CARRY) {
#pragma unroll
    for (int i = 0; i < N; ++i) cpre[i] = tid < kEpiThreads ? __ldg(p.pre_in + t * N + i) : 0.f;
  }
  pdl_wait();
  pdl_trigger();

  // Partials of this token, then their sum in split order (kRuns contiguous runs, in order).
  // Copied with cp.async, all in flight at once (a loop of load, store had waited one L2 round
  // trip per iteration: 3 at pre T = 1, H = 7168).
  {
    const float4* w4 = reinterpret_cast<const float4*>(p.ws + t * p.S * MP);
    float4* part4 = reinterpret_cast<float4*>(part);
    for (int idx = tid; idx < p.S * MP / 4; idx += blockDim.x)
      cp_async16(part4 + idx, w4 + idx, true);
    cp_async_commit();
    cp_async_wait<0>();
  }
  __syncthreads();
  if (tid < parts * MP) psum[pq * MP + pm] = run_sum(part, MP, s0, s1, pm);
  __syncthreads();
  if (tid < MP) dsum[tid] = runs_total<kRuns>(psum, MP, parts, tid);
  __syncthreads();

  const float inv_k = 1.0f / static_cast<float>(K);
  if (tid >= kEpiThreads) {  // the gate warp of pre / fused
    if constexpr (MODE != Mode::HEAD) {
      if (chunk == 0 && tid == kEpiThreads) {
        const GateParams gp =
            gate_params(gsm + M, p.rms_eps, p.pre_eps, p.sinkhorn_eps, p.post_mult, p.repeat);
        write_gates<N>(dsum, inv_k, gsm, gp, t, p.pre_out, p.post_out, p.comb_out);
      }
    }
    return;
  }
  if (p.out == nullptr) return;  // mhc_stats: the gates only
  if constexpr (CARRY) {
    carry_combine<N, NORM>(p, src, cpre, psum + 4 * MP, t, v0, v1);
    return;
  }
  float pre[N];
  head_gates<N>(dsum, dsum[M], inv_k, gsm, gsm[M], p.rms_eps, p.pre_eps, pre);
  uint16_t* out = p.out + t * H;
  float ssq = 0.f;
  if (held) {
#pragma unroll
    for (int j = 0; j < kEpiHeld; ++j) {
      const int v = v0 + tid + j * kEpiThreads;
      if (v < v1) combine_store<N, NORM>(r[j], pre, out + 8 * v, pol, ssq);
    }
  } else {
    ssq = stream_pass<N, NORM, HS, kEpiThreads, false>(src, pre, out, H, v0 + tid, v1);
  }
  if constexpr (NORM) {
    const float s = warp_sum(ssq);
    if ((tid & 31) == 0) wsum[tid >> 5] = s;
    asm volatile("bar.sync 1, %0;" ::"n"(kEpiThreads) : "memory");
    const float total = (wsum[0] + wsum[1]) + (wsum[2] + wsum[3]);
    const float rs = 1.0f / sqrtf(total / static_cast<float>(H) + p.norm_eps);
    norm_pass<HS, kEpiThreads>(out, p.norm_w, rs, v0 + tid, v1);
  }
}

}  // namespace mhc::cuda
