// Executes a Plan of mhc_pre, mhc_fused_post_pre or hc_head: the only launcher of the kernels
// in hc_stage_fn.cuh, hc_main_prehead.cuh, hc_main_fused.cuh, hc_epilogue.cuh, hc_cluster.cuh
// and hc_head_persistent.cuh. It decides nothing: the kernels and their launch shapes are those
// of launches_of(plan) (core/launches.cpp); here each launch gets its template instance, its
// parameters and its buffers. The op entry points (mhc_pre.cu, mhc_fused_post_pre.cu,
// hc_head.cu) validate, allocate the outputs, plan and call run_hc.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <type_traits>

#include "core/geometry.h"
#include "core/plan.h"
#include "core/study.h"
#include "cuda/common.cuh"
#include "cuda/hc_args.cuh"
#include "cuda/hc_cluster.cuh"
#include "cuda/hc_epilogue.cuh"
#include "cuda/hc_head_persistent.cuh"
#include "cuda/hc_main_fused.cuh"
#include "cuda/hc_main_prehead.cuh"
#ifdef MHC_STUDY
#include "cuda/hc_pipe.cuh"
#endif
#include "cuda/hc_stage_fn.cuh"

namespace mhc::cuda {

// Shared-memory limits of `device` that launch shapes depend on (launches_of).
inline DeviceLimits device_limits(int device) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device);
  DeviceLimits lim;
  lim.smem_per_sm = static_cast<int64_t>(prop->sharedMemPerMultiprocessor);
  lim.smem_reserved_per_block = static_cast<int64_t>(prop->reservedSharedMemPerBlock);
  lim.smem_optin_per_block = static_cast<int64_t>(prop->sharedMemPerBlockOptin);
  return lim;
}

// Raises a cluster kernel's dynamic shared memory limit to smem and allows clusters of more
// than 8 CTAs, once per kernel, device and size (smem_limit_below, common.cuh) rather than two
// driver calls on every launch.
template <typename Kernel>
void raise_cluster_limits(Kernel kernel, int device, size_t smem) {
  if (!smem_limit_below(reinterpret_cast<const void*>(kernel), device, smem)) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
}

// Launches a cluster kernel as `l` says (grid, block, smem, cluster size), with programmatic
// stream serialisation where supported.
template <typename Kernel>
void launch_cluster(Kernel kernel, int device, const Launch& l, cudaStream_t stream,
                    const ClusterParams& cp) {
  const size_t smem = static_cast<size_t>(l.smem);
  raise_cluster_limits(kernel, device, smem);
  launch_clustered(kernel, device, dim3(static_cast<unsigned>(l.grid_x)),
                   dim3(static_cast<unsigned>(l.block)), smem, stream, l.cluster, cp);
}

// Clusters of `kernel` (cs CTAs, smem bytes each) resident on `device` at once, asked once per
// kernel and device (cudaOccupancyMaxActiveClusters honours the raised limits).
template <typename Kernel>
int64_t resident_clusters(Kernel kernel, int device, int cs, size_t smem) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, int64_t> fit;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
  auto it = fit.find(key);
  if (it != fit.end()) return it->second;
  raise_cluster_limits(kernel, device, smem);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(cs * 64));
  cfg.blockDim = dim3(kClusterWarps * 32);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(cs);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, kernel, &cfg));
  TORCH_CHECK(n > 0, "hc_head: no cluster of ", cs, " CTAs with ", smem,
              " bytes of shared memory fits on device ", device);
  return fit.emplace(key, n).first->second;
}

// The persistent hc_head instance of a plan: (H = 4096, 2 buffers) or (H = 7168, 3 buffers,
// rotated), the two the planner chooses; f(kernel, shape) is called with it.
template <int N, int HS, typename F>
void with_head_persist_kernel(const Plan& plan, F&& f) {
  if constexpr (N == 4 && HS == 4096) {
    if (plan.cluster_buffers == 2 && !plan.cluster_rotated)
      return f(hc_head_persist_kernel<4, 4096, 2, false>, HeadPersistShape<4, 4096>{});
  } else if constexpr (N == 4 && HS == 7168) {
    if (plan.cluster_buffers == 3 && plan.cluster_rotated)
      return f(hc_head_persist_kernel<4, 7168, 3, true>, HeadPersistShape<4, 7168>{});
  }
  TORCH_INTERNAL_ASSERT(false, "no persistent hc_head kernel for n ", N, ", H ", HS, ", ",
                        plan.cluster_buffers, " buffers");
}

