"""Timing of the mHC ops against the eager reference, torch.compile of it and the byte floor
(SPEC §8).

For each op, T and H: verify mhc_ops against the float64 reference first, then time each
implementation as the median per call of CUDA-graph replays of >= 10 back-to-back calls,
  * warm: the same inputs every call;
  * cold: the calls rotate over >= 8 input sets (fn included) whose total exceeds 2x L2, so
    fn and the activations come from HBM.
Implementations: mhc_ops (the CUDA kernels), eager (mhc_ops.reference, fp32), compile
(torch.compile of the reference, static shapes, compiled once per point and reused for warm
and cold), mhc_ops_invariant (the CUDA kernels under MHC_BATCH_INVARIANT=1, for the
cost of batch-invariant plans; its rows go to a file of their own, not the SPEC §8 results),
and the serving stacks' own kernels where they import (SPEC §8 peers, called as their
DeepSeek-V4 model code calls them, in their production configuration):
  sglang  sglang 0.5.23's TileLang / Triton kernels (its prenorm GEMM is internal: no row)
  vllm    vLLM 0.33's TileLang kernels with its DeepGEMM prenorm GEMM (when DeepGEMM loads, as
          in a stock vLLM on H100; the run says which)
A peer that does not import is reported and skipped. Each peer kernel variant's first call
(its JIT compile) is timed and saved as the peer's cold start ("first_call_s").
Floor = bytes moved once / device-to-device copy bandwidth measured in this run (bytes read +
written), with
  pre     T·(10H + 80) + 384H          residual in, layer_input + gates out, fn
  post    T·(18H + 80)                 x + residual in, new residual out, gates in
  fused   T·(20H + 160) + 384H         post's bytes + layer_input + gates out, fn
  head    T·10H + 64H                  residual in, [T, H] out, fn [4, 4H] fp32
  prenorm T·(8H + 100·S) + 384H        x [T, 4H] in, S splits of out [T, 24] + sqrsum, fn
(n = 4; prenorm runs upstream's split count S for T, as a DeepGEMM caller would).

DeepSeek-V4.1 (SPEC §2.9, `--model v4.1`: these four ops at H = 5120 unless --ops / --widths say
otherwise; mhc_ops is called as torch.ops.mhc.<op>, every layer input RMS-normed):
  stats             T·(8H + 96) + 384H       residual in, pre / post / comb out, fn
  combine           T·(10H + 16)             residual + pre in, layer_input out
  post_combine      T·(20H + 96)             post's bytes + pre in + layer_input out
  shifted_post_pre  T·(20H + 192) + 384H     post_combine's bytes + next gates out, fn
Peers for them, as their V4.1 model code runs on Hopper (see V41_PEER_FUNCTIONS): sglang
(stats by T: hc_mix_stats_sinkhorn at T = 1, hc_mix_stats + hc_split_sinkhorn below 32,
hc_mix_stats_sinkhorn_bf16x3 of split_bf16_hc_weight(fn) (split once per fn, as at weight load)
from 32; combine = hc_combine_norm; post_combine = mhc_post, then hc_combine_norm; shifted =
post_combine's calls, then stats of the new residual, in one graph) and vLLM (shifted only:
mhc_fused_post_pre_delayed_tilelang with the carried pre and the norm).

  python benchmarks/bench_ops.py                      # all ops, T and H of SPEC §8
  python benchmarks/bench_ops.py --quick              # one point (T=64, H=7168), all ops
  python benchmarks/bench_ops.py --impls mhc_ops,eager --out r.json   # merge into r.json
  python benchmarks/bench_ops.py --impls mhc_ops,mhc_ops_invariant \
      --out benchmarks/results/batch_invariant_h100.json            # MHC_BATCH_INVARIANT's cost
  source .peers/setup.sh /tmp/peers && python benchmarks/bench_ops.py \
      --impls mhc_ops,sglang,vllm --out benchmarks/results/peers_h100.json  # against the peers
  source .peers/setup.sh /tmp/peers && python benchmarks/bench_ops.py --model v4.1 \
      --impls mhc_ops,eager,sglang,vllm --out benchmarks/results/v41_h100.json  # SPEC §2.9 ops
  python benchmarks/bench_ops.py --model v4.1 --dry-run   # what would run, byte floors (no GPU)
Writes JSON rows {op, T, H, l2, impl, us, floor_us} and a PNG plot next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import zlib

import torch

import mhc_ops
from mhc_ops import envs, plan, reference

N_HC = 4
OPS = ("mhc_pre", "mhc_post", "mhc_fused_post_pre", "hc_head", "hc_prenorm_gemm")
# DeepSeek-V4.1's ops (SPEC §2.9), run with --model v4.1 at its hidden size.
V41_OPS = ("mhc_stats", "mhc_combine", "mhc_post_combine", "mhc_shifted_post_pre")
ALL_OPS = OPS + V41_OPS
TOKENS = (1, 8, 32, 64, 512, 4096, 16384)
WIDTHS = (4096, 7168)
V41_WIDTHS = (5120,)
MODELS = {"v4": (OPS, WIDTHS), "v4.1": (V41_OPS, V41_WIDTHS)}  # --model: default ops, widths
MIN_SETS = 8
NORM_EPS = 1e-6
# Where the inputs live; the CPU tests set "cpu" to run the row assembly without a GPU.
DEVICE = "cuda"
# ops that take x / post_mix / comb_mix (a post half) and fn / hc_scale / hc_base (a pre half)
_POST_HALF = ("mhc_post", "mhc_fused_post_pre", "mhc_post_combine", "mhc_shifted_post_pre")
_PRE_HALF = ("mhc_pre", "mhc_fused_post_pre", "mhc_stats", "mhc_shifted_post_pre")


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Inputs

def make_set(op: str, T: int, H: int, g: torch.Generator) -> dict:
    K, m3 = N_HC * H, N_HC * (N_HC + 2)

    def rn(*s, std=1.0, dtype=torch.float32):
        return (torch.randn(*s, generator=g, device=DEVICE) * std).to(dtype)

    if op == "hc_prenorm_gemm":
        return {"x": rn(T, K, dtype=torch.bfloat16), "fn": rn(m3, K, std=1 / math.sqrt(K))}
    a = {"residual": rn(T, N_HC, H, dtype=torch.bfloat16)}
    if op in _POST_HALF:
        a["x"] = rn(T, H, dtype=torch.bfloat16)
        a["post_mix"] = 2 * torch.sigmoid(rn(T, N_HC, 1))
        a["comb_mix"] = reference.sinkhorn(rn(T, N_HC, N_HC), 1e-6, 20)
    if op in _PRE_HALF:
        a["fn"] = rn(m3, K, std=1 / math.sqrt(K))
        a["hc_scale"] = 0.5 + torch.rand(3, generator=g, device=DEVICE)
        a["hc_base"] = rn(m3, std=0.5)
    if op == "hc_head":
        a["fn"] = rn(N_HC, K, std=1 / math.sqrt(K))
        a["hc_scale"] = 0.5 + torch.rand(1, generator=g, device=DEVICE)
        a["hc_base"] = rn(N_HC, std=0.5)
    if op in V41_OPS and op != "mhc_stats":
        # the pre carried from the previous stats (sigmoid + eps, [T, n] as the peers take it)
        # and the next sub-layer's RMSNorm weight
        a["pre_mix"] = torch.sigmoid(rn(T, N_HC)) + 1e-6
        a["norm_weight"] = (1.0 + rn(H, std=0.1)).to(torch.bfloat16)
    return a


def set_bytes(a: dict) -> int:
    return sum(v.numel() * v.element_size() for v in a.values())


def floor_bytes(op: str, T: int, H: int, sms: int) -> int:
    if op == "mhc_pre":
        return T * (10 * H + 80) + 384 * H
    if op == "mhc_post":
        return T * (18 * H + 80)
    if op == "mhc_fused_post_pre":
        return T * (20 * H + 160) + 384 * H
    if op == "hc_head":
        return T * 10 * H + 64 * H
    # SPEC §8, DeepSeek-V4.1 (n = 4): the norm weight is not counted (it stays in L2)
    if op == "mhc_stats":
        return T * (8 * H + 96) + 384 * H
    if op == "mhc_combine":
        return T * (10 * H + 16)
    if op == "mhc_post_combine":
        return T * (20 * H + 96)
    if op == "mhc_shifted_post_pre":
        return T * (20 * H + 192) + 384 * H
    S = plan.num_splits(T, N_HC * H, sms)
    return T * (8 * H + 100 * S) + 384 * H


def prenorm_splits(T: int, H: int, sms: int) -> int:
    return plan.num_splits(T, N_HC * H, sms)


# ---------------------------------------------------------------------------------------------
# The callables per implementation. Each returns a function of one input set.

INVARIANT = "mhc_ops_invariant"  # the kernels with batch-invariant plans (MHC_BATCH_INVARIANT=1)


PEERS = ("sglang", "vllm")
DSV4 = (1e-6, 1e-6, 1e-6, 2.0, 20)  # rms / pre / Sinkhorn eps, post mult, Sinkhorn rounds
# Where each peer defines the function its DeepSeek-V4 model calls for an op.
PEER_FUNCTIONS = {
    "sglang": {"mhc_pre": ("sglang.kernels.ops.layernorm.mhc", "mhc_pre"),
               "mhc_post": ("sglang.kernels.ops.layernorm.mhc", "mhc_post"),
               "mhc_fused_post_pre": ("sglang.kernels.ops.layernorm.mhc", "mhc_fused_post_pre"),
               "hc_head": ("sglang.kernels.ops.layernorm.mhc_head", "fused_hc_head")},
    "vllm": {"mhc_pre": ("vllm.model_executor.kernels.mhc.tilelang", "mhc_pre_tilelang"),
             "mhc_post": ("vllm.model_executor.kernels.mhc.tilelang", "mhc_post_tilelang"),
             "mhc_fused_post_pre": ("vllm.model_executor.kernels.mhc.tilelang",
                                    "mhc_fused_post_pre_tilelang"),
             "hc_head": ("vllm.model_executor.kernels.mhc.tilelang",
                         "hc_head_fused_kernel_tilelang"),
             "hc_prenorm_gemm": ("vllm.utils.deep_gemm", "tf32_hc_prenorm_gemm")},
}


_SG_MHC = "sglang.kernels.ops.layernorm.mhc"
_SG_HCN = "sglang.kernels.ops.layernorm.hc_combine_norm"
_VL_MHC = "vllm.model_executor.kernels.mhc.tilelang"
# DeepSeek-V4.1 (SPEC §2.9): the functions each peer's V4.1 model code calls for a step. sglang:
# as srt/models/deepseek_v4_mhc.py calls them on Hopper (_mix_stats_impl, combine, post; the
# compensated bf16x3 stats from T = 32 are its path with SGLANG_OPT_DEEPGEMM_HC_PRENORM on, as
# the peer kit's README gives it); it has no fused boundary on Hopper (mhc_post_combine_norm_
# prefill and mhc_post_split_h are gated to Blackwell or are newer than the 0.5.23 kernels), so
# post_combine and shifted_post_pre are its calls in sequence, run in one graph. vLLM 0.33: its
# fused delayed boundary (post, then stats and the norm-folded combine with the carried pre) is
# shifted_post_pre; its mhc_pre_delayed is stats + combine in one call, which no op here is.
V41_PEER_FUNCTIONS = {
    "sglang": {
        "mhc_stats": ((_SG_MHC, "hc_mix_stats_sinkhorn"), (_SG_MHC, "hc_mix_stats"),
                      (_SG_MHC, "hc_split_sinkhorn"), (_SG_MHC, "split_bf16_hc_weight"),
                      (_SG_MHC, "hc_mix_stats_sinkhorn_bf16x3")),
        "mhc_combine": ((_SG_HCN, "hc_combine_norm"),),
        "mhc_post_combine": ((_SG_MHC, "mhc_post"), (_SG_HCN, "hc_combine_norm")),
    },
    "vllm": {
        "mhc_shifted_post_pre": ((_VL_MHC, "mhc_fused_post_pre_delayed_tilelang"),),
    },
}
V41_PEER_FUNCTIONS["sglang"]["mhc_shifted_post_pre"] = tuple(dict.fromkeys(
    V41_PEER_FUNCTIONS["sglang"]["mhc_post_combine"] + V41_PEER_FUNCTIONS["sglang"]["mhc_stats"]))
# sglang's stats switch from the split reduce + Sinkhorn kernels to the fused bf16x3 projection
# (its weight split once at load) at this T on Hopper; T = 1 takes the fused fp32 kernel
SGLANG_BF16X3_MIN_TOKENS = 32


def peer_where(impl: str, op: str) -> tuple[tuple[str, str], ...]:
    """(module, function) of everything the peer calls for op; () when it has nothing."""
    if op in V41_OPS:
        return V41_PEER_FUNCTIONS.get(impl, {}).get(op, ())
    where = PEER_FUNCTIONS[impl].get(op)
    return (where,) if where else ()


def peer_missing(impl: str, ops=OPS) -> str | None:
    """None when the peer's modules import and define what ops (default: DeepSeek-V4's) call;
    otherwise why not."""
    import importlib

    wheres = [w for op in ops for w in peer_where(impl, op)]
    if not wheres:
        return "it has no function for " + ", ".join(ops)
    for module in sorted({m for m, _ in wheres}):
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any failure: the peer is not here
            return f"{module}: {type(e).__name__}: {e}"
        for name in sorted({n for m, n in wheres if m == module}):
            if not hasattr(mod, name):
                return f"{module} has no {name} (another version?)"
    return None


def sglang_stats_calls(T: int) -> str:
    """The stats call(s) of sglang's V4.1 model on Hopper for T tokens."""
    if T <= 1:
        return "hc_mix_stats_sinkhorn"
    if T < SGLANG_BF16X3_MIN_TOKENS:
        return "hc_mix_stats + hc_split_sinkhorn"
    return "hc_mix_stats_sinkhorn_bf16x3"


