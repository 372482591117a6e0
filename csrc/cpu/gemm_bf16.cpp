// bf16 x bf16 -> fp32 GEMM in dot-product form, for linear_bf16_fp32 on the CPU.
//
// Both operands run along K, so each output keeps one 8-lane fp32 accumulator over K (the
// fixed order of gemm_bf16.h) and no operand is ever transposed or copied whole. K is walked
// in groups of 16: one 32-byte load holds 16 bf16 values, and a shift (even elements) and a
// mask (odd elements) turn it into two fp32 vectors, which is why lane l takes the pair
// 2l, 2l + 1 of every group. A block of outputs is computed in K chunks of kKc: the chunk of
// MT token rows is converted once to fp32 (12 KB, it stays in L1), then NR weight rows at a
// time are read as bf16 straight from the caller's tensor and multiplied into an MT x NR tile
// of accumulators held in registers. The accumulators wait in a per-thread scratch between
// chunks and are folded once at the end, so neither the chunking nor the tile shape shows in
// the result. At one token the kernel streams the weight once in bf16 (no fp32 copy of it is
// ever made); at many tokens a chunk of weight rows is reused from L2 by every token tile.
//
// Written in GCC vector types, one source for three builds chosen once by what the CPU
// supports: AVX-512VL (still 8-lane vectors, but 32 registers hold a 6 x 4 tile), AVX2+FMA
// (6 x 2) and the baseline (2 x 2). Their arithmetic is the same, so are their bits.
#include "cpu/gemm_bf16.h"

#include <algorithm>
#include <vector>

#include "cpu/isa.h"

// The helpers below take 32-byte vectors by value; they are always inlined into the per-ISA
// entry points, so no call crosses the ABI boundary GCC warns about.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && defined(__GNUC__)
#define MHC_CPU_AVX512 __attribute__((target("avx2,fma,avx512f,avx512vl")))
#else
#define MHC_CPU_AVX512
#endif

namespace mhc::cpu {

namespace {
constexpr int kLanes = 8;
constexpr int kGroup = 2 * kLanes;  // K elements per step: one 32-byte load of bf16
constexpr int kMaxTileTokens = 6;
constexpr int64_t kKc = 512;  // K elements per chunk (a multiple of kGroup)

typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
// Unaligned views of memory, for loads and stores.
typedef float v8f_mem __attribute__((vector_size(32), aligned(4), may_alias));
typedef uint32_t v8u_mem __attribute__((vector_size(32), aligned(2), may_alias));

MHC_CPU_INLINE v8f load8(const float* p) { return *reinterpret_cast<const v8f_mem*>(p); }
MHC_CPU_INLINE void store8(float* p, v8f v) { *reinterpret_cast<v8f_mem*>(p) = v; }

// 16 bf16 values (raw bits) as one vector of 32-bit words; even_f32 / odd_f32 give the fp32
// values of its even-indexed elements (low halves, shifted up) and odd ones (high halves).
MHC_CPU_INLINE v8u load16(const uint16_t* p) { return *reinterpret_cast<const v8u_mem*>(p); }
MHC_CPU_INLINE v8f even_f32(v8u u) { return reinterpret_cast<v8f>(u << 16); }
MHC_CPU_INLINE v8f odd_f32(v8u u) { return reinterpret_cast<v8f>(u & 0xffff0000u); }

// The `len` (<= 16) values at p, zero-padded to a group.
MHC_CPU_INLINE v8u load16_partial(const uint16_t* p, int64_t len) {
  uint16_t pad[kGroup] = {};
  for (int64_t k = 0; k < len; ++k) pad[k] = p[k];
  return load16(pad);
}

MHC_CPU_INLINE float fold(const float* a) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// acc[t][r] += x_t . w_r over `groups` groups; acc[t][r] lives at s[(t * lds + r) * 8] (zero
// instead when `first`). xb holds MT fp32 rows, row stride ldxb, each group as its 8 even
// elements then its 8 odd ones; w[r] points at weight row r's bf16 values.
template <int MT, int NR>
MHC_CPU_INLINE void micro_tile(const float* xb, int64_t ldxb, const uint16_t* const* w,
                               int64_t groups, bool first, float* s, int64_t lds) {
  v8f acc[MT][NR];
  for (int t = 0; t < MT; ++t)
    for (int r = 0; r < NR; ++r) acc[t][r] = first ? v8f{} : load8(s + (t * lds + r) * kLanes);
  for (int64_t i = 0; i < groups; ++i) {
    const float* xg = xb + i * kGroup;
    v8u raw[NR];
    v8f wv[NR];
    for (int r = 0; r < NR; ++r) raw[r] = load16(w[r] + i * kGroup);
    for (int r = 0; r < NR; ++r) wv[r] = even_f32(raw[r]);
    for (int t = 0; t < MT; ++t) {
      const v8f xv = load8(xg + t * ldxb);
      for (int r = 0; r < NR; ++r) acc[t][r] += xv * wv[r];
    }
    for (int r = 0; r < NR; ++r) wv[r] = odd_f32(raw[r]);
    for (int t = 0; t < MT; ++t) {
      const v8f xv = load8(xg + t * ldxb + kLanes);
      for (int r = 0; r < NR; ++r) acc[t][r] += xv * wv[r];
    }
  }
  for (int t = 0; t < MT; ++t)
    for (int r = 0; r < NR; ++r) store8(s + (t * lds + r) * kLanes, acc[t][r]);
}

// Weight rows [n, n + NR) over the chunk [k0, k0 + len): whole groups straight from the weight,
// then a last partial group from a zero-padded copy (xb is zero past len already).
template <int MT, int NR>
MHC_CPU_INLINE void rows_chunk(const Bf16Gemm& g, const float* xb, int64_t n, int64_t k0,
                               int64_t len, bool first, float* s, int64_t lds) {
  const int64_t full = len / kGroup, tail = len - full * kGroup;
  const uint16_t* w[NR];
  for (int r = 0; r < NR; ++r) w[r] = g.w + (n + r) * g.ldw + k0;
  micro_tile<MT, NR>(xb, kKc, w, full, first, s, lds);
  if (tail > 0) {
    uint16_t pad[NR][kGroup] = {};
    const uint16_t* wp[NR];
    for (int r = 0; r < NR; ++r) {
      for (int64_t k = 0; k < tail; ++k) pad[r][k] = w[r][full * kGroup + k];
      wp[r] = pad[r];
    }
    micro_tile<MT, NR>(xb + full * kGroup, kKc, wp, 1, first && full == 0, s, lds);
  }
}

// One chunk of MT token rows (converted in xb) against weight rows [n0, n1): NR rows at a time,
// then one at a time. s points at the tile's first accumulator, row stride lds outputs.
template <int MT, int NR>
MHC_CPU_INLINE void tile_chunk(const Bf16Gemm& g, const float* xb, int64_t n0, int64_t n1,
                               int64_t k0, int64_t len, bool first, float* s, int64_t lds) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR)
    rows_chunk<MT, NR>(g, xb, n, k0, len, first, s + (n - n0) * kLanes, lds);
  for (; n < n1; ++n) rows_chunk<MT, 1>(g, xb, n, k0, len, first, s + (n - n0) * kLanes, lds);
}