template <int N, Mode MODE, int HS>
void run_cluster_plan(const Plan& plan, const HcCall& a, int device, cudaStream_t stream) {
  static_assert(MODE == Mode::HEAD && N <= 4, "CLUSTER plans: hc_head, n <= 4");
  const ClusterShape cs = head_cluster_shape(N, a.H);
  TORCH_INTERNAL_ASSERT(cs.size > 0 && cs.size == plan.num_splits &&
                            cs.block_tokens == plan.block_tokens,
                        "hc_head: cluster plan does not match the kernel's geometry");
  ClusterParams cp{};
  cp.res = a.res;
  cp.fn = a.fn;
  cp.scale = a.scale;
  cp.base = a.base;
  cp.out = a.out;
  cp.T = a.T;
  cp.H = a.H;
  cp.G = static_cast<int>(ceil_div(a.H, kGroupCols));
  cp.gpc = cs.groups;
  cp.CS = cs.size;
  cp.stages = std::min(kClusterMaxStages, cs.groups);
  cp.rms_eps = a.rms_eps;
  cp.pre_eps = a.pre_eps;
  DeviceLimits lim = device_limits(device);
  if (plan.cluster_buffers == 0) {
    const Launches ls = launches_of(plan, a.T, N, a.H, lim);
    return launch_cluster(hc_cluster_kernel<N>, device, ls.step[0], stream, cp);
  }
  with_head_persist_kernel<N, HS>(plan, [&](auto kernel, auto shape) {
    using PS = decltype(shape);
    static_assert(PS::CS > 0, "persistent geometry");
    lim.resident_clusters = resident_clusters(
        kernel, device, PS::CS, PS::bytes(plan.cluster_buffers, plan.cluster_rotated ? 3 : 2));
    launch_cluster(kernel, device, launches_of(plan, a.T, N, a.H, lim).step[0], stream, cp);
  });
}

// The template instance of the plan's main kernel, as main_instance (core/plan.h) names it:
// FULL_K (whole K, hidden_spec HS, the folded norm for pre / fused) or SPLIT_K (any H), with half
// units (fused), the ring, or 32-token blocks (pre / head). NORM_OK false leaves out the norm
// instances (mhc_stats has no stream sum).
template <int N, Mode MODE, int HS, bool NORM_OK, typename F>
void with_main_kernel(const Plan& plan, F&& f) {
  const MainInstance m = main_instance(plan);
  const auto pick = [&](auto fullk, auto normk) {
    constexpr bool FK = decltype(fullk)::value, NM = decltype(normk)::value;
    constexpr int hs = FK ? HS : 0;
    if constexpr (MODE == Mode::FUSED) {
      if constexpr (!FK && N % 2 == 0) {
        if (m.half) return f(hc_fused_main_kernel<N, FK, NM, hs, true, false>);
      }
      if (m.ring) return f(hc_fused_main_kernel<N, FK, NM, hs, false, true>);
      return f(hc_fused_main_kernel<N, FK, NM, hs, false, false>);
    } else {
      if (m.ring) return f(hc_prehead_main_kernel<N, MODE, FK, NM, hs, true, false>);
      if constexpr (!FK && N <= 4) {
        if (m.small) return f(hc_prehead_main_kernel<N, MODE, FK, NM, hs, false, true>);
      }
      return f(hc_prehead_main_kernel<N, MODE, FK, NM, hs, false, false>);
    }
  };
  if (m.full_k) {
    if constexpr (MODE != Mode::HEAD && NORM_OK) {
      if (m.norm) return pick(std::true_type{}, std::true_type{});
    }
    return pick(std::true_type{}, std::false_type{});
  }
  return pick(std::false_type{}, std::false_type{});
}

// The members that MainParams and EpiParams both take from the call: gate parameters, outputs
// and sizes.
template <typename P>
void set_call_fields(P& p, const HcCall& a) {
  p.scale = a.scale;
  p.base = a.base;
  p.norm_w = a.norm_w;
  p.pre_out = a.pre_out;
  p.post_out = a.post_out;
  p.comb_out = a.comb_out;
  p.out = a.out;
  p.T = a.T;
  p.H = a.H;
  p.rms_eps = a.rms_eps;
  p.pre_eps = a.pre_eps;
  p.sinkhorn_eps = a.sinkhorn_eps;
  p.post_mult = a.post_mult;
  p.norm_eps = a.norm_eps;
  p.repeat = a.repeat;
}

