// The WARP_TILES main kernel of mhc_pre and hc_head at prefill sizes (csrc/core/plan.h).
// Included by hc_main.cuh after the device code it shares (Shape, MainParams, mma helpers).
//
// Why: SPLIT_K's main kernel gives each CTA a 64-token block and a wide K range, and re-reads
// that range of fn from L2 for every block: at T = 4096, H = 7168 on an H100 it moves 0.8 bytes
// of fn per byte of residual and ncu shows L2 at 72% of its throughput with DRAM at 58%
// (benchmarks/NOTES.md, v6). Here a CTA owns a narrow K slice (`gpc` groups of 32 hidden
// columns, all streams) for many tokens:
//  1. it converts its slice of fn once into bf16 hi / lo mma B fragments in shared memory
//     (fs[unit][8-row block][part][lane], one conflict-free 16-byte load per lane and part);
//  2. each warp owns warp tiles of 32 tokens (tile j = blockIdx.x * W + warp, then every
//     gridDim.x * W) and streams the activations of each (tile, unit) through its own ring of
//     kTilesStages cp.async stages, across tile boundaries, so loads stay in flight;
//  3. a warp accumulates all units of a tile in its mma registers, in unit order, and writes the
//     tile's partial dots and sums of squares straight to ws [T, S, MP] (no cross-warp sum).
// SPLIT_K's epilogue kernel then adds the S partials in split order and writes the outputs.
// Every sum has a fixed order that depends on the plan only.
#pragma once

