"""Helpers of the CUDA kernel tests: inputs drawn on the GPU, the checks of each op against the
float64 reference with the docs/spec.md §3 bounds (helpers.check_*), and the plans a test should
reach. Large batches are checked on sampled token rows (every op is per token), always including
the first and the last tokens.
"""

from __future__ import annotations

import math

import pytest
import torch

import helpers as h
import mhc_ops
from mhc_ops import plan
from mhc_ops.plan import KernelType

# Marks a test (or module) that needs the CUDA kernels and a GPU; it skips with the reason.
needs_cuda = [pytest.mark.cuda,
              pytest.mark.skipif(not (mhc_ops.cuda_available() and torch.cuda.is_available()),
                                 reason="needs the CUDA kernels and a GPU")]


@pytest.fixture
def nan_filled():
    """torch.empty (and at::empty in the launchers) returns NaN-filled memory: an output
    element that no kernel writes stays NaN and fails the finiteness checks."""
    det, warn = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def cuda_test(f):
    for m in needs_cuda:
        f = m(f)
    return f


WIDTHS = (4096, 7168)  # DeepSeek-V4 Flash and Pro hidden sizes
N_HC = 4


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def randn(g, *shape, std=1.0, mean=0.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=g, device="cuda") * std + mean).to(dtype)


def pre_params(g, n, H, norm):
    """Same scales as helpers.pre_params, drawn on the GPU (large T stays fast)."""
    K, m3 = n * H, n * (n + 2)
    return {"fn": randn(g, m3, K, std=1 / math.sqrt(K)),
            "hc_scale": 0.5 + torch.rand(3, generator=g, device="cuda"),
            "hc_base": randn(g, m3, std=0.5),
            "norm_weight": randn(g, H, std=0.1, mean=1.0, dtype=torch.bfloat16) if norm else None}


def call_inputs(seed: int, T: int, H: int, norm: bool):
    """x [T, H], residual [T, n, H], post / comb gates and the pre parameters (norm_weight
    when norm) of a pre / fused / head call, drawn from one generator in that order."""
    g = gen(seed)
    x = randn(g, T, H, dtype=torch.bfloat16)
    res = randn(g, T, N_HC, H, dtype=torch.bfloat16)
    post, comb = post_gates(g, T, N_HC)
    return x, res, post, comb, pre_params(g, N_HC, H, norm=norm)


def post_gates(g, T, n):
    post = 2 * torch.sigmoid(randn(g, T, n, 1))
    comb = mhc_ops.reference.sinkhorn(randn(g, T, n, n), 1e-6, 20)
    return post, comb


def rows(T: int) -> torch.Tensor:
    """Sampled token rows: the first and last 8, and 16 spread in between."""
    idx = set(range(min(T, 8))) | set(range(max(0, T - 8), T))
    idx |= {int(i) for i in torch.linspace(0, T - 1, 16).round().tolist()}
    return torch.tensor(sorted(idx), device="cuda")


def sub(p: dict, **kw) -> dict:
    return {k: v for k, v in p.items() if k not in kw} | kw


def head_params(p: dict) -> dict:
    """hc_head's fn / hc_scale / hc_base: the first n rows of mhc_pre's."""
    return {"fn": p["fn"][:N_HC].contiguous(), "hc_scale": p["hc_scale"][:1],
            "hc_base": p["hc_base"][:N_HC]}


def runs_under(setter, values, calls: dict, check=None) -> dict:
    """Every call once per value of a study knob (`setter` returns the previous value; the
    first one is restored afterwards), after check(kind, value): {kind: [outputs per value]}."""
    got, old = {}, None
    try:
        for i, value in enumerate(values):
            prev = setter(value)
            old = prev if i == 0 else old
            for kind, call in calls.items():
                if check is not None:
                    check(kind, value)
                got.setdefault(kind, []).append(call())
    finally:
        if old is not None:
            setter(old)
    return got


def assert_same_bits(got: dict) -> None:
    """Every run of each kind equals its first to the bit, and is finite (written)."""
    for kind, runs in got.items():
        for run in runs[1:]:
            for a, b in zip(runs[0], run):
                assert torch.isfinite(b).all(), kind
                assert torch.equal(a, b), kind