// The main kernel's parameters of a call under a SPLIT_K / FULL_K plan: the call's fields, the
// plan's split of the K groups and L2 policy; fn unstaged and no partial buffer yet (the
// launcher sets fnf and ws).
inline MainParams main_params(const Plan& plan, const HcCall& a) {
  MainParams mp{};
  set_call_fields(mp, a);
  mp.res = a.res;
  mp.x = a.x;
  mp.post_in = a.post_in;
  mp.comb_in = a.comb_in;
  mp.res_out = a.res_out;
  mp.fn = a.fn;
  mp.fnf = nullptr;
  mp.ws = nullptr;
  mp.G = static_cast<int>(ceil_div(a.H, kGroupCols));
  mp.S = plan.num_splits;
  mp.gpc = static_cast<int>(ceil_div(mp.G, mp.S));
  TORCH_INTERNAL_ASSERT(mp.S >= 1 && (mp.S - 1) * mp.gpc < mp.G, "plan splits ", mp.S,
                        " leave a split of ", mp.G, " K groups empty");
  mp.evict_inputs = plan.evict_inputs ? 1 : 0;
  return mp;
}

// Buffers that the token chunks of one call share (the chunk_tokens study knob): fn staged
// once, and one SPLIT_K partial buffer for every chunk that fits it (stream order: a chunk's
// main kernel waits for the previous chunk's epilogue before it writes).
struct ChunkShared {
  at::Tensor staged, ws;
};

template <int N, Mode MODE, int HS, bool NORM_OK = true>
void run_hc_spec(const Plan& plan, const HcCall& a, const at::TensorOptions& fopts, int device,
                 cudaStream_t stream, ChunkShared* shared = nullptr) {
  if (plan.variant == Variant::CLUSTER) {
    if constexpr (MODE == Mode::HEAD && N <= 4)
      return run_cluster_plan<N, MODE, HS>(plan, a, device, stream);
    TORCH_INTERNAL_ASSERT(false, "no cluster kernel for this op and hc_mult ", N);
  }
  using Sh = Shape<N, MODE>;
  const bool full = plan.variant == Variant::FULL_K;
  const bool norm = a.norm_w != nullptr;
  TORCH_INTERNAL_ASSERT(norm == plan.norm, "plan and call disagree on the folded norm");
  const Launches ls = launches_of(plan, a.T, N, a.H, device_limits(device));
  MainParams mp = main_params(plan, a);
  const int G = mp.G, S = mp.S;

  at::Tensor staged;  // kept alive until the main kernel is enqueued (stream-ordered reuse)
  at::Tensor ws;      // SPLIT_K partials [T, S, MP]
  for (int i = 0; i < ls.count; ++i) {
    const Launch& l = ls.step[i];
    const dim3 grid(static_cast<unsigned>(l.grid_x), static_cast<unsigned>(l.grid_y));
    const dim3 block(static_cast<unsigned>(l.block));
    const size_t smem = static_cast<size_t>(l.smem);
    switch (l.role) {
      case KernelRole::STAGE_FN:
        if constexpr (MODE != Mode::HEAD) {
          if (shared != nullptr && shared->staged.defined()) {  // staged by an earlier chunk
            mp.fnf = reinterpret_cast<const uint4*>(shared->staged.data_ptr<float>());
            break;
          }
          const int64_t items = static_cast<int64_t>(G) * N * Sh::NT;  // one warp each
          staged = at::empty({items * kParts * 32 * 4}, fopts);         // uint4 per lane, part
          uint4* fnf = reinterpret_cast<uint4*>(staged.data_ptr<float>());
          mp.fnf = fnf;
          if (shared != nullptr) shared->staged = staged;
          launch(hc_stage_fn_kernel<N, MODE>, device, grid, block, smem, stream, a.fn, fnf, a.H,
                 G);
          break;
        }
        TORCH_INTERNAL_ASSERT(false, "hc_head never stages fn");
      case KernelRole::MAIN:
        if (!full) {
          const int64_t need = a.T * S * Sh::MP;
          if (shared != nullptr && shared->ws.defined() && shared->ws.numel() >= need) {
            ws = shared->ws;
          } else {
            ws = at::empty({a.T, S, Sh::MP}, fopts);
            if (shared != nullptr) shared->ws = ws;
          }
          mp.ws = ws.data_ptr<float>();
        }
        with_main_kernel<N, MODE, HS, NORM_OK>(plan, [&](auto kernel) {
          launch(kernel, device, grid, block, smem, stream, mp);
        });
        break;
      case KernelRole::EPILOGUE: {
        constexpr Mode EM = MODE == Mode::HEAD ? Mode::HEAD : Mode::PRE;
        const int HC = plan.epilogue_chunks;
        EpiParams ep{};
        set_call_fields(ep, a);
        ep.src = MODE == Mode::FUSED ? a.res_out : a.res;
        ep.ws = ws.data_ptr<float>();
        ep.S = S;
        ep.HC = HC;
        ep.CW = static_cast<int>(ceil_div(a.H / 8, HC));
        ep.src_is_input = MODE != Mode::FUSED && a.out != nullptr;
        ep.pre_in = a.pre_in;
        TORCH_INTERNAL_ASSERT(plan.fused_boundary == (a.pre_in != nullptr),
                              "plan and call disagree on the fused boundary");
        if constexpr (MODE == Mode::FUSED && HS == 0) {  // the boundary's plans are generic in H
          if (plan.fused_boundary) {
            TORCH_INTERNAL_ASSERT(!norm || HC == 1, "the boundary's norm needs whole rows");
            const auto go = [&](auto kernel) {
              launch(kernel, device, grid, block, smem, stream, ep);
            };
            if (norm) go(hc_epilogue_kernel<N, EM, true, 0, true>);
            else go(hc_epilogue_kernel<N, EM, false, 0, true>);
            break;
          }
        }
        TORCH_INTERNAL_ASSERT(!plan.fused_boundary, "no fused boundary for hidden_spec ", HS);
        if constexpr (EM != Mode::HEAD && NORM_OK) {
          if (norm) {
            launch(hc_epilogue_kernel<N, EM, true, HS>, device, grid, block, smem, stream, ep);
            break;
          }
        }
        launch(hc_epilogue_kernel<N, EM, false, HS>, device, grid, block, smem, stream, ep);
        break;
      }
      default:
        TORCH_INTERNAL_ASSERT(false, "unexpected launch in a SPLIT_K / FULL_K plan");
    }
  }
}

