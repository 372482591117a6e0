// The one planner (docs/spec.md §4). Every launcher asks plan_of() which kernels to run with
// which launch shapes, executes that Plan without deciding anything again, and records it
// (plan_registry); mhc_ops.plan exposes the same function to Python, so warmup's representative
// token counts come from the code that launches. Sizes shared with the kernels: core/geometry.h.
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "core/geometry.h"

namespace mhc {

enum class KernelType : int32_t {
  PRENORM_GEMM = 0,
  MHC_PRE = 1,
  MHC_POST = 2,
  MHC_FUSED_POST_PRE = 3,
  HC_HEAD = 4,
  LINEAR_BF16_FP32 = 5,
  MHC_STATS = 6,             // DeepSeek-V4.1 (docs/spec.md §2.9)
  MHC_COMBINE = 7,
  MHC_POST_COMBINE = 8,
  MHC_SHIFTED_POST_PRE = 9,
};

// Kernel family a plan runs.
enum class Variant : int32_t {
  CPU = 0,          // the CPU kernels (num_sms == 0)
  SPLIT_K = 1,      // K split over CTAs, partials reduced in fixed order by an epilogue kernel
  FULL_K = 2,       // one kernel; each CTA owns whole tokens: no split, no partials
  STREAM = 3,       // streaming kernel (mhc_post, mhc_combine, mhc_post_combine)
  CUBLAS = 4,       // linear_bf16_fp32 through cuBLAS
  FP32_GEMM = 5,    // linear_bf16_fp32 upcast + fp32 GEMM
  CLUSTER = 6,      // hc_head: a thread-block cluster owns a token block, each CTA a K slice
                    // held in shared memory, so the residual is read from HBM once (sm_90+)
};
const char* variant_name(Variant v);

// The ops that run the pre engine's gates: mhc_pre, and mhc_stats on its own or at the end of
// mhc_shifted_post_pre (the same kernels without the stream sum).
constexpr bool pre_like(KernelType kind) {
  return kind == KernelType::MHC_PRE || kind == KernelType::MHC_STATS ||
         kind == KernelType::MHC_SHIFTED_POST_PRE;
}
// mhc_combine / mhc_post_combine: one streaming kernel (cuda/hc_combine.cuh).
constexpr bool combine_kind(KernelType kind) {
  return kind == KernelType::MHC_COMBINE || kind == KernelType::MHC_POST_COMBINE;
}

// The kernels' Mode of the ops that share them (HEAD for any other kind).
constexpr Mode mode_of(KernelType kind) {
  return pre_like(kind)                           ? Mode::PRE
         : kind == KernelType::MHC_FUSED_POST_PRE ? Mode::FUSED
                                                  : Mode::HEAD;
}

struct Plan {
  KernelType kind;
  Variant variant;
  int32_t num_splits;    // K splits (SPLIT_K), CTAs per cluster (CLUSTER), CTAs per token of
                         // the split combine (STREAM, mhc_combine / mhc_post_combine); 1 otherwise
  int32_t block_tokens;  // tokens per CTA or cluster (0 when it does not apply)
  int32_t hc_mult;
  int32_t hidden_spec;   // hidden size the kernel is specialised for, 0 for the generic kernel
  bool norm;             // folded RMSNorm (docs/spec.md §2.1 step 9)
  bool staged_fn;        // pre / fused: fn is split into its mma fragments by a first kernel
  bool split_streams;    // fused SPLIT_K, even n: a work unit is a K group with half of its
                         // output streams instead of all (decode sizes)
  bool fn_ring;          // main kernel's cp.async ring: pre / head stream fn through it with
                         // the activations, the fused op x and the input streams
  bool evict_inputs;     // fused op with the ring while residual_out fits in L2: its inputs
                         // are loaded L2 evict_first, so residual_out stays for the second read
  int32_t main_warps;    // SPLIT_K / FULL_K: warps of a main-kernel CTA
  int32_t epilogue_chunks;       // SPLIT_K: epilogue CTAs per token (chunks of H)
  int32_t epilogue_ctas_per_sm;  // SPLIT_K: epilogue CTAs per SM at most, 0 for no cap
  int32_t cluster_buffers;  // CLUSTER: activation buffers of the persistent hc_head kernel, 0
                            // for the one-block-per-cluster kernel
  bool cluster_rotated;     // CLUSTER, persistent: reducers run the next block's mma between
                            // arriving at a block's cluster barrier and waiting on it
  bool fused_boundary;      // mhc_shifted_post_pre, SPLIT_K: the fused op's main kernel writes
                            // residual_out and the stats' partials; the epilogue writes the next
                            // gates and combines residual_out with the carried pre (no combine
                            // kernel, residual_out read once more instead of twice)

