// The kernels behind mhc_pre, mhc_fused_post_pre and hc_head (SPEC §2.1, §2.3, §2.4).
//
// What they compute, per token t: d = fn · x_t over K = n·H (M = n(n+2) rows for pre, n for
// head), ss = Σ x_t², the gates of core/math.h (pre_gates / head_gates, Sinkhorn included),
// and the weighted stream sum Σ_i pre[i]·x_t[i] (optionally RMS-normalised). The fused op first
// writes x_t = bf16(mhc_post(...)) (core/math.h post_mix_element) and feeds it to the same
// GEMM from registers.
//
// How the work is split: K is cut into groups of 32 hidden columns, each taken over all n
// streams (so the fused op has every stream of a column in registers for the post mix). The
// main kernel's grid is (token blocks of block_tokens, splits); a split owns a run of groups,
// and its CTA's warps take work units in turn, a (group, stream) chunk for pre / head and a
// whole group for the fused op (at decode sizes a group with half of its output streams, so
// twice the warps share the post mix), each unit one round of loads for all 16-row tiles of
// the token block on mma.sync (common.cuh). Pre / head stream the activations through a per-warp
// cp.async ring (4 units in flight); fn travels in that ring too from T = 512 (Plan::fn_ring,
// MainRing), and below it is prefetched one unit ahead in registers. The fused op loads x and
// the input streams with plain loads at decode sizes and, from T = 512, through a per-warp
// cp.async ring of two units (Plan::fn_ring, FusedRing; its loads L2 evict_first while
// residual_out fits L2, Plan::evict_inputs). Each warp leaves its sums in its own shared-memory
// slice; one barrier, then the slices are added in warp order (their loads all in flight).
//  * SPLIT_K (T <= 32 * num_sms; blocks of 32 tokens for pre / head up to T = 64, the SMALL
//    instances): the main kernel writes per-split partials [T, S, M + 1]; the
//    epilogue kernel (launched with programmatic dependent launch, so it is resident and, for
//    pre / head, has the residual in registers when the main kernel ends) adds them in split
//    order, computes the gates (a dedicated warp runs the 20 Sinkhorn rounds in registers
//    while the other four stream the weighted sum) and writes the outputs. The epilogue of
//    one token is spread over several CTAs (chunks of H: ~2 vectors per stream thread, more
//    CTAs at decode sizes; for the fused op with half units at most 3 CTAs per SM).
//  * FULL_K (larger T): one kernel; a CTA owns 32 tokens, reduces over all K, then each warp
//    streams the weighted sum of whole tokens while one warp runs the Sinkhorns (one per lane).
//  * CLUSTER (csrc/cuda/hc_cluster.cuh; the planner runs it only where it measured faster):
//    one kernel, the residual read once.
// Bound: at decode, latency and streaming fn (the whole GPU reads it once); at prefill, HBM
// bytes: the residual is read twice (GEMM, then the stream sum), fn once per token block from
// L2. Every reduction has a fixed order that depends only on the plan, never on T, so a
// batch-invariant plan (fixed split count) gives a token the same bits in any batch.
#pragma once

#include <type_traits>

#include "core/plan.h"
#include "cuda/common.cuh"