def peer_calls(op: str, impl: str, T: int) -> str | None:
    """What the peer runs for op at T tokens, in words; None when it has no function."""
    if op not in V41_OPS:
        return ".".join(peer_where(impl, op)[0]) if peer_where(impl, op) else None
    if not peer_where(impl, op):
        return None
    if impl == "vllm":
        return "mhc_fused_post_pre_delayed_tilelang"
    post_combine = "mhc_post + hc_combine_norm"
    return {"mhc_stats": sglang_stats_calls(T), "mhc_combine": "hc_combine_norm",
            "mhc_post_combine": post_combine,
            "mhc_shifted_post_pre": f"{post_combine} + {sglang_stats_calls(T)}"}[op]


def peer_config(impl: str, ops=OPS) -> str:
    """The production switches a peer runs with, as it reports them."""
    v41 = any(op in V41_OPS for op in ops)
    if impl == "vllm":
        try:
            from vllm.utils.deep_gemm import is_deep_gemm_supported

            return ("DeepGEMM prenorm GEMM" if is_deep_gemm_supported()
                    else "TileLang prenorm GEMM (DeepGEMM not usable here)")
        except Exception as e:  # noqa: BLE001
            return f"unknown ({type(e).__name__})"
    if v41:
        return ("DeepSeek-V4.1 Hopper path: Triton stats (bf16x3 projection from T = "
                f"{SGLANG_BF16X3_MIN_TOKENS}), TileLang split Sinkhorn and mhc_post, Triton "
                "hc_combine_norm" + ("; TileLang mHC, Triton hc_head" if any(
                    op in OPS for op in ops) else ""))
    return "TileLang mHC, Triton hc_head"


