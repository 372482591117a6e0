// Device helpers of the K-reduction kernels (pre, fused, head): fn fragments and the mma tile
// of a work unit, the reduction of the warps' partial sums, the gates of a token, and the
// weighted stream sum with the folded RMSNorm. Shared by the main kernels, the epilogue and the
// cluster kernels, so that every plan adds the same terms in the same order.
#pragma once

#include "core/geometry.h"
#include "cuda/common.cuh"
#include "cuda/norm_tree.cuh"

namespace mhc::cuda {

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

// pre_gates of one token from its reduced dots d[0..M) and ss = d[M]; writes post and comb,
// and pre where pre_out is given (mhc_stats).
template <int N>
__device__ __forceinline__ void write_gates(const float* d, float inv_k, const float* base,
                                            const GateParams& gp, int64_t t, float* pre_out,
                                            float* post_out, float* comb_out) {
  float pre[N], post[N], comb[N][N];
  pre_gates<N>(d, d[N * (N + 2)], inv_k, base, gp, pre, post, comb);
  if (pre_out != nullptr)
#pragma unroll
    for (int i = 0; i < N; ++i) pre_out[t * N + i] = pre[i];
#pragma unroll
  for (int i = 0; i < N; ++i) post_out[t * N + i] = post[i];
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int k = 0; k < N; ++k) comb_out[(t * N + j) * N + k] = comb[j][k];
}

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

// A token's split partials part [S][MP] summed as every SPLIT_K epilogue adds them: the S
// splits in parts = min(split_runs(MP), S) contiguous runs (run q: from q (S / parts) +
// min(q, S % parts) to the next run's start), each summed in split order (run_sum, into psum
// [run][MP]) by one of kEpiThreads threads per partial, then the runs in order (runs_total).
constexpr int split_runs(int MP) {
  return kEpiThreads / MP < 1 ? 1 : (kEpiThreads / MP > 4 ? 4 : kEpiThreads / MP);
}
__device__ __forceinline__ float run_sum(const float* part, int MP, int s0, int s1, int m) {
  float a = part[s0 * MP + m];
#pragma unroll 8
  for (int s = s0 + 1; s < s1; ++s) a += part[s * MP + m];  // the loads ahead of the adds
  return a;
}
template <int KRUNS>
__device__ __forceinline__ float runs_total(const float* psum, int MP, int parts, int m) {
  float a = psum[m];
#pragma unroll
  for (int q = 1; q < KRUNS; ++q)
    if (q < parts) a += psum[q * MP + m];
  return a;
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

// bf16(sum_i pre[i] * r[i]) of 8 columns, in stream order (docs/spec.md §2.1 step 8).
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
// out[8v..] = bf16(Σ_i pre[i] · src[i][8v..]) in stream order (docs/spec.md §2.1 step 8). With NORM it
// returns this thread's Σ z² of z = bf16(y), in its vector order (step 9 needs the whole row).
// COHERENT: src was written earlier in this kernel (FULL_K fused), so it is read through L2
// (ld.global.cg) rather than the read-only path. This is the last read of src, and out is not
// read back (except by the norm pass), so both go evict_first: lines still to be read stay in
// L2. REVERSE (FULL_K) walks the vectors from the last: the main loop of the same CTA wrote or
// read the last K groups most recently, so more of them are still in L2 (docs/performance.md,
// "L2 evict-first inputs").
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

// The folded RMSNorm of one stored 8-column vector v of a row: out = bf16(z · rs · w) (a plain
// load: this thread stored z in this kernel).
__device__ __forceinline__ void norm_vec8(uint16_t* __restrict__ out,
                                          const uint16_t* __restrict__ w, float rs, int v) {
  stg16(out + 8 * v, norm8(*reinterpret_cast<const uint4*>(out + 8 * v), w + 8 * v, rs));
}

// Second pass of the folded RMSNorm over the vectors v0, v0 + STRIDE, ... < v1 of a row, which
// this thread wrote.
template <int HS, int STRIDE>
__device__ __forceinline__ void norm_pass(uint16_t* __restrict__ out,
                                          const uint16_t* __restrict__ w, float rs, int v0,
                                          int v1) {
  const auto body = [&](int v) { norm_vec8(out, w, rs, v); };
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

// The norm pass of the V4.1 combines (hc_combine.cuh, the fused boundary's epilogue) over the
// vectors first, first + stride, ... < v1 of a row that this thread combined: the first HELD
// from registers (z and its norm weights wv, loaded before the row's barrier), the rest read
// back from this thread's own stores of z.
template <int HELD>
__device__ __forceinline__ void norm_held_pass(uint16_t* __restrict__ out,
                                               const uint16_t* __restrict__ w,
                                               const uint4 (&z)[HELD], const uint4 (&wv)[HELD],
                                               float rs, int first, int stride, int v1) {
#pragma unroll
  for (int k = 0; k < HELD; ++k) {
    const int v = first + k * stride;
    if (v < v1) stg16(out + 8 * v, norm8(z[k], wv[k], rs));
  }
  for (int v = first + HELD * stride; v < v1; v += stride) norm_vec8(out, w, rs, v);
}

// Weighted stream sum of a cluster CTA's slice held in shared memory: tokens 0 .. live - 1 of
// the block from t0, vectors 0 .. nv - 1 of each stream row (a token's row is RS 16-byte units
// in `data`, a stream's SV) with their gates [BT][N], into columns h0 + 8 v of out; by threads
// th of nth.
template <int N>
__device__ __forceinline__ void cluster_stream_sum(const uint4* data, const float* gates,
                                                   uint16_t* out, int64_t t0, int live, int nv,
                                                   int SV, int RS, int H, int h0, int th,
                                                   int nth) {
  for (int idx = th; idx < live * nv; idx += nth) {
    const int t = idx / nv, v = idx % nv;
    uint4 r[N];
    float pre[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      r[i] = data[t * RS + i * SV + v];
      pre[i] = gates[t * N + i];
    }
    stg16(out + (t0 + t) * H + h0 + 8 * v, combine8<N>(r, pre));
  }
}

}  // namespace mhc::cuda