namespace mhc::cuda {

enum class Mode : int { PRE = 0, FUSED = 1, HEAD = 2 };

template <int N, Mode MODE>
struct Shape {
  static constexpr int M = MODE == Mode::HEAD ? N : N * (N + 2);  // rows of fn
  static constexpr int NT = (M + 7) / 8;                            // 8-row mma blocks
  static constexpr int MP = (M + 1 + 3) / 4 * 4;                    // partial: M dots, ss, pad
  static constexpr int NC = (N + N * N + 3) / 4 * 4;                // fused: post, comb, pad
};

// mma tiles of 16 tokens per CTA; must match tiles_per_block() in csrc/core/plan.cpp. SMALL:
// the 32-token blocks of pre / head SPLIT_K at decode sizes.
template <int N, Mode MODE, bool FULLK, bool SMALL = false>
constexpr int tiles_per_block() {
  return N > 4 ? 1 : (FULLK || MODE == Mode::FUSED || SMALL ? 2 : 4);
}

constexpr int kGroupCols = 32;     // hidden columns per K group
constexpr int kParts = 2;          // bf16 terms of fn (common.cuh): hi + lo
constexpr int kMainThreads = 256;  // largest main-kernel CTA (8 warps: kMainWarps, plan.cpp)
constexpr int kRingBytes = 224 * 1024;  // pre / head: the largest fn ring of a main-kernel CTA
constexpr int kRegStages = 4;  // pre / head without the fn ring: activation units in flight
constexpr int kEpiThreads = 128;   // epilogue threads that stream the weighted sum
constexpr int kEpiHeld = 2;        // residual vectors per epilogue thread held in registers
constexpr int64_t kEpiCapCtas = 3;  // epilogue CTAs per SM at most, fused op with half units

// The per-warp cp.async ring of the pre / head main kernel: each slot holds one (group,
// stream) unit, its activations [2 TT][32 lanes] and its fn [NT][kParts][32 lanes] (uint4
// each); up to 4 slots per warp within kRingBytes for 8 warps. The warps' partial sums
// overlay the ring once the loop is done.
template <int N, Mode MODE, bool FULLK>
struct MainRing {
  static constexpr int TT = tiles_per_block<N, MODE, FULLK>();
  static constexpr int kSlot = (2 * TT + Shape<N, MODE>::NT * kParts) * 32;  // uint4
  static constexpr int kFit = kRingBytes / (8 * kSlot * 16);
  static constexpr int kStages = kFit >= 4 ? 4 : kFit;
  static_assert(kStages >= 2, "a main-kernel ring needs two slots per warp");
  static constexpr size_t bytes(int warps) {
    const size_t ring = sizeof(uint4) * warps * kStages * kSlot;
    const size_t red = sizeof(float) * warps * 16 * TT * Shape<N, MODE>::MP;
    return ring > red ? ring : red;
  }
};

// The per-warp cp.async ring of the fused main kernel (Plan::fn_ring): each slot holds one unit's
// x and N input streams for rows g and g + 8 of every tile, [2 TT][N + 1][32 lanes] uint4. Two
// slots per warp (8 warps, n = 4: 160 KB), after red and coef in shared memory.
template <int N, int TT>
struct FusedRing {
  static constexpr int kStages = 2;
  static constexpr int kSlot = 2 * TT * (N + 1) * 32;  // uint4
  static constexpr size_t bytes(int warps) { return sizeof(uint4) * warps * kStages * kSlot; }
};

struct MainParams {
  const uint16_t* res;     // [T, N, H] bf16: residual (pre, head) or the fused op's input
  const uint16_t* x;       // fused: [T, H] bf16 sub-layer output
  const float* post_in;    // fused: [T, N]
  const float* comb_in;    // fused: [T, N, N]
  uint16_t* res_out;       // fused: [T, N, H] bf16 new residual
  const float* fn;         // [M, N * H]
  const uint4* fnf;        // staged fn (hc_stage_fn_kernel), null to read fn itself
  const float* scale;      // hc_scale [3] (pre, fused) or [1] (head)
  const float* base;       // hc_base [M]
  const uint16_t* norm_w;  // [H] bf16, null without the folded norm
  float* ws;               // SPLIT_K: partials [T, S, MP]
  float* post_out;         // FULL_K pre / fused: [T, N]
  float* comb_out;         // FULL_K pre / fused: [T, N, N]
  uint16_t* out;           // FULL_K: layer_input / hc_head output [T, H]
  int64_t T;
  int H, G, S, gpc;        // hidden size, K groups, splits, groups per split
  float rms_eps, pre_eps, sinkhorn_eps, post_mult, norm_eps;  // pre_eps is hc_eps for head
  int64_t repeat;
  int evict_inputs;        // fused ring: x and the input streams L2 evict_first (Plan)
};

struct EpiParams {
  const uint16_t* src;     // [T, N, H] residual (pre, head) or residual_out (fused)
  const float* ws;         // [T, S, MP] partials of the main kernel
  const float* scale;
  const float* base;
  const uint16_t* norm_w;
  float* post_out;         // [T, N]
  float* comb_out;         // [T, N, N]
  uint16_t* out;           // [T, H]
  int64_t T;
  int H, S, HC, CW;        // hidden, splits, chunks per token, 8-column vectors per chunk
  float rms_eps, pre_eps, sinkhorn_eps, post_mult, norm_eps;
  int64_t repeat;
  int src_is_input;        // src is not written by the main kernel (pre, head): loaded early
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ GateParams gate_params(const float* scale, float rms_eps,
                                                  float pre_eps, float sinkhorn_eps,
                                                  float post_mult, int64_t repeat) {
  return GateParams{rms_eps, pre_eps, sinkhorn_eps, post_mult, repeat,
                    {scale[0], scale[1], scale[2]}};
}

// pre_gates of one token from its reduced dots d[0..M) and ss = d[M]; writes post and comb.
template <int N>
__device__ __forceinline__ void write_gates(const float* d, float inv_k, const float* base,
                                            const GateParams& gp, int64_t t, float* post_out,
                                            float* comb_out) {
  float pre[N], post[N], comb[N][N];
  pre_gates<N>(d, d[N * (N + 2)], inv_k, base, gp, pre, post, comb);
#pragma unroll
  for (int i = 0; i < N; ++i) post_out[t * N + i] = post[i];
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int k = 0; k < N; ++k) comb_out[(t * N + j) * N + k] = comb[j][k];
}

// ---------------------------------------------------------------------------------------------
// Pieces of the K reduction shared by hc_main_kernel and hc_cluster_kernel (hc_cluster.cuh).

// The fused op's post / comb inputs of the BT tokens from t0 into coef [BT][NC] (zeros past T).
template <int N, int NC>
__device__ __forceinline__ void load_block_coefs(float* coef, const float* post_in,
                                                 const float* comb_in, int64_t t0, int64_t T,
                                                 int BT) {
  // kLoads values per thread in flight at once: as a loop of load, store, each iteration had
  // waited for its own L2 round trip (3 for the fused op's 32 x 20 values on 256 threads).
  constexpr int kLoads = 4;
  const int stride = static_cast<int>(blockDim.x);
  for (int base = threadIdx.x; base < BT * NC; base += kLoads * stride) {
    float v[kLoads];
#pragma unroll
    for (int j = 0; j < kLoads; ++j) {
      const int idx = base + j * stride, r = idx / NC, q = idx % NC;
      const int64_t t = t0 + r;
      v[j] = 0.f;
      if (idx < BT * NC && t < T) {
        if (q < N) v[j] = post_in[t * N + q];
        else if (q < N + N * N) v[j] = comb_in[t * N * N + (q - N)];
      }
    }
#pragma unroll
    for (int j = 0; j < kLoads; ++j)
      if (base + j * stride < BT * NC) coef[base + j * stride] = v[j];
  }
}

// post_vec8 with the token's post [N] and comb [N][N] read from its row of load_block_coefs.
template <int N>
__device__ __forceinline__ void post_vec8_coefs(const float* crow, const uint4& xv,
                                                const uint4 (&old)[N], uint4 (&out)[N]) {
  float pst[N], cmb[N * N];
#pragma unroll
  for (int j = 0; j < N; ++j) pst[j] = crow[j];
#pragma unroll
  for (int q = 0; q < N * N; ++q) cmb[q] = crow[N + q];
  post_vec8<N>(pst, cmb, xv, old, out);
}

// Output streams j0 .. j0 + NS - 1 of post_vec8_coefs (post_stream8 on the same values, so
// residual_out stays bit-identical to mhc_post).
template <int N, int NS>
__device__ __forceinline__ void post_vec8_part(const float* crow, int j0, const uint4& xv,
                                               const uint4 (&old)[N], uint4 (&out)[NS]) {
  float xf[8], rf[N][8];
  unpack8(xv, xf);
#pragma unroll
  for (int i = 0; i < N; ++i) unpack8(old[i], rf[i]);
#pragma unroll
  for (int q = 0; q < NS; ++q) {
    const int j = j0 + q;
    float cj[N];  // comb[i][j], i = 0 .. N - 1
#pragma unroll
    for (int i = 0; i < N; ++i) cj[i] = crow[N + i * N + j];
    out[q] = post_stream8<N>(crow[j], cj, 1, xf, rf);
  }
}

// This lane's raw fp32 fn values of one (8 columns from h, stream i) unit: row 8 nt + g of each
// 8-row block (zeros past H and past the M rows).
template <int NT, int M>
__device__ __forceinline__ void load_fn_unit(const float* fn, int64_t K, int H, int h, int i,
                                             int g, float4 (&fr)[NT][2]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const bool ok = h < H && 8 * nt + g < M;
    const float4* src = reinterpret_cast<const float4*>(
        fn + (8 * nt + g) * K + static_cast<int64_t>(i) * H + h);
    fr[nt][0] = ok ? __ldg(src) : make_float4(0.f, 0.f, 0.f, 0.f);
    fr[nt][1] = ok ? __ldg(src + 1) : make_float4(0.f, 0.f, 0.f, 0.f);
  }
}