namespace mhc::cuda {

constexpr int kTilesWarps = 16;   // must match kTilesWarps in csrc/core/plan.cpp
constexpr int kTilesTiles = 2;    // 16-token mma tiles per warp tile (plan.cpp kTilesTiles)
constexpr int kTilesStages = 3;   // activation stages per warp (plan.cpp kTilesStages)

template <int N, Mode MODE>
__global__ void __launch_bounds__(kTilesWarps * 32, 1) hc_tiles_kernel(const MainParams p) {
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, NT = Sh::NT, MP = Sh::MP;
  constexpr int TT = kTilesTiles;
  extern __shared__ uint4 tiles_smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int split = blockIdx.y;
  const int gb = split * p.gpc, ge = min(p.G, gb + p.gpc);
  const int units = (ge - gb) * N;  // (group, stream) units of this split, group-major
  const int H = p.H;
  const int64_t K = static_cast<int64_t>(N) * H;
  const int64_t T = p.T;
  uint4* fs = tiles_smem;                          // [units][NT][kParts][32]
  uint4* ring = fs + p.gpc * N * NT * kParts * 32  // [W][stages][TT][2][32]
                + warp * kTilesStages * TT * 2 * 32 + lane;

  pdl_wait();
  pdl_trigger();

  // 1. fn fragments of this split: slot (unit, nt, lane) holds row 8 nt + g, columns 8c..8c+7
  // of the unit's group and stream, split into kParts bf16 terms (zeros past H and M).
  for (int slot = threadIdx.x; slot < units * NT * 32; slot += blockDim.x) {
    const int l = slot & 31, nt = (slot >> 5) % NT, u = (slot >> 5) / NT;
    const int lg = l >> 2, lc = l & 3;
    const int h = (gb + u / N) * kGroupCols + 8 * lc, i = u % N;
    float v8[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (h < H && 8 * nt + lg < M) {
      const float4* src = reinterpret_cast<const float4*>(
          p.fn + (8 * nt + lg) * K + static_cast<int64_t>(i) * H + h);
      const float4 a = __ldg(src), b = __ldg(src + 1);
      v8[0] = a.x, v8[1] = a.y, v8[2] = a.z, v8[3] = a.w;
      v8[4] = b.x, v8[5] = b.y, v8[6] = b.z, v8[7] = b.w;
    }
    const FnFrag<kParts> f = make_frag<kParts>(v8);
#pragma unroll
    for (int k = 0; k < kParts; ++k)
      fs[((u * NT + nt) * kParts + k) * 32 + l] =
          make_uint4(f.part[k][0], f.part[k][1], f.part[k][2], f.part[k][3]);
  }
  __syncthreads();

  // 2. This warp's tiles j = first, first + step, ...; step k of the warp is unit k % units of
  // its (k / units)-th tile. stage() issues the copies of step k into slot k % kTilesStages.
  const int64_t tiles = (T + 16 * TT - 1) / (16 * TT);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kTilesWarps + warp;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kTilesWarps;
  const int64_t my_tiles = first < tiles ? (tiles - first + step - 1) / step : 0;
  const int64_t steps = my_tiles * units;
  int64_t st_tile = first;  // tile and unit of the next step to stage
  int st_unit = 0;
  int64_t staged = 0;
  const auto stage = [&]() {
    if (staged < steps) {
      const int gi = gb + st_unit / N, i = st_unit % N;
      const int h = gi * kGroupCols + 8 * c;
      uint4* slot = ring + static_cast<int>(staged % kTilesStages) * TT * 2 * 32;
#pragma unroll
      for (int tt = 0; tt < TT; ++tt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int64_t t = st_tile * (16 * TT) + 16 * tt + g + 8 * hf;
          const bool ok = h < H && t < T;
          cp_async16(slot + (2 * tt + hf) * 32, ok ? p.res + (t * N + i) * H + h : p.res, ok);
        }
      if (++st_unit == units) st_unit = 0, st_tile += step;
    }
    ++staged;
    cp_async_commit();  // one group per step, empty past the end: the counts stay uniform
  };
#pragma unroll
  for (int k = 0; k < kTilesStages - 1; ++k) stage();

  float acc[TT][NT][4] = {};
  float ss[TT][2] = {};
  int64_t tile = first;
  int u = 0;
  for (int64_t k = 0; k < steps; ++k) {
    stage();
    cp_async_wait<kTilesStages - 1>();  // step k's group has landed (this lane's own slots)
    const uint4* slot = ring + static_cast<int>(k % kTilesStages) * TT * 2 * 32;
    const int64_t t0 = tile * (16 * TT);
    uint4 v[TT][2];
#pragma unroll
    for (int tt = 0; tt < TT; ++tt) {
      v[tt][0] = slot[(2 * tt) * 32];
      v[tt][1] = slot[(2 * tt + 1) * 32];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      FnFrag<kParts> f;
#pragma unroll
      for (int q = 0; q < kParts; ++q) {
        const uint4 w = fs[((u * NT + nt) * kParts + q) * 32 + lane];
        f.part[q][0] = w.x, f.part[q][1] = w.y, f.part[q][2] = w.z, f.part[q][3] = w.w;
      }
#pragma unroll
      for (int tt = 0; tt < TT; ++tt)
        if (t0 + 16 * tt < T) mma_chunk(acc[tt][nt], v[tt][0], v[tt][1], f);
    }
#pragma unroll
    for (int tt = 0; tt < TT; ++tt) {
      ss[tt][0] = add_sumsq8(v[tt][0], ss[tt][0]);
      ss[tt][1] = add_sumsq8(v[tt][1], ss[tt][1]);
    }
    if (++u < units) continue;

    // 3. The tile's partials: M dots, the sum of squares (quad sum of the lanes' 8-column sums)
    // at M, zeros in the padding, for the rows before T.
#pragma unroll
    for (int tt = 0; tt < TT; ++tt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float s = ss[tt][hf];
        s += __shfl_xor_sync(0xffffffffu, s, 1);
        s += __shfl_xor_sync(0xffffffffu, s, 2);
        ss[tt][hf] = s;
      }
#pragma unroll
    for (int tt = 0; tt < TT; ++tt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int64_t t = t0 + 16 * tt + g + 8 * hf;
        if (t >= T) continue;
        float* row = p.ws + (t * p.S + split) * MP;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int o = 8 * nt + 2 * c + e;
            if (o < M) row[o] = acc[tt][nt][2 * hf + e];
          }
        if (c == 0) row[M] = ss[tt][hf];
        if (M + 1 + c < MP) row[M + 1 + c] = 0.f;
      }
#pragma unroll
    for (int tt = 0; tt < TT; ++tt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[tt][nt][q] = 0.f;
      ss[tt][0] = ss[tt][1] = 0.f;
    }
    u = 0;
    tile += step;
  }
  cp_async_wait<0>();
}

}  // namespace mhc::cuda
