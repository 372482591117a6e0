"""The CUDA ops inside CUDA graphs, torch.compile(mode="reduce-overhead") and side streams.

Every launcher takes the current stream, allocates only through torch's caching allocator and
never synchronises with the host, so each op can be captured; replays must give the eager bits
(the kernels are deterministic), also after the captured inputs are overwritten in place. The
DeepSeek-V4.1 ops (mhc_stats, mhc_combine, mhc_post_combine, mhc_shifted_post_pre) are called
through torch.ops.mhc.
"""

from __future__ import annotations

import math

import pytest
import torch

import mhc_ops

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (mhc_ops.cuda_available() and torch.cuda.is_available()),
                                 reason="needs the CUDA kernels and a GPU")]

N_HC = 4
# decode (split-K, several epilogue chunks per token), mid split-K, FULL_K at 132 SMs
TOKENS = (1, 64, 300, 5000)


def _inputs(T: int, H: int, seed: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    K, m3 = N_HC * H, N_HC * (N_HC + 2)

    def rn(*s, std=1.0, dtype=torch.float32):
        return (torch.randn(*s, generator=g, device="cuda") * std).to(dtype)

    return {
        "x": rn(T, H, dtype=torch.bfloat16),
        "residual": rn(T, N_HC, H, dtype=torch.bfloat16),
        "post_mix": 2 * torch.sigmoid(rn(T, N_HC, 1)),
        "comb_mix": torch.softmax(rn(T, N_HC, N_HC), -2),
        "fn": rn(m3, K, std=1 / math.sqrt(K)),
        "hc_scale": 0.5 + torch.rand(3, generator=g, device="cuda"),
        "hc_base": rn(m3, std=0.5),
        "norm_weight": (1 + 0.1 * rn(H)).bfloat16(),
        "lin_w": rn(256, H, std=1 / math.sqrt(H), dtype=torch.bfloat16),
        "pre_mix": torch.sigmoid(rn(T, N_HC)) + 1e-6,  # a carried pre (DeepSeek-V4.1 ops)
    }


def _all_ops(a: dict) -> list[torch.Tensor]:
    """Every op once (pre with and without norm, fused, post, head, both prenorm forms, linear,
    and the DeepSeek-V4.1 ops: stats, combine with and without norm, post_combine, shifted)."""
    outs = []
    outs += mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    outs += mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"],
                            norm_weight=a["norm_weight"])
    outs += mhc_ops.mhc_fused_post_pre(a["x"], a["residual"], a["post_mix"], a["comb_mix"],
                                       a["fn"], a["hc_scale"], a["hc_base"],
                                       norm_weight=a["norm_weight"])
    outs.append(mhc_ops.mhc_post(a["x"], a["residual"], a["post_mix"], a["comb_mix"]))
    outs.append(mhc_ops.hc_head(a["residual"], a["fn"][:N_HC], a["hc_scale"][:1],
                                a["hc_base"][:N_HC]))
    x2 = a["residual"].flatten(1)
    outs += mhc_ops.hc_prenorm_gemm(x2, a["fn"], 4)
    out = torch.empty(x2.shape[0], a["fn"].shape[0], device="cuda")
    sq = torch.empty(x2.shape[0], device="cuda")
    mhc_ops.tf32_hc_prenorm_gemm(x2, a["fn"], out, sq)
    outs += [out, sq]
    outs.append(mhc_ops.linear_bf16_fp32(a["x"], a["lin_w"]))
    outs += _v41_ops(a)
    return outs


def _v41_ops(a: dict) -> list[torch.Tensor]:
    ops = torch.ops.mhc
    p = (a["fn"], a["hc_scale"], a["hc_base"])
    post = (a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["pre_mix"])
    outs = list(ops.mhc_stats(a["residual"], *p))
    outs.append(ops.mhc_combine(a["residual"], a["pre_mix"]))
    outs.append(ops.mhc_combine(a["residual"], a["pre_mix"], a["norm_weight"]))
    outs += ops.mhc_post_combine(*post, a["norm_weight"])
    outs += ops.mhc_shifted_post_pre(*post, *p, norm_weight=a["norm_weight"])
    return outs