// The B fragments (hi / lo bf16 terms) of raw values loaded by load_fn_unit.
template <int NT>
__device__ __forceinline__ void fn_frags(const float4 (&fr)[NT][2], FnFrag<kParts> (&f)[NT]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const float4 a = fr[nt][0], b = fr[nt][1];
    const float v8[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    f[nt] = make_frag<kParts>(v8);
  }
}

// Staged fn (Plan::staged_fn): the B fragments of every (group, stream) unit, written once per
// call by hc_stage_fn_kernel as uint4 [G][N][NT][kParts][32 lanes], so that one 8-row block of
// a unit is kParts coalesced 512-byte warp loads (the raw fp32 loads of load_fn_unit use half
// of each 32-byte sector per instruction) and the main loop does no hi / lo split.
template <int NT>
__device__ __forceinline__ void load_staged_unit(const uint4* fnf, int64_t unit, int lane,
                                                 float4 (&fr)[NT][2]) {
  static_assert(kParts == 2, "a staged 8-row block is two uint4 per lane");
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int k = 0; k < kParts; ++k) {
      const uint4 v = __ldg(fnf + ((unit * NT + nt) * kParts + k) * 32 + lane);
      fr[nt][k] = make_float4(__uint_as_float(v.x), __uint_as_float(v.y), __uint_as_float(v.z),
                              __uint_as_float(v.w));
    }
}

// One 8-row block (index (unit * NT + nt)) of the staged fn as a fragment.
__device__ __forceinline__ FnFrag<kParts> load_staged_frag(const uint4* fnf, int64_t block,
                                                           int lane) {
  FnFrag<kParts> f;
#pragma unroll
  for (int k = 0; k < kParts; ++k) {
    const uint4 v = __ldg(fnf + (block * kParts + k) * 32 + lane);
    f.part[k][0] = v.x;
    f.part[k][1] = v.y;
    f.part[k][2] = v.z;
    f.part[k][3] = v.w;
  }
  return f;
}

// The B fragments of one unit from what load_staged_unit (staged) or load_fn_unit loaded.
template <int NT>
__device__ __forceinline__ void unit_frags(bool staged, const float4 (&fr)[NT][2],
                                           FnFrag<kParts> (&f)[NT]) {
  if (staged) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int k = 0; k < kParts; ++k) {
        f[nt].part[k][0] = __float_as_uint(fr[nt][k].x);
        f[nt].part[k][1] = __float_as_uint(fr[nt][k].y);
        f[nt].part[k][2] = __float_as_uint(fr[nt][k].z);
        f[nt].part[k][3] = __float_as_uint(fr[nt][k].w);
      }
  } else {
    fn_frags<NT>(fr, f);
  }
}

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

// One 16-token tile of a unit: acc += x . fn for every 8-row block of fn; ss += x^2 of the
// lane's rows g (v0) and g + 8 (v1).
template <int NT>
__device__ __forceinline__ void mma_tile(float (&acc)[NT][4], float (&ss)[2], const uint4& v0,
                                         const uint4& v1, const FnFrag<kParts> (&f)[NT]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) mma_chunk(acc[nt], v0, v1, f[nt]);
  ss[0] = add_sumsq8(v0, ss[0]);
  ss[1] = add_sumsq8(v1, ss[1]);
}

// A warp's sums into its slice `mine` [BT][MP] of shared memory, for the tiles holding one of
// the first `rows` token rows: the M dots, then the sum of squares over the quad at M. Called
// by whole warps (the quad sum shuffles).
template <int TT, int NT, int M, int MP>
__device__ __forceinline__ void store_warp_partial(float* mine, const float (&acc)[TT][NT][4],
                                                   float (&ss)[TT][2], int rows) {
  const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int tt = 0; tt < TT; ++tt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) ss[tt][hf] = quad_sum(ss[tt][hf]);
