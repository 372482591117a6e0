// Memory overlap of out= arguments (docs/spec.md §2.8): the checks that tf32_hc_prenorm_gemm's
// outputs overlap neither themselves, each other nor an input, as PyTorch's out= convention
// requires, decided exactly (element by element where a view is not dense).
#pragma once

#include <ATen/core/Tensor.h>

namespace mhc {

// Refuses, naming op and arg, a tensor in which two elements share an address.
void check_no_self_overlap(const char* op, const char* arg, const at::Tensor& t);
// Refuses, naming op and both arguments, two tensors that share an element's bytes.
void check_no_overlap(const char* op, const char* arg, const at::Tensor& t,
                      const char* other_arg, const at::Tensor& other);

}  // namespace mhc
