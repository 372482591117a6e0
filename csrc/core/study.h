// Study knobs: overrides of planner thresholds, for crossover measurements and the tests of the
// plans they reach. They exist only in a study build (MHC_STUDY=1 at build time, see setup.py);
// the library a user installs has none, and there every threshold is the constant in plan.cpp.
#pragma once

#include <cstdint>

#ifdef MHC_STUDY
namespace mhc::study {

enum class Knob : int {
  SPLIT_TARGET_CTAS = 0,    // CTAs a SPLIT_K plan aims at; below 0: the planner's
  CLUSTER_MIN_TOKENS,       // hc_head CLUSTER plans from this T on; below 0: measured windows
  STAGED_FN_MIN_TOKENS,     // pre / fused stage fn from this T on
  FN_RING_MIN_TOKENS,       // main kernels use their cp.async ring from this T on
  EVICT_INPUTS_MAX_BYTES,   // fused op: evict_first inputs up to this residual_out size; -1 never
  EPILOGUE_CHUNKS,          // SPLIT_K epilogue chunks per token; 0: the planner's
  EPILOGUE_CTAS_PER_SM,     // SPLIT_K epilogue CTAs per SM at most; 0: planner's, -1: no cap
  POST_ROW_MIN_TOKENS,      // mhc_post runs a CTA per token from this T on
  FULL_K_MIN_TOKENS,        // pre / stats / head / fused plans are FULL_K from this T on; below 0:
                            // the planner's rule
  BOUNDARY_MAX_TOKENS,      // mhc_shifted_post_pre runs the fused boundary (where the fused op's
                            // plan is SPLIT_K) up to this T; 0: never
  COMBINE_SPLIT_MAX_TOKENS,  // mhc_combine / mhc_post_combine split a row over CTAs up to this T;
                             // 0: never
  CHUNK_TOKENS,             // pre / fused / stats (not CLUSTER plans) run over token chunks of this
                            // size, each chunk its own plan, so that the second read of a
                            // chunk's rows can hit L2; 0: one plan for all T
  PIPE_TOKENS,              // mhc_pre (n = 4, H = 4096 / 7168) and mhc_stats (n = 4) run the
                            // pipelined kernel with the SPLIT_K plan of this many tokens from T
                            // above it; 0: never
  COUNT
};
const char* knob_name(Knob k);
int64_t knob(Knob k);
// Sets a knob and returns its previous value.
int64_t set_knob(Knob k, int64_t value);

}  // namespace mhc::study
#endif
