// Launch geometry shared by the planner (core/plan.cpp), the launcher (cuda/hc_launch.cuh) and
// the kernels of pre / fused / head (cuda/hc_*.cuh): every size that two of them must agree on
// is defined here once. Host-only translation units include it too, so nothing here names a
// CUDA type (a 16-byte vector is counted as 16 bytes).
#pragma once

#include <cstddef>
#include <cstdint>

namespace mhc {

// The three ops that share the K-reduction kernels. PRE / FUSED compute n(n+2) gate rows and
// the Sinkhorn, HEAD n rows and sigmoid gates only; FUSED first applies mhc_post.
enum class Mode : int { PRE = 0, FUSED = 1, HEAD = 2 };

inline constexpr int kTileTokens = 16;     // token rows of one mma.m16n8k16 tile
inline constexpr int kGroupCols = 32;      // hidden columns of one K group (all n streams)
inline constexpr int kParts = 2;           // bf16 terms of fn in the pre / head GEMM: hi + lo
inline constexpr int kMainWarps = 8;       // warps of the largest main-kernel CTA
inline constexpr int kMainThreads = 32 * kMainWarps;
inline constexpr int kRingBytes = 224 * 1024;  // pre / head: the largest fn ring of a CTA
inline constexpr int kRegStages = 4;       // pre / head without the fn ring: units in flight
inline constexpr int kFusedRingStages = 2; // fused op with the ring: units in flight per warp
inline constexpr int kEpiThreads = 128;    // epilogue threads that stream the weighted sum
inline constexpr int kEpiHeld = 2;         // residual vectors per epilogue thread in registers
inline constexpr int kClusterWarps = 8;    // warps of a cluster-kernel CTA
inline constexpr int kClusterMax = 16;     // CTAs per cluster at most (non-portable on sm_90)
inline constexpr int kClusterTiles = 1;    // 16-token tiles per cluster token block
inline constexpr int kClusterMaxStages = 4;  // copy stages of the one-block cluster kernel
inline constexpr int64_t kMaxSmemPerCta = 227 * 1024;  // dynamic shared memory per CTA (sm_90)
inline constexpr int kPrenormTiles = 4;    // 16-row tiles per CTA of the prenorm GEMM
inline constexpr int kPrenormRows = kTileTokens * kPrenormTiles;
inline constexpr int kPrenormWarps = 8;    // warps per CTA of the prenorm GEMM
inline constexpr int kPostThreads = 128;   // mhc_post: threads of 8 columns per CTA
inline constexpr int kPostRowThreads = 256;  // mhc_post, a CTA per token: 8 columns a thread and step
inline constexpr int kCombineMaxThreads = 512;  // mhc_combine / mhc_post_combine: CTA threads

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// mhc_combine / mhc_post_combine (cuda/hc_combine.cuh): one CTA per token, each thread the same
// number of 8-column vectors (one up to H = 4096, two up to H = 8192), a multiple of 32
// threads. A function of H alone, so that both ops reduce a row's norm in the same order.
constexpr int combine_threads(int64_t H) {
  const int64_t v = H / 8;
  const int64_t iters = ceil_div(v, kCombineMaxThreads);
  const int64_t t = ceil_div(ceil_div(v, iters), 32) * 32;
  return static_cast<int>(t < 32 ? 32 : t);
}

// The split combine (a cluster of CTAs per token at small T): each CTA the vectors
// [rank · V, (rank + 1) · V) of a row, V = combine_split_vectors(H) a multiple of 32 (whole
// warps and whole 32-column norm groups per CTA), about 128 per CTA on at most 8 CTAs;
// combine_split_ctas(H) CTAs cover the row (1: no split), combine_split_threads(H) threads each
// (every thread the same number of vectors, as combine_threads). The norm's order stays
// norm_tree.cuh's, so the bits are the one-CTA kernel's.
inline constexpr int kCombineSplitVectors = 128;  // vectors per CTA the split aims at
inline constexpr int kCombineSplitMax = 8;        // CTAs per token at most (portable clusters)
constexpr int combine_split_vectors(int64_t H) {
  const int64_t v = H / 8;
  const int64_t want = ceil_div(v, kCombineSplitVectors);
  const int64_t ctas = want < 1 ? 1 : want > kCombineSplitMax ? kCombineSplitMax : want;
  const int64_t per = ceil_div(ceil_div(v, ctas), 32) * 32;
  return static_cast<int>(per < 32 ? 32 : per);
}
constexpr int combine_split_ctas(int64_t H) {
  const int64_t c = ceil_div(H / 8, combine_split_vectors(H));
  return static_cast<int>(c < 1 ? 1 : c);
}
constexpr int combine_split_threads(int64_t H) {
  const int64_t v = combine_split_vectors(H);
  const int64_t iters = ceil_div(v, kCombineMaxThreads);
  return static_cast<int>(ceil_div(ceil_div(v, iters), 32) * 32);
}

// Gate rows of fn (M), 8-row mma blocks (NT), a token's partial row (M dots, the sum of squares,
// padding to 16 bytes: MP) and the fused op's post / comb inputs of a token (NC).
constexpr int gate_rows(int n, Mode mode) { return mode == Mode::HEAD ? n : n * (n + 2); }
constexpr int partial_row(int n, Mode mode) { return (gate_rows(n, mode) + 1 + 3) / 4 * 4; }

template <int N, Mode MODE>
struct Shape {
  static constexpr int M = gate_rows(N, MODE);
  static constexpr int NT = (M + 7) / 8;
  static constexpr int MP = partial_row(N, MODE);
  static constexpr int NC = (N + N * N + 3) / 4 * 4;
};

// mma tiles of 16 tokens per main-kernel CTA. Four where registers allow (fn is re-read from L2
// once per block, so larger blocks save L2 traffic); two for the fused op, FULL_K and the
// `small` 32-token decode blocks of pre / head; one for n > 4.
constexpr int tiles_per_block(int n, Mode mode, bool full_k, bool small) {
  return n > 4 ? 1 : (full_k || small || mode == Mode::FUSED ? 2 : 4);
}

// The per-warp cp.async ring of the pre / head main kernel (Plan::fn_ring): each slot holds one
// (group, stream) unit, its activations [2 TT][32 lanes] and its fn [NT][kParts][32 lanes]
// (16 bytes each); up to 4 slots per warp within kRingBytes for 8 warps. The warps' partial
// sums overlay the ring once the loop is done.
constexpr int main_ring_slot(int n, Mode mode, bool full_k) {  // 16-byte units
  return (2 * tiles_per_block(n, mode, full_k, false) + (gate_rows(n, mode) + 7) / 8 * kParts) *
         32;
}
constexpr int main_ring_stages(int n, Mode mode, bool full_k) {
  const int fit = kRingBytes / (kMainWarps * main_ring_slot(n, mode, full_k) * 16);
  return fit >= 4 ? 4 : fit;
}
constexpr int64_t main_ring_bytes(int n, Mode mode, bool full_k, int warps) {
  const int64_t ring = int64_t{16} * warps * main_ring_stages(n, mode, full_k) *
                       main_ring_slot(n, mode, full_k);
  const int64_t red = int64_t{4} * warps * kTileTokens * tiles_per_block(n, mode, full_k, false) *
                      partial_row(n, mode);
  return ring > red ? ring : red;
}
template <int N, Mode MODE, bool FULLK>
struct MainRing {
  static constexpr int TT = tiles_per_block(N, MODE, FULLK, false);
  static constexpr int kSlot = main_ring_slot(N, MODE, FULLK);
  static constexpr int kStages = main_ring_stages(N, MODE, FULLK);
  static_assert(kStages >= 2, "a main-kernel ring needs two slots per warp");
};

// The per-warp cp.async ring of the fused main kernel (Plan::fn_ring): each slot holds one
// unit's x and N input streams for rows g and g + 8 of every tile, [2 TT][N + 1][32 lanes].
constexpr int fused_ring_slot(int n, int tt) { return 2 * tt * (n + 1) * 32; }  // 16-byte units
constexpr int64_t fused_ring_bytes(int n, int tt, int warps) {
  return int64_t{16} * warps * kFusedRingStages * fused_ring_slot(n, tt);
}
template <int N, int TT>
struct FusedRing {
  static constexpr int kStages = kFusedRingStages;
  static constexpr int kSlot = fused_ring_slot(N, TT);
};

// The one-block-per-cluster hc_head kernel (cuda/hc_cluster.cuh): `size` CTAs per cluster, each
// owning `groups` K groups (all streams) of a `block_tokens` token block, and the dynamic shared
// memory of one CTA; size 0 where it does not fit (n > 4 or too much shared memory).
struct ClusterShape {
  int32_t size = 0;
  int32_t groups = 0;
  int32_t block_tokens = 0;
  int64_t smem_bytes = 0;
};
constexpr ClusterShape head_cluster_shape(int64_t n, int64_t hidden) {
  if (n < 1 || n > 4 || hidden <= 0) return {};
  const int64_t groups = ceil_div(hidden, kGroupCols);
  const int64_t per_cta = ceil_div(groups, groups < kClusterMax ? groups : kClusterMax);
  const int64_t size = ceil_div(groups, per_cta);
  const int64_t bt = kTileTokens * kClusterTiles;
  const int64_t vecs = 4 * per_cta;  // 8-column vectors of one stream per CTA
  const int64_t row = n * vecs + ((n * per_cta) % 2 == 0 ? 4 : 0);  // 16-byte units, padded
  const int64_t mp = partial_row(static_cast<int>(n), Mode::HEAD);
  const int64_t bytes = 16 * bt * row                     // activations
                        + 4 * kClusterWarps * bt * mp     // per-warp partial dots
                        + 4 * bt * mp                     // reduced dots
                        + 4 * bt * n;                     // pre gates
  if (bytes > kMaxSmemPerCta) return {};
  return {static_cast<int32_t>(size), static_cast<int32_t>(per_cta), static_cast<int32_t>(bt),
          bytes};
}

// Shared memory of the persistent hc_head kernel (cuda/hc_head_persistent.cuh) at n, H, with nb
// activation buffers and `slots` receive slots: activations [nb][BT][RS] 16-byte units, receive
// [slots][CS][BT][MP], per-warp partials [W][BT][MP], gates [2][BT][n] floats.
constexpr int64_t head_persist_bytes(int64_t n, int64_t hidden, int nb, int slots) {
  const ClusterShape cs = head_cluster_shape(n, hidden);
  const int64_t rs = n * 4 * cs.groups + ((n * cs.groups) % 2 == 0 ? 4 : 0);
  const int64_t mp = partial_row(static_cast<int>(n), Mode::HEAD), bt = cs.block_tokens;
  return 16 * nb * bt * rs + 4 * (slots * cs.size * bt * mp + kClusterWarps * bt * mp + 2 * bt * n);
}

// The persistent kernel's compile-time geometry at n = N, H = HS (that of head_cluster_shape).
template <int N, int HS>
struct HeadPersistShape {
  static constexpr int G = HS / kGroupCols;                        // K groups
  static constexpr int GPC = (G + kClusterMax - 1) / kClusterMax;  // groups per CTA
  static constexpr int CS = (G + GPC - 1) / GPC;                   // CTAs per cluster
  static constexpr int SV = 4 * GPC;                               // vectors per stream row
  static constexpr int RS = N * SV + ((N * GPC) % 2 == 0 ? 4 : 0); // padded token row
  static constexpr int BT = kTileTokens * kClusterTiles;
  static constexpr int UPW = (GPC * N + kClusterWarps - 1) / kClusterWarps;  // units per warp
  static constexpr int MP = Shape<N, Mode::HEAD>::MP;
  static_assert(HS % (kGroupCols * GPC) == 0 && G / GPC == CS, "every CTA owns GPC whole groups");
  static_assert(CS == head_cluster_shape(N, HS).size, "one cluster geometry for both kernels");
  static constexpr size_t bytes(int nb, int slots) {
    return static_cast<size_t>(head_persist_bytes(N, HS, nb, slots));
  }
};

}  // namespace mhc
