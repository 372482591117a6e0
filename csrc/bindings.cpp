// The Python module mhc_ops._C. Importing it loads the library, which registers the ops
// (registration.cpp); the bindings here are only what is not an op.
#include <torch/extension.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "mhc_ops native library: ops are under torch.ops.mhc";
#ifdef MHC_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
