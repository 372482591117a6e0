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

  python benchmarks/bench_ops.py                      # all ops, T and H of SPEC §8
  python benchmarks/bench_ops.py --quick              # one point (T=64, H=7168), all ops
  python benchmarks/bench_ops.py --impls mhc_ops,eager --out r.json   # merge into r.json
  python benchmarks/bench_ops.py --impls mhc_ops,mhc_ops_invariant \
      --out benchmarks/results/batch_invariant_h100.json            # MHC_BATCH_INVARIANT's cost
  source .peers/setup.sh /tmp/peers && python benchmarks/bench_ops.py \
      --impls mhc_ops,sglang,vllm --out benchmarks/results/peers_h100.json  # against the peers
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
TOKENS = (1, 8, 32, 64, 512, 4096, 16384)
WIDTHS = (4096, 7168)
MIN_SETS = 8


# ---------------------------------------------------------------------------------------------
# Inputs

def make_set(op: str, T: int, H: int, g: torch.Generator) -> dict:
    K, m3 = N_HC * H, N_HC * (N_HC + 2)

    def rn(*s, std=1.0, dtype=torch.float32):
        return (torch.randn(*s, generator=g, device="cuda") * std).to(dtype)

    if op == "hc_prenorm_gemm":
        return {"x": rn(T, K, dtype=torch.bfloat16), "fn": rn(m3, K, std=1 / math.sqrt(K))}
    a = {"residual": rn(T, N_HC, H, dtype=torch.bfloat16)}
    if op in ("mhc_post", "mhc_fused_post_pre"):
        a["x"] = rn(T, H, dtype=torch.bfloat16)
        a["post_mix"] = 2 * torch.sigmoid(rn(T, N_HC, 1))
        a["comb_mix"] = reference.sinkhorn(rn(T, N_HC, N_HC), 1e-6, 20)
    if op in ("mhc_pre", "mhc_fused_post_pre"):
        a["fn"] = rn(m3, K, std=1 / math.sqrt(K))
        a["hc_scale"] = 0.5 + torch.rand(3, generator=g, device="cuda")
        a["hc_base"] = rn(m3, std=0.5)
    if op == "hc_head":
        a["fn"] = rn(N_HC, K, std=1 / math.sqrt(K))
        a["hc_scale"] = 0.5 + torch.rand(1, generator=g, device="cuda")
        a["hc_base"] = rn(N_HC, std=0.5)
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


def peer_missing(impl: str) -> str | None:
    """None when the peer's modules import; otherwise why not."""
    import importlib

    for module in sorted({m for m, _ in PEER_FUNCTIONS[impl].values()}):
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any failure: the peer is not here
            return f"{module}: {type(e).__name__}: {e}"
    return None


def peer_config(impl: str) -> str:
    """The production switches a peer runs with, as it reports them."""
    if impl == "vllm":
        try:
            from vllm.utils.deep_gemm import is_deep_gemm_supported

            return ("DeepGEMM prenorm GEMM" if is_deep_gemm_supported()
                    else "TileLang prenorm GEMM (DeepGEMM not usable here)")
        except Exception as e:  # noqa: BLE001
            return f"unknown ({type(e).__name__})"
    return "TileLang mHC, Triton hc_head"


def peer_fn(op: str, impl: str, T: int, H: int, sms: int):
    """The peer's function for op, called with its DeepSeek-V4 model's arguments; None when
    the peer exposes none."""
    import importlib

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
        return lambda a: getattr(mhc_ops, op)(**a)
    ref = getattr(reference, op)
    if op == "hc_prenorm_gemm":
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
    rows = torch.unique(torch.tensor([0, T // 2, T - 1], device="cuda"))
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
    for i, (o, w) in enumerate(zip(got, want)):
        o, w = o.double(), w.double()
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
    g = torch.Generator(device="cuda").manual_seed(zlib.crc32(repr((op, T, H)).encode()))
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
            torch.cuda.synchronize()
            cold_starts.append({"op": op, "T": T, "H": H, "impl": impl,
                                "first_call_s": round(time.perf_counter() - t0, 3)})
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
            torch.cuda.synchronize()
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
    for (op, H, T), v in sorted(key.items(), key=lambda kv: (OPS.index(kv[0][0]), kv[0][1],
                                                              kv[0][2])):
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

    fig, axes = plt.subplots(len(WIDTHS), len(OPS), figsize=(4 * len(OPS), 3.6 * len(WIDTHS)),
                             squeeze=False)
    for i, H in enumerate(WIDTHS):
        for j, op in enumerate(OPS):
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
    ("cluster_buffers", "buffers of the persistent hc_head CLUSTER kernel (studies only; 0: the "
     "launcher's, 1: one block per cluster)", "hc_head cluster buffers {}"),
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one point: T=64, H=7168, all ops")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    ap.add_argument("--impls", default="mhc_ops,eager,compile")
    ap.add_argument("--out", default=None, help="JSON file; rows of other impls are kept")
    ap.add_argument("--plot", default=None, help="PNG path (default: next to --out)")
    add_knob_args(ap)
    args = ap.parse_args()
    results_file = args.out and os.path.basename(args.out) in ("h100.json", "h200.json")
    if INVARIANT in args.impls.split(",") and results_file:
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
    ops = args.ops.split(",")
    tokens = [64] if args.quick else [int(t) for t in args.tokens.split(",")]
    widths = [7168] if args.quick else [int(h) for h in args.widths.split(",")]
    impls = args.impls.split(",")
    for impl in [i for i in impls if i in PEERS]:
        why = peer_missing(impl)
        if why:
            print(f"bench_ops: peer {impl} does not import ({why}); skipped", flush=True)
            impls.remove(impl)
        else:
            print(f"bench_ops: peer {impl}: {peer_config(impl)}", flush=True)
    torch._dynamo.config.cache_size_limit = 256
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 256
    props = torch.cuda.get_device_properties(0)
    sms, l2 = props.multi_processor_count, props.L2_cache_size
    bw = copy_bandwidth_gbps()
    print(f"{props.name}: {sms} SMs, L2 {l2 / 2**20:.0f} MiB, copy bandwidth {bw:.0f} GB/s, "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    rows, failures, cold_starts = [], [], []
    old, old_cold, command = [], [], " ".join(["python"] + sys.argv)
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            prev = json.load(f)
        old = prev["rows"]
        old_cold = prev.get("first_call_s", [])
        if prev.get("command") and prev["command"] != command:
            command = prev["command"] + " && " + command

    def save() -> dict:
        keys = {(q["op"], q["T"], q["H"], q["impl"]) for q in rows}
        doc = {"device": props.name, "torch": torch.__version__, "cuda": torch.version.cuda,
               "copy_bandwidth_GBps": round(bw, 1), "command": command,
               "rows": [r for r in old if (r["op"], r["T"], r["H"], r["impl"]) not in keys]
               + rows}
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