#pragma unroll
  for (int tt = 0; tt < TT; ++tt) {
    if (16 * tt >= rows) continue;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int row = 16 * tt + g + 8 * (q >> 1), o = 8 * nt + 2 * c + (q & 1);
        if (o < M) mine[row * MP + o] = acc[tt][nt][q];
      }
    if (c == 0) {
      mine[(16 * tt + g) * MP + M] = ss[tt][0];
      mine[(16 * tt + g + 8) * MP + M] = ss[tt][1];
    }
  }
}

// One (group, stream) unit's activations into a ring slot [2 TT][32 lanes] with cp.async:
// rows g and g + 8 of every 16-row tile from t0, this lane's 8 columns from h of stream i
// (zero-filled past H and past T).
template <int N, int TT>
__device__ __forceinline__ void copy_unit_acts(uint4* slot, const uint16_t* res, int64_t t0,
                                               int64_t T, int H, int h, int i, int g) {
#pragma unroll
  for (int tt = 0; tt < TT; ++tt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int64_t t = t0 + 16 * tt + g + 8 * hf;
      const bool ok = h < H && t < T;
      cp_async16_pf256(slot + (2 * tt + hf) * 32, ok ? res + (t * N + i) * H + h : res, ok);
    }
}

// Slices 1..nwork-1 (nwork <= WMAX) of red [W][BT][MP] added to slice 0 in warp order, for
// the first `rows` rows (M dots and the sum of squares each); each sum goes to
// dst(row, m, sum). The warp loop is unrolled with predicated loads, so a sum's loads are all
// in flight before its adds (in the same order, so the same bits): as a loop over the
// runtime warp count each slice cost a shared-memory load's latency in turn.
template <int M, int MP, int WMAX, typename Dst>
__device__ __forceinline__ void add_warp_partials(const float* red, int BT, int rows, int nwork,
                                                  Dst&& dst) {
  for (int idx = threadIdx.x; idx < rows * (M + 1); idx += blockDim.x) {
    const int row = idx / (M + 1), m = idx % (M + 1);
    float v[WMAX];
#pragma unroll
    for (int w = 0; w < WMAX; ++w) v[w] = w < nwork ? red[(w * BT + row) * MP + m] : 0.f;
    float a = v[0];
#pragma unroll
    for (int w = 1; w < WMAX; ++w)
      if (w < nwork) a += v[w];
    dst(row, m, a);
  }
}

// bf16(sum_i pre[i] * r[i]) of 8 columns, in stream order (SPEC §2.1 step 8).
template <int N>
__device__ __forceinline__ uint4 combine8(const uint4 (&r)[N], const float (&pre)[N]) {
  float y[8], f[8];
  unpack8(r[0], f);
#pragma unroll
  for (int e = 0; e < 8; ++e) y[e] = pre[0] * f[e];
#pragma unroll
  for (int i = 1; i < N; ++i) {
    unpack8(r[i], f);
#pragma unroll
    for (int e = 0; e < 8; ++e) y[e] += pre[i] * f[e];
  }
  return pack8(y);
}

// out8 = combine8(r, pre), stored evict_first (or plainly with NORM: norm_pass reads it back);
// with NORM, ssq += Σ z² of z = bf16(y) in column order.
template <int N, bool NORM>
__device__ __forceinline__ void combine_store(const uint4 (&r)[N], const float (&pre)[N],
                                              uint16_t* __restrict__ out8, uint64_t pol,
                                              float& ssq) {
  const uint4 o = combine8<N>(r, pre);
  if constexpr (NORM) {
    float z[8];
    unpack8(o, z);
#pragma unroll
    for (int e = 0; e < 8; ++e) ssq = fmaf(z[e], z[e], ssq);
    stg16(out8, o);
  } else {
    stg16_hint(out8, o, pol);
  }
}

// Weighted stream sum of one token over the 8-column vectors v = v0, v0 + STRIDE, ... < v1:
// out[8v..] = bf16(Σ_i pre[i] · src[i][8v..]) in stream order (SPEC §2.1 step 8). With NORM it
// returns this thread's Σ z² of z = bf16(y), in its vector order (step 9 needs the whole row).
// COHERENT: src was written earlier in this kernel (FULL_K fused), so it is read through L2
// (ld.global.cg) rather than the read-only path. This is the last read of src, and out is not
// read back (except by the norm pass), so both go evict_first: lines still to be read stay in
// L2 (H100, NOTES.md v12: pre T = 512 20.4 -> 19.9 us, fused T = 4096 200.1 -> 196.4 us at
// H = 4096). REVERSE (FULL_K) walks the vectors from the last: the main loop of the same CTA
// wrote or read the last K groups most recently, so more of them are still in L2 (with
// evict_first, pre T = 16384 at H = 4096: 412.5 -> 407.9 us).
template <int N, bool NORM, int HS, int STRIDE, bool COHERENT, bool REVERSE = false>
__device__ __forceinline__ float stream_pass(const uint16_t* src, const float (&pre)[N],
                                             uint16_t* __restrict__ out, int H, int v0,
                                             int v1) {
  float ssq = 0.f;
  const uint64_t pol = l2_evict_first();
  const auto body = [&](int v) {
    uint4 r[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const uint16_t* q = src + static_cast<int64_t>(i) * H + 8 * v;
      r[i] = COHERENT ? ldcg16_hint(q, pol) : ldg16_hint(q, pol);
    }
    combine_store<N, NORM>(r, pre, out + 8 * v, pol, ssq);
  };
  if constexpr (HS > 0) {
    constexpr int kIters = (HS / 8 + STRIDE - 1) / STRIDE;
#pragma unroll 4
    for (int j = 0; j < kIters; ++j) {
      const int v = v0 + (REVERSE ? kIters - 1 - j : j) * STRIDE;
      if (v < v1) body(v);
    }
  } else if constexpr (REVERSE) {
    const int iters = v1 > v0 ? (v1 - v0 + STRIDE - 1) / STRIDE : 0;
#pragma unroll 4
    for (int j = iters - 1; j >= 0; --j) body(v0 + j * STRIDE);
  } else {
#pragma unroll 4
    for (int v = v0; v < v1; v += STRIDE) body(v);
  }
  return ssq;
}

