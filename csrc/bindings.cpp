// The Python module mhc_ops._C. Importing it loads the library, which registers the ops
// (registration.cpp); the bindings here are only what is not an op: the planner and the
// registry of launched plans (mhc_ops.plan, mhc_ops.warmup), the argument checks of each op for
// its fake (mhc_ops/_fake.py), and in a study build the study knobs (core/study.h).
#include <torch/extension.h>

#include "core/plan.h"
#include "core/study.h"
#include "core/validate.h"

namespace py = pybind11;

namespace {
py::tuple to_py(const mhc::Plan& p) {
  return py::make_tuple(static_cast<int>(p.kind), mhc::variant_name(p.variant), p.num_splits,
                        p.block_tokens, p.hc_mult, p.hidden_spec, p.norm, p.staged_fn,
                        p.split_streams, p.fn_ring, p.evict_inputs, p.main_warps,
                        p.epilogue_chunks, p.epilogue_ctas_per_sm, p.cluster_buffers,
                        p.cluster_rotated, p.fused_boundary);
}
mhc::PlanOptions options(bool norm, bool batch_invariant, bool fp32_gemm, bool clusters) {
  mhc::PlanOptions o;
  o.norm = norm;
  o.batch_invariant = batch_invariant;
  o.fp32_gemm = fp32_gemm;
  o.clusters = clusters;
  return o;
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mhc_ops native library: ops are under torch.ops.mhc";
#ifdef MHC_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("upstream_num_splits", &mhc::upstream_num_splits, py::arg("num_tokens"), py::arg("k"),
        py::arg("num_sms"));
  m.def(
      "plan_of",
      [](int kind, int64_t t, int64_t n, int64_t h, int64_t sms, bool norm, bool bi, bool fp32,
         bool clusters) {
        return to_py(mhc::plan_of(static_cast<mhc::KernelType>(kind), t, n, h, sms,
                                  options(norm, bi, fp32, clusters)));
      },
      py::arg("kind"), py::arg("num_tokens"), py::arg("hc_mult"), py::arg("hidden_size"),
      py::arg("num_sms"), py::arg("norm"), py::arg("batch_invariant"), py::arg("fp32_gemm"),
      py::arg("clusters"));
  m.def(
      "token_count_representatives",
      [](int kind, int64_t max_tokens, int64_t n, int64_t h, int64_t sms, bool norm, bool bi,
         bool fp32, bool clusters) {
        return mhc::token_count_representatives(static_cast<mhc::KernelType>(kind), max_tokens,
                                                n, h, sms, options(norm, bi, fp32, clusters));
      },
      py::arg("kind"), py::arg("max_tokens"), py::arg("hc_mult"), py::arg("hidden_size"),
      py::arg("num_sms"), py::arg("norm"), py::arg("batch_invariant"), py::arg("fp32_gemm"),
      py::arg("clusters"));
  // The launches of plan_of(...) at T: (kernel, grid_x, grid_y, block, smem, cluster) each
  // (core/plan.h launches_of; tests/test_launch_table.py).
  m.def(
      "launches_of",
      [](int kind, int64_t t, int64_t n, int64_t h, int64_t sms, bool norm, bool bi, bool fp32,
         bool clusters, int64_t resident_clusters) {
        const auto k = static_cast<mhc::KernelType>(kind);
        const bool prenorm = k == mhc::KernelType::PRENORM_GEMM;
        // The prenorm GEMM is planned on K and launched with its fn rows n (n + 2).
        const mhc::Plan plan = mhc::plan_of(k, t, prenorm ? 1 : n, prenorm ? n * h : h, sms,
                                            options(norm, bi, fp32, clusters));
        mhc::DeviceLimits limits;
        limits.resident_clusters = resident_clusters;
        const int64_t rows = prenorm ? n * (n + 2) : n;
        const mhc::Launches ls = mhc::launches_of(plan, t, rows, prenorm ? n * h : h, limits);
        py::list out;
        for (int i = 0; i < ls.count; ++i) {
          const mhc::Launch& l = ls.step[i];
          out.append(py::make_tuple(mhc::kernel_name(plan, l, rows), l.grid_x, l.grid_y, l.block,
                                    l.smem, l.cluster));
        }
        return out;
      },
      py::arg("kind"), py::arg("num_tokens"), py::arg("hc_mult"), py::arg("hidden_size"),
      py::arg("num_sms"), py::arg("norm"), py::arg("batch_invariant"), py::arg("fp32_gemm"),
      py::arg("clusters"), py::arg("resident_clusters"));
#ifdef MHC_STUDY
  // Study build only: each knob as `name()` and `set_name(value)` (returns the previous value).
  m.attr("study_build") = true;
  for (int i = 0; i < static_cast<int>(mhc::study::Knob::COUNT); ++i) {
    const auto k = static_cast<mhc::study::Knob>(i);
    const std::string name = mhc::study::knob_name(k);
    m.def(name.c_str(), [k] { return mhc::study::knob(k); });
    m.def(("set_" + name).c_str(), [k](int64_t v) { return mhc::study::set_knob(k, v); },
          py::arg("value"));
  }
#else
  m.attr("study_build") = false;
#endif
  m.def("launched_plans", [] {
    py::list out;
    for (const auto& r : mhc::launched_plans())
      out.append(py::make_tuple(r.device, to_py(r.plan), r.first_seen));
    return out;
  });
  m.def("plan_sequence", &mhc::plan_sequence);
  m.def("clear_launched_plans", &mhc::clear_launched_plans);

