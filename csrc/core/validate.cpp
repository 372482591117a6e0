#include "core/validate.h"

#include "core/checks.h"
#include "core/math.h"

#include <string>
#include <vector>

namespace mhc {

namespace {
std::string shape(std::initializer_list<std::string> dims) {
  std::string s = "[";
  bool first = true;
  for (const auto& d : dims) {
    s += (first ? "" : ", ") + d;
    first = false;
  }
  return s + "]";
}
std::string eq(const char* name, int64_t v) { return std::string(name) + "=" + std::to_string(v); }
}  // namespace

StreamDims check_residual(const char* op, const at::Tensor& residual) {
  check_tensor(op, "residual", residual, at::kBFloat16, 3, "bfloat16 [T, n, H]");
  const int64_t n = residual.size(1), H = residual.size(2);
  MHC_EXPECT(n >= 1 && n <= kMaxHcMult, op, "residual", "bfloat16 [T, n, H] with 1 <= n <= 8",
             residual);
  MHC_EXPECT(H > 0 && H % 8 == 0, op, "residual",
             "bfloat16 [T, n, H] with H a positive multiple of 8", residual);
  return {residual.size(0), n, H, n * H};
}

void check_pre_params(const char* op, const StreamDims& d, const at::Tensor& residual,
                      const at::Tensor& fn, const at::Tensor& hc_scale,
                      const at::Tensor& hc_base, const PreArgs& a,
                      const std::optional<at::Tensor>& norm_weight) {
  const int64_t m3 = d.n * (d.n + 2);
  const std::string fn_shape = "float32 " + shape({eq("M3", m3), eq("K", d.K)});
  check_tensor(op, "fn", fn, at::kFloat, 2, fn_shape);
  MHC_EXPECT(fn.size(0) == m3 && fn.size(1) == d.K, op, "fn", fn_shape, fn);
  check_tensor(op, "hc_scale", hc_scale, at::kFloat, 1, "float32 [3]");
  MHC_EXPECT(hc_scale.size(0) == 3, op, "hc_scale", "float32 [3]", hc_scale);
  const std::string base_shape = "float32 " + shape({eq("M3", m3)});
  check_tensor(op, "hc_base", hc_base, at::kFloat, 1, base_shape);
  MHC_EXPECT(hc_base.size(0) == m3, op, "hc_base", base_shape, hc_base);
  check_same_device(op, "fn", fn, residual, "residual");
  check_same_device(op, "hc_scale", hc_scale, residual, "residual");
  check_same_device(op, "hc_base", hc_base, residual, "residual");
  if (norm_weight.has_value() && norm_weight->defined()) {
    const std::string w_shape = "bfloat16 " + shape({eq("H", d.H)});
    check_tensor(op, "norm_weight", *norm_weight, at::kBFloat16, 1, w_shape);
    MHC_EXPECT(norm_weight->size(0) == d.H, op, "norm_weight", w_shape, *norm_weight);
    check_same_device(op, "norm_weight", *norm_weight, residual, "residual");
  }
  check_eps(op, "rms_eps", a.rms_eps);
  check_eps(op, "hc_pre_eps", a.hc_pre_eps);
  check_eps(op, "hc_sinkhorn_eps", a.hc_sinkhorn_eps);
  check_finite(op, "hc_post_mult_value", a.hc_post_mult_value);
  check_eps(op, "norm_eps", a.norm_eps);
  TORCH_CHECK(a.sinkhorn_repeat >= 0, op, ": sinkhorn_repeat must be >= 0; got ",
              a.sinkhorn_repeat);
}

void check_post_args(const char* op, const StreamDims& d, const at::Tensor& residual,
                     const at::Tensor& x, const at::Tensor& post_mix,
                     const at::Tensor& comb_mix) {
  const std::string x_shape = "bfloat16 " + shape({eq("T", d.T), eq("H", d.H)});
  check_tensor(op, "x", x, at::kBFloat16, 2, x_shape);
  MHC_EXPECT(x.size(0) == d.T && x.size(1) == d.H, op, "x", x_shape, x);
  const std::string p_shape = "float32 " + shape({eq("T", d.T), eq("n", d.n), "1"}) + " or " +
                              shape({eq("T", d.T), eq("n", d.n)});
  MHC_EXPECT(post_mix.defined() && post_mix.scalar_type() == at::kFloat &&
                 (post_mix.dim() == 2 || (post_mix.dim() == 3 && post_mix.size(2) == 1)) &&
                 post_mix.size(0) == d.T && post_mix.size(1) == d.n,
             op, "post_mix", p_shape, post_mix);
  const std::string c_shape = "float32 " + shape({eq("T", d.T), eq("n", d.n), eq("n", d.n)});
  check_tensor(op, "comb_mix", comb_mix, at::kFloat, 3, c_shape);
  MHC_EXPECT(comb_mix.size(0) == d.T && comb_mix.size(1) == d.n && comb_mix.size(2) == d.n, op,
             "comb_mix", c_shape, comb_mix);
  check_same_device(op, "x", x, residual, "residual");
  check_same_device(op, "post_mix", post_mix, residual, "residual");
  check_same_device(op, "comb_mix", comb_mix, residual, "residual");
}

void check_head_params(const char* op, const StreamDims& d, const at::Tensor& residual,
                       const at::Tensor& fn, const at::Tensor& hc_scale,
                       const at::Tensor& hc_base, double rms_eps, double hc_eps) {
  const std::string fn_shape = "float32 " + shape({eq("n", d.n), eq("K", d.K)});
  check_tensor(op, "fn", fn, at::kFloat, 2, fn_shape);
  MHC_EXPECT(fn.size(0) == d.n && fn.size(1) == d.K, op, "fn", fn_shape, fn);
  check_tensor(op, "hc_scale", hc_scale, at::kFloat, 1, "float32 [1]");
  MHC_EXPECT(hc_scale.size(0) == 1, op, "hc_scale", "float32 [1]", hc_scale);
  const std::string base_shape = "float32 " + shape({eq("n", d.n)});
  check_tensor(op, "hc_base", hc_base, at::kFloat, 1, base_shape);
  MHC_EXPECT(hc_base.size(0) == d.n, op, "hc_base", base_shape, hc_base);
  check_same_device(op, "fn", fn, residual, "residual");
  check_same_device(op, "hc_scale", hc_scale, residual, "residual");
  check_same_device(op, "hc_base", hc_base, residual, "residual");
  check_eps(op, "rms_eps", rms_eps);
  check_eps(op, "hc_eps", hc_eps);
}

GemmDims check_prenorm(const char* op, const at::Tensor& x, const at::Tensor& fn,
                       int64_t num_splits) {
  check_tensor(op, "x", x, at::kBFloat16, 2, "bfloat16 [M, K]");
  const int64_t M = x.size(0), K = x.size(1);
  MHC_EXPECT(K > 0, op, "x", "bfloat16 [M, K] with K > 0", x);
  const std::string fn_shape = "float32 " + shape({"N <= 32", eq("K", K)});
  check_tensor(op, "fn", fn, at::kFloat, 2, fn_shape);
  MHC_EXPECT(fn.size(0) >= 1 && fn.size(0) <= 32 && fn.size(1) == K, op, "fn", fn_shape, fn);
  check_same_device(op, "fn", fn, x, "x");
  TORCH_CHECK(num_splits >= 1 && num_splits <= k_blocks(K), op,
              ": num_splits must be in [1, ceil(K/64) = ", k_blocks(K), "]; got ", num_splits);
  return {M, fn.size(0), K};
}

void check_prenorm_outputs(const char* op, const GemmDims& g, const at::Tensor& x,
                           const at::Tensor& out, const at::Tensor& sqrsum,
                           std::optional<int64_t> num_splits) {
  const bool split = num_splits.has_value();
  const int64_t S = split ? *num_splits : 1;
  const std::string o_shape =
      "float32 " + (split ? shape({eq("S", S), eq("M", g.M), eq("N", g.N)})
                          : shape({eq("M", g.M), eq("N", g.N)}));
  const std::string s_shape =
      "float32 " + (split ? shape({eq("S", S), eq("M", g.M)}) : shape({eq("M", g.M)}));
  const std::vector<int64_t> o_sizes =
      split ? std::vector<int64_t>{S, g.M, g.N} : std::vector<int64_t>{g.M, g.N};
  const std::vector<int64_t> s_sizes =
      split ? std::vector<int64_t>{S, g.M} : std::vector<int64_t>{g.M};
  MHC_EXPECT(out.defined() && out.scalar_type() == at::kFloat && out.sizes() == o_sizes, op,
             "out", o_shape, out);
  MHC_EXPECT(sqrsum.defined() && sqrsum.scalar_type() == at::kFloat &&
                 sqrsum.sizes() == s_sizes,
             op, "sqrsum", s_shape, sqrsum);
  check_same_device(op, "out", out, x, "x");
  check_same_device(op, "sqrsum", sqrsum, x, "x");
}

GemmDims check_linear(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  check_tensor(op, "x", x, at::kBFloat16, 2, "bfloat16 [M, K]");
  const int64_t K = x.size(1);
  const std::string w_shape = "bfloat16 " + shape({"N", eq("K", K)});
  check_tensor(op, "weight", weight, at::kBFloat16, 2, w_shape);
  MHC_EXPECT(weight.size(1) == K, op, "weight", w_shape, weight);
  check_same_device(op, "weight", weight, x, "x");
  return {x.size(0), weight.size(0), K};
}

}  // namespace mhc
