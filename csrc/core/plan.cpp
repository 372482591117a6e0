// The planner: every decision about which kernel variant runs, for every op and backend.
//
// CUDA decisions, and why (kernels: csrc/cuda/hc_main.cuh):
//  * mhc_pre, mhc_fused_post_pre, hc_head. The K reduction is split over groups of 32 hidden
//    columns (all n streams of them). At decode sizes the op is bound by streaming fn (1.5-2.75
//    MB) and by latency, so SPLIT_K gives about one CTA per two SMs up to T = 64 (num_splits ~
//    num_sms / 2, groups divided evenly: the epilogue reads every split's partials, and more
//    splits measured slower; pre / head there take 32-token blocks, each with that split count,
//    and the fused op at T = 33 .. 64 more splits where its warps then fit half units) and one
//    per SM above; as T grows, token blocks take over the SMs and fewer splits are needed
//    (num_splits ~ num_sms / blocks, at least 2). Partials are reduced in fixed order by an
//    epilogue kernel chained with programmatic dependent launch. Once upstream's rule needs no
//    split (T > 32 * num_sms; pre at H = 4096 from T = 3041), FULL_K runs one kernel whose CTAs
//    own 32 tokens each and do the whole pipeline (GEMM over all K, gates, stream sum) with no
//    partial buffer. How fn reaches the mma changes with T but never the order of the sums:
//    staged as ready fragments by a first kernel (pre / fused, T >= 512) and streamed through
//    the main kernel's cp.async ring with the activations (pre / head, T >= 512; below, one
//    unit ahead in registers). The constants below give the measurements.
//  * CLUSTER (sm_90+, n <= 4, no folded norm, not batch-invariant): one kernel, a cluster of
//    CTAs per token block reading the residual once (csrc/cuda/hc_cluster.cuh); for hc_head at
//    n = 4, H = 4096 / 7168 a persistent kernel whose clusters walk the token blocks
//    (hidden_spec set: the kernel is specialised). It runs in the token ranges where it
//    measured faster on an H100 (cluster_window below; NOTES.md, v5 / v9).
//  * block_tokens is the token block of one CTA: 16-row mma tiles, 4 of them where registers
//    allow (fn is re-read from L2 once per block, so larger blocks save L2 traffic), 2 for the
//    fused op, FULL_K and pre / head up to T = 64 (more CTAs for a latency-bound size), 1 for
//    n > 4.
//  * MHC_BATCH_INVARIANT pins one plan for every T (SPLIT_K, 16 splits): a token's reduction
//    tree, and therefore its bits, never depend on the batch it came in.
//  * mhc_post is one streaming kernel for every T; hc_prenorm_gemm keeps upstream's split count
//    (its launcher runs the caller's num_splits); linear_bf16_fp32 is cuBLAS or the fp32 GEMM.
#include "core/plan.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <map>
#include <mutex>

