// Launch arguments of the pre / fused / head kernels. The op entry points fill an HcCall with
// named fields; the launcher (hc_launch.cuh) builds each kernel's parameter struct from it and
// from the Plan, field by field.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/geometry.h"

namespace mhc::cuda {

// Everything one call of pre / fused / head needs, as raw pointers into tensors that the caller
// keeps alive (contiguous, 16-byte aligned where vector loads read them). Members an op does not
// use stay null / zero.
struct HcCall {
  int64_t T = 0;
  int n = 0, H = 0;
  const uint16_t* res = nullptr;     // [T, n, H] bf16 residual (the fused op's input residual)
  const uint16_t* x = nullptr;       // fused: [T, H] bf16 sub-layer output
  const float* post_in = nullptr;    // fused: [T, n]
  const float* comb_in = nullptr;    // fused: [T, n, n]
  uint16_t* res_out = nullptr;       // fused: [T, n, H] bf16 new residual
  const float* pre_in = nullptr;     // fused shifted boundary: [T, n] the carried pre, the
                                     // weights of layer_input's combine
  const float* fn = nullptr;         // [M, n H] fp32
  const float* scale = nullptr;      // hc_scale [3] (pre, fused) or [1] (head)
  const float* base = nullptr;       // hc_base [M]
  const uint16_t* norm_w = nullptr;  // [H] bf16, null without the folded norm
  float* pre_out = nullptr;          // mhc_stats, the shifted boundary: [T, n]
  float* post_out = nullptr;         // pre / fused / stats: [T, n]
  float* comb_out = nullptr;         // pre / fused / stats: [T, n, n]
  uint16_t* out = nullptr;           // [T, H] layer_input / hc_head output; null for stats
  float rms_eps = 0.f, pre_eps = 0.f, sinkhorn_eps = 0.f, post_mult = 0.f, norm_eps = 0.f;
  int64_t repeat = 0;                // pre_eps is hc_eps for head
};

struct MainParams {
  const uint16_t* res;     // [T, N, H] bf16: residual (pre, head) or the fused op's input
  const uint16_t* x;       // fused: [T, H] bf16 sub-layer output
  const float* post_in;    // fused: [T, N]
  const float* comb_in;    // fused: [T, N, N]
  uint16_t* res_out;       // fused: [T, N, H] bf16 new residual
  const float* fn;         // [M, N * H]
  const uint4* fnf;        // staged fn (hc_stage_fn.cuh), null to read fn itself
  const float* scale;      // hc_scale [3] (pre, fused) or [1] (head)
  const float* base;       // hc_base [M]
  const uint16_t* norm_w;  // [H] bf16, null without the folded norm
  float* ws;               // SPLIT_K: partials [T, S, MP]
  float* pre_out;          // FULL_K stats: [T, N]
  float* post_out;         // FULL_K pre / fused: [T, N]
  float* comb_out;         // FULL_K pre / fused: [T, N, N]
  uint16_t* out;           // FULL_K: layer_input / hc_head output [T, H]; null for stats
  int64_t T;
  int H, G, S, gpc;        // hidden size, K groups, splits, groups per split
  float rms_eps, pre_eps, sinkhorn_eps, post_mult, norm_eps;  // pre_eps is hc_eps for head
  int64_t repeat;
  int evict_inputs;        // fused ring: x and the input streams L2 evict_first (Plan)
};

struct EpiParams {
  const uint16_t* src;     // [T, N, H] residual (pre, head) or residual_out (fused)
  const float* ws;         // [T, S, MP] partials of the main kernel
  const float* pre_in;     // the fused shifted boundary: [T, N] carried pre (CARRY)
  const float* scale;
  const float* base;
  const uint16_t* norm_w;
  float* pre_out;          // stats: [T, N]
  float* post_out;         // [T, N]
  float* comb_out;         // [T, N, N]
  uint16_t* out;           // [T, H]; null for stats (gates only)
  int64_t T;
  int H, S, HC, CW;        // hidden, splits, chunks per token, 8-column vectors per chunk
  float rms_eps, pre_eps, sinkhorn_eps, post_mult, norm_eps;
  int64_t repeat;
  int src_is_input;        // src is not written by the main kernel (pre, head): loaded early
};

// mhc_combine / mhc_post_combine (hc_combine.cuh); contiguous, 16-byte aligned rows.
struct CombineParams {
  const uint16_t* x;       // post_combine: [T, H] sub-layer output
  const uint16_t* res;     // [T, N, H] residual
  const float* post;       // post_combine: [T, N]
  const float* comb;       // post_combine: [T, N, N]
  const float* pre;        // [T, N] the carried pre
  const uint16_t* norm_w;  // [H] bf16, null without the norm
  uint16_t* res_out;       // post_combine: [T, N, H]
  uint16_t* out;           // [T, H] layer_input
  int H;
  float norm_eps;
  int ctas;                // CTAs per token: 1, or combine_split_ctas(H) (the split combine)
  int vectors;             // 8-column vectors per CTA: H / 8, or combine_split_vectors(H)
};

// hc_head's cluster kernels (hc_cluster.cuh, hc_head_persistent.cuh).
struct ClusterParams {
  const uint16_t* res;        // [T, N, H] residual
  const float* fn;            // [N, N * H]
  const float* scale;         // hc_scale [1]
  const float* base;          // hc_base [N]
  uint16_t* out;              // [T, H]
  int64_t T;
  int H, G, gpc, CS, stages;  // hidden, K groups, groups per CTA, cluster size, copy stages
  float rms_eps, pre_eps;     // pre_eps: hc_eps
};

}  // namespace mhc::cuda