def peer_fn(op: str, impl: str, T: int, H: int, sms: int):
    """The peer's function for op, called with its DeepSeek-V4 model's arguments; None when
    the peer exposes none."""
    import importlib

    if op in V41_OPS:
        return peer_fn_v41(op, impl, T)
    where = PEER_FUNCTIONS[impl].get(op)
    if where is None:
        return None
    f = getattr(importlib.import_module(where[0]), where[1])
    if op == "mhc_pre":
        return lambda a: f(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4)
    if op == "mhc_post":
        return lambda a: f(a["x"], a["residual"], a["post_mix"], a["comb_mix"])
    if op == "mhc_fused_post_pre":
        return lambda a: f(a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["fn"],
                           a["hc_scale"], a["hc_base"], *DSV4)
    if op == "hc_head":
        return lambda a: f(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], 1e-6, 1e-6)
    S = prenorm_splits(T, H, sms)

    def prenorm(a):
        M, N = a["x"].shape[0], a["fn"].shape[0]
        out = torch.empty(S, M, N, dtype=torch.float32, device=a["x"].device)
        sqrsum = torch.empty(S, M, dtype=torch.float32, device=a["x"].device)
        f(a["x"], a["fn"], out, sqrsum, S)
        return out, sqrsum
    return prenorm