namespace mhc {

namespace {
constexpr int32_t kTileTokens = 16;  // token rows of one mma tile
constexpr int32_t kBlockTokens = 64; // prenorm GEMM token block (4 tiles)
// Split count of batch-invariant plans: enough CTAs for decode sizes on 78-148 SM parts.
constexpr int64_t kInvariantSplits = 16;
constexpr int64_t kGroupColumns = 32;  // hidden columns of one K group
// CLUSTER plans: at most 16 CTAs per cluster (sm_90's non-portable limit), 8 warps per CTA,
// 227 KB of dynamic shared memory per CTA.
constexpr int64_t kMaxClusterSize = 16;
constexpr int64_t kClusterWarps = 8;
constexpr int64_t kMaxSmemPerCta = 227 * 1024;
// set_cluster_min_tokens: below 0, the measured windows of cluster_window(); else CLUSTER for
// every T from that value on.
constexpr int64_t kMeasuredWindows = -1;
std::atomic<int64_t> g_cluster_min_tokens{kMeasuredWindows};
std::atomic<int64_t> g_split_target_ctas{-1};  // below 0: the planner's (num_sms or half)
constexpr int64_t kDecodeTokens = 64;  // SPLIT_K aims at num_sms / 2 CTAs up to this T
// From this T the main kernels of pre / fused read fn as ready mma fragments that a small
// kernel writes first (the main loop's fn loads are then whole-sector, and its hi / lo split is
// done once per call instead of once per token block). H100, cold fn (NOTES.md, v7): fused
// T = 4096, H = 7168 400.5 -> 371.8 us, pre 253.1 -> 243.2 us; even at T = 1024. With fn in
// the main kernel's ring (below) pre also gains at T = 512 (H = 4096 / 7168: 25.1 / 39.8 us
// unstaged, 21.8 / 34.8 staged; NOTES.md, v8) but not at T = 256 (17.4 / 24.0 against
// 17.6 / 22.1). hc_head never stages: with n rows of fn, half of each staged 8-row block is
// padding (T = 16384, H = 4096: 473 against 457 us).
constexpr int64_t kStagedFnTokens = 512;
// From this T the pre / head main kernel streams each unit's fn through its cp.async ring
// with the activations, up to 3 units ahead, instead of one unit ahead in registers: ncu
// had put 28% of the kernel's stall samples on waiting for that fn (pre T = 4096, H = 7168).
// H100, cold fn (NOTES.md, v8), us: pre T = 4096 134.5 -> 125.9 (H = 4096), 242.3 -> 229.3
// (H = 7168); head T = 1024 59.7 -> 53.3 (H = 7168). Below T = 512 it was slower (pre T = 1,
// H = 4096: 6.7 -> 7.5; T = 256: 15.7 -> 17.4). From the same T the fused main kernel takes x
// and the input streams through its ring of two units instead of plain loads (it had no load
// in flight while it mixed, stored and reduced a unit). H100, cold fn (NOTES.md, v10), without
// / with, us: H = 4096 T = 512 32.0 / 33.5, 1024 57.9 / 57.5, 4096 215.2 / 200.5, 16384
// 857.1 / 772.3; H = 7168 T = 512 55.3 / 54.5, 1024 99.6 / 95.5, 4096 366.0 / 333.7, 16384
// 1502.0 / 1352.2.
constexpr int64_t kFnRingTokens = 512;
// Up to this many bytes of residual_out, the fused op's ring loads x and the input streams with
// L2 evict_first (Plan::evict_inputs): they are read once, and residual_out, which the
// epilogue reads again, then stays in L2 (50 MB on the H100). H100, cold fn (NOTES.md, v13),
// normal / evict_first, us, with residual_out's MB: H = 4096 T = 512 34.1 / 32.5 (17),
// 768 49.2 / 47.1 (25), 1024 56.5 / 53.9 (34), 1536 87.7 / 85.3 (50), 2048 100.1 / 103.4 (67);
// H = 7168 T = 512 53.6 / 50.3 (29), 768 76.0 / 79.0 (44), 1024 91.5 / 93.8 (59), 2048
// 171.1 / 181.9 (117). The limit sits between the 34 MB that gained and the 44 that lost.
constexpr int64_t kEvictInputsBytes = int64_t{40} << 20;
// Up to this T the fused op's main kernel may take a K group with half of its output streams
// as one work unit (twice the warps, half the serial post mix and mma each), where the doubled
// units still fit the CTA's kMainWarps warps (2 * groups per split <= 8), so no warp takes two.
// H100, cold fn, whole / half units, us (NOTES.md, v7): H = 4096, T = 1 / 8 / 32 8.73 / 10.63 /
// 18.11 -> 7.44 / 8.80 / 13.87; H = 7168 9.06 / 10.12 / 16.28 -> 8.64 / 9.00 / 14.10 (4 groups
// per split at H = 7168). v10, T = 33 / 48 / 64: H = 4096 (4 groups per split) 15.71 / 15.68 /
// 15.73 -> 13.48 / 13.35 / 13.56; H = 7168 (7 groups: 14 half units for 8 warps) 15.88 /
// 17.03 / 16.91 -> 17.99 / 18.68 / 18.73. Above T = 64 the duplicated reads of x and the input
// streams cost more (T = 4096, H = 7168: 453 against 372).
constexpr int64_t kSplitStreamTokens = kDecodeTokens;
constexpr int64_t kMainWarps = 8;  // warps of a main-kernel CTA (csrc/cuda/hc_main.cuh)
std::atomic<int64_t> g_staged_fn_min_tokens{kStagedFnTokens};
std::atomic<int64_t> g_fn_ring_min_tokens{kFnRingTokens};
std::atomic<int64_t> g_evict_inputs_max_bytes{kEvictInputsBytes};
std::atomic<int64_t> g_epilogue_chunks{0};
std::atomic<int64_t> g_epilogue_ctas_per_sm{0};
std::atomic<int64_t> g_cluster_buffers{0};

// Token ranges [lo, hi] where the CLUSTER plan runs (H100, cold fn, CUDA-graph medians):
//  * hc_head, n = 4, H = 4096 / 7168 (the persistent kernel): from T = 256 on (NOTES.md, v11,
//    the kernel with its warps in two roles; persistent / other, us: H = 4096 T = 256 9.3 /
//    10.6, 512 13.9 / 15.5, 768 18.9 / 22.3; H = 7168 T = 256 14.3 / 15.6, 512 22.6 / 26.0,
//    1024 41.0 / 51.0, 1536 57.9 / 75.7; T = 4096 79.8 / 110 and 142.7 / 226, v12);
//  * hc_head at other hidden sizes above 4096 (the one-block kernel): T = 2048 .. 8191, where
//    it measured faster than FULL_K / SPLIT_K with fn in the ring (H = 7168, NOTES.md, v8;
//    cluster / other, us: T = 2048 106.2 / 109.0, 4096 200.0 / 225.6, 6144 292.0 / 305.8, 8192
//    389.4 / 387.3, 16384 767.7 / 755.4).
// mhc_pre and the fused op also measured faster at H = 4096 and T = 16..128 / 16..64, but the
// cluster kernel has no folded RMSNorm, and a norm call must reduce in the same order as the
// plain one (their gates are bit-identical, tests/test_mhc_pre.py), so they keep the other
// plans until it has one.
struct TokenRange {
  int64_t lo, hi;  // empty when lo > hi
};
TokenRange cluster_window(KernelType kind, int64_t hc_mult, int64_t hidden_size) {
  if (kind != KernelType::HC_HEAD) return {1, 0};
  if (persistent_head_cluster(kind, hc_mult, hidden_size))
    return {256, std::numeric_limits<int64_t>::max()};
  if (hidden_size > 4096) return {2048, 8191};
  return {1, 0};
}

bool cluster_wanted(KernelType kind, int64_t num_tokens, int64_t hc_mult, int64_t hidden_size) {
  const int64_t from = g_cluster_min_tokens.load();
  if (from >= 0) return num_tokens >= from;
  const TokenRange w = cluster_window(kind, hc_mult, hidden_size);
  return num_tokens >= w.lo && num_tokens <= w.hi;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int32_t hidden_spec(int64_t hc_mult, int64_t hidden) {
  return hc_mult == 4 && (hidden == 4096 || hidden == 7168) ? static_cast<int32_t>(hidden) : 0;
}

// Pre / head SPLIT_K up to T = 64 (n <= 4): token blocks of 2 tiles (32 tokens) instead of 4,
// each block with the split count of one block (num_sms / 2 CTAs per block, so T = 33 .. 64
// fills the SMs), and never under batch invariance (its plan is one for every T). A CTA then
// carries half the activations, and the main kernel 125 instead of 185 registers (pre, n = 4).
// H100, cold fn, 4-tile / 2-tile blocks, us (NOTES.md, v14): pre T = 64 8.51 / 7.35 (H = 4096),
// 11.24 / 9.79 (H = 7168), T = 8 5.73 / 5.47, 6.72 / 6.34; head T = 64 5.07 / 4.72, 6.82 / 6.08.
// 32-token blocks have no ring instance: where a study starts the ring at T <= 64 (Plan::fn_ring,
// set_fn_ring_min_tokens), the 64-token block takes it.
bool small_blocks(KernelType kind, int64_t num_tokens, int64_t hc_mult, bool full_k,
                  bool batch_invariant) {
  return (kind == KernelType::MHC_PRE || kind == KernelType::HC_HEAD) && hc_mult <= 4 &&
         !full_k && !batch_invariant && num_tokens <= kDecodeTokens &&
         num_tokens < g_fn_ring_min_tokens.load();
}

// mhc_pre at H = 4096 (n = 4) runs FULL_K below upstream's switch (T > 32 * num_sms), once its
// 32-token CTAs cover 8 / 11 of the SMs (from T = 3041 at 132). H100, cold fn, SPLIT_K /
// FULL_K, us (NOTES.md, v14): T = 3072 89.7 / 86.8, 3840 107.8 / 100.1, 4096 112.9 / 106.2,
// 4224 115.5 / 108.5. At H = 7168 FULL_K lost there (T = 3072 147.6 / 163.7, 3840 183.3 /
// 186.2, 4096 193.7 / 194.0), and the fused op gained at most 0.7 us (H = 4096) or lost
// (H = 7168, T = 4096 332.3 / 337.9), so they keep upstream's switch.
bool pre_full_k_early(KernelType kind, int64_t num_tokens, int64_t hc_mult, int64_t hidden_size,
                      int64_t num_sms) {
  return kind == KernelType::MHC_PRE && hidden_spec(hc_mult, hidden_size) == 4096 &&
         ceil_div(num_tokens, 2 * kTileTokens) * 11 >= num_sms * 8;
}

// mma tiles per token block; must match tiles_per_block<>() in csrc/cuda/hc_main.cuh.
int32_t tiles_per_block(KernelType kind, int64_t hc_mult, bool full_k, bool small) {
  if (hc_mult > 4) return 1;
  return full_k || small || kind == KernelType::MHC_FUSED_POST_PRE ? 2 : 4;
}

// `want` splits of `groups` K groups, rounded so every split gets the same number of groups.
int64_t even_splits(int64_t groups, int64_t want) {
  want = std::max<int64_t>(1, std::min(want, groups));
  return ceil_div(groups, ceil_div(groups, want));
}
}  // namespace

bool persistent_head_cluster(KernelType kind, int64_t hc_mult, int64_t hidden_size) {
  return kind == KernelType::HC_HEAD && hc_mult == 4 &&
         (hidden_size == 4096 || hidden_size == 7168);
}

ClusterShape cluster_shape(KernelType kind, int64_t hc_mult, int64_t hidden_size) {
  const bool fused = kind == KernelType::MHC_FUSED_POST_PRE;
  const bool head = kind == KernelType::HC_HEAD;
  if (!(fused || head || kind == KernelType::MHC_PRE) || hc_mult < 1 || hc_mult > 4 ||
      hidden_size <= 0)
    return {};
  const int64_t n = hc_mult;
  const int64_t groups = ceil_div(hidden_size, kGroupColumns);
  const int64_t per_cta = ceil_div(groups, std::min(groups, kMaxClusterSize));
  const int64_t size = ceil_div(groups, per_cta);
  const int64_t bt = 16;  // one mma tile of tokens; must match kClusterTiles (hc_cluster.cuh)
  const int64_t vecs = 4 * per_cta;    // 8-column vectors of one stream per CTA
  const int64_t row = n * vecs + ((n * per_cta) % 2 == 0 ? 4 : 0);  // 16-byte units, padded
  const int64_t m = head ? n : n * (n + 2);
  const int64_t mp = (m + 1 + 3) / 4 * 4;
  const int64_t nc = (n + n * n + 3) / 4 * 4;
  const int64_t bytes = 16 * bt * row                                 // activations
                        + (fused ? 16 * bt * vecs + 4 * bt * nc : 0)  // x, post/comb inputs
                        + 4 * kClusterWarps * bt * mp                 // per-warp partial dots
                        + 4 * bt * mp                                 // reduced dots
                        + 4 * bt * n;                                 // pre gates
  if (bytes > kMaxSmemPerCta) return {};
  return {static_cast<int32_t>(size), static_cast<int32_t>(per_cta), static_cast<int32_t>(bt),
          bytes};
}

int64_t split_target_ctas() { return g_split_target_ctas.load(); }
int64_t set_split_target_ctas(int64_t ctas) { return g_split_target_ctas.exchange(ctas); }

int64_t staged_fn_min_tokens() { return g_staged_fn_min_tokens.load(); }
int64_t set_staged_fn_min_tokens(int64_t t) { return g_staged_fn_min_tokens.exchange(t); }

int64_t fn_ring_min_tokens() { return g_fn_ring_min_tokens.load(); }
int64_t set_fn_ring_min_tokens(int64_t t) { return g_fn_ring_min_tokens.exchange(t); }

int64_t evict_inputs_max_bytes() { return g_evict_inputs_max_bytes.load(); }
int64_t set_evict_inputs_max_bytes(int64_t bytes) { return g_evict_inputs_max_bytes.exchange(bytes); }

int64_t epilogue_chunks() { return g_epilogue_chunks.load(); }
int64_t set_epilogue_chunks(int64_t chunks) { return g_epilogue_chunks.exchange(chunks); }

int64_t epilogue_ctas_per_sm() { return g_epilogue_ctas_per_sm.load(); }
int64_t set_epilogue_ctas_per_sm(int64_t ctas) { return g_epilogue_ctas_per_sm.exchange(ctas); }

int64_t cluster_buffers() { return g_cluster_buffers.load(); }
int64_t set_cluster_buffers(int64_t buffers) { return g_cluster_buffers.exchange(buffers); }

int64_t cluster_min_tokens() { return g_cluster_min_tokens.load(); }
int64_t set_cluster_min_tokens(int64_t t) { return g_cluster_min_tokens.exchange(t); }

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::CPU: return "cpu";
    case Variant::SPLIT_K: return "split_k";
    case Variant::FULL_K: return "full_k";
    case Variant::STREAM: return "stream";
    case Variant::CUBLAS: return "cublas";
    case Variant::FP32_GEMM: return "fp32_gemm";
    case Variant::CLUSTER: return "cluster";
  }
  return "?";
}