// Second pass of the folded RMSNorm: out = bf16(z · rs · w) over the vectors this thread wrote
// (plain loads: the values were stored by this thread in this kernel).
template <int HS, int STRIDE>
__device__ __forceinline__ void norm_pass(uint16_t* __restrict__ out,
                                          const uint16_t* __restrict__ w, float rs, int v0,
                                          int v1) {
  const auto body = [&](int v) {
    const uint4 zv = *reinterpret_cast<const uint4*>(out + 8 * v);
    float z[8], wf[8], o[8];
    unpack8(zv, z);
    unpack8(ldg16(w + 8 * v), wf);
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = z[e] * rs * wf[e];
    stg16(out + 8 * v, pack8(o));
  };
  if constexpr (HS > 0) {
    constexpr int kIters = (HS / 8 + STRIDE - 1) / STRIDE;
#pragma unroll 4
    for (int j = 0; j < kIters; ++j) {
      const int v = v0 + j * STRIDE;
      if (v < v1) body(v);
    }
  } else {
#pragma unroll 4
    for (int v = v0; v < v1; v += STRIDE) body(v);
  }
}

// ---------------------------------------------------------------------------------------------
// Main kernel. grid (token blocks, splits); block = warps * 32. Dynamic shared memory:
// red [W][BT][MP] floats (one slice per warp), then the gates of the tokens [BT][NC] (fused)
// or the activation ring [W][kRegStages][2 TT][32] uint4 (pre / head); with RING
// (Plan::fn_ring) for pre / head the ring of MainRing [W][kStages][kSlot] uint4, which red
// overlays after it, and for the fused op red, coef, then FusedRing [W][kStages][kSlot] uint4.
template <int N, Mode MODE, bool FULLK, bool NORM, int HS, bool HALF = false, bool RING = false,
          bool SMALL = false>
