// The planner: every decision about which kernel variant runs, for every op and backend.
//
// CUDA decisions, and why:
//  * mhc_pre, mhc_fused_post_pre, hc_head, hc_prenorm_gemm: at decode sizes the op is bound by
//    streaming fn (1.5-2.75 MB) and by latency, so K is split over enough CTAs to put every SM
//    to work (upstream's rule); once T alone fills the GPU (one split), a single-pass kernel
//    that owns whole tokens reads the residual once and needs no partial buffer.
//  * MHC_BATCH_INVARIANT pins one split count for every T, so a token's reduction tree, and
//    therefore its bits, never depend on the batch it came in.
//  * mhc_post is one streaming kernel for every T.
#include "core/plan.h"

#include <algorithm>
#include <map>
#include <mutex>

namespace mhc {

namespace {
constexpr int32_t kBlockTokens = 64;
// Split count of batch-invariant plans: enough CTAs for decode sizes on 78-148 SM parts.
constexpr int64_t kInvariantSplits = 16;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int32_t hidden_spec(int64_t hc_mult, int64_t hidden) {
  return hc_mult == 4 && (hidden == 4096 || hidden == 7168) ? static_cast<int32_t>(hidden) : 0;
}
}  // namespace

const char* kernel_type_name(KernelType k) {
  switch (k) {
    case KernelType::PRENORM_GEMM: return "PRENORM_GEMM";
    case KernelType::MHC_PRE: return "MHC_PRE";
    case KernelType::MHC_POST: return "MHC_POST";
    case KernelType::MHC_FUSED_POST_PRE: return "MHC_FUSED_POST_PRE";
    case KernelType::HC_HEAD: return "HC_HEAD";
    case KernelType::LINEAR_BF16_FP32: return "LINEAR_BF16_FP32";
  }
  return "?";
}

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::CPU: return "cpu";
    case Variant::SPLIT_K: return "split_k";
    case Variant::FULL_K: return "full_k";
    case Variant::STREAM: return "stream";
    case Variant::CUBLAS: return "cublas";
    case Variant::FP32_GEMM: return "fp32_gemm";
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
  Plan p{kind, Variant::CPU, 1, 0, n, 0, norm};
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
    case KernelType::PRENORM_GEMM:
    case KernelType::MHC_PRE:
    case KernelType::MHC_FUSED_POST_PRE:
    case KernelType::HC_HEAD: {
      const int64_t k = hc_mult * hidden_size;
      const int64_t splits =
          opt.batch_invariant ? std::min(kInvariantSplits, ceil_div(k, 64))
                              : upstream_num_splits(num_tokens, k, num_sms);
      p.block_tokens = kBlockTokens;
      p.num_splits = static_cast<int32_t>(splits);
      p.variant = splits > 1 || opt.batch_invariant || kind == KernelType::PRENORM_GEMM
                      ? Variant::SPLIT_K
                      : Variant::FULL_K;
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