int64_t upstream_num_splits(int64_t num_tokens, int64_t k, int64_t num_sms) {
  const int64_t by_sms = num_sms / std::max<int64_t>(1, ceil_div(num_tokens, 64));
  return std::max<int64_t>(1, std::min(by_sms, ceil_div(k, 64) / 4));
}

Plan plan_of(KernelType kind, int64_t num_tokens, int64_t hc_mult, int64_t hidden_size,
             int64_t num_sms, const PlanOptions& opt) {
  const bool norm = opt.norm && (kind == KernelType::MHC_PRE ||
                                 kind == KernelType::MHC_FUSED_POST_PRE);
  // The GEMMs see only K (prenorm) or nothing of the streams (linear): their plans carry no n.
  const bool gemm = kind == KernelType::PRENORM_GEMM || kind == KernelType::LINEAR_BF16_FP32;
  const int32_t n = gemm ? 0 : static_cast<int32_t>(hc_mult);
  Plan p{kind, Variant::CPU, 1, 0, n, 0, norm, false, false, false, false};
  if (num_sms <= 0) return p;  // one CPU kernel per op, whatever T is
  p.hidden_spec = kind == KernelType::PRENORM_GEMM ? 0 : hidden_spec(hc_mult, hidden_size);
  switch (kind) {
    case KernelType::MHC_POST:
      p.variant = Variant::STREAM;
      return p;
    case KernelType::LINEAR_BF16_FP32:
      p.variant = opt.fp32_gemm ? Variant::FP32_GEMM : Variant::CUBLAS;
      p.hidden_spec = 0;
      return p;
    case KernelType::PRENORM_GEMM: {
      const int64_t k = hc_mult * hidden_size;
      p.variant = Variant::SPLIT_K;
      p.num_splits = static_cast<int32_t>(upstream_num_splits(num_tokens, k, num_sms));
      p.block_tokens = kBlockTokens;
      return p;
    }
    case KernelType::MHC_PRE:
    case KernelType::MHC_FUSED_POST_PRE:
    case KernelType::HC_HEAD: {
      const int64_t k = hc_mult * hidden_size;
      const int64_t groups = ceil_div(hidden_size, kGroupColumns);
      if (opt.clusters && !opt.batch_invariant && !norm &&
          cluster_wanted(kind, num_tokens, hc_mult, hidden_size)) {
        const ClusterShape cs = cluster_shape(kind, hc_mult, hidden_size);
        if (cs.size > 0) {
          p.variant = Variant::CLUSTER;
          p.num_splits = cs.size;
          p.block_tokens = cs.block_tokens;
          // the persistent hc_head kernel is specialised; the one-block kernel serves every H
          p.hidden_spec = persistent_head_cluster(kind, hc_mult, hidden_size)
                              ? static_cast<int32_t>(hidden_size)
                              : 0;
          return p;
        }
      }
      const bool full_k =
          !opt.batch_invariant && (upstream_num_splits(num_tokens, k, num_sms) == 1 ||
                                   pre_full_k_early(kind, num_tokens, hc_mult, hidden_size,
                                                    num_sms));
      const bool small = small_blocks(kind, num_tokens, hc_mult, full_k, opt.batch_invariant);
      const int32_t block = kTileTokens * tiles_per_block(kind, hc_mult, full_k, small);
      int64_t splits = 1;
      if (opt.batch_invariant) {
        splits = even_splits(groups, kInvariantSplits);
      } else if (!full_k) {
        const int64_t blocks = ceil_div(num_tokens, block);
        // Up to 64 tokens, half as many splits as SMs: the epilogue reads every split's
        // partials, and at these sizes that costs more than the main kernel's extra groups
        // per CTA (NOTES.md, v6: fused T = 1 10.6 -> 9.2 us at H = 4096).
        const int64_t target = g_split_target_ctas.load();
        const int64_t ctas = target >= 0                    ? target
                             : num_tokens <= kDecodeTokens ? num_sms / 2 * (small ? blocks : 1)
                                                           : num_sms;
        splits = even_splits(groups, std::max<int64_t>(2, ctas / blocks));
        // The fused op with two token blocks (T = 33 .. 64): where that count leaves a split
        // more groups than its warps can take as half units, more splits, so that they fit,
        // while the CTAs stay within one wave. H100, cold fn, H = 7168 (NOTES.md, v13), us,
        // 32 splits of 7 groups (whole units) / 56 of 4 (half units): T = 48 18.45 / 16.53,
        // T = 64 18.34 / 16.99. With one block (T <= 32) more splits mostly add partials for
        // the epilogue to read (v6: fused T = 1, H = 7168, 66 / 132 CTAs 9.77 / 10.73 us).
        if (kind == KernelType::MHC_FUSED_POST_PRE && target < 0 && hc_mult % 2 == 0 &&
            blocks > 1 && num_tokens <= kSplitStreamTokens &&
            2 * ceil_div(groups, splits) > kMainWarps) {
          const int64_t fit = even_splits(groups, ceil_div(groups, kMainWarps / 2));
          if (2 * ceil_div(groups, fit) <= kMainWarps && fit * blocks <= num_sms) splits = fit;
        }
      }
      p.variant = full_k ? Variant::FULL_K : Variant::SPLIT_K;
      p.num_splits = static_cast<int32_t>(splits);
      p.block_tokens = block;
      p.staged_fn = kind != KernelType::HC_HEAD && num_tokens >= g_staged_fn_min_tokens.load();
      // Not under batch invariance: the units set the order in which a token's sums are added.
      p.split_streams = kind == KernelType::MHC_FUSED_POST_PRE && !full_k &&
                        !opt.batch_invariant && hc_mult % 2 == 0 &&
                        num_tokens <= kSplitStreamTokens &&
                        2 * ceil_div(groups, splits) <= kMainWarps;
      // The fused op's half units read from global memory (decode sizes): no ring with them.
      p.fn_ring = num_tokens >= g_fn_ring_min_tokens.load() && !p.split_streams;
      p.evict_inputs = kind == KernelType::MHC_FUSED_POST_PRE && p.fn_ring &&
                       num_tokens * hc_mult * hidden_size * 2 <= g_evict_inputs_max_bytes.load();
      return p;
    }
  }
  return p;
}

