#include "core/validate.h"

#include <c10/core/SymInt.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/checks.h"
#include "core/math.h"
#include "core/overlap.h"

namespace mhc {

namespace {

template <class I>
I size_of(const at::Tensor& t, int64_t i);
template <>
int64_t size_of<int64_t>(const at::Tensor& t, int64_t i) {
  return t.size(i);
}
template <>
c10::SymInt size_of<c10::SymInt>(const at::Tensor& t, int64_t i) {
  return t.sym_size(i);
}

// "[a, b, c]"
std::string shape(std::initializer_list<std::string> dims) {
  std::string s = "[";
  bool first = true;
  for (const auto& d : dims) {
    s += (first ? "" : ", ") + d;
    first = false;
  }
  return s + "]";
}
// "name=v"
template <class I>
std::string eq(const char* name, const I& v) {
  std::ostringstream s;
  s << name << "=" << v;
  return s.str();
}

}  // namespace

template <class I>
StreamDimsT<I> check_residual(const char* op, const at::Tensor& residual) {
  check_tensor(op, "residual", residual, at::kBFloat16, 3, "bfloat16 [T, n, H]");
  const I n = size_of<I>(residual, 1), H = size_of<I>(residual, 2);
  MHC_EXPECT(n >= 1 && n <= kMaxHcMult, op, "residual", "bfloat16 [T, n, H] with 1 <= n <= 8",
             residual);
  MHC_EXPECT(H > 0 && H % 8 == 0, op, "residual",
             "bfloat16 [T, n, H] with H a positive multiple of 8", residual);
  return {size_of<I>(residual, 0), n, H, n * H};
}

template <class I>
void check_norm_weight(const char* op, const StreamDimsT<I>& d, const at::Tensor& residual,
                       const at::Tensor& norm_weight) {
  // float32 is accepted and rounded to bf16 once (norm_weight_bf16), as the serving stacks do
  MHC_EXPECT((is_tensor(norm_weight, at::kBFloat16, 1) || is_tensor(norm_weight, at::kFloat, 1)) &&
                 size_of<I>(norm_weight, 0) == d.H,
             op, "norm_weight", "bfloat16 or float32 " + shape({eq("H", d.H)}), norm_weight);
  check_same_device(op, "norm_weight", norm_weight, residual, "residual");
}

template <class I>
void check_pre_mix(const char* op, const StreamDimsT<I>& d, const at::Tensor& residual,
                   const at::Tensor& pre_mix) {
  MHC_EXPECT(pre_mix.defined() && pre_mix.scalar_type() == at::kFloat &&
                 (pre_mix.dim() == 2 || (pre_mix.dim() == 3 && size_of<I>(pre_mix, 2) == 1)) &&
                 size_of<I>(pre_mix, 0) == d.T && size_of<I>(pre_mix, 1) == d.n,
             op, "pre_mix",
             "float32 " + shape({eq("T", d.T), eq("n", d.n)}) + " or " +
                 shape({eq("T", d.T), eq("n", d.n), "1"}),
             pre_mix);
  check_same_device(op, "pre_mix", pre_mix, residual, "residual");
}

template <class I>
void check_combine_args(const char* op, const StreamDimsT<I>& d, const at::Tensor& residual,
                        const at::Tensor& pre_mix, const std::optional<at::Tensor>& norm_weight,
                        double norm_eps) {
  check_pre_mix(op, d, residual, pre_mix);
  if (norm_weight.has_value() && norm_weight->defined())
    check_norm_weight(op, d, residual, *norm_weight);
  check_eps(op, "norm_eps", norm_eps);
}

template <class I>
void check_pre_params(const char* op, const StreamDimsT<I>& d, const at::Tensor& residual,
                      const at::Tensor& fn, const at::Tensor& hc_scale,
                      const at::Tensor& hc_base, const PreArgs& a,
                      const std::optional<at::Tensor>& norm_weight) {
  const I m3 = d.n * (d.n + 2);
  // The expected shapes are formatted only for a message (MHC_EXPECT evaluates them on failure).
  MHC_EXPECT(is_tensor(fn, at::kFloat, 2) && size_of<I>(fn, 0) == m3 && size_of<I>(fn, 1) == d.K,
             op, "fn", "float32 " + shape({eq("M3", m3), eq("K", d.K)}), fn);
  MHC_EXPECT(is_tensor(hc_scale, at::kFloat, 1) && size_of<I>(hc_scale, 0) == 3, op, "hc_scale",
             "float32 [3]", hc_scale);
  MHC_EXPECT(is_tensor(hc_base, at::kFloat, 1) && size_of<I>(hc_base, 0) == m3, op, "hc_base",
             "float32 " + shape({eq("M3", m3)}), hc_base);
  check_same_device(op, "fn", fn, residual, "residual");
  check_same_device(op, "hc_scale", hc_scale, residual, "residual");
  check_same_device(op, "hc_base", hc_base, residual, "residual");
  if (norm_weight.has_value() && norm_weight->defined())
    check_norm_weight(op, d, residual, *norm_weight);
  check_eps(op, "rms_eps", a.rms_eps);
  check_eps(op, "hc_pre_eps", a.hc_pre_eps);
  check_eps(op, "hc_sinkhorn_eps", a.hc_sinkhorn_eps);
  check_finite(op, "hc_post_mult_value", a.hc_post_mult_value);
  check_eps(op, "norm_eps", a.norm_eps);
  TORCH_CHECK(a.sinkhorn_repeat >= 0 && a.sinkhorn_repeat <= kMaxSinkhornRepeat, op,
              ": sinkhorn_repeat must be in [0, ", kMaxSinkhornRepeat, "]; got ",
              a.sinkhorn_repeat);
}

template <class I>
void check_post_args(const char* op, const StreamDimsT<I>& d, const at::Tensor& residual,
                     const at::Tensor& x, const at::Tensor& post_mix,
                     const at::Tensor& comb_mix) {
  MHC_EXPECT(is_tensor(x, at::kBFloat16, 2) && size_of<I>(x, 0) == d.T && size_of<I>(x, 1) == d.H,
             op, "x", "bfloat16 " + shape({eq("T", d.T), eq("H", d.H)}), x);
  MHC_EXPECT(post_mix.defined() && post_mix.scalar_type() == at::kFloat &&
                 (post_mix.dim() == 2 ||
                  (post_mix.dim() == 3 && size_of<I>(post_mix, 2) == 1)) &&
                 size_of<I>(post_mix, 0) == d.T && size_of<I>(post_mix, 1) == d.n,
             op, "post_mix",
             "float32 " + shape({eq("T", d.T), eq("n", d.n), "1"}) + " or " +
                 shape({eq("T", d.T), eq("n", d.n)}),
             post_mix);
  MHC_EXPECT(is_tensor(comb_mix, at::kFloat, 3) && size_of<I>(comb_mix, 0) == d.T &&
                 size_of<I>(comb_mix, 1) == d.n && size_of<I>(comb_mix, 2) == d.n,
             op, "comb_mix", "float32 " + shape({eq("T", d.T), eq("n", d.n), eq("n", d.n)}),
             comb_mix);
  check_same_device(op, "x", x, residual, "residual");
  check_same_device(op, "post_mix", post_mix, residual, "residual");
  check_same_device(op, "comb_mix", comb_mix, residual, "residual");
}

template <class I>
void check_head_params(const char* op, const StreamDimsT<I>& d, const at::Tensor& residual,
                       const at::Tensor& fn, const at::Tensor& hc_scale,
                       const at::Tensor& hc_base, double rms_eps, double hc_eps) {
  MHC_EXPECT(is_tensor(fn, at::kFloat, 2) && size_of<I>(fn, 0) == d.n && size_of<I>(fn, 1) == d.K,
             op, "fn", "float32 " + shape({eq("n", d.n), eq("K", d.K)}), fn);
  MHC_EXPECT(is_tensor(hc_scale, at::kFloat, 1) && size_of<I>(hc_scale, 0) == 1, op, "hc_scale",
             "float32 [1]", hc_scale);
  MHC_EXPECT(is_tensor(hc_base, at::kFloat, 1) && size_of<I>(hc_base, 0) == d.n, op, "hc_base",
             "float32 " + shape({eq("n", d.n)}), hc_base);
  check_same_device(op, "fn", fn, residual, "residual");
  check_same_device(op, "hc_scale", hc_scale, residual, "residual");
  check_same_device(op, "hc_base", hc_base, residual, "residual");
  check_eps(op, "rms_eps", rms_eps);
  check_eps(op, "hc_eps", hc_eps);
}

template <class I>
GemmDimsT<I> check_prenorm(const char* op, const at::Tensor& x, const at::Tensor& fn,
                           int64_t num_splits) {
  check_tensor(op, "x", x, at::kBFloat16, 2, "bfloat16 [M, K]");
  const I M = size_of<I>(x, 0), K = size_of<I>(x, 1);
  MHC_EXPECT(K > 0, op, "x", "bfloat16 [M, K] with K > 0", x);
  MHC_EXPECT(is_tensor(fn, at::kFloat, 2) && size_of<I>(fn, 0) >= 1 && size_of<I>(fn, 0) <= 32 &&
                 size_of<I>(fn, 1) == K,
             op, "fn", "float32 " + shape({"N <= 32", eq("K", K)}), fn);
  const I N = size_of<I>(fn, 0);
  check_same_device(op, "fn", fn, x, "x");
  const I blocks = (K + 63) / 64;
  TORCH_CHECK(num_splits >= 1 && blocks >= num_splits, op,
              ": num_splits must be in [1, ceil(K/64) = ", blocks, "]; got ", num_splits);
  return {M, N, K};
}

template <class I>
void check_prenorm_outputs(const char* op, const GemmDimsT<I>& g, const at::Tensor& x,
                           const at::Tensor& out, const at::Tensor& sqrsum,
                           std::optional<int64_t> num_splits) {
  const bool split = num_splits.has_value();
  const int64_t S = split ? *num_splits : 1;
  const int64_t lead = split ? 1 : 0;
  MHC_EXPECT(out.defined() && out.scalar_type() == at::kFloat && out.dim() == 2 + lead &&
                 (!split || size_of<I>(out, 0) == S) && size_of<I>(out, lead) == g.M &&
                 size_of<I>(out, lead + 1) == g.N,
             op, "out",
             "float32 " + (split ? shape({eq("S", S), eq("M", g.M), eq("N", g.N)})
                                 : shape({eq("M", g.M), eq("N", g.N)})),
             out);
  MHC_EXPECT(sqrsum.defined() && sqrsum.scalar_type() == at::kFloat &&
                 sqrsum.dim() == 1 + lead && (!split || size_of<I>(sqrsum, 0) == S) &&
                 size_of<I>(sqrsum, lead) == g.M,
             op, "sqrsum",
             "float32 " + (split ? shape({eq("S", S), eq("M", g.M)}) : shape({eq("M", g.M)})),
             sqrsum);
  check_same_device(op, "out", out, x, "x");
  check_same_device(op, "sqrsum", sqrsum, x, "x");
  // Written in parallel from many threads or CTAs (and on the non-contiguous path through a
  // copy): an output that shares memory with itself, the other output or an input would give
  // results that depend on the order of the writes, or read values already overwritten.
  check_no_self_overlap(op, "out", out);
  check_no_self_overlap(op, "sqrsum", sqrsum);
  check_no_overlap(op, "sqrsum", sqrsum, "out", out);
  check_no_overlap(op, "out", out, "x", x);
  check_no_overlap(op, "sqrsum", sqrsum, "x", x);
}

template <class I>
GemmDimsT<I> check_linear(const char* op, const at::Tensor& x, const at::Tensor& weight) {
  check_tensor(op, "x", x, at::kBFloat16, 2, "bfloat16 [M, K]");
  const I K = size_of<I>(x, 1);
  MHC_EXPECT(is_tensor(weight, at::kBFloat16, 2) && size_of<I>(weight, 1) == K, op, "weight",
             "bfloat16 " + shape({"N", eq("K", K)}), weight);
  check_same_device(op, "weight", weight, x, "x");
  return {size_of<I>(x, 0), size_of<I>(weight, 0), K};
}

template <class I>
StreamDimsT<I> validate_mhc_pre(const at::Tensor& residual, const at::Tensor& fn,
                                const at::Tensor& hc_scale, const at::Tensor& hc_base,
                                const PreArgs& a, const std::optional<at::Tensor>& norm_weight) {
  constexpr const char* op = "mhc_pre";
  const StreamDimsT<I> d = check_residual<I>(op, residual);
  check_pre_params(op, d, residual, fn, hc_scale, hc_base, a, norm_weight);
  return d;
}

template <class I>
StreamDimsT<I> validate_mhc_post(const at::Tensor& x, const at::Tensor& residual,
                                 const at::Tensor& post_mix, const at::Tensor& comb_mix) {
  constexpr const char* op = "mhc_post";
  const StreamDimsT<I> d = check_residual<I>(op, residual);
  check_post_args(op, d, residual, x, post_mix, comb_mix);
  return d;
}

template <class I>
StreamDimsT<I> validate_mhc_fused_post_pre(const at::Tensor& x, const at::Tensor& residual,
                                           const at::Tensor& post_mix,
                                           const at::Tensor& comb_mix, const at::Tensor& fn,
                                           const at::Tensor& hc_scale,
                                           const at::Tensor& hc_base, const PreArgs& a,
                                           const std::optional<at::Tensor>& norm_weight) {
  constexpr const char* op = "mhc_fused_post_pre";
  const StreamDimsT<I> d = check_residual<I>(op, residual);
  check_post_args(op, d, residual, x, post_mix, comb_mix);
  check_pre_params(op, d, residual, fn, hc_scale, hc_base, a, norm_weight);
  return d;
}

template <class I>
StreamDimsT<I> validate_hc_head(const at::Tensor& residual, const at::Tensor& fn,
                                const at::Tensor& hc_scale, const at::Tensor& hc_base,
                                double rms_eps, double hc_eps) {
  constexpr const char* op = "hc_head";
  const StreamDimsT<I> d = check_residual<I>(op, residual);
  check_head_params(op, d, residual, fn, hc_scale, hc_base, rms_eps, hc_eps);
  return d;
}

template <class I>
StreamDimsT<I> validate_mhc_stats(const at::Tensor& residual, const at::Tensor& fn,
                                  const at::Tensor& hc_scale, const at::Tensor& hc_base,
                                  const PreArgs& a) {
  constexpr const char* op = "mhc_stats";
  const StreamDimsT<I> d = check_residual<I>(op, residual);
  check_pre_params(op, d, residual, fn, hc_scale, hc_base, a, std::nullopt);
  return d;
}

template <class I>
StreamDimsT<I> validate_mhc_combine(const at::Tensor& residual, const at::Tensor& pre_mix,
                                    const std::optional<at::Tensor>& norm_weight,
                                    double norm_eps) {
  constexpr const char* op = "mhc_combine";
  const StreamDimsT<I> d = check_residual<I>(op, residual);
  check_combine_args(op, d, residual, pre_mix, norm_weight, norm_eps);
  return d;
}

template <class I>
StreamDimsT<I> validate_mhc_post_combine(const at::Tensor& x, const at::Tensor& residual,
                                         const at::Tensor& post_mix, const at::Tensor& comb_mix,
                                         const at::Tensor& pre_mix,
                                         const std::optional<at::Tensor>& norm_weight,
                                         double norm_eps) {
  constexpr const char* op = "mhc_post_combine";
  const StreamDimsT<I> d = check_residual<I>(op, residual);
  check_post_args(op, d, residual, x, post_mix, comb_mix);
  check_combine_args(op, d, residual, pre_mix, norm_weight, norm_eps);
  return d;
}

template <class I>
StreamDimsT<I> validate_mhc_shifted_post_pre(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& post_mix,
    const at::Tensor& comb_mix, const at::Tensor& pre_mix, const at::Tensor& fn,
    const at::Tensor& hc_scale, const at::Tensor& hc_base, const PreArgs& a,
    const std::optional<at::Tensor>& norm_weight) {
  constexpr const char* op = "mhc_shifted_post_pre";
  const StreamDimsT<I> d = check_residual<I>(op, residual);
  check_post_args(op, d, residual, x, post_mix, comb_mix);
  check_pre_mix(op, d, residual, pre_mix);
  check_pre_params(op, d, residual, fn, hc_scale, hc_base, a, norm_weight);
  return d;
}

template <class I>
GemmDimsT<I> validate_hc_prenorm_gemm(const at::Tensor& x, const at::Tensor& fn,
                                      int64_t num_splits) {
  return check_prenorm<I>("hc_prenorm_gemm", x, fn, num_splits);
}

template <class I>
GemmDimsT<I> validate_tf32_hc_prenorm_gemm(const at::Tensor& x, const at::Tensor& fn,
                                           const at::Tensor& out, const at::Tensor& sqrsum,
                                           std::optional<int64_t> num_splits) {
  constexpr const char* op = "tf32_hc_prenorm_gemm";
  const GemmDimsT<I> g = check_prenorm<I>(op, x, fn, num_splits.value_or(1));
  check_prenorm_outputs(op, g, x, out, sqrsum, num_splits);
  check_no_overlap(op, "out", out, "fn", fn);
  check_no_overlap(op, "sqrsum", sqrsum, "fn", fn);
  return g;
}

template <class I>
GemmDimsT<I> validate_linear_bf16_fp32(const at::Tensor& x, const at::Tensor& weight) {
  return check_linear<I>("linear_bf16_fp32", x, weight);
}

#define MHC_INSTANTIATE_CHECKS(I)                                                              \
  template StreamDimsT<I> check_residual<I>(const char*, const at::Tensor&);                   \
  template void check_pre_params<I>(const char*, const StreamDimsT<I>&, const at::Tensor&,     \
                                    const at::Tensor&, const at::Tensor&, const at::Tensor&,   \
                                    const PreArgs&, const std::optional<at::Tensor>&);         \
  template void check_post_args<I>(const char*, const StreamDimsT<I>&, const at::Tensor&,      \
                                   const at::Tensor&, const at::Tensor&, const at::Tensor&);   \
  template void check_head_params<I>(const char*, const StreamDimsT<I>&, const at::Tensor&,    \
                                     const at::Tensor&, const at::Tensor&, const at::Tensor&,  \
                                     double, double);                                          \
  template GemmDimsT<I> check_prenorm<I>(const char*, const at::Tensor&, const at::Tensor&,    \
                                         int64_t);                                             \
  template void check_prenorm_outputs<I>(const char*, const GemmDimsT<I>&, const at::Tensor&,  \
                                         const at::Tensor&, const at::Tensor&,                 \
                                         std::optional<int64_t>);                              \
  template GemmDimsT<I> check_linear<I>(const char*, const at::Tensor&, const at::Tensor&);    \
  template StreamDimsT<I> validate_mhc_pre<I>(const at::Tensor&, const at::Tensor&,            \
                                              const at::Tensor&, const at::Tensor&,            \
                                              const PreArgs&,                                  \
                                              const std::optional<at::Tensor>&);               \
  template StreamDimsT<I> validate_mhc_post<I>(const at::Tensor&, const at::Tensor&,           \
                                               const at::Tensor&, const at::Tensor&);          \
  template StreamDimsT<I> validate_mhc_fused_post_pre<I>(                                      \
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,              \
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const PreArgs&,                 \
      const std::optional<at::Tensor>&);                                                       \
  template StreamDimsT<I> validate_hc_head<I>(const at::Tensor&, const at::Tensor&,            \
                                              const at::Tensor&, const at::Tensor&, double,    \
                                              double);                                         \
  template StreamDimsT<I> validate_mhc_stats<I>(const at::Tensor&, const at::Tensor&,          \
                                                const at::Tensor&, const at::Tensor&,          \
                                                const PreArgs&);                               \
  template StreamDimsT<I> validate_mhc_combine<I>(const at::Tensor&, const at::Tensor&,        \
                                                  const std::optional<at::Tensor>&, double);   \
  template StreamDimsT<I> validate_mhc_post_combine<I>(                                        \
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,              \
      const at::Tensor&, const std::optional<at::Tensor>&, double);                            \
  template StreamDimsT<I> validate_mhc_shifted_post_pre<I>(                                    \
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,              \
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,              \
      const PreArgs&, const std::optional<at::Tensor>&);                                       \
  template GemmDimsT<I> validate_hc_prenorm_gemm<I>(const at::Tensor&, const at::Tensor&,      \
                                                    int64_t);                                  \
  template GemmDimsT<I> validate_tf32_hc_prenorm_gemm<I>(const at::Tensor&, const at::Tensor&, \
                                                         const at::Tensor&, const at::Tensor&, \
                                                         std::optional<int64_t>);              \
  template GemmDimsT<I> validate_linear_bf16_fp32<I>(const at::Tensor&, const at::Tensor&);

MHC_INSTANTIATE_CHECKS(int64_t)
MHC_INSTANTIATE_CHECKS(c10::SymInt)
#undef MHC_INSTANTIATE_CHECKS

}  // namespace mhc