// tile_chunk for the mt (<= MT) token rows of a tile.
template <int MT, int NR>
MHC_CPU_INLINE void tile_chunk_of(int mt, const Bf16Gemm& g, const float* xb, int64_t n0,
                                  int64_t n1, int64_t k0, int64_t len, bool first, float* s,
                                  int64_t lds) {
  if constexpr (MT > 1) {
    if (mt < MT) return tile_chunk_of<MT - 1, NR>(mt, g, xb, n0, n1, k0, len, first, s, lds);
  }
  tile_chunk<MT, NR>(g, xb, n0, n1, k0, len, first, s, lds);
}

// The outputs [t0, t1) x [n0, n1) with MT x NR register tiles: per K chunk, per MT token rows,
// convert them, then run every weight row of the block against them; fold at the end.
template <int MT, int NR>
MHC_CPU_INLINE void block_impl(const Bf16Gemm& g, int64_t t0, int64_t t1, int64_t n0,
                               int64_t n1) {
  static_assert(MT <= kMaxTileTokens, "token tile too tall for the x buffer");
  const int64_t nt = t1 - t0, nn = n1 - n0, K = g.K;
  if (nt <= 0 || nn <= 0) return;
  // The block's accumulators: s[(t * nn + n) * 8 + lane], t and n relative to t0 and n0.
  thread_local std::vector<float> scratch;
  const size_t need = static_cast<size_t>(nt * nn * kLanes);
  if (scratch.size() < need) scratch.resize(need);
  float* s = scratch.data();
  alignas(64) float xb[kMaxTileTokens][kKc];

  for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += kKc) {
    const int64_t len = std::min(kKc, K - k0);
    for (int64_t t = t0; t < t1; t += MT) {
      const int mt = static_cast<int>(std::min<int64_t>(MT, t1 - t));
      for (int i = 0; i < mt; ++i) {
        const uint16_t* xr = g.x + (t + i) * g.ldx + k0;
        for (int64_t k = 0; k < len; k += kGroup) {
          const v8u u = k + kGroup <= len ? load16(xr + k) : load16_partial(xr + k, len - k);
          store8(&xb[i][k], even_f32(u));
          store8(&xb[i][k + kLanes], odd_f32(u));
        }
      }
      tile_chunk_of<MT, NR>(mt, g, xb[0], n0, n1, k0, len, k0 == 0, s + (t - t0) * nn * kLanes,
                            nn);
    }
  }
  for (int64_t t = 0; t < nt; ++t) {
    float* o = g.out + (t0 + t) * g.ldo + n0;
    const float* st = s + t * nn * kLanes;
    for (int64_t n = 0; n < nn; ++n) o[n] = fold(st + n * kLanes);
  }
}

bool has_avx512vl() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = has_avx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
#else
  return false;
#endif
}

}  // namespace

MHC_CPU_AVX512 static void gemm_bf16_block_avx512(const Bf16Gemm& g, int64_t t0, int64_t t1,
                                                  int64_t n0, int64_t n1) {
  block_impl<6, 4>(g, t0, t1, n0, n1);
}

MHC_CPU_AVX2 static void gemm_bf16_block_avx2(const Bf16Gemm& g, int64_t t0, int64_t t1,
                                              int64_t n0, int64_t n1) {
  block_impl<6, 2>(g, t0, t1, n0, n1);
}

void gemm_bf16_block(const Bf16Gemm& g, int64_t t0, int64_t t1, int64_t n0, int64_t n1) {
  if (has_avx512vl()) return gemm_bf16_block_avx512(g, t0, t1, n0, n1);
  if (has_avx2()) return gemm_bf16_block_avx2(g, t0, t1, n0, n1);
  block_impl<2, 2>(g, t0, t1, n0, n1);
}

}  // namespace mhc::cpu