@pytest.mark.parametrize("H", [4096, 7168])
@pytest.mark.parametrize("T", TOKENS)
def test_graph_replay_is_eager(T, H):
    a = _inputs(T, H, seed=T + H)
    want = _all_ops(a)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up off the capture (allocator, cuBLAS workspace)
        _all_ops(a)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = _all_ops(a)
    graph.replay()
    torch.cuda.synchronize()
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"output {i} of the replay differs from eager"
    # the graph reads its inputs at replay time
    b = _inputs(T, H, seed=T + H + 1)
    for k in a:
        a[k].copy_(b[k])
    want = _all_ops(a)
    graph.replay()
    torch.cuda.synchronize()
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"output {i} after new inputs differs from eager"


def _assert_compiled_like_eager(layer, a):
    """layer(**a) under torch.compile's CUDA graphs (warmup, record, replay) gives the eager
    bits."""
    want = layer(**a)
    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True, dynamic=False)
    for _ in range(3):  # warmup, record, replay
        got = compiled(**a)
    torch.cuda.synchronize()
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize("T", [1, 64, 5000])
def test_compile_reduce_overhead_matches_eager(T):
    torch._dynamo.reset()
    H = 4096
    a = _inputs(T, H, seed=11 * T)

    w_sq = (torch.randn(H, H, device="cuda") / math.sqrt(H)).bfloat16()

    def layer(residual, fn, hc_scale, hc_base, norm_weight):
        post, comb, li = mhc_ops.mhc_pre(residual, fn, hc_scale, hc_base, norm_weight=norm_weight)
        y = mhc_ops.linear_bf16_fp32(li, w_sq).to(torch.bfloat16)  # stand-in sub-layer
        r, post, comb, li = mhc_ops.mhc_fused_post_pre(y, residual, post, comb, fn, hc_scale,
                                                       hc_base, norm_weight=norm_weight)
        r = mhc_ops.mhc_post(li, r, post, comb)
        return r, mhc_ops.hc_head(r, fn[:N_HC], hc_scale[:1], hc_base[:N_HC])

    a = {k: a[k] for k in ("residual", "fn", "hc_scale", "hc_base", "norm_weight")}
    _assert_compiled_like_eager(layer, a)


@pytest.mark.parametrize("T", [1, 64, 5000])
def test_compile_reduce_overhead_v41_matches_eager(T):
    # A DeepSeek-V4.1 boundary chain (stats, lagged combine, shifted post/pre, post_combine)
    # under torch.compile's CUDA graphs: the eager bits.
    torch._dynamo.reset()
    H = 5120
    a = _inputs(T, H, seed=17 * T)
    w_sq = (torch.randn(H, H, device="cuda") / math.sqrt(H)).bfloat16()

    def layer(residual, pre_mix, fn, hc_scale, hc_base, norm_weight):
        ops = torch.ops.mhc
        pre, post, comb = ops.mhc_stats(residual, fn, hc_scale, hc_base)
        li = ops.mhc_combine(residual, pre_mix, norm_weight)
        y = mhc_ops.linear_bf16_fp32(li, w_sq).to(torch.bfloat16)  # stand-in sub-layer
        r, li, pre2, post, comb = ops.mhc_shifted_post_pre(y, residual, post, comb, pre, fn,
                                                           hc_scale, hc_base,
                                                           norm_weight=norm_weight)
        y = mhc_ops.linear_bf16_fp32(li, w_sq).to(torch.bfloat16)
        return ops.mhc_post_combine(y, r, post, comb, pre2, norm_weight)

    a = {k: a[k] for k in ("residual", "pre_mix", "fn", "hc_scale", "hc_base", "norm_weight")}
    _assert_compiled_like_eager(layer, a)


@pytest.mark.parametrize("T", [3, 5000])
def test_side_stream(T):
    """Ops launched on a non-default stream run there: produce inputs on the side stream and
    consume them right away, with no synchronisation with the default stream in between."""
    H = 4096
    a = _inputs(T, H, seed=13 * T)
    want = _all_ops(a)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fresh = {k: v.clone() for k, v in a.items()}  # written on the side stream
        got = _all_ops(fresh)
    torch.cuda.current_stream().wait_stream(side)
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"output {i} on a side stream differs"
