// The planner: every decision about which kernels run, with which launch shapes, for every op
// and backend. The launchers execute a Plan and decide nothing; warmup walks the same function.
//
// CUDA decisions (the kernels: docs/design.md; the measurements: docs/performance.md):
//  * mhc_pre, mhc_fused_post_pre, hc_head. K is split into groups of 32 hidden columns (all n
//    streams). At decode sizes the op is bound by streaming fn and by latency, so SPLIT_K gives
//    about one CTA per two SMs up to T = 64 and one per SM above; the partials are reduced in
//    fixed order by an epilogue kernel chained with programmatic dependent launch. Once
//    upstream's rule needs no split (T > 32 * num_sms; pre at H = 4096 earlier), FULL_K runs one
//    kernel whose CTAs own 32 tokens each and do the whole pipeline. How fn reaches the mma
//    changes with T (staged fragments, the cp.async ring), never the order of the sums.
//  * CLUSTER (sm_90+, hc_head only, n <= 4, not batch-invariant): a cluster of CTAs per token
//    block reads the residual once; at n = 4, H = 4096 / 7168 a persistent kernel walks the
//    token blocks. It runs in the token ranges where it measured faster (cluster_window).
//  * MHC_BATCH_INVARIANT pins one plan for every T (SPLIT_K, 16 splits): a token's reduction
//    tree, and therefore its bits, never depend on the batch it came in.
//  * DeepSeek-V4.1: mhc_stats runs pre's plans without the stream sum; mhc_combine and
//    mhc_post_combine one streaming kernel (a cluster of CTAs per token at small T);
//    mhc_shifted_post_pre, up to kBoundaryTokens, the fused op's SPLIT_K plan with the combine
//    in its epilogue, else the combine kernel (one CTA per token) and then the stats.
//  * mhc_post is one streaming kernel for every T; hc_prenorm_gemm keeps upstream's split count
//    (its launcher runs the caller's num_splits); linear_bf16_fp32 is cuBLAS or the fp32 GEMM.
#include "core/plan.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <map>
#include <mutex>

#include "core/study.h"