std::vector<int64_t> token_count_representatives(KernelType kind, int64_t max_tokens,
                                                 int64_t hc_mult, int64_t hidden_size,
                                                 int64_t num_sms, const PlanOptions& opt) {
  std::map<Plan, int64_t> largest;
  for (int64_t t = 1; t <= max_tokens; ++t)
    largest[plan_of(kind, t, hc_mult, hidden_size, num_sms, opt)] = t;
  std::vector<int64_t> out;
  out.reserve(largest.size());
  for (const auto& kv : largest) out.push_back(kv.second);
  std::sort(out.begin(), out.end());
  return out;
}

namespace {
struct Registry {
  std::mutex mu;
  std::map<std::pair<int, Plan>, uint64_t> first_seen;
  uint64_t sequence = 0;
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

void record_plan(int device, const Plan& plan) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto [it, inserted] = r.first_seen.emplace(std::make_pair(device, plan), r.sequence);
  if (inserted) ++r.sequence;
}

std::vector<PlanRecord> launched_plans() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<PlanRecord> out;
  for (const auto& kv : r.first_seen) out.push_back({kv.first.first, kv.first.second, kv.second});
  std::sort(out.begin(), out.end(),
            [](const PlanRecord& a, const PlanRecord& b) { return a.first_seen < b.first_seen; });
  return out;
}

uint64_t plan_sequence() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.sequence;
}

void clear_launched_plans() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.first_seen.clear();
}

}  // namespace mhc
