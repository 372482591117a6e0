// Named argument checks. Every message starts with the op name and the argument, then the
// expectation and what was passed, e.g.
//   mhc_pre: residual must be bfloat16 [T, n, H]; got float32 [8, 4, 7168]
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <sstream>
#include <string>

namespace mhc {

inline std::string describe(const at::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  std::ostringstream out;
  const auto st = t.scalar_type();
  const char* name = st == at::kBFloat16 ? "bfloat16"
                     : st == at::kFloat  ? "float32"
                     : st == at::kHalf   ? "float16"
                     : st == at::kDouble ? "float64"
                                         : c10::toString(st);
  out << name << " [";
  // sym_size: a fake tensor under dynamic shapes prints its symbols; size() would throw
  for (int64_t i = 0; i < t.dim(); ++i) out << (i ? ", " : "") << t.sym_size(i);
  out << "]";
  return out.str();
}

// `op: arg must be <expected>; got <actual>` unless ok.
#define MHC_EXPECT(ok, op, arg, expected, tensor)                                            \
  TORCH_CHECK((ok), op, ": ", arg, " must be ", expected, "; got ", ::mhc::describe(tensor))

inline bool is_tensor(const at::Tensor& t, at::ScalarType dtype, int64_t dim) {
  return t.defined() && t.scalar_type() == dtype && t.dim() == dim;
}

inline void check_tensor(const char* op, const char* arg, const at::Tensor& t,
                         at::ScalarType dtype, int64_t dim, const char* expected) {
  MHC_EXPECT(is_tensor(t, dtype, dim), op, arg, expected, t);
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const at::Tensor& ref, const char* ref_arg) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " must be on the same device as ",
              ref_arg, " (", ref.device(), "); got ", t.device());
}

inline void check_eps(const char* op, const char* arg, double v) {
  TORCH_CHECK(std::isfinite(v) && v >= 0.0, op, ": ", arg, " must be finite and >= 0; got ", v);
}

inline void check_finite(const char* op, const char* arg, double v) {
  TORCH_CHECK(std::isfinite(v), op, ": ", arg, " must be finite; got ", v);
}

}  // namespace mhc