def check_pre(T, H, norm, seed, n=N_HC):
    g = gen(seed)
    res = randn(g, T, n, H, dtype=torch.bfloat16)
    p = pre_params(g, n, H, norm)
    outs = mhc_ops.mhc_pre(res, **p)
    for o in outs:
        assert torch.isfinite(o).all(), "unwritten or non-finite output"
    idx = rows(T)
    h.check_pre_outputs(tuple(o[idx] for o in outs), res[idx], p)


def check_fused(T, H, norm, seed, n=N_HC):
    g = gen(seed)
    x = randn(g, T, H, dtype=torch.bfloat16)
    res = randn(g, T, n, H, dtype=torch.bfloat16)
    post, comb = post_gates(g, T, n)
    p = pre_params(g, n, H, norm)
    outs = mhc_ops.mhc_fused_post_pre(x, res, post, comb, **p)
    for o in outs:
        assert torch.isfinite(o).all(), "unwritten or non-finite output"
    idx = rows(T)
    r = outs[0][idx]
    h.check_post_output(r, {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                            "comb_mix": comb[idx]}, what="fused residual_out")
    h.check_pre_outputs(tuple(o[idx] for o in outs[1:]), r, p, what="fused")
    # residual_out is bit-identical to mhc_post on the same device (docs/spec.md §2.3)
    assert torch.equal(outs[0], mhc_ops.mhc_post(x, res, post, comb))


def check_head(T, H, seed, n=N_HC):
    g = gen(seed)
    K = n * H
    inp = {"residual": randn(g, T, n, H, dtype=torch.bfloat16),
           "fn": randn(g, n, K, std=1 / math.sqrt(K)),
           "hc_scale": 0.5 + torch.rand(1, generator=g, device="cuda"),
           "hc_base": randn(g, n, std=0.5)}
    out = mhc_ops.hc_head(**inp)
    assert torch.isfinite(out).all(), "unwritten or non-finite output"
    idx = rows(T)
    h.check_head_output(out[idx], sub(inp, residual=inp["residual"][idx]))


def check_post(T, H, seed, n=N_HC):
    g = gen(seed)
    x = randn(g, T, H, dtype=torch.bfloat16)
    res = randn(g, T, n, H, dtype=torch.bfloat16)
    post, comb = post_gates(g, T, n)
    out = mhc_ops.mhc_post(x, res, post, comb)
    assert torch.isfinite(out).all(), "unwritten or non-finite output"
    idx = rows(T)
    h.check_post_output(out[idx], {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                                   "comb_mix": comb[idx]})


def check_prenorm(M, K, S, seed, N=24):
    g = gen(seed)
    x = randn(g, M, K, dtype=torch.bfloat16)
    fn = randn(g, N, K, std=1 / math.sqrt(K))
    out, sq = mhc_ops.hc_prenorm_gemm(x, fn, S)
    assert torch.isfinite(out).all() and torch.isfinite(sq).all()
    idx = rows(M)
    h.check_prenorm_outputs(out[:, idx], sq[:, idx], x[idx], fn, S)


def launched(kind) -> set:
    """Plans the launchers recorded on the current GPU (mhc_ops._C registry)."""
    dev = torch.cuda.current_device()
    plans = {plan.Plan._from_c(p) for d, p, _ in mhc_ops._C.launched_plans() if d == dev}
    return {p for p in plans if p.kind == kind}


MAX_TOKENS = 16384


def reps(kind, H, norm=False):
    return plan.token_count_representatives(kind, MAX_TOKENS, hidden_size=H, hc_mult=N_HC,
                                            num_sms=plan.device_num_sms("cuda"), norm=norm,
                                            batch_invariant=False)


def every_plan(kind, norm, H, monkeypatch):
    """Every plan of pre / fused reachable for T in 1..16384 at this GPU's SM count, once each,
    checked and recorded by the launcher."""
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    check = check_pre if kind == KernelType.MHC_PRE else check_fused
    # the small decode sizes of the same plans too (a plan runs every T up to its representative)
    for T in sorted(set(reps(kind, H, norm)) | {1, 7}):
        check(T, H, norm, seed=h.seed_of(kind.name, T, H, norm))
        want = plan.plan_of(kind, T, hidden_size=H, num_sms=plan.device_num_sms("cuda"),
                            norm=norm, batch_invariant=False)
        assert want in launched(kind), f"T={T}: launcher did not record {want}"
