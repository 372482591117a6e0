// The fused op's kernels at n = 1 .. 3 (hc_fused_instances.h).
#include "cuda/hc_fused_instances.h"

namespace mhc::cuda {

MHC_FUSED_INSTANCE(1, 0);
MHC_FUSED_INSTANCE(2, 0);
MHC_FUSED_INSTANCE(3, 0);

}  // namespace mhc::cuda