  auto key() const {
    return std::make_tuple(static_cast<int32_t>(kind), static_cast<int32_t>(variant), num_splits,
                           block_tokens, hc_mult, hidden_spec, norm, staged_fn, split_streams,
                           fn_ring, evict_inputs, main_warps, epilogue_chunks,
                           epilogue_ctas_per_sm, cluster_buffers, cluster_rotated,
                           fused_boundary);
  }
  bool operator==(const Plan& o) const { return key() == o.key(); }
  bool operator<(const Plan& o) const { return key() < o.key(); }
};

// The Mode of a plan's main kernel and epilogue: its kind's (mode_of), except the fused
// shifted boundary, which runs the fused op's kernels.
constexpr Mode plan_mode(const Plan& p) { return p.fused_boundary ? Mode::FUSED : mode_of(p.kind); }

struct PlanOptions {
  bool norm = false;
  bool batch_invariant = false;
  // linear_bf16_fp32 only: true for the fp32 backend (MHC_BF16_FP32_GEMM_ALGO=fp32).
  bool fp32_gemm = false;
  // The device runs thread-block clusters with distributed shared memory (sm_90+).
  bool clusters = false;
};

// Upstream's split rule, kept for callers that size DeepGEMM-style partial buffers:
// max(1, min(sms / ceil(T / 64), ceil(K / 64) / 4)).
int64_t upstream_num_splits(int64_t num_tokens, int64_t k, int64_t num_sms);

// The plan the launcher of `kind` uses for T tokens. num_sms == 0 means the CPU backend.
Plan plan_of(KernelType kind, int64_t num_tokens, int64_t hc_mult, int64_t hidden_size,
             int64_t num_sms, const PlanOptions& opt);

// The combine kernel's plan of a shifted boundary plan outside the fused form (its first
// launch in launches_of): mhc_post_combine's kernel, one CTA per token.
Plan shifted_combine_plan(const Plan& shifted);

// For each distinct plan over T in 1..max_tokens, the largest T with that plan, sorted.
std::vector<int64_t> token_count_representatives(KernelType kind, int64_t max_tokens,
                                                 int64_t hc_mult, int64_t hidden_size,
                                                 int64_t num_sms, const PlanOptions& opt);

// ---- what a plan launches (cuda/hc_launch.cuh, mhc_post.cu, hc_prenorm_gemm.cu execute it) ----

enum class KernelRole : int32_t {
  STAGE_FN = 0,      // fn into mma fragments (cuda/hc_stage_fn.cuh)
  MAIN = 1,          // pre / head or fused main kernel (cuda/hc_main_prehead.cuh, _fused.cuh)
  EPILOGUE = 2,      // SPLIT_K epilogue (cuda/hc_epilogue.cuh)
  CLUSTER = 3,       // one-block-per-cluster hc_head (cuda/hc_cluster.cuh)
  HEAD_PERSIST = 4,  // persistent hc_head (cuda/hc_head_persistent.cuh)
  POST = 5,          // mhc_post (cuda/mhc_post.cu)
  PRENORM = 6,       // prenorm GEMM (cuda/hc_prenorm_gemm.cu)
  COMBINE = 7,       // mhc_combine / mhc_post_combine (cuda/hc_combine.cuh)
};

// One kernel launch: grid, block (threads), dynamic shared memory, cluster size (0: none). The
// grid of the persistent hc_head kernel is min(token blocks, DeviceLimits::resident_clusters)
// clusters of `cluster` CTAs.
struct Launch {
  KernelRole role;
  int64_t grid_x;
  int64_t grid_y;
  int32_t block;
  int64_t smem;
  int32_t cluster;
};
struct Launches {
  Launch step[4];
  int count = 0;
};
// Device limits that launch shapes depend on besides the plan (cudaDeviceProp; defaults: sm_90).
struct DeviceLimits {
  int64_t smem_per_sm = 233472;            // sharedMemPerMultiprocessor
  int64_t smem_reserved_per_block = 1024;  // reservedSharedMemPerBlock
  int64_t smem_optin_per_block = 232448;   // sharedMemPerBlockOptin
  int64_t resident_clusters = 1;           // persistent hc_head clusters that fit at once
};
// The launches of `plan` at T tokens, n, H, in launch order; for the prenorm GEMM M rows, N fn
// rows as hc_mult and K as hidden_size; none for the CPU, cuBLAS and fp32 GEMM plans.
Launches launches_of(const Plan& plan, int64_t num_tokens, int64_t hc_mult, int64_t hidden_size,
                     const DeviceLimits& limits);
// The template instance of a plan's main kernel (cuda/hc_launch.cuh dispatches on it): whole K,
// the folded norm in the kernel (FULL_K pre / fused), the specialised width, half units, the
// cp.async ring, the 32-token blocks, and the 16-token tiles per CTA.
struct MainInstance {
  bool full_k, norm, half, ring, small;
  int hs, tt;
};
MainInstance main_instance(const Plan& plan);

// The kernel of one launch as text, its role and template arguments, e.g.
// "main<4,PRE,0,0,0,0,0,1>" (tests and tools; vector-load variants print as aligned), for the
// same hc_mult (fn rows for the prenorm GEMM) as launches_of.
std::string kernel_name(const Plan& plan, const Launch& launch, int64_t hc_mult);

// ---- registry of launched plans (warmup coverage, docs/spec.md §6) ----

// Records that `plan` was launched on device `device` (-1 for the CPU). Cheap when the plan
// was seen before.
void record_plan(int device, const Plan& plan);

struct PlanRecord {
  int device;
  Plan plan;
  uint64_t first_seen;  // value of the launch sequence when the plan was first recorded
};
std::vector<PlanRecord> launched_plans();
// Sequence number of the next first-seen plan; plans recorded later have first_seen >= it.
uint64_t plan_sequence();
void clear_launched_plans();

}  // namespace mhc
