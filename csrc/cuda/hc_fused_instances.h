// The fused op's launcher instances, run_hc_spec<N, Mode::FUSED, HS> (hc_launch.cuh), declared
// here and compiled in translation units of their own (hc_fused_instances_n4.cu: n = 4 at the
// generic and the specialised widths; _n123.cu and _n5678.cu: the other n), so that the fused
// kernels, the largest share of the build, compile in parallel. mhc_fused_post_pre.cu
// dispatches to them (run_hc).
#pragma once

#include "cuda/hc_launch.cuh"

// The instance of n = N_, hidden_spec HS_; `extern` before it declares it.
#define MHC_FUSED_INSTANCE(N_, HS_)                                                           \
  template void run_hc_spec<N_, Mode::FUSED, HS_, true>(const Plan&, const HcCall&,           \
                                                       const at::TensorOptions&, int,         \
                                                       cudaStream_t, ChunkShared*)

namespace mhc::cuda {

extern MHC_FUSED_INSTANCE(1, 0);
extern MHC_FUSED_INSTANCE(2, 0);
extern MHC_FUSED_INSTANCE(3, 0);
extern MHC_FUSED_INSTANCE(4, 0);
extern MHC_FUSED_INSTANCE(4, 4096);
extern MHC_FUSED_INSTANCE(4, 7168);
extern MHC_FUSED_INSTANCE(5, 0);
extern MHC_FUSED_INSTANCE(6, 0);
extern MHC_FUSED_INSTANCE(7, 0);
extern MHC_FUSED_INSTANCE(8, 0);

}  // namespace mhc::cuda
