// The one planner (SPEC §4). Every launcher asks plan_of() which kernels to run and with what
// split, and records what it launched (plan_registry); mhc_ops.plan exposes the same function
// to Python, so warmup's representative token counts come from the code that launches.
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace mhc {

enum class KernelType : int32_t {
  PRENORM_GEMM = 0,
  MHC_PRE = 1,
  MHC_POST = 2,
  MHC_FUSED_POST_PRE = 3,
  HC_HEAD = 4,
  LINEAR_BF16_FP32 = 5,
};

// Kernel family a plan runs.
enum class Variant : int32_t {
  CPU = 0,          // the CPU kernels (num_sms == 0)
  SPLIT_K = 1,      // K split over CTAs, partials reduced in fixed order by an epilogue kernel
  FULL_K = 2,       // one kernel; each CTA owns whole tokens: no split, no partials
  STREAM = 3,       // elementwise streaming kernel (mhc_post)
  CUBLAS = 4,       // linear_bf16_fp32 through cuBLAS
  FP32_GEMM = 5,    // linear_bf16_fp32 upcast + fp32 GEMM
  CLUSTER = 6,      // one kernel; a thread-block cluster owns a token block, each CTA a K slice
                    // held in shared memory: the residual is read from HBM once (sm_90+)
};
const char* variant_name(Variant v);

struct Plan {
  KernelType kind;
  Variant variant;
  int32_t num_splits;    // K splits; 1 when the variant does not split
  int32_t block_tokens;  // tokens per CTA (0 when it does not apply)
  int32_t hc_mult;
  int32_t hidden_spec;   // hidden size the kernel is specialised for, 0 for the generic kernel
  bool norm;             // folded RMSNorm of SPEC §2.1 step 9
  bool staged_fn;        // pre / fused SPLIT_K / FULL_K: fn is split into its mma fragments by
                         // a small kernel first (csrc/cuda/hc_main.cuh, hc_stage_fn_kernel)
  bool split_streams;    // fused SPLIT_K, even n: a main-kernel work unit is a K group with
                         // half of its output streams instead of all (decode sizes)
  bool fn_ring;          // SPLIT_K / FULL_K at prefill sizes, the main kernel's cp.async ring:
                         // pre / head stream fn through it with the activations (not one unit
                         // ahead in registers), the fused op x and the input streams (not
                         // plain loads)
  bool evict_inputs;     // fused op with the ring, while its residual_out fits in L2 (plan.cpp,
                         // kEvictInputsBytes): the ring loads x and the input streams (read
                         // once) with L2 evict_first, so that residual_out stays in L2 for the
                         // stream sum's second read

  auto key() const {
    return std::make_tuple(static_cast<int32_t>(kind), static_cast<int32_t>(variant), num_splits,
                           block_tokens, hc_mult, hidden_spec, norm, staged_fn, split_streams,
                           fn_ring, evict_inputs);
  }
  bool operator==(const Plan& o) const { return key() == o.key(); }
  bool operator<(const Plan& o) const { return key() < o.key(); }
};

struct PlanOptions {
  bool norm = false;
  bool batch_invariant = false;
  // linear_bf16_fp32 only: true for the fp32 backend (MHC_BF16_FP32_GEMM_ALGO=fp32).
  bool fp32_gemm = false;
  // The device runs thread-block clusters with distributed shared memory (sm_90+).
  bool clusters = false;
};

// Geometry of a CLUSTER plan (csrc/cuda/hc_cluster.cuh): `size` CTAs per cluster, each owning
// `groups` K groups of 32 hidden columns (all streams) of `block_tokens` tokens, and the
// dynamic shared memory one CTA needs. One function, used by the planner and the launcher.
struct ClusterShape {
  int32_t size = 0;          // CTAs per cluster (0: the op cannot run as a cluster plan)
  int32_t groups = 0;        // K groups per CTA
  int32_t block_tokens = 0;  // tokens per cluster
  int64_t smem_bytes = 0;    // dynamic shared memory per CTA
};
ClusterShape cluster_shape(KernelType kind, int64_t hc_mult, int64_t hidden_size);
// Whether a CLUSTER plan of `kind` runs the persistent kernel (hc_head, n = 4, H = 4096 / 7168;
// csrc/cuda/hc_cluster.cuh), which is specialised for its hidden size (Plan::hidden_spec).
bool persistent_head_cluster(KernelType kind, int64_t hc_mult, int64_t hidden_size);

// SPLIT_K plans aim at this many CTAs (token blocks x splits); below 0 (the default) the
// planner's choice: half the SMs up to T = 64, all of them above. For split-count studies
// (benchmarks); returns the previous value.
int64_t split_target_ctas();
int64_t set_split_target_ctas(int64_t ctas);

// Where CLUSTER plans run: by default (a value below 0) in the token ranges where they measured
// faster (plan.cpp, cluster_window); set_cluster_min_tokens(t >= 0) makes every T >= t run one,
// for tests and crossover benchmarks (INT64_MAX: never). Returns the previous value. The
// planner, the launchers and warmup all read the same value.
int64_t cluster_min_tokens();
int64_t set_cluster_min_tokens(int64_t t);

// From which T the SPLIT_K / FULL_K plans of pre / fused stage fn (Plan::staged_fn).
// For studies (benchmarks) and tests; INT64_MAX: never. Returns the previous value.
int64_t staged_fn_min_tokens();
int64_t set_staged_fn_min_tokens(int64_t t);

// From which T the SPLIT_K / FULL_K plans of pre / head / fused use the main kernel's ring
// (Plan::fn_ring). For studies (benchmarks) and tests; INT64_MAX: never. Returns the
// previous value.
int64_t fn_ring_min_tokens();
int64_t set_fn_ring_min_tokens(int64_t t);

// Up to how many bytes of residual_out (T * n * H * 2) the fused op's ring loads its inputs with
// L2 evict_first (Plan::evict_inputs). For studies (benchmarks) and tests; -1: never. Returns
// the previous value.
int64_t evict_inputs_max_bytes();
int64_t set_evict_inputs_max_bytes(int64_t bytes);

// Benchmarks only: chunks of H per token for the SPLIT_K epilogue without the folded norm
// (0, the default: the launcher's rule, csrc/cuda/hc_main.cuh; k > 0: min(k, H / 1024)).
// Returns the previous value.
int64_t epilogue_chunks();
int64_t set_epilogue_chunks(int64_t chunks);

// Studies and tests only: at most this many SPLIT_K epilogue CTAs per SM, through their dynamic
// shared memory, for every op and T (0, the default: the launcher's rule, 3 for the fused op's
// plans with half units, Plan::split_streams, csrc/cuda/hc_main.cuh; -1: no cap).
// Returns the previous value.
int64_t epilogue_ctas_per_sm();
int64_t set_epilogue_ctas_per_sm(int64_t ctas);

// Studies and tests only: shared-memory buffers of the persistent hc_head CLUSTER kernel (n = 4,
// H = 4096 / 7168; csrc/cuda/hc_cluster.cuh): 0, the default, the launcher's (2 at H = 4096, 3
// at 7168); 2 or 3; 1: the one-block-per-cluster kernel instead. Returns the previous value.
int64_t cluster_buffers();
int64_t set_cluster_buffers(int64_t buffers);

// Upstream's split rule, kept for callers that size DeepGEMM-style partial buffers:
// max(1, min(sms / ceil(T / 64), ceil(K / 64) / 4)).
int64_t upstream_num_splits(int64_t num_tokens, int64_t k, int64_t num_sms);

// The plan the launcher of `kind` uses for T tokens. num_sms == 0 means the CPU backend.
Plan plan_of(KernelType kind, int64_t num_tokens, int64_t hc_mult, int64_t hidden_size,
             int64_t num_sms, const PlanOptions& opt);

// For each distinct plan over T in 1..max_tokens, the largest T with that plan, sorted.
std::vector<int64_t> token_count_representatives(KernelType kind, int64_t max_tokens,
                                                 int64_t hc_mult, int64_t hidden_size,
                                                 int64_t num_sms, const PlanOptions& opt);

// ---- registry of launched plans (warmup coverage, SPEC §6) ----

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