def peer_fn_v41(op: str, impl: str, T: int):
    """The peer's call(s) for a DeepSeek-V4.1 op, as its V4.1 model makes them (outputs in the
    order of the mhc op); None when the peer has none."""
    import importlib

    where = peer_where(impl, op)
    if not where:
        return None
    f = {name: getattr(importlib.import_module(module), name) for module, name in where}
    rms_eps, hc_eps, _, _, iters = DSV4
    if impl == "vllm":
        fused = f["mhc_fused_post_pre_delayed_tilelang"]

        def shifted(a):
            r, post, comb, layer_input, pre, _ = fused(
                a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["fn"], a["hc_scale"],
                a["hc_base"], *DSV4, pre_mix=a["pre_mix"], norm_weight=a["norm_weight"],
                norm_eps=NORM_EPS)
            return r, layer_input, pre, post, comb
        return shifted

    if op in ("mhc_stats", "mhc_shifted_post_pre"):
        if T <= 1:
            def stats(r, a):
                return f["hc_mix_stats_sinkhorn"](r.flatten(1), a["fn"], a["hc_scale"],
                                                  a["hc_base"], N_HC, iters, rms_eps, hc_eps)
        elif T < SGLANG_BF16X3_MIN_TOKENS:
            def stats(r, a):
                mixes = f["hc_mix_stats"](r.flatten(1), a["fn"], rms_eps).unsqueeze(1)
                pre, post, comb = f["hc_split_sinkhorn"](mixes, a["hc_scale"], a["hc_base"],
                                                         N_HC, iters, hc_eps)
                return pre.squeeze(1), post.squeeze(1), comb.squeeze(1)
        else:
            # the model splits fn into three bf16 parts once, at weight load: here once per
            # input set, on the first (untimed) call that sees its fn
            parts = {}

            def stats(r, a):
                fn = a["fn"]
                hit = parts.get(fn.data_ptr())
                if hit is None or hit[0] is not fn:
                    hit = parts[fn.data_ptr()] = (fn, f["split_bf16_hc_weight"](fn))
                return f["hc_mix_stats_sinkhorn_bf16x3"](r.flatten(1), hit[1], a["hc_scale"],
                                                         a["hc_base"], iters, rms_eps, hc_eps)
        if op == "mhc_stats":
            return lambda a: stats(a["residual"], a)

    def combine(r, a):
        return f["hc_combine_norm"](r.flatten(1), a["pre_mix"], a["norm_weight"], NORM_EPS)

    if op == "mhc_combine":
        return lambda a: combine(a["residual"], a)

    def post_combine(a):
        r = f["mhc_post"](a["x"], a["residual"], a["post_mix"], a["comb_mix"])
        return r, combine(r, a)

    if op == "mhc_post_combine":
        return post_combine

    def shifted(a):
        r, layer_input = post_combine(a)
        return (r, layer_input) + tuple(stats(r, a))
    return shifted


def op_fn(op: str, impl: str, T: int, H: int, sms: int):
    S = prenorm_splits(T, H, sms)
    if impl in PEERS:
        return peer_fn(op, impl, T, H, sms)
    if impl == INVARIANT:
        # The launchers read the flag at every call, graph capture included.
        inner = op_fn(op, "mhc_ops", T, H, sms)

        def invariant(a):
            with envs.MHC_BATCH_INVARIANT.override(True):
                return inner(a)
        return invariant
    if impl == "mhc_ops":
        if op == "hc_prenorm_gemm":
            return lambda a: mhc_ops.hc_prenorm_gemm(a["x"], a["fn"], S)
        if op in V41_OPS:  # the registered op itself, whatever the Python wrapper does
            return lambda a: getattr(torch.ops.mhc, op)(**a)
        return lambda a: getattr(mhc_ops, op)(**a)
    ref = getattr(reference, op)
    if op in V41_OPS:
        f = ref  # every input set holds exactly the op's tensor arguments
    elif op == "hc_prenorm_gemm":
        def f(x, fn):
            return ref(x, fn, S)
    elif op == "mhc_post":
        def f(x, residual, post_mix, comb_mix):
            return ref(x, residual, post_mix, comb_mix)
    elif op == "hc_head":
        def f(residual, fn, hc_scale, hc_base):
            return ref(residual, fn, hc_scale, hc_base)
    elif op == "mhc_pre":
        def f(residual, fn, hc_scale, hc_base):
            return ref(residual, fn, hc_scale, hc_base)
    else:
        def f(x, residual, post_mix, comb_mix, fn, hc_scale, hc_base):
            return ref(x, residual, post_mix, comb_mix, fn, hc_scale, hc_base)
    if impl == "compile":
        f = torch.compile(f, dynamic=False, fullgraph=True)
    return lambda a: f(**a)