  // Every check of each op (core/validate.h), the code its CPU and CUDA entry points run, on
  // c10::SymInt sizes so that fake tensors with symbolic shapes are checked too (with guards).
  // Each raises the op's RuntimeError or returns None; the fakes then only build the outputs.
  using at::Tensor;
  using OptTensor = std::optional<at::Tensor>;
  using Sym = c10::SymInt;
  m.def(
      "validate_mhc_pre",
      [](const Tensor& residual, const Tensor& fn, const Tensor& hc_scale, const Tensor& hc_base,
         double rms_eps, double hc_pre_eps, double hc_sinkhorn_eps, double hc_post_mult_value,
         int64_t sinkhorn_repeat, const OptTensor& norm_weight, double norm_eps) {
        mhc::validate_mhc_pre<Sym>(residual, fn, hc_scale, hc_base,
                                   {rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
                                    sinkhorn_repeat, norm_eps},
                                   norm_weight);
      },
      py::arg("residual"), py::arg("fn"), py::arg("hc_scale"), py::arg("hc_base"),
      py::arg("rms_eps"), py::arg("hc_pre_eps"), py::arg("hc_sinkhorn_eps"),
      py::arg("hc_post_mult_value"), py::arg("sinkhorn_repeat"), py::arg("norm_weight"),
      py::arg("norm_eps"));
  m.def(
      "validate_mhc_post",
      [](const Tensor& x, const Tensor& residual, const Tensor& post_mix,
         const Tensor& comb_mix) { mhc::validate_mhc_post<Sym>(x, residual, post_mix, comb_mix); },
      py::arg("x"), py::arg("residual"), py::arg("post_mix"), py::arg("comb_mix"));
  m.def(
      "validate_mhc_fused_post_pre",
      [](const Tensor& x, const Tensor& residual, const Tensor& post_mix, const Tensor& comb_mix,
         const Tensor& fn, const Tensor& hc_scale, const Tensor& hc_base, double rms_eps,
         double hc_pre_eps, double hc_sinkhorn_eps, double hc_post_mult_value,
         int64_t sinkhorn_repeat, const OptTensor& norm_weight, double norm_eps) {
        mhc::validate_mhc_fused_post_pre<Sym>(
            x, residual, post_mix, comb_mix, fn, hc_scale, hc_base,
            {rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, norm_eps},
            norm_weight);
      },
      py::arg("x"), py::arg("residual"), py::arg("post_mix"), py::arg("comb_mix"), py::arg("fn"),
      py::arg("hc_scale"), py::arg("hc_base"), py::arg("rms_eps"), py::arg("hc_pre_eps"),
      py::arg("hc_sinkhorn_eps"), py::arg("hc_post_mult_value"), py::arg("sinkhorn_repeat"),
      py::arg("norm_weight"), py::arg("norm_eps"));
  m.def(
      "validate_hc_head",
      [](const Tensor& residual, const Tensor& fn, const Tensor& hc_scale, const Tensor& hc_base,
         double rms_eps, double hc_eps) {
        mhc::validate_hc_head<Sym>(residual, fn, hc_scale, hc_base, rms_eps, hc_eps);
      },
      py::arg("residual"), py::arg("fn"), py::arg("hc_scale"), py::arg("hc_base"),
      py::arg("rms_eps"), py::arg("hc_eps"));
  m.def(
      "validate_mhc_stats",
      [](const Tensor& residual, const Tensor& fn, const Tensor& hc_scale, const Tensor& hc_base,
         double rms_eps, double hc_pre_eps, double hc_sinkhorn_eps, double hc_post_mult_value,
         int64_t sinkhorn_repeat) {
        mhc::validate_mhc_stats<Sym>(residual, fn, hc_scale, hc_base,
                                     {rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
                                      sinkhorn_repeat, 0.0});
      },
      py::arg("residual"), py::arg("fn"), py::arg("hc_scale"), py::arg("hc_base"),
      py::arg("rms_eps"), py::arg("hc_pre_eps"), py::arg("hc_sinkhorn_eps"),
      py::arg("hc_post_mult_value"), py::arg("sinkhorn_repeat"));
  m.def(
      "validate_mhc_combine",
      [](const Tensor& residual, const Tensor& pre_mix, const OptTensor& norm_weight,
         double norm_eps) {
        mhc::validate_mhc_combine<Sym>(residual, pre_mix, norm_weight, norm_eps);
      },
      py::arg("residual"), py::arg("pre_mix"), py::arg("norm_weight"), py::arg("norm_eps"));
  m.def(
      "validate_mhc_post_combine",
      [](const Tensor& x, const Tensor& residual, const Tensor& post_mix, const Tensor& comb_mix,
         const Tensor& pre_mix, const OptTensor& norm_weight, double norm_eps) {
        mhc::validate_mhc_post_combine<Sym>(x, residual, post_mix, comb_mix, pre_mix,
                                            norm_weight, norm_eps);
      },
      py::arg("x"), py::arg("residual"), py::arg("post_mix"), py::arg("comb_mix"),
      py::arg("pre_mix"), py::arg("norm_weight"), py::arg("norm_eps"));
  m.def(
      "validate_mhc_shifted_post_pre",
      [](const Tensor& x, const Tensor& residual, const Tensor& post_mix, const Tensor& comb_mix,
         const Tensor& pre_mix, const Tensor& fn, const Tensor& hc_scale, const Tensor& hc_base,
         double rms_eps, double hc_pre_eps, double hc_sinkhorn_eps, double hc_post_mult_value,
         int64_t sinkhorn_repeat, const OptTensor& norm_weight, double norm_eps) {
        mhc::validate_mhc_shifted_post_pre<Sym>(
            x, residual, post_mix, comb_mix, pre_mix, fn, hc_scale, hc_base,
            {rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, norm_eps},
            norm_weight);
      },
      py::arg("x"), py::arg("residual"), py::arg("post_mix"), py::arg("comb_mix"),
      py::arg("pre_mix"), py::arg("fn"), py::arg("hc_scale"), py::arg("hc_base"),
      py::arg("rms_eps"), py::arg("hc_pre_eps"), py::arg("hc_sinkhorn_eps"),
      py::arg("hc_post_mult_value"), py::arg("sinkhorn_repeat"), py::arg("norm_weight"),
      py::arg("norm_eps"));
  m.def(
      "validate_hc_prenorm_gemm",
      [](const Tensor& x, const Tensor& fn, int64_t num_splits) {
        mhc::validate_hc_prenorm_gemm<Sym>(x, fn, num_splits);
      },
      py::arg("x"), py::arg("fn"), py::arg("num_splits"));
  m.def(
      "validate_tf32_hc_prenorm_gemm",
      [](const Tensor& x, const Tensor& fn, const Tensor& out, const Tensor& sqrsum,
         std::optional<int64_t> num_splits) {
        mhc::validate_tf32_hc_prenorm_gemm<Sym>(x, fn, out, sqrsum, num_splits);
      },
      py::arg("x"), py::arg("fn"), py::arg("out"), py::arg("sqrsum"), py::arg("num_splits"));
  m.def(
      "validate_linear_bf16_fp32",
      [](const Tensor& x, const Tensor& weight) { mhc::validate_linear_bf16_fp32<Sym>(x, weight); },
      py::arg("x"), py::arg("weight"));
}