namespace mhc {

namespace {
// Split count of batch-invariant plans: enough CTAs for decode sizes on 78-148 SM parts.
constexpr int64_t kInvariantSplits = 16;
// SPLIT_K aims at num_sms / 2 CTAs up to this T: the epilogue reads every split's partials,
// which costs more than the main kernel's extra groups per CTA ("Decode split counts").
constexpr int64_t kDecodeTokens = 64;
// pre / fused read fn as ready mma fragments from this T: whole-sector loads and one hi / lo
// split per call, against one more launch ("Staged fn").
constexpr int64_t kStagedFnTokens = 512;
// The main kernels stream their operands through the cp.async ring from this T; below it the
// ring's latency costs more than the loads it overlaps ("The fn ring").
constexpr int64_t kFnRingTokens = 512;
// The fused op loads its inputs L2 evict_first while residual_out (T n H 2 bytes) stays under
// this size, so the epilogue's second read of it hits L2 ("L2 evict-first inputs").
constexpr int64_t kEvictInputsBytes = int64_t{40} << 20;
// The fused op takes half-stream units up to this T, where the doubled units fit the warps:
// shorter serial post mix and mma per warp, against re-read inputs ("Half units of the fused op").
constexpr int64_t kSplitStreamTokens = kDecodeTokens;
// SPLIT_K epilogue CTAs per SM at most for the fused op's half-unit plans: early-launched
// epilogue CTAs otherwise pile onto the SMs the main kernel leaves free
// ("Epilogue chunks and CTA cap").
constexpr int64_t kEpiCapCtas = 3;
// Buffers of the persistent hc_head kernel: two CTAs per SM fit at H = 4096 with 2, one at 7168
// where 3 and the rotated reduction hide the cluster barrier
// ("Cluster plans and the persistent hc_head").
constexpr int32_t kPersistBuffers4096 = 2;
constexpr int32_t kPersistBuffers7168 = 3;
// mhc_post runs a CTA per token, the next step's loads in flight, from this T: 2-4% faster
// from 4096, slower at 512 ("mhc_post load and store schemes").
constexpr int64_t kPostRowTokens = 4096;
// mhc_shifted_post_pre runs the fused boundary (the fused op's SPLIT_K kernels, the combine in
// its epilogue) up to this T: one chain of two kernels and one read of residual_out against
// three kernels and two reads ("The fused shifted boundary").
constexpr int64_t kBoundaryTokens = 64;
// mhc_combine / mhc_post_combine split a row over a cluster of CTAs up to this T: the row's
// loads spread over several SMs, against two cluster barriers and more CTAs; faster at T <= 8,
// slower at 64 ("The split combine").
constexpr int64_t kCombineSplitTokens = 8;

#ifdef MHC_STUDY
using study::Knob;
constexpr int64_t kKnobDefaults[] = {-1, -1, kStagedFnTokens, kFnRingTokens, kEvictInputsBytes,
                                     0, 0, kPostRowTokens, -1, kBoundaryTokens,
                                     kCombineSplitTokens, 0, 0};
std::atomic<int64_t> g_knobs[] = {{kKnobDefaults[0]}, {kKnobDefaults[1]}, {kKnobDefaults[2]},
                                  {kKnobDefaults[3]}, {kKnobDefaults[4]}, {kKnobDefaults[5]},
                                  {kKnobDefaults[6]}, {kKnobDefaults[7]}, {kKnobDefaults[8]},
                                  {kKnobDefaults[9]}, {kKnobDefaults[10]}, {kKnobDefaults[11]},
                                  {kKnobDefaults[12]}};
static_assert(sizeof(kKnobDefaults) / sizeof(int64_t) == static_cast<int>(Knob::COUNT));
int64_t knob_or(Knob k, int64_t) { return g_knobs[static_cast<int>(k)].load(); }
#define MHC_KNOB(name, fallback) knob_or(Knob::name, fallback)
#else
#define MHC_KNOB(name, fallback) (fallback)
#endif

struct TokenRange {
  int64_t lo, hi;  // empty when lo > hi
};

bool persistent_head(KernelType kind, int64_t hc_mult, int64_t hidden_size) {
  return kind == KernelType::HC_HEAD && hc_mult == 4 &&
         (hidden_size == 4096 || hidden_size == 7168);
}

// Token ranges where hc_head's CLUSTER plan measured faster than SPLIT_K / FULL_K on an H100
// ("Cluster plans and the persistent hc_head"): the persistent kernel from T = 256, the
// one-block kernel at other hidden sizes above 4096 for T = 2048 .. 8191.
TokenRange cluster_window(KernelType kind, int64_t hc_mult, int64_t hidden_size) {
  if (kind != KernelType::HC_HEAD) return {1, 0};
  if (persistent_head(kind, hc_mult, hidden_size)) return {256, std::numeric_limits<int64_t>::max()};
  if (hidden_size > 4096) return {2048, 8191};
  return {1, 0};
}

bool cluster_wanted(KernelType kind, int64_t num_tokens, int64_t hc_mult, int64_t hidden_size) {
  if (kind != KernelType::HC_HEAD) return false;
  const int64_t from = MHC_KNOB(CLUSTER_MIN_TOKENS, -1);
  if (from >= 0) return num_tokens >= from;
  const TokenRange w = cluster_window(kind, hc_mult, hidden_size);
  return num_tokens >= w.lo && num_tokens <= w.hi;
}

int32_t hidden_spec(int64_t hc_mult, int64_t hidden) {
  return hc_mult == 4 && (hidden == 4096 || hidden == 7168) ? static_cast<int32_t>(hidden) : 0;
}
// The stats kernels are specialised for DeepSeek-V4.1's width too.
int32_t stats_hidden_spec(int64_t hc_mult, int64_t hidden) {
  return hc_mult == 4 && hidden == 5120 ? 5120 : hidden_spec(hc_mult, hidden);
}

// pre / head SPLIT_K up to T = 64 (n <= 4) take 32-token blocks, each with one block's split
// count, so that T = 33 .. 64 fills the SMs and a CTA carries half the activations
// ("32-token decode blocks"). Never under batch invariance (one plan for every T), and not
// with the ring, which has no 32-token instance.
bool small_blocks(KernelType kind, int64_t num_tokens, int64_t hc_mult, bool full_k,
                  bool batch_invariant) {
  return (pre_like(kind) || kind == KernelType::HC_HEAD) && hc_mult <= 4 &&
         !full_k && !batch_invariant && num_tokens <= kDecodeTokens &&
         num_tokens < MHC_KNOB(FN_RING_MIN_TOKENS, kFnRingTokens);
}

// mhc_pre at H = 4096 (n = 4) runs FULL_K once its 32-token CTAs cover 8 / 11 of the SMs, below
// upstream's switch; at H = 7168 and for the fused op that lost ("FULL_K at H = 4096").
bool pre_full_k_early(KernelType kind, int64_t num_tokens, int64_t hc_mult, int64_t hidden_size,
                      int64_t num_sms) {
  return pre_like(kind) && hidden_spec(hc_mult, hidden_size) == 4096 &&
         ceil_div(num_tokens, 2 * kTileTokens) * 11 >= num_sms * 8;
}

// `want` splits of `groups` K groups, rounded so every split gets the same number of groups.
int64_t even_splits(int64_t groups, int64_t want) {
  want = std::max<int64_t>(1, std::min(want, groups));
  return ceil_div(groups, ceil_div(groups, want));
}

// SPLIT_K epilogue chunks of H per token: ~2 vectors of 8 columns per stream thread for pre /
// fused, 1 for head, and at decode sizes as many as give about two CTAs per SM in all
// (2 num_sms / T, rounded to the nearest); one with the folded norm, which needs the whole row
// in one CTA ("Epilogue chunks and CTA cap").
int64_t epilogue_chunks(Mode mode, int64_t num_tokens, int64_t hidden_size, int64_t num_sms,
                        bool norm) {
  if (norm) return 1;
  const int64_t h8 = hidden_size / 8;
  const int64_t max_chunks = std::max<int64_t>(1, h8 / kEpiThreads);
  const int64_t per_chunk = (mode == Mode::HEAD ? 1 : 2) * kEpiThreads;
  const int64_t want = std::max(ceil_div(h8, per_chunk), (2 * num_sms + num_tokens / 2) / num_tokens);
  const int64_t forced = MHC_KNOB(EPILOGUE_CHUNKS, 0);
  return std::min(max_chunks, forced > 0 ? forced : want);
}

Plan base_plan(KernelType kind, int32_t n, bool norm) {
  Plan p{};
  p.kind = kind;
  p.variant = Variant::CPU;
  p.num_splits = 1;
  p.hc_mult = n;
  p.norm = norm;
  return p;
}

Plan plan_hc(KernelType kind, int64_t num_tokens, int64_t hc_mult, int64_t hidden_size,
             int64_t num_sms, const PlanOptions& opt, Plan p) {
  const Mode mode = mode_of(kind);
  const bool fused = mode == Mode::FUSED;
  const int64_t k = hc_mult * hidden_size;
  const int64_t groups = ceil_div(hidden_size, kGroupCols);
  if (opt.clusters && !opt.batch_invariant && !p.norm &&
      cluster_wanted(kind, num_tokens, hc_mult, hidden_size)) {
    const ClusterShape cs = head_cluster_shape(hc_mult, hidden_size);
    if (cs.size > 0) {
      p.variant = Variant::CLUSTER;
      p.num_splits = cs.size;
      p.block_tokens = cs.block_tokens;
      if (persistent_head(kind, hc_mult, hidden_size)) {  // specialised for its width
        p.hidden_spec = static_cast<int32_t>(hidden_size);
        p.cluster_buffers = hidden_size == 4096 ? kPersistBuffers4096 : kPersistBuffers7168;
        p.cluster_rotated = hidden_size == 7168;
      } else {
        p.hidden_spec = 0;
      }
      return p;
    }
  }
  const int64_t full_k_from = MHC_KNOB(FULL_K_MIN_TOKENS, -1);
  const bool full_k = !opt.batch_invariant &&
                      (full_k_from >= 0 ? num_tokens >= full_k_from
                                        : upstream_num_splits(num_tokens, k, num_sms) == 1 ||
                                              pre_full_k_early(kind, num_tokens, hc_mult,
                                                               hidden_size, num_sms));
  const bool small = small_blocks(kind, num_tokens, hc_mult, full_k, opt.batch_invariant);
  const int32_t block = kTileTokens * tiles_per_block(static_cast<int>(hc_mult), mode, full_k, small);
  int64_t splits = 1;
  if (opt.batch_invariant) {
    splits = even_splits(groups, kInvariantSplits);
  } else if (!full_k) {
    const int64_t blocks = ceil_div(num_tokens, block);
    const int64_t target = MHC_KNOB(SPLIT_TARGET_CTAS, -1);
    const int64_t ctas = target >= 0                    ? target
                         : num_tokens <= kDecodeTokens ? num_sms / 2 * (small ? blocks : 1)
                                                       : num_sms;
    splits = even_splits(groups, std::max<int64_t>(2, ctas / blocks));
    // The fused op with two token blocks (T = 33 .. 64): where that count leaves a split more
    // groups than its warps can take as half units, more splits, so that they fit, while the
    // CTAs stay within one wave ("Half units of the fused op").
    if (fused && target < 0 && hc_mult % 2 == 0 && blocks > 1 &&
        num_tokens <= kSplitStreamTokens && 2 * ceil_div(groups, splits) > kMainWarps) {
      const int64_t fit = even_splits(groups, ceil_div(groups, kMainWarps / 2));
      if (2 * ceil_div(groups, fit) <= kMainWarps && fit * blocks <= num_sms) splits = fit;
    }
  }
  p.variant = full_k ? Variant::FULL_K : Variant::SPLIT_K;
  p.num_splits = static_cast<int32_t>(splits);
  p.block_tokens = block;
  p.staged_fn = !(mode == Mode::HEAD) && num_tokens >= MHC_KNOB(STAGED_FN_MIN_TOKENS, kStagedFnTokens);
  // Not under batch invariance: the units set the order in which a token's sums are added.
  p.split_streams = fused && !full_k && !opt.batch_invariant && hc_mult % 2 == 0 &&
                    num_tokens <= kSplitStreamTokens && 2 * ceil_div(groups, splits) <= kMainWarps;
  // The fused op's half units read from global memory (decode sizes): no ring with them.
  p.fn_ring = num_tokens >= MHC_KNOB(FN_RING_MIN_TOKENS, kFnRingTokens) && !p.split_streams;
  p.evict_inputs = fused && p.fn_ring &&
                   num_tokens * hc_mult * hidden_size * 2 <= MHC_KNOB(EVICT_INPUTS_MAX_BYTES,
                                                                      kEvictInputsBytes);
  if (full_k) {
    p.main_warps = kMainWarps;
    return p;
  }
  // Work units of a split: (group, stream) for pre / head, whole groups or (group, half of the
  // streams) for the fused op; no CTA gets more warps than units.
  const int64_t units = ceil_div(groups, splits) * (fused ? (p.split_streams ? 2 : 1) : hc_mult);
  p.main_warps = static_cast<int32_t>(std::min<int64_t>(kMainWarps, units));
  // The stats epilogue writes the gates only: one CTA per token.
  p.epilogue_chunks =
      kind == KernelType::MHC_PRE || kind == KernelType::HC_HEAD || fused
          ? static_cast<int32_t>(epilogue_chunks(mode, num_tokens, hidden_size, num_sms, p.norm))
          : 1;
  const int64_t cap = MHC_KNOB(EPILOGUE_CTAS_PER_SM, 0);
  p.epilogue_ctas_per_sm = static_cast<int32_t>(cap > 0 ? cap : cap < 0 ? 0
                                                : p.split_streams ? kEpiCapCtas : 0);
  return p;
}
}  // namespace

#ifdef MHC_STUDY
namespace study {
const char* knob_name(Knob k) {
  switch (k) {
    case Knob::SPLIT_TARGET_CTAS: return "split_target_ctas";
    case Knob::CLUSTER_MIN_TOKENS: return "cluster_min_tokens";
    case Knob::STAGED_FN_MIN_TOKENS: return "staged_fn_min_tokens";
    case Knob::FN_RING_MIN_TOKENS: return "fn_ring_min_tokens";
    case Knob::EVICT_INPUTS_MAX_BYTES: return "evict_inputs_max_bytes";
    case Knob::EPILOGUE_CHUNKS: return "epilogue_chunks";
    case Knob::EPILOGUE_CTAS_PER_SM: return "epilogue_ctas_per_sm";
    case Knob::POST_ROW_MIN_TOKENS: return "post_row_min_tokens";
    case Knob::FULL_K_MIN_TOKENS: return "full_k_min_tokens";
    case Knob::BOUNDARY_MAX_TOKENS: return "boundary_max_tokens";
    case Knob::COMBINE_SPLIT_MAX_TOKENS: return "combine_split_max_tokens";
    case Knob::CHUNK_TOKENS: return "chunk_tokens";
    case Knob::PIPE_TOKENS: return "pipe_tokens";
    case Knob::COUNT: break;
  }
  return "?";
}
int64_t knob(Knob k) { return g_knobs[static_cast<int>(k)].load(); }
int64_t set_knob(Knob k, int64_t value) { return g_knobs[static_cast<int>(k)].exchange(value); }
}  // namespace study
#endif

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
  // The folded RMSNorm of layer_input (mhc_stats has no layer_input).
  const bool norm = opt.norm && kind != KernelType::MHC_STATS &&
                    (mode_of(kind) != Mode::HEAD || combine_kind(kind));
  // The GEMMs see only K (prenorm) or nothing of the streams (linear): their plans carry no n.
  const bool gemm = kind == KernelType::PRENORM_GEMM || kind == KernelType::LINEAR_BF16_FP32;
  Plan p = base_plan(kind, gemm ? 0 : static_cast<int32_t>(hc_mult), norm);
  if (num_sms <= 0) return p;  // one CPU kernel per op, whatever T is
  switch (kind) {
    case KernelType::MHC_POST:
      p.variant = Variant::STREAM;
      p.hidden_spec = hidden_spec(hc_mult, hidden_size);
      // a CTA per token walking H (n <= 4, where it is measured) or H / 1024 CTAs per token;
      // the same arithmetic per element, so batch-invariant plans may take either
      p.block_tokens = hc_mult <= 4 && num_tokens >= MHC_KNOB(POST_ROW_MIN_TOKENS, kPostRowTokens)
                           ? 1 : 0;
      return p;
    case KernelType::LINEAR_BF16_FP32:
      p.variant = opt.fp32_gemm ? Variant::FP32_GEMM : Variant::CUBLAS;
      return p;
    case KernelType::PRENORM_GEMM:
      p.variant = Variant::SPLIT_K;
      p.num_splits = static_cast<int32_t>(upstream_num_splits(num_tokens, hc_mult * hidden_size,
                                                              num_sms));
      p.block_tokens = kPrenormRows;
      return p;
    case KernelType::MHC_PRE:
    case KernelType::MHC_FUSED_POST_PRE:
    case KernelType::HC_HEAD:
      p.hidden_spec = hidden_spec(hc_mult, hidden_size);
      return plan_hc(kind, num_tokens, hc_mult, hidden_size, num_sms, opt, p);
    case KernelType::MHC_COMBINE:
    case KernelType::MHC_POST_COMBINE:
      p.variant = Variant::STREAM;
      // At small T a row over combine_split_ctas(H) CTAs, with the norm a cluster (sm_90+).
      // The same arithmetic and norm order either way, so batch-invariant plans may split.
      if ((opt.clusters || !norm) &&
          num_tokens <= MHC_KNOB(COMBINE_SPLIT_MAX_TOKENS, kCombineSplitTokens))
        p.num_splits = combine_split_ctas(hidden_size);
      return p;
    case KernelType::MHC_SHIFTED_POST_PRE:
      // The fused boundary where the fused op's plan is SPLIT_K: its main kernel (generic in H)
      // and an epilogue that also combines with the carried pre. Not under batch invariance,
      // where the next gates must be mhc_stats' bits.
      if (!opt.batch_invariant && num_tokens <= MHC_KNOB(BOUNDARY_MAX_TOKENS, kBoundaryTokens)) {
        Plan f = plan_hc(KernelType::MHC_FUSED_POST_PRE, num_tokens, hc_mult, hidden_size,
                         num_sms, opt, base_plan(KernelType::MHC_FUSED_POST_PRE,
                                                 static_cast<int32_t>(hc_mult), norm));
        if (f.variant == Variant::SPLIT_K) {
          f.kind = kind;
          f.hidden_spec = 0;
          f.fused_boundary = true;
          return f;
        }
      }
      // otherwise mhc_post_combine's kernel, then the stats of this plan (launches_of)
      [[fallthrough]];
    case KernelType::MHC_STATS:
      p.hidden_spec = stats_hidden_spec(hc_mult, hidden_size);
      return plan_hc(kind, num_tokens, hc_mult, hidden_size, num_sms, opt, p);
  }
  return p;
}

Plan shifted_combine_plan(const Plan& shifted) {
  Plan p = base_plan(KernelType::MHC_POST_COMBINE, shifted.hc_mult, shifted.norm);
  p.variant = Variant::STREAM;
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