__global__ void __launch_bounds__(kMainThreads, 1) hc_main_kernel(const MainParams p) {
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, NT = Sh::NT, MP = Sh::MP, NC = Sh::NC;
  static_assert(!SMALL || (MODE != Mode::FUSED && !FULLK && !RING), "SMALL: pre / head SPLIT_K");
  constexpr int TT = tiles_per_block<N, MODE, FULLK, SMALL>();
  constexpr int BT = 16 * TT;
  extern __shared__ float4 smem_raw[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, W = blockDim.x >> 5;
  float* red = reinterpret_cast<float*>(smem_raw);
  float* coef = red + W * BT * MP;
  const int g = lane >> 2, c = lane & 3;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * BT;
  const int split = blockIdx.y;
  const int gb = split * p.gpc, ge = min(p.G, gb + p.gpc);
  const int H = HS > 0 ? HS : p.H;
  const int64_t K = static_cast<int64_t>(N) * H;
  const int64_t T = p.T;

  // Work units of this CTA's warps: a (group, stream) chunk of K for pre / head; for the fused
  // op a whole group or, with HALF (Plan::split_streams, even n), a group and half of its
  // output streams, for which the warp reads x and every input stream (the post mix needs
  // them all) and writes and reduces only its own. Unit u goes to warp u % W.
  static_assert(!HALF || (MODE == Mode::FUSED && N % 2 == 0), "half units: fused op, even n");
  constexpr int kUnitStreams = MODE == Mode::FUSED ? (HALF ? N / 2 : N) : 1;
  const int units = (ge - gb) * (N / kUnitStreams);

  const bool staged = p.fnf != nullptr;
  if (!FULLK && !staged) {
    // Start pulling this CTA's slice of fn into L2 while the previous kernel finishes.
    for (int u = warp; u < units; u += W) {
      const int gi = gb + u / (N / kUnitStreams), i0 = (u % (N / kUnitStreams)) * kUnitStreams;
      const int h = gi * kGroupCols + 8 * c;
      if (h >= H) continue;
#pragma unroll
      for (int i = i0; i < i0 + kUnitStreams; ++i)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
          if (8 * nt + g < M) prefetch_l2(p.fn + (8 * nt + g) * K + static_cast<int64_t>(i) * H + h);
    }
  }
  pdl_wait();
  pdl_trigger();

  if constexpr (MODE == Mode::FUSED) {
    load_block_coefs<N, NC>(coef, p.post_in, p.comb_in, t0, T, BT);
    __syncthreads();
  }

  float acc[TT][NT][4] = {};  // per tile, 8-row block: the mma accumulators
  float ss[TT][2] = {};       // per tile: sums of squares of rows g and g + 8

  if constexpr (MODE == Mode::FUSED) {
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
      // they spill. H100, cold fn, us (NOTES.md, v14), row by row -> all first: fused T = 32
      // 11.1 -> 9.77 (H = 4096), 11.88 -> 10.50 (H = 7168); T = 64 11.55 -> 10.62, 12.72 -> 11.98.
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
  } else {
    if constexpr (!RING) {
      // One (group, stream) unit: this lane's 8 fn values of each 8-row block (raw fp32, in
      // registers, prefetched one unit ahead: L2 hits) and its 8 activations of rows g, g + 8
      // of every tile (HBM), which stream through a per-warp ring of kRegStages units in shared
      // memory with cp.async, so each warp keeps several units of loads in flight.
      uint4* ring = reinterpret_cast<uint4*>(coef) + warp * kRegStages * 2 * TT * 32 + lane;
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
  }

  // Each working warp's sums, then the warps in warp order, for the live rows (slice 0).
  const int nwork = min(W, units);  // warps that own at least one unit
  const int rows = T - t0 < BT ? static_cast<int>(T - t0) : BT;  // live token rows
  if constexpr (RING) __syncthreads();  // red overlays the other warps' rings
  if (warp < nwork) store_warp_partial<TT, NT, M, MP>(red + warp * BT * MP, acc, ss, rows);
  __syncthreads();

  if constexpr (!FULLK) {  // the sums straight into this split's partials (padding zeroed)
    const auto to_ws = [&](int row, int m, float a) {
      float* o = p.ws + ((t0 + row) * p.S + split) * MP;
      o[m] = a;
      if (m == M)
#pragma unroll
        for (int q = M + 1; q < MP; ++q) o[q] = 0.f;
    };
    add_warp_partials<M, MP, kMainThreads / 32>(red, BT, rows, nwork, to_ws);
  } else {
    const auto in_place = [&](int row, int m, float a) { red[row * MP + m] = a; };
    add_warp_partials<M, MP, kMainThreads / 32>(red, BT, rows, nwork, in_place);
    __syncthreads();
    // Gates: lane l of every warp computes pre of token t0 + l (BT <= 32); the last warp also
    // runs pre_gates (Sinkhorn) for its lane's token and writes post / comb.
    static_assert(BT <= 32, "FULL_K gates take one token per lane");
    const float inv_k = 1.0f / static_cast<float>(K);
    const int64_t tl = t0 + lane;
    const bool lv = lane < BT && tl < T;
    float pre[N];
#pragma unroll
    for (int i = 0; i < N; ++i) pre[i] = 0.f;
    if (lv) {
      const float* d = red + lane * MP;
      head_gates<N>(d, d[M], inv_k, p.base, p.scale[0], p.rms_eps, p.pre_eps, pre);
    }
    if constexpr (MODE != Mode::HEAD) {
      if (warp == W - 1 && lv) {
        const GateParams gp =
            gate_params(p.scale, p.rms_eps, p.pre_eps, p.sinkhorn_eps, p.post_mult, p.repeat);
        write_gates<N>(red + lane * MP, inv_k, p.base, gp, tl, p.post_out, p.comb_out);
      }
    }
    const uint16_t* src = MODE == Mode::FUSED ? p.res_out : p.res;
    for (int j = warp; j < BT; j += W) {
      const int64_t t = t0 + j;
      if (t >= T) break;
      float pj[N];
#pragma unroll
      for (int i = 0; i < N; ++i) pj[i] = __shfl_sync(0xffffffffu, pre[i], j);
      uint16_t* out = p.out + t * H;
      const float ssq = stream_pass<N, NORM, HS, 32, MODE == Mode::FUSED, true>(src + t * K, pj,
                                                                               out, H, lane, H / 8);
      if constexpr (NORM) {
        const float rs = 1.0f / sqrtf(warp_sum(ssq) / static_cast<float>(H) + p.norm_eps);
        norm_pass<HS, 32>(out, p.norm_w, rs, lane, H / 8);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Epilogue kernel of SPLIT_K. grid T * HC (token, chunk of H); block 128 stream threads, plus
// one gate warp for pre / fused. Dynamic shared memory: partials [S][MP], part sums [4][MP].
// Launch bounds with one block per SM leave the register count to the code: without it ptxas
// held the H = 4096 instance to 32 registers (48 now), and pre at T = 1..64 ran 2.5-4.5 us
// slower there than at H = 7168 (benchmarks/NOTES.md, v6).
template <int N, Mode MODE, bool NORM, int HS>
__global__ void __launch_bounds__(kEpiThreads + 32, 1) hc_epilogue_kernel(const EpiParams p) {
  using Sh = Shape<N, MODE>;
  constexpr int M = Sh::M, MP = Sh::MP;
  constexpr int kRuns = kEpiThreads / MP < 1 ? 1 : (kEpiThreads / MP > 4 ? 4 : kEpiThreads / MP);
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
  if (tid < parts * MP) {
    float a = part[s0 * MP + pm];
#pragma unroll 8
    for (int s = s0 + 1; s < s1; ++s) a += part[s * MP + pm];  // the loads ahead of the adds
    psum[pq * MP + pm] = a;
  }
  __syncthreads();
  if (tid < MP) {
    float a = psum[tid];
#pragma unroll
    for (int q = 1; q < kRuns; ++q)
      if (q < parts) a += psum[q * MP + tid];
    dsum[tid] = a;
  }
  __syncthreads();

  const float inv_k = 1.0f / static_cast<float>(K);
  if (tid >= kEpiThreads) {  // the gate warp of pre / fused
    if constexpr (MODE != Mode::HEAD) {
      if (chunk == 0 && tid == kEpiThreads) {
        const GateParams gp =
            gate_params(gsm + M, p.rms_eps, p.pre_eps, p.sinkhorn_eps, p.post_mult, p.repeat);
        write_gates<N>(dsum, inv_k, gsm, gp, t, p.post_out, p.comb_out);
      }
    }
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

// ---------------------------------------------------------------------------------------------
// Host side.

// Everything one call of pre / fused / head needs, as raw pointers into tensors that the
// caller keeps alive (contiguous, 16-byte aligned where vector loads read them).
struct HcCall {
  Mode mode;
  int64_t T;
  int n, H;
  const uint16_t* res;
  const uint16_t* x;
  const float* post_in;
  const float* comb_in;
  uint16_t* res_out;
  const float* fn;
  const float* scale;
  const float* base;
  const uint16_t* norm_w;
  float* post_out;
  float* comb_out;
  uint16_t* out;
  float rms_eps, pre_eps, sinkhorn_eps, post_mult, norm_eps;
  int64_t repeat;
};

}  // namespace mhc::cuda

#include "cuda/hc_cluster.cuh"  // the CLUSTER plan: kernel and launcher (uses HcCall)

namespace mhc::cuda {

template <int N, Mode MODE, int HS>
void run_hc_spec(const Plan& plan, const HcCall& a, const at::TensorOptions& fopts, int device,
                 cudaStream_t stream) {
  if (plan.variant == Variant::CLUSTER) {
    if constexpr (N <= 4) return run_cluster<N, MODE>(plan, a, device, stream);
    TORCH_INTERNAL_ASSERT(false, "no cluster kernel for hc_mult ", N);
  }
  using Sh = Shape<N, MODE>;
  const bool full = plan.variant == Variant::FULL_K;
  const bool norm = a.norm_w != nullptr;
  const int G = (a.H + kGroupCols - 1) / kGroupCols;
  const int S = plan.num_splits;
  const int gpc = (G + S - 1) / S;
  TORCH_INTERNAL_ASSERT(S >= 1 && (S - 1) * gpc < G, "plan splits ", S, " leave a split of ", G,
                        " K groups empty");

  MainParams mp{a.res, a.x, a.post_in, a.comb_in, a.res_out, a.fn, nullptr, a.scale, a.base,
                a.norm_w, nullptr, a.post_out, a.comb_out, a.out, a.T, a.H, G, S, gpc,
                a.rms_eps, a.pre_eps, a.sinkhorn_eps, a.post_mult, a.norm_eps, a.repeat,
                plan.evict_inputs ? 1 : 0};

  at::Tensor staged;  // kept alive until the main kernel is enqueued (stream-ordered reuse)
  TORCH_INTERNAL_ASSERT(!(plan.staged_fn && MODE == Mode::HEAD), "hc_head never stages fn");
  if constexpr (MODE != Mode::HEAD) {
    if (plan.staged_fn) {
      const int64_t items = static_cast<int64_t>(G) * a.n * Sh::NT;  // one warp each
      staged = at::empty({items * kParts * 32 * 4}, fopts);           // uint4 per lane, part
      auto* fnf = reinterpret_cast<uint4*>(staged.data_ptr<float>());
      launch(hc_stage_fn_kernel<N, MODE>, device, dim3(static_cast<unsigned>((items + 7) / 8)),
             dim3(256), 0, stream, a.fn, fnf, a.H, G);
      mp.fnf = fnf;
    }
  }

  const auto main_launch = [&](auto kernel, int tt, int warps, at::Tensor* ws) {
    TORCH_INTERNAL_ASSERT(plan.block_tokens == 16 * tt, "plan block_tokens ",
                          plan.block_tokens, " does not match the kernel's ", 16 * tt);
    const int bt = 16 * tt;
    const dim3 grid(static_cast<unsigned>((a.T + bt - 1) / bt), static_cast<unsigned>(S));
    size_t smem = sizeof(float) * bt * (warps * Sh::MP + Sh::NC);  // fused: red, then coef
    if constexpr (MODE == Mode::FUSED) {
      if (plan.fn_ring) {  // then the ring of x and the input streams
        constexpr int kFullTT = tiles_per_block<N, MODE, true>();
        constexpr int kSplitTT = tiles_per_block<N, MODE, false>();
        smem += full ? FusedRing<N, kFullTT>::bytes(warps) : FusedRing<N, kSplitTT>::bytes(warps);
      }
    } else {
      if (plan.fn_ring)  // the ring, which red overlays afterwards
        smem = full ? MainRing<N, MODE, true>::bytes(warps) : MainRing<N, MODE, false>::bytes(warps);
      else  // red, then the activation ring
        smem = sizeof(float) * bt * warps * Sh::MP + sizeof(uint4) * warps * kRegStages * 2 * tt * 32;
    }
    if (ws) mp.ws = ws->data_ptr<float>();
    launch(kernel, device, grid, dim3(32 * warps), smem, stream, mp);
  };

  // The plan's main-kernel instance: FULL_K (whole K, hidden_spec HS, the folded norm for pre /
  // fused) or SPLIT_K (any H), with half units (fused, Plan::split_streams) or the ring
  // (Plan::fn_ring: fn for pre / head, x and the input streams for the fused op).
  TORCH_INTERNAL_ASSERT(!plan.split_streams || (MODE == Mode::FUSED && N % 2 == 0 && !full),
                        "split_streams: fused SPLIT_K, even n");
  TORCH_INTERNAL_ASSERT(!(plan.split_streams && plan.fn_ring), "half units take no ring");
  const auto run_main = [&](auto fullk, auto normk, int warps, at::Tensor* ws) {
    constexpr bool F = decltype(fullk)::value, NM = decltype(normk)::value;
    constexpr int TT = tiles_per_block<N, MODE, F>(), hs = F ? HS : 0;
    if constexpr (MODE == Mode::FUSED && !F && N % 2 == 0) {
      if (plan.split_streams)
        return main_launch(hc_main_kernel<N, MODE, F, NM, hs, true>, TT, warps, ws);
    }
    if (plan.fn_ring)
      return main_launch(hc_main_kernel<N, MODE, F, NM, hs, false, true>, TT, warps, ws);
    if constexpr (MODE != Mode::FUSED && !F && N <= 4) {
      constexpr int kSmallTT = tiles_per_block<N, MODE, F, true>();
      if (plan.block_tokens == 16 * kSmallTT)
        return main_launch(hc_main_kernel<N, MODE, F, NM, hs, false, false, true>, kSmallTT,
                           warps, ws);
    }
    return main_launch(hc_main_kernel<N, MODE, F, NM, hs>, TT, warps, ws);
  };
  if (full) {
    if constexpr (MODE != Mode::HEAD) {
      if (norm) return run_main(std::true_type{}, std::true_type{}, 8, nullptr);
    }
    return run_main(std::true_type{}, std::false_type{}, 8, nullptr);
  }

  at::Tensor ws = at::empty({a.T, S, Sh::MP}, fopts);
  // Units per split (hc_main_kernel): (group, stream) for pre / head; for the fused op whole
  // groups, or (group, half of the streams) under Plan::split_streams.
  const int units = gpc * (MODE == Mode::FUSED ? (plan.split_streams ? 2 : 1) : N);
  run_main(std::false_type{}, std::false_type{}, std::min(8, units), &ws);

  // Epilogue: a token's row in chunks of H, one CTA each (the folded norm needs the whole row
  // in one CTA). Chunks of ~2 vectors of 8 columns per stream thread for pre / fused and 1 for
  // head, and at decode sizes as many as give about two CTAs per SM in all (2 num_sms / T,
  // rounded to the nearest: pre T = 64, H = 7168 4 chunks, not 5, 9.81 -> 9.26 us, while T = 48
  // keeps 6 (8.66 against 8.83 with 4) and T = 56 5 (9.05 either); NOTES.md, v14). Whole rows
  // per CTA (7 vectors per thread at H = 7168) had streamed the second read at ~2.3 TB/s; with
  // these chunks, H100, cold fn, us (NOTES.md, v8): pre T = 4096 125.7 -> 117.3 (H = 4096),
  // 228.9 -> 194.3 (H = 7168); head T = 4096 123.1 -> 109.9 (H = 4096).
  constexpr Mode EM = MODE == Mode::HEAD ? Mode::HEAD : Mode::PRE;
  const int H8 = a.H / 8;
  const int max_chunks = std::max(1, H8 / kEpiThreads);
  const int per_chunk = (MODE == Mode::HEAD ? 1 : 2) * kEpiThreads;  // 8-column vectors
  const int64_t want = std::max<int64_t>((H8 + per_chunk - 1) / per_chunk,
                                         (2 * static_cast<int64_t>(num_sms(device)) + a.T / 2) / a.T);
  const int64_t forced = epilogue_chunks();  // benchmarks only (plan.h)
  const int HC = norm ? 1 : static_cast<int>(std::min<int64_t>(max_chunks, forced > 0 ? forced : want));
  const int CW = (H8 + HC - 1) / HC;
  EpiParams ep{MODE == Mode::FUSED ? a.res_out : a.res, ws.data_ptr<float>(), a.scale, a.base,
               a.norm_w, a.post_out, a.comb_out, a.out, a.T, a.H, S, HC, CW,
               a.rms_eps, a.pre_eps, a.sinkhorn_eps, a.post_mult, a.norm_eps, a.repeat,
               MODE != Mode::FUSED};
  const dim3 grid(static_cast<unsigned>(a.T * HC));
  const dim3 block(kEpiThreads + (EM == Mode::HEAD ? 0 : 32));
  size_t smem = sizeof(float) * (static_cast<size_t>(S) + 4) * Sh::MP;
  // The fused op with half units (Plan::split_streams, T <= 64): at most kEpiCapCtas epilogue
  // CTAs per SM (through their shared memory), a launch shape of the plan. Launched early
  // (PDL), the CTAs pile onto the few SMs that its main kernel leaves free (112 CTAs at
  // H = 7168, T = 64), and each then streams its chunk with a share of one SM. H100, cold fn,
  // us (NOTES.md, v13), no cap / 3: fused T = 64 14.19 / 12.81 (H = 7168), 11.65 / 11.67
  // (H = 4096); pre and head lost with it (head T = 64 6.86 / 7.94 at H = 7168, pre 8.53 / 8.75
  // at H = 4096), so they keep every CTA the registers allow.
  const int64_t cap_knob = epilogue_ctas_per_sm();  // studies (plan.h)
  const int64_t cap = cap_knob != 0 ? cap_knob
                      : plan.split_streams ? kEpiCapCtas
                                           : -1;
  if (cap > 0) {
    const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
    const size_t share = prop->sharedMemPerMultiprocessor / static_cast<size_t>(cap);
    const size_t reserve = prop->reservedSharedMemPerBlock + 1024;  // + static shared memory
    if (share > reserve) smem = std::max(smem, std::min<size_t>(share - reserve,
                                                                prop->sharedMemPerBlockOptin));
  }
  if constexpr (EM != Mode::HEAD) {
    if (norm) return launch(hc_epilogue_kernel<N, EM, true, HS>, device, grid, block, smem, stream, ep);
  }
  launch(hc_epilogue_kernel<N, EM, false, HS>, device, grid, block, smem, stream, ep);
}

// Runs the plan's kernels for hc_mult a.n (compile-time N) and the plan's hidden_spec.
template <Mode MODE>
void run_hc(const Plan& plan, const HcCall& a, const at::TensorOptions& fopts, int device,
            cudaStream_t stream) {
  MHC_DISPATCH_HC_MULT(a.n, N, [&] {
    if constexpr (N == 4) {
      if (plan.hidden_spec == 4096) return run_hc_spec<4, MODE, 4096>(plan, a, fopts, device, stream);
      if (plan.hidden_spec == 7168) return run_hc_spec<4, MODE, 7168>(plan, a, fopts, device, stream);
    }
    return run_hc_spec<N, MODE, 0>(plan, a, fopts, device, stream);
  });
}

}  // namespace mhc::cuda
