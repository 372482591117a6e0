// The fused op's kernels at n = 4: the generic width and the specialised 4096 / 7168
// (hc_fused_instances.h).
#include "cuda/hc_fused_instances.h"

namespace mhc::cuda {

MHC_FUSED_INSTANCE(4, 0);
MHC_FUSED_INSTANCE(4, 4096);
MHC_FUSED_INSTANCE(4, 7168);

}  // namespace mhc::cuda
