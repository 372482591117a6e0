// What a Plan launches: every kernel with its grid, block, dynamic shared memory and cluster
// size, computed from the plan and the shared geometry (core/geometry.h) alone. The CUDA
// launchers (cuda/hc_launch.cuh, mhc_post.cu, hc_prenorm_gemm.cu) take their launch shapes from
// here, and tests/test_launch_table.py holds them against the recorded table, so a change of
// launch shape is always a visible change of this file.
#include <algorithm>
#include <cstdio>
#include <string>

#include "core/plan.h"

namespace mhc {

namespace {
// Whether the pre engine's stream sum folds the RMSNorm: mhc_pre and the fused op. (mhc_stats
// has no stream sum; the norm of mhc_shifted_post_pre belongs to its combine kernel, or in the
// fused boundary to the epilogue's combine, in norm_tree.cuh's order.)
bool stream_sum_norm(const Plan& p) {
  return p.norm && (p.kind == KernelType::MHC_PRE || p.kind == KernelType::MHC_FUSED_POST_PRE);
}
// The combine kernel's dynamic shared memory: the group sums of the folded norm
// (cuda/norm_tree.cuh), one float per 32 columns.
int64_t combine_smem(const Plan& p, int64_t H) { return p.norm ? 4 * ceil_div(H, kGroupCols) : 0; }
}  // namespace

MainInstance main_instance(const Plan& p) {
  const Mode mode = plan_mode(p);
  const int n = p.hc_mult;
  MainInstance m{};
  m.full_k = p.variant == Variant::FULL_K;
  m.norm = m.full_k && stream_sum_norm(p);
  m.hs = m.full_k ? p.hidden_spec : 0;
  m.half = p.split_streams;
  m.ring = !m.half && p.fn_ring;
  m.small = !m.half && !m.ring && mode != Mode::FUSED && !m.full_k && n <= 4 &&
            p.block_tokens == kTileTokens * tiles_per_block(n, mode, false, true);
  m.tt = tiles_per_block(n, mode, m.full_k, m.small);
  return m;
}

Launches launches_of(const Plan& p, int64_t T, int64_t n, int64_t H, const DeviceLimits& dev) {
  Launches out;
  const auto add = [&](KernelRole role, int64_t gx, int64_t gy, int32_t block, int64_t smem,
                       int32_t cluster) { out.step[out.count++] = {role, gx, gy, block, smem, cluster}; };
  switch (p.variant) {
    case Variant::CPU:
    case Variant::CUBLAS:
    case Variant::FP32_GEMM:
      return out;
    case Variant::STREAM:
      if (combine_kind(p.kind) && p.num_splits > 1)  // the split combine
        add(KernelRole::COMBINE, T * p.num_splits, 1, combine_split_threads(H),
            combine_smem(p, H), p.norm ? p.num_splits : 0);
      else if (combine_kind(p.kind))
        add(KernelRole::COMBINE, T, 1, combine_threads(H), combine_smem(p, H), 0);
      else if (p.block_tokens == 1) add(KernelRole::POST, T, 1, kPostRowThreads, 0, 0);
      else add(KernelRole::POST, T, ceil_div(H / 8, kPostThreads), kPostThreads, 0, 0);
      return out;
    default:
      break;
  }
  // The shifted boundary outside the fused form: mhc_post_combine's kernel, then the stats.
  if (p.kind == KernelType::MHC_SHIFTED_POST_PRE && !p.fused_boundary)
    add(KernelRole::COMBINE, T, 1, combine_threads(H), combine_smem(p, H), 0);
  if (p.kind == KernelType::PRENORM_GEMM) {  // n: fn rows, H: K
    const int64_t nt = ceil_div(n, 8);
    add(KernelRole::PRENORM, ceil_div(T, kPrenormRows), p.num_splits, 32 * kPrenormWarps,
        kPrenormWarps * kPrenormRows * (8 + 4 * 8 * nt), 0);
    return out;
  }
  const Mode mode = plan_mode(p);
  const int ni = static_cast<int>(n);
  const int64_t G = ceil_div(H, kGroupCols);
  if (p.variant == Variant::CLUSTER) {
    const ClusterShape cs = head_cluster_shape(n, H);
    const int64_t blocks = ceil_div(T, cs.block_tokens);
    if (p.cluster_buffers > 0) {
      const int64_t smem = head_persist_bytes(n, H, p.cluster_buffers, p.cluster_rotated ? 3 : 2);
      add(KernelRole::HEAD_PERSIST, std::min(blocks, dev.resident_clusters) * cs.size, 1,
          32 * kClusterWarps, smem, cs.size);
    } else {
      add(KernelRole::CLUSTER, blocks * cs.size, 1, 32 * kClusterWarps, cs.smem_bytes, cs.size);
    }
    return out;
  }

  const bool full = p.variant == Variant::FULL_K;
  const int nt = (gate_rows(ni, mode) + 7) / 8;
  const int64_t MP = partial_row(ni, mode);
  const int64_t NC = (n + n * n + 3) / 4 * 4;
  if (p.staged_fn) add(KernelRole::STAGE_FN, ceil_div(G * n * nt, 8), 1, 256, 0, 0);

  const MainInstance m = main_instance(p);
  const int warps = p.main_warps;
  const int64_t bt = kTileTokens * m.tt;
  int64_t smem = 4 * bt * (warps * MP + NC);  // red, then coef (fused)
  if (mode == Mode::FUSED) {
    if (p.fn_ring) smem += fused_ring_bytes(ni, tiles_per_block(ni, mode, full, false), warps);
  } else if (p.fn_ring) {
    smem = main_ring_bytes(ni, mode, full, warps);  // red overlays the ring afterwards
  } else {
    smem = 4 * bt * warps * MP + int64_t{16} * warps * kRegStages * 2 * m.tt * 32;
  }
  add(KernelRole::MAIN, ceil_div(T, p.block_tokens), p.num_splits, 32 * warps, smem, 0);
  if (full) return out;

  int64_t esmem = 4 * (p.num_splits + 4) * MP;
  if (p.fused_boundary && p.norm) esmem += combine_smem(p, H);  // the group sums, after psum
  if (p.epilogue_ctas_per_sm > 0) {  // through their shared memory
    const int64_t share = dev.smem_per_sm / p.epilogue_ctas_per_sm;
    const int64_t reserve = dev.smem_reserved_per_block + 1024;  // + static shared memory
    if (share > reserve) esmem = std::max(esmem, std::min(share - reserve, dev.smem_optin_per_block));
  }
  add(KernelRole::EPILOGUE, T * p.epilogue_chunks, 1, kEpiThreads + (mode == Mode::HEAD ? 0 : 32),
      esmem, 0);
  return out;
}

std::string kernel_name(const Plan& p, const Launch& l, int64_t n) {
  static const char* kModes[] = {"PRE", "FUSED", "HEAD"};
  const char* mode = kModes[static_cast<int>(plan_mode(p))];
  char buf[96];
  switch (l.role) {
    case KernelRole::STAGE_FN:
      std::snprintf(buf, sizeof buf, "stage_fn<%d,%s>", static_cast<int>(n), mode);
      break;
    case KernelRole::MAIN: {
      const MainInstance m = main_instance(p);
      std::snprintf(buf, sizeof buf, "main<%d,%s,%d,%d,%d,%d,%d,%d>", static_cast<int>(n), mode,
                    m.full_k, m.norm, m.hs, m.half, m.ring, m.small);
      break;
    }
    case KernelRole::EPILOGUE:
      std::snprintf(buf, sizeof buf, "epilogue<%d,%s,%d,%d>", static_cast<int>(n),
                    p.kind == KernelType::HC_HEAD ? "HEAD" : p.fused_boundary ? "CARRY" : "PRE",
                    stream_sum_norm(p) || (p.fused_boundary && p.norm) ? 1 : 0, p.hidden_spec);
      break;
    case KernelRole::CLUSTER:
      std::snprintf(buf, sizeof buf, "cluster<%d,%s>", static_cast<int>(n), mode);
      break;
    case KernelRole::HEAD_PERSIST:
      std::snprintf(buf, sizeof buf, "head_persist<%d,%d,%d,%d>", static_cast<int>(n),
                    p.hidden_spec, p.cluster_buffers, p.cluster_rotated ? 1 : 0);
      break;
    case KernelRole::POST:
      std::snprintf(buf, sizeof buf, p.block_tokens == 1 ? "post_row<%d,1>" : "post<%d,1>",
                    static_cast<int>(n));
      break;
    case KernelRole::COMBINE:
      std::snprintf(buf, sizeof buf, "combine<%d,%d,%d,%d>", static_cast<int>(n),
                    p.kind == KernelType::MHC_COMBINE ? 0 : 1, p.norm ? 1 : 0,
                    combine_kind(p.kind) && p.num_splits > 1 ? 1 : 0);
      break;
    case KernelRole::PRENORM:
      std::snprintf(buf, sizeof buf, "prenorm<%d,1>",
                    static_cast<int>(std::min<int64_t>(4, ceil_div(n, 8))));
      break;
  }
  return buf;
}

}  // namespace mhc