# ---------------------------------------------------------------------------------------------
# Verification (loose: the tests hold the SPEC §3 bounds; this catches a broken build).

def verify(op: str, a: dict, T: int, H: int, sms: int, impl: str = "mhc_ops") -> str | None:
    got = op_fn(op, impl, T, H, sms)(a)
    got = got if isinstance(got, (tuple, list)) else (got,)
    rows = torch.unique(torch.tensor([0, T // 2, T - 1], device=DEVICE))
    if op == "hc_prenorm_gemm":
        want = reference.hc_prenorm_gemm(a["x"][rows], a["fn"], prenorm_splits(T, H, sms),
                                         dtype=torch.float64)
        got = (got[0][:, rows], got[1][:, rows])
    else:
        sub = {k: (v[rows] if v.dim() > 1 and v.shape[0] == T and k != "fn" else v)
               for k, v in a.items()}
        want = getattr(reference, op)(**sub, dtype=torch.float64)
        want = want if isinstance(want, (tuple, list)) else (want,)
        got = tuple(o[rows] for o in got)
    if len(got) != len(want):
        return f"{len(got)} outputs, {len(want)} expected"
    for i, (o, w) in enumerate(zip(got, want)):
        if o.numel() != w.numel():
            return f"output {i} has shape {tuple(o.shape)}, {tuple(w.shape)} expected"
        o, w = o.double().reshape(w.shape), w.double()  # a peer's post may be [T, n]
        if not torch.isfinite(o).all():
            return f"output {i} not finite"
        err = float(((o - w).abs() - 0.02 * w.abs()).max())
        if err > 0.02:
            return f"output {i} off by {err:.3g}"
    return None


# ---------------------------------------------------------------------------------------------
# Timing

def graph_time_us(fn, sets: list[dict], calls: int, budget_s: float = 0.25) -> float:
    """Median over replays of (replay time / calls) for a graph of `calls` back-to-back calls
    rotating over `sets`."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(min(calls, len(sets))):
            fn(sets[i])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(sets[i % len(sets)])
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    graph.replay()
    torch.cuda.synchronize()
    once = time.perf_counter() - t0
    reps = max(5, min(50, int(budget_s / max(once, 1e-6))))
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        start[i].record()
        graph.replay()
        end[i].record()
    torch.cuda.synchronize()
    del graph
    return statistics.median(s.elapsed_time(e) for s, e in zip(start, end)) * 1e3 / calls


def copy_bandwidth_gbps() -> float:
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ts = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        dst.copy_(src)
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return 2 * n / (statistics.median(ts) * 1e-3) / 1e9


# ---------------------------------------------------------------------------------------------

def run_point(op, T, H, impls, sms, l2_bytes, bw, rows, failures, cold_starts):
    g = torch.Generator(device=DEVICE).manual_seed(zlib.crc32(repr((op, T, H)).encode()))
    first = make_set(op, T, H, g)
    nsets = max(MIN_SETS, math.ceil(2.5 * l2_bytes / set_bytes(first)))
    for impl in ("mhc_ops", INVARIANT):
        msg = verify(op, first, T, H, sms, impl) if impl in impls else None
        if msg:
            failures.append(f"{op} T={T} H={H} {impl}: {msg}")
            print(f"VERIFY FAILED {op} T={T} H={H} {impl}: {msg}", flush=True)
    timed = [i for i in impls if i not in PEERS]
    for impl in (i for i in impls if i in PEERS):
        if op_fn(op, impl, T, H, sms) is None:
            continue
        # The first call compiles the peer's kernel variant (TileLang / DeepGEMM / Triton JIT):
        # its cold start. A peer that fails or computes wrong is reported and not timed.
        try:
            t0 = time.perf_counter()
            op_fn(op, impl, T, H, sms)(first)
            _sync()
            cold_starts.append({"op": op, "T": T, "H": H, "impl": impl,
                                "first_call_s": round(time.perf_counter() - t0, 3),
                                "calls": peer_calls(op, impl, T)})
            msg = verify(op, first, T, H, sms, impl)
        except Exception as e:  # noqa: BLE001 - a peer's failure is a finding, not a crash
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if msg:
            print(f"PEER NOT TIMED {op} T={T} H={H} {impl}: {msg}", flush=True)
        else:
            timed.append(impl)
    sets = [first] + [make_set(op, T, H, g) for _ in range(nsets - 1)]
    floor_us = floor_bytes(op, T, H, sms) / (bw * 1e9) * 1e6
    out = {}
    for impl in list(timed):
        fn = op_fn(op, impl, T, H, sms)
        try:
            for l2 in ("warm", "cold"):
                use = sets[:1] if l2 == "warm" else sets
                out[(impl, l2)] = graph_time_us(fn, use, max(10, len(use)))
        except Exception as e:  # noqa: BLE001 - only a peer may fail here (it was verified)
            if impl not in PEERS:
                raise
            print(f"PEER NOT TIMED {op} T={T} H={H} {impl}: {type(e).__name__}: {e}", flush=True)
            timed.remove(impl)
            _sync()
            continue
        for l2 in ("warm", "cold"):
            rows.append({"op": op, "T": T, "H": H, "l2": l2, "impl": impl,
                         "us": round(out[(impl, l2)], 3), "floor_us": round(floor_us, 3)})
    del sets, first
    torch.cuda.empty_cache()
    cells = "  ".join(f"{i}/{l}={out[(i, l)]:9.2f}" for i in timed for l in ("warm", "cold"))
    print(f"{op:20s} T={T:6d} H={H:5d} floor={floor_us:8.2f}  {cells}", flush=True)


def table(rows: list[dict]) -> str:
    key = {}
    for r in rows:
        key.setdefault((r["op"], r["H"], r["T"]), {})[(r["impl"], r["l2"])] = r["us"]
        key[(r["op"], r["H"], r["T"])]["floor"] = r["floor_us"]
    inv = any(r["impl"] == INVARIANT for r in rows)
    peers = [p for p in PEERS if any(r["impl"] == p for r in rows)]
    lines = [f"{'op':20s} {'H':>5s} {'T':>6s} {'floor':>9s} {'mhc cold':>9s} {'x floor':>7s} "
             f"{'compile':>9s} {'speedup':>7s} {'eager':>9s} {'mhc warm':>9s}"
             + (f" {'invariant':>9s} {'x mhc':>7s}" if inv else "")
             + "".join(f" {p:>9s} {'x mhc':>7s}" for p in peers)]
    for (op, H, T), v in sorted(key.items(), key=lambda kv: (ALL_OPS.index(kv[0][0]),
                                                              kv[0][1], kv[0][2])):
        m, c, e = v.get(("mhc_ops", "cold")), v.get(("compile", "cold")), v.get(("eager", "cold"))
        i = v.get((INVARIANT, "cold"))
        f = v["floor"]
        fmt = lambda x: f"{x:9.2f}" if x is not None else f"{'-':>9s}"  # noqa: E731
        lines.append(f"{op:20s} {H:5d} {T:6d} {f:9.2f} {fmt(m)} "
                     f"{(m / f if m else 0):7.2f} {fmt(c)} {(c / m if m and c else 0):7.2f} "
                     f"{fmt(e)} {fmt(v.get(('mhc_ops', 'warm')))}"
                     + (f" {fmt(i)} {(i / m if m and i else 0):7.2f}" if inv else "")
                     + "".join(f" {fmt(v.get((p, 'cold')))} "
                               f"{(v[(p, 'cold')] / m if m and v.get((p, 'cold')) else 0):7.2f}"
                               for p in peers))
    return "\n".join(lines)


def cold_start_table(cold_starts: list[dict]) -> str:
    """The peers' first calls (their JIT compiles), one line per peer: count, total, worst."""
    lines = []
    for p in PEERS:
        sel = [c for c in cold_starts if c["impl"] == p]
        if sel:
            worst = max(sel, key=lambda c: c["first_call_s"])
            lines.append(f"{p}: {len(sel)} first calls, {sum(c['first_call_s'] for c in sel):.1f}"
                         f" s in all, worst {worst['first_call_s']:.1f} s ({worst['op']} "
                         f"T={worst['T']} H={worst['H']})")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one panel per op and width that the rows hold (all of SPEC §8's for a full run)
    ops = [op for op in ALL_OPS if any(r["op"] == op for r in rows)] or list(OPS)
    widths = sorted({r["H"] for r in rows}) or list(WIDTHS)
    fig, axes = plt.subplots(len(widths), len(ops), figsize=(4 * len(ops), 3.6 * len(widths)),
                             squeeze=False)
    for i, H in enumerate(widths):
        for j, op in enumerate(ops):
            ax = axes[i][j]
            sel = [r for r in rows if r["op"] == op and r["H"] == H and r["l2"] == "cold"]
            for impl, style, color in (("mhc_ops", "o-", "C0"), ("compile", "s--", "C1"),
                                       ("eager", "^:", "C2"), (INVARIANT, "d-.", "C3"),
                                       ("sglang", "v--", "C4"), ("vllm", "P--", "C5")):
                pts = sorted((r["T"], r["us"]) for r in sel if r["impl"] == impl)
                if pts:
                    ax.plot(*zip(*pts), style, color=color, label=impl)
            fl = sorted({r["T"]: r["floor_us"] for r in sel}.items())
            if fl:
                ax.plot(*zip(*fl), "k-", lw=1, label="byte floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{op} H={H} (cold)", fontsize=9)
            ax.set_xlabel("T")
            ax.set_ylabel("µs / call")
            ax.grid(True, which="both", alpha=0.3)
    handles = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.97, 1))
    fig.savefig(path, dpi=110)


# Planner and launcher knobs for studies (csrc/core/plan.h; set through mhc_ops._C): the
# option's name, what it sets, and the line printed when it is given.
KNOBS = (
    ("cluster_min_tokens", "move the planner's CLUSTER threshold (crossover studies only)",
     "CLUSTER plans from T = {}"),
    ("split_target_ctas", "CTAs the SPLIT_K split count aims at (split-count studies only)",
     "SPLIT_K plans aim at {} CTAs"),
    ("epilogue_chunks", "chunks of H per token in the SPLIT_K epilogue (studies only; 0: the "
     "launcher's rule)", "epilogue chunks {}"),
    ("epilogue_ctas_per_sm", "SPLIT_K epilogue CTAs per SM at most (studies only; 0: the "
     "launcher's rule, -1: no cap)", "epilogue CTAs per SM at most {}"),
    ("staged_fn_min_tokens", "T from which pre / fused stage fn (studies only; 2**63-1: never)",
     "fn staged from T = {}"),
    ("fn_ring_min_tokens", "T from which pre / head / fused use the main kernel's cp.async ring "
     "(studies only; 2**63-1: never)", "the main kernel's ring from T = {}"),
    ("evict_inputs_max_bytes", "bytes of residual_out up to which the fused op's ring loads its "
     "inputs with L2 evict_first (studies only; -1: never)", "fused inputs evict_first up to {} "
     "bytes"),
    ("full_k_min_tokens", "T from which pre / stats / head / fused plans are FULL_K (studies "
     "only; -1: the planner's rule)", "FULL_K plans from T = {}"),
    ("post_row_min_tokens", "T from which mhc_post runs a CTA per token (studies only; 2**63-1: "
     "never)", "mhc_post a CTA per token from T = {}"),
    ("boundary_max_tokens", "T up to which mhc_shifted_post_pre runs the fused boundary where "
     "the fused op's plan is SPLIT_K (studies only; 0: never)", "fused shifted boundary up to "
     "T = {}"),
    ("combine_split_max_tokens", "T up to which mhc_combine / mhc_post_combine split a row over "
     "a cluster of CTAs (studies only; 0: never)", "split combine up to T = {}"),
    ("chunk_tokens", "pre / fused / stats run their plans over token chunks of this size, so "
     "that a chunk's second read of its rows can hit L2 (studies only; 0: one plan)",
     "plans over chunks of {} tokens"),
    ("pipe_tokens", "mhc_pre (n = 4, H = 4096 / 7168) and mhc_stats (n = 4) run the pipelined "
     "kernel with the SPLIT_K plan of this many tokens, from T above it (studies only; 0: never)",
     "pipelined pre with the plan of {} tokens"),
)


def add_knob_args(ap: argparse.ArgumentParser) -> None:
    for name, doc, _ in KNOBS:
        ap.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=doc)


def apply_knobs(args: argparse.Namespace) -> str | None:
    """Sets the knobs given; returns an error when one is given to a library built without
    them (they exist only in a study build, MHC_STUDY=1)."""
    given = [(name, said) for name, _, said in KNOBS if getattr(args, name) is not None]
    missing = [name for name, _ in given if not hasattr(mhc_ops._C, "set_" + name)]
    if missing:
        opts = ", ".join("--" + n.replace("_", "-") for n in missing)
        return (f"bench_ops: {opts} need(s) a study build of mhc_ops (built with MHC_STUDY=1); "
                f"this mhc_ops._C has no set_{missing[0]}")
    for name, said in given:
        getattr(mhc_ops._C, "set_" + name)(getattr(args, name))
        print(said.format(getattr(args, name)))
    return None


IMPLS = ("mhc_ops", "eager", "compile", INVARIANT) + PEERS


def registered(op: str) -> bool:
    """Whether the loaded mhc_ops library registers torch.ops.mhc.<op>."""
    return hasattr(torch.ops.mhc, op)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with ops / tokens / widths / impls resolved into lists (--model picks the
    default ops and widths; an op may be named without its mhc_ prefix)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=tuple(MODELS), default="v4",
                    help="v4: the ops of SPEC §2.1-2.5 at H = 4096, 7168; v4.1: the ops of "
                    "SPEC §2.9 (stats, combine, post_combine, shifted_post_pre) at H = 5120")
    ap.add_argument("--quick", action="store_true",
                    help="one point: T=64 at the model's widest H, all its ops")
    ap.add_argument("--ops", default=None, help="default: the model's")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--widths", default=None, help="default: the model's")
    ap.add_argument("--impls", default="mhc_ops,eager,compile")
    ap.add_argument("--out", default=None, help="JSON file; rows of other impls are kept")
    ap.add_argument("--plot", default=None, help="PNG path (default: next to --out)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the points, their byte floors and each peer's calls; needs no "
                    "GPU, runs and writes nothing")
    add_knob_args(ap)
    args = ap.parse_args(argv)
    model_ops, model_widths = MODELS[args.model]
    ops = args.ops.split(",") if args.ops else list(model_ops)
    ops = [op if op in ALL_OPS or "mhc_" + op not in ALL_OPS else "mhc_" + op for op in ops]
    bad = [op for op in ops if op not in ALL_OPS]
    if bad:
        ap.error(f"unknown op(s) {','.join(bad)}; known: {','.join(ALL_OPS)}")
    impls = args.impls.split(",")
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"unknown impl(s) {','.join(bad)}; known: {','.join(IMPLS)}")
    args.ops, args.impls = ops, impls
    args.tokens = [64] if args.quick else [int(t) for t in args.tokens.split(",")]
    args.widths = ([max(model_widths)] if args.quick else
                   [int(h) for h in args.widths.split(",")] if args.widths else
                   list(model_widths))
    return args


