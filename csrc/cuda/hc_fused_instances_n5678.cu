// The fused op's kernels at n = 5 .. 8 (hc_fused_instances.h).
#include "cuda/hc_fused_instances.h"

namespace mhc::cuda {

MHC_FUSED_INSTANCE(5, 0);
MHC_FUSED_INSTANCE(6, 0);
MHC_FUSED_INSTANCE(7, 0);
MHC_FUSED_INSTANCE(8, 0);

}  // namespace mhc::cuda