// Runs the plan's kernels for hc_mult a.n (compile-time N) and the plan's hidden_spec. NORM_OK
// false: mhc_stats' plans (no stream sum), whose kernels are also specialised for H = 5120.
template <Mode MODE, bool NORM_OK = true>
void run_hc_once(const Plan& plan, const HcCall& a, const at::TensorOptions& fopts, int device,
                 cudaStream_t stream, ChunkShared* shared = nullptr) {
  MHC_DISPATCH_HC_MULT(a.n, N, [&] {
    if constexpr (N == 4) {
      switch (plan.hidden_spec) {
        case 4096:
          return run_hc_spec<4, MODE, 4096, NORM_OK>(plan, a, fopts, device, stream, shared);
        case 7168:
          return run_hc_spec<4, MODE, 7168, NORM_OK>(plan, a, fopts, device, stream, shared);
        case 5120:
          if constexpr (!NORM_OK)
            return run_hc_spec<4, MODE, 5120, false>(plan, a, fopts, device, stream, shared);
          break;
        default: break;
      }
    }
    return run_hc_spec<N, MODE, 0, NORM_OK>(plan, a, fopts, device, stream, shared);
  });
}

#ifdef MHC_STUDY
// Tokens t0 .. t0 + len - 1 of a call: every per-token pointer moved to row t0.
inline HcCall token_slice(const HcCall& a, int64_t t0, int64_t len) {
  HcCall c = a;
  const int64_t n = a.n, H = a.H;
  const auto at_row = [t0](auto* ptr, int64_t per_token) {
    return ptr ? ptr + t0 * per_token : ptr;
  };
  c.T = len;
  c.res = at_row(a.res, n * H);
  c.x = at_row(a.x, H);
  c.post_in = at_row(a.post_in, n);
  c.comb_in = at_row(a.comb_in, n * n);
  c.res_out = at_row(a.res_out, n * H);
  c.pre_in = at_row(a.pre_in, n);
  c.pre_out = at_row(a.pre_out, n);
  c.post_out = at_row(a.post_out, n);
  c.comb_out = at_row(a.comb_out, n * n);
  c.out = at_row(a.out, H);
  return c;
}

