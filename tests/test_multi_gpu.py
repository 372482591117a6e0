"""Several GPUs (docs/spec.md §2.8, §6): every op on any device index, whatever the current
device is, inside and outside CUDA graphs; no CUDA context on a GPU that no tensor lives on;
warmup per device. Needs two GPUs and the CUDA kernels; skips with the reason otherwise.

The two-rank torch.distributed run is tools/two_rank.py (scripts/two_rank.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import helpers as h
import mhc_ops
from mhc_ops import warmup

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (mhc_ops.cuda_available() and torch.cuda.is_available()
                            and torch.cuda.device_count() >= 2),
                       reason="needs the CUDA kernels and two GPUs"),
]

T, N, H = 37, 4, 520  # odd T, a partial K group


def op_calls(device: str) -> dict:
    """Every op of the pack on small inputs on `device`: name -> zero-argument callable."""
    mhc = torch.ops.mhc
    pre = h.pre_inputs(T, N, H, seed=1, norm=True, device=device)
    fused = h.fused_inputs(T, N, H, seed=2, norm=True, device=device)
    head = h.head_inputs(T, N, H, seed=3, device=device)
    v41 = h.v41_inputs(T, N, H, seed=4, norm=True, device=device)
    gemm = h.prenorm_inputs(T, 24, N * H, seed=5, device=device)
    lin = h.linear_inputs(T, 24, 200, seed=6, device=device)
    post = {k: fused[k] for k in ("x", "residual", "post_mix", "comb_mix")}
    gates = (fused["fn"], fused["hc_scale"], fused["hc_base"])
    return {
        "mhc_pre": lambda: mhc.mhc_pre(pre["residual"], pre["fn"], pre["hc_scale"],
                                       pre["hc_base"], norm_weight=pre["norm_weight"]),
        "mhc_post": lambda: mhc.mhc_post(**post),
        "mhc_fused_post_pre": lambda: mhc.mhc_fused_post_pre(
            *post.values(), *gates, norm_weight=fused["norm_weight"]),
        "hc_head": lambda: mhc.hc_head(head["residual"], head["fn"], head["hc_scale"],
                                       head["hc_base"]),
        "hc_prenorm_gemm": lambda: mhc.hc_prenorm_gemm(gemm["x"], gemm["fn"], 4),
        "linear_bf16_fp32": lambda: mhc.linear_bf16_fp32(lin["x"], lin["weight"]),
        "mhc_stats": lambda: mhc.mhc_stats(v41["residual"], v41["fn"], v41["hc_scale"],
                                           v41["hc_base"]),
        "mhc_combine": lambda: mhc.mhc_combine(v41["residual"], v41["pre_mix"],
                                               v41["norm_weight"]),
        "mhc_post_combine": lambda: mhc.mhc_post_combine(
            v41["x"], v41["residual"], v41["post_mix"], v41["comb_mix"], v41["pre_mix"],
            v41["norm_weight"]),
        "mhc_shifted_post_pre": lambda: mhc.mhc_shifted_post_pre(
            v41["x"], v41["residual"], v41["post_mix"], v41["comb_mix"], v41["pre_mix"],
            v41["fn"], v41["hc_scale"], v41["hc_base"], norm_weight=v41["norm_weight"]),
    }


def as_tuple(r) -> tuple:
    return tuple(r) if isinstance(r, (tuple, list)) else (r,)


def assert_same(got, want, what: str) -> None:
    got, want = as_tuple(got), as_tuple(want)
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.device == b.device, (what, i, a.device, b.device)
        assert torch.equal(a, b), f"{what}: output {i} differs"


@pytest.mark.parametrize("data, current", [(1, 0), (0, 1)])
def test_ops_follow_their_tensors_not_the_current_device(data, current):
    """Results with the tensors on cuda:`data` and cuda:`current` current equal, bit for bit,
    those with cuda:`data` current, and stay on cuda:`data`."""
    device = f"cuda:{data}"
    calls = op_calls(device)
    with torch.cuda.device(data):
        want = {name: f() for name, f in calls.items()}
    with torch.cuda.device(current):
        got = {name: f() for name, f in calls.items()}
        torch.cuda.synchronize(data)
    for name in calls:
        assert all(t.device == torch.device(device) for t in as_tuple(got[name])), name
        assert_same(got[name], want[name], f"{name} on {device}, cuda:{current} current")


@pytest.mark.parametrize("data, current", [(1, 0), (0, 1)])
def test_ops_in_a_graph_on_another_device(data, current):
    """Captured on a stream of cuda:`data` while cuda:`current` is current outside the capture;
    replayed, the graph gives the eager results."""
    calls = op_calls(f"cuda:{data}")
    with torch.cuda.device(data):
        want = {name: f() for name, f in calls.items()}
        side = torch.cuda.Stream(device=data)
        side.wait_stream(torch.cuda.current_stream(data))
        with torch.cuda.stream(side):
            for f in calls.values():  # first calls (one-time attributes) outside the capture
                f()
        torch.cuda.current_stream(data).wait_stream(side)
        torch.cuda.synchronize(data)
    with torch.cuda.device(current):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=torch.cuda.Stream(device=data)):
            outs = {name: f() for name, f in calls.items()}
        graph.replay()
        torch.cuda.synchronize(data)
    for name in calls:
        assert_same(outs[name], want[name], f"{name} replayed on cuda:{data}")


def _nvidia_smi() -> str | None:
    return shutil.which("nvidia-smi")


# Run in a fresh process: every op on cuda:IDX without making it current, then the GPUs on
# which this process holds a context, as nvidia-smi reports them (PCI bus ids).
_PROBE = textwrap.dedent("""
    import json, os, subprocess, sys
    sys.path.insert(0, {tests!r})
    import torch
    import test_multi_gpu as m
    idx = {idx}
    for f in m.op_calls(f"cuda:{{idx}}").values():
        f()
    if {warm}:
        from mhc_ops import warmup
        warmup.warmup(1024, max_tokens=64, device=f"cuda:{{idx}}", progress=False)
    torch.cuda.synchronize(idx)
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         check=True).stdout
    mine = [line.split(",")[1].strip() for line in out.splitlines()
            if line.split(",")[0].strip() == str(os.getpid())]
    print(json.dumps(mine))