def dry_run(args: argparse.Namespace, sms: int = 132) -> str:
    """The points a run of args would time: bytes moved once per point and what each
    implementation calls there (prenorm's floor at `sms` SMs)."""
    lines = [f"{len(args.ops)} op(s) x {len(args.widths)} width(s) x {len(args.tokens)} T, "
             f"impls {','.join(args.impls)}"]
    for impl in (i for i in args.impls if i in PEERS):
        why = peer_missing(impl, args.ops)
        lines.append(f"peer {impl}: " + (f"does not import ({why}); would be skipped" if why
                                         else "imports"))
    for op in args.ops:
        for H in args.widths:
            for T in args.tokens:
                calls = []
                for impl in args.impls:
                    if impl in PEERS:
                        c = peer_calls(op, impl, T)
                    elif impl in ("mhc_ops", INVARIANT):
                        c = (f"torch.ops.mhc.{op}" if op in V41_OPS else f"mhc_ops.{op}") + (
                            " (MHC_BATCH_INVARIANT=1)" if impl == INVARIANT else "")
                    else:
                        c = f"{'torch.compile of ' if impl == 'compile' else ''}" \
                            f"mhc_ops.reference.{op}"
                    calls.append(f"{impl}: {c or '-'}")
                lines.append(f"{op:20s} H={H:5d} T={T:6d} bytes={floor_bytes(op, T, H, sms):12d}"
                             f"  " + "; ".join(calls))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        print(dry_run(args))
        return 0
    results_file = args.out and os.path.basename(args.out) in ("h100.json", "h200.json")
    if INVARIANT in args.impls and results_file:
        print(f"bench_ops: {INVARIANT} rows do not belong in the SPEC §8 results file; write "
              "them to their own, e.g. --out benchmarks/results/batch_invariant_h100.json",
              file=sys.stderr)
        return 2
    if not (mhc_ops.cuda_available() and torch.cuda.is_available()):
        print("bench_ops: needs the CUDA kernels and a GPU", file=sys.stderr)
        return 2
    knob_error = apply_knobs(args)
    if knob_error:
        print(knob_error, file=sys.stderr)
        return 2
    ops, tokens, widths, impls = args.ops, args.tokens, args.widths, list(args.impls)
    configs = {}
    missing = [op for op in ops if op in V41_OPS and not registered(op)]
    if missing and {"mhc_ops", INVARIANT} & set(impls):
        print(f"bench_ops: this mhc_ops build registers no torch.ops.mhc.{missing[0]} (SPEC "
              "§2.9); rebuild it, or leave mhc_ops out of --impls", file=sys.stderr)
        return 2
    for impl in [i for i in impls if i in PEERS]:
        why = peer_missing(impl, ops)
        if why:
            print(f"bench_ops: peer {impl} does not import ({why}); skipped", flush=True)
            impls.remove(impl)
        else:
            configs[impl] = peer_config(impl, ops)
            print(f"bench_ops: peer {impl}: {configs[impl]}", flush=True)
    torch._dynamo.config.cache_size_limit = 256
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 256
    props = torch.cuda.get_device_properties(0)
    sms, l2 = props.multi_processor_count, props.L2_cache_size
    bw = copy_bandwidth_gbps()
    print(f"{props.name}: {sms} SMs, L2 {l2 / 2**20:.0f} MiB, copy bandwidth {bw:.0f} GB/s, "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    rows, failures, cold_starts = [], [], []
    argv = sys.argv if argv is None else sys.argv[:1] + list(argv)
    old, old_cold, command = [], [], " ".join(["python"] + argv)
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            prev = json.load(f)
        old = prev["rows"]
        old_cold = prev.get("first_call_s", [])
        configs = {**prev.get("peers", {}), **configs}
        if prev.get("command") and prev["command"] != command:
            command = prev["command"] + " && " + command

    def save() -> dict:
        keys = {(q["op"], q["T"], q["H"], q["impl"]) for q in rows}
        doc = {"device": props.name, "torch": torch.__version__, "cuda": torch.version.cuda,
               "copy_bandwidth_GBps": round(bw, 1), "command": command,
               "rows": [r for r in old if (r["op"], r["T"], r["H"], r["impl"]) not in keys]
               + rows}
        if configs:
            doc["peers"] = configs
        if cold_starts or old_cold:
            ckeys = {(c["op"], c["T"], c["H"], c["impl"]) for c in cold_starts}
            doc["first_call_s"] = [c for c in old_cold if (c["op"], c["T"], c["H"], c["impl"])
                                   not in ckeys] + cold_starts
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        return doc

    for op in ops:
        for H in widths:
            for T in tokens:
                run_point(op, T, H, impls, sms, l2, bw, rows, failures, cold_starts)
                if args.out:  # after every point, so that a run cut short keeps its rows
                    save()
    print()
    print(table(rows))
    if cold_starts:
        print(cold_start_table(cold_starts))
    if args.out:
        doc = save()
        png = args.plot or os.path.splitext(args.out)[0] + ".png"
        plot(doc["rows"], png, f"{props.name}, torch {torch.__version__}, CUDA "
                               f"{torch.version.cuda}, copy {bw:.0f} GB/s")
        print(f"wrote {args.out} and {png}")
    if failures:
        print("VERIFY FAILURES:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