// mhc_pre (n = 4, the stream sum's width HS) or mhc_stats (a.out null, HS 0) through the
// pipelined kernel (hc_pipe.cuh): the SPLIT_K plan of `tokens` tokens over all of the call's T
// in one launch. False where that plan is not one the kernel runs (64-token blocks, 8 warps,
// raw fn, no ring).
template <int HS>
bool run_pipe(const HcCall& a, int64_t tokens, const at::TensorOptions& fopts, int device,
              cudaStream_t stream) {
  const bool norm = a.norm_w != nullptr;
  const KernelType kind = a.out != nullptr ? KernelType::MHC_PRE : KernelType::MHC_STATS;
  const Plan cp = plan_of(kind, tokens, 4, a.H, num_sms(device),
                          {norm, false, false, supports_clusters(device)});
  const MainInstance m = main_instance(cp);
  if (cp.variant != Variant::SPLIT_K || cp.staged_fn || m.ring || m.small ||
      m.tt != kPipeTiles || cp.main_warps != kPipeWarps)
    return false;
  using Sh = Shape<4, Mode::PRE>;
  MainParams mp = main_params(cp, a);
  at::Tensor ws = at::empty({a.T, mp.S, Sh::MP}, fopts);
  mp.ws = ws.data_ptr<float>();
  PipeParams q{};
  q.blocks = ceil_div(a.T, int64_t{16} * kPipeTiles);
  q.fin = 16 * kPipeTiles / kPipeTokens;
  const int64_t per_step = mp.S + q.fin, sms = num_sms(device);
  q.lag = static_cast<int>(ceil_div(sms, per_step)) + 1;
  const int64_t grid = std::min(sms, (q.blocks + q.lag) * per_step);
  at::Tensor done = at::zeros({q.blocks}, fopts.dtype(at::kInt));
  q.done = done.data_ptr<int>();
  const Launches ls = launches_of(cp, tokens, 4, a.H, device_limits(device));
  TORCH_INTERNAL_ASSERT(ls.count == 2 && ls.step[0].role == KernelRole::MAIN, "pipe: plan");
  const size_t smem = static_cast<size_t>(ls.step[0].smem);
  const dim3 g(static_cast<unsigned>(grid)), b(kPipeThreads);
  if constexpr (HS > 0) {  // (stats, HS 0, has no norm)
    if (norm) {
      launch(hc_pipe_kernel<4, true, HS>, device, g, b, smem, stream, mp, q);
      return true;
    }
  }
  launch(hc_pipe_kernel<4, false, HS>, device, g, b, smem, stream, mp, q);
  return true;
}
#endif

// run_hc_once, or in a study build: with the pipe_tokens knob set, mhc_pre at n = 4 and
// H = 4096 / 7168, and mhc_stats at n = 4, through the pipelined kernel from T above it; with
// the chunk_tokens knob set, the plans of token chunks one after the other (pre, fused and
// stats outside the fused boundary; not CLUSTER plans).
template <Mode MODE, bool NORM_OK = true>
void run_hc(const Plan& plan, const HcCall& a, const at::TensorOptions& fopts, int device,
            cudaStream_t stream) {
#ifdef MHC_STUDY
  if constexpr (MODE == Mode::PRE) {
    const int64_t pipe = study::knob(study::Knob::PIPE_TOKENS);
    if (pipe > 0 && a.T > pipe && a.n == 4 && plan.variant != Variant::CLUSTER) {
      if constexpr (NORM_OK) {
        if (a.H == 4096 && run_pipe<4096>(a, pipe, fopts, device, stream)) return;
        if (a.H == 7168 && run_pipe<7168>(a, pipe, fopts, device, stream)) return;
      } else {
        if (a.norm_w == nullptr && run_pipe<0>(a, pipe, fopts, device, stream)) return;
      }
    }
  }
  const int64_t chunk = study::knob(study::Knob::CHUNK_TOKENS);
  if (chunk > 0 && a.T > chunk && MODE != Mode::HEAD && plan.variant != Variant::CLUSTER &&
      !plan.fused_boundary) {
    ChunkShared shared;
    for (int64_t t0 = 0; t0 < a.T; t0 += chunk) {
      const HcCall c = token_slice(a, t0, std::min(chunk, a.T - t0));
      const Plan cp = plan_of(plan.kind, c.T, a.n, a.H, num_sms(device),
                              {plan.norm, false, false, supports_clusters(device)});
      run_hc_once<MODE, NORM_OK>(cp, c, fopts, device, stream, &shared);
    }
    return;
  }
#endif
  run_hc_once<MODE, NORM_OK>(plan, a, fopts, device, stream);
}

}  // namespace mhc::cuda