""")


def _bus_ids() -> dict[str, int]:
    """PCI bus id -> CUDA index, with CUDA_DEVICE_ORDER=PCI_BUS_ID (nvidia-smi's order)."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,pci.bus_id", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return {line.split(",")[1].strip().lower(): int(line.split(",")[0])
            for line in out.splitlines() if line.strip()}


@pytest.mark.skipif(_nvidia_smi() is None, reason="needs nvidia-smi")
@pytest.mark.parametrize("idx, warm", [(1, False), (1, True), (0, False)])
def test_no_context_on_a_gpu_without_tensors(idx, warm):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    tests = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(mhc_ops.__file__)), env.get("PYTHONPATH", "")])
    code = _PROBE.format(tests=tests, idx=idx, warm=warm)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    buses = json.loads(r.stdout.strip().splitlines()[-1])
    index_of = _bus_ids()
    used = sorted({index_of[b.lower()] for b in buses if b.lower() in index_of})
    assert used == [idx], f"contexts on GPUs {used}; tensors lived on cuda:{idx} only"


def test_warmup_per_device_leaves_the_other_untouched():
    """Plans are recorded per device: a warmup of cuda:1 covers cuda:1 only, and what ran on
    cuda:0 before stays unwarmed there."""
    H1 = 1024
    mhc_ops._C.clear_launched_plans()  # forget what earlier tests launched
    with torch.cuda.device(0):
        op_calls("cuda:0")["mhc_stats"]()
        torch.cuda.synchronize(0)
    before0 = warmup.unwarmed_plans("cuda:0")
    report = warmup.warmup(H1, max_tokens=64, device="cuda:1", progress=False)
    assert report.device == "cuda:1"
    assert warmup.unwarmed_plans("cuda:0") == before0
    x = h.pre_inputs(48, N, H1, seed=7, device="cuda:1")
    torch.ops.mhc.mhc_pre(x["residual"], x["fn"], x["hc_scale"], x["hc_base"])
    torch.cuda.synchronize(1)
    assert warmup.unwarmed_plans("cuda:1") == []
    # the same call on cuda:0, never warmed there: reported for cuda:0 only
    y = {k: v.to("cuda:0") for k, v in x.items() if v is not None}
    torch.ops.mhc.mhc_pre(y["residual"], y["fn"], y["hc_scale"], y["hc_base"])
    torch.cuda.synchronize(0)
    assert warmup.unwarmed_plans("cuda:1") == []
    assert any(p.plan.kind.name == "MHC_PRE" for p in warmup.unwarmed_plans("cuda:0"))
