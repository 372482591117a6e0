"""mhc_fused_post_pre (SPEC §2.3): exactly mhc_post, rounded to bf16, then mhc_pre.

residual_out must be bit-identical to mhc_post on the same device; the gates and layer_input
obey the §3 bounds against the float64 pre of that residual_out. On the CPU the fused op is
literally the composition, so there all four outputs equal post-then-pre bit for bit.
"""

from __future__ import annotations

import pytest
import torch

import cuda_helpers as ch
import helpers as h
import mhc_ops
from mhc_ops.plan import KernelType

CASES = [
    (1, 4, 4096),   # decode, one token at Flash width
    (7, 4, 72),     # odd T, H not a power of two
    (129, 4, 200),  # odd T past 128; H = 200
    (33, 1, 64),    # n = 1
    (17, 2, 8),     # n = 2, smallest H
    (9, 8, 128),    # n = 8
]

PRE_KEYS = ("fn", "hc_scale", "hc_base", "norm_weight")


def _call(inp: dict, **kw):
    return torch.ops.mhc.mhc_fused_post_pre(
        inp["x"], inp["residual"], inp["post_mix"], inp["comb_mix"], inp["fn"], inp["hc_scale"],
        inp["hc_base"], norm_weight=inp["norm_weight"], **kw)


def _unfused(inp: dict, **kw):
    r = torch.ops.mhc.mhc_post(inp["x"], inp["residual"], inp["post_mix"], inp["comb_mix"])
    return (r, *torch.ops.mhc.mhc_pre(r, inp["fn"], inp["hc_scale"], inp["hc_base"],
                                      norm_weight=inp["norm_weight"], **kw))


def _check(outs, inp, device, **kw):
    r, post, comb, li = outs
    # residual_out: bit-identical to mhc_post on this device, and within 1 ulp of float64 post.
    want = _unfused(inp, **kw)
    assert torch.equal(r, want[0])
    h.check_post_output(r, {k: inp[k] for k in ("x", "residual", "post_mix", "comb_mix")},
                        what="fused residual_out")
    # the pre half against the float64 pre of the residual_out it consumed
    h.check_pre_outputs((post, comb, li), r, {k: inp[k] for k in PRE_KEYS}, what="fused", **kw)
    if device == "cpu":
        # CPU fused is the composition itself: same bits as post then pre.
        for g, w in zip((post, comb, li), want[1:]):
            assert torch.equal(g, w)


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("T,n,H", CASES)
def test_matches_reference(device, T, n, H, norm):
    inp = h.fused_inputs(T, n, H, seed=h.seed_of("fused", T, n, H, norm), norm=norm,
                         device=device)
    _check(_call(inp), inp, device)


@pytest.mark.parametrize("repeat", [0, 1, 3, 20])
def test_sinkhorn_repeat(device, repeat):
    inp = h.fused_inputs(31, 4, 64, seed=h.seed_of("fused-rep", repeat), device=device)
    _check(_call(inp, sinkhorn_repeat=repeat), inp, device, sinkhorn_repeat=repeat)


def test_non_default_scalars(device):
    kw = dict(rms_eps=0.5, hc_pre_eps=0.05, hc_sinkhorn_eps=0.02, hc_post_mult_value=1.5,
              sinkhorn_repeat=5, norm_eps=0.25)
    inp = h.fused_inputs(11, 4, 72, seed=1, norm=True, device=device)
    _check(_call(inp, **kw), inp, device, **kw)


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
def test_empty(device, norm):
    n, H = 4, 64
    inp = h.fused_inputs(0, n, H, seed=2, norm=norm, device=device)
    r, post, comb, li = _call(inp)
    assert r.shape == (0, n, H) and r.dtype == torch.bfloat16
    assert post.shape == (0, n, 1) and post.dtype == torch.float32
    assert comb.shape == (0, n, n) and comb.dtype == torch.float32
    assert li.shape == (0, H) and li.dtype == torch.bfloat16
    assert all(t.device.type == device for t in (r, post, comb, li))


def test_post_mix_2d(device):
    inp = h.fused_inputs(9, 4, 64, seed=3, device=device)
    a = _call(inp)
    b = _call({**inp, "post_mix": inp["post_mix"].reshape(9, 4)})
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_wrapper_leading_dims(device):
    B, S, n, H = 2, 3, 4, 72
    inp = h.fused_inputs(B * S, n, H, seed=4, norm=True, device=device)
    p = {k: inp[k] for k in PRE_KEYS}
    flat = mhc_ops.mhc_fused_post_pre(inp["x"], inp["residual"], inp["post_mix"], inp["comb_mix"],
                                      **p)
    outs = mhc_ops.mhc_fused_post_pre(
        inp["x"].reshape(B, S, H), inp["residual"].reshape(B, S, n, H),
        inp["post_mix"].reshape(B, S, n, 1), inp["comb_mix"].reshape(B, S, n, n), **p)
    shapes = [(B, S, n, H), (B, S, n, 1), (B, S, n, n), (B, S, H)]
    assert [tuple(t.shape) for t in outs] == shapes
    for o, f in zip(outs, flat):
        assert torch.equal(o.reshape(f.shape), f)


@pytest.mark.parametrize("fuse", [True, False])
def test_post_pre_flag(device, fuse):
    # mhc_ops.mhc_post_pre follows MHC_FUSE_POST_PRE; both settings agree per §3 (bitwise on
    # the CPU, where fused is the composition).
    inp = h.fused_inputs(13, 4, 64, seed=5, norm=True, device=device)
    args = (inp["x"], inp["residual"], inp["post_mix"], inp["comb_mix"])
    p = {k: inp[k] for k in PRE_KEYS}
    with mhc_ops.envs.MHC_FUSE_POST_PRE.override(fuse):
        outs = mhc_ops.mhc_post_pre(*args, **p)
    _check(outs, inp, device)


@pytest.mark.parametrize("mode", h.VIEW_MODES)
def test_odd_views(device, mode):
    inp = h.fused_inputs(7, 4, 72, seed=6, norm=True, device=device)
    want = _call(inp)
    for names in [[k] for k in inp] + [list(inp)]:
        odd = {k: (h.odd_view(v, mode) if k in names else v) for k, v in inp.items()}
        for g, w in zip(_call(odd), want):
            assert torch.equal(g, w), f"{mode} view of {names}"


@pytest.mark.parametrize("arg", ["x", "residual"])
def test_nonfinite_token_isolated(device, arg):
    inp = h.fused_inputs(9, 4, 64, seed=7, norm=True, device=device)
    clean = _call(inp)
    bad = inp[arg].clone()
    bad[2].view(-1)[5] = float("nan")
    bad[6].view(-1)[3] = float("-inf")
    got = _call({**inp, arg: bad})
    for g, c in zip(got, clean):
        g, c = h.tokens_except(g, [2, 6]), h.tokens_except(c, [2, 6])
        assert torch.equal(g, c) and torch.isfinite(g).all()


def test_deterministic(device):
    inp = h.fused_inputs(37, 4, 200, seed=8, norm=True, device=device)
    first = _call(inp)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(_call(inp), first))


def test_batch_invariant_cpu():
    T = 300
    inp = h.fused_inputs(T, 4, 256, seed=9, norm=True)
    per_token = ("x", "residual", "post_mix", "comb_mix")
    full = _call(inp)
    for b in (1, 7, 64, 300):
        parts = [_call({k: (v[i:i + b] if k in per_token else v) for k, v in inp.items()})
                 for i in range(0, T, b)]
        for k in range(4):
            assert torch.equal(torch.cat([q[k] for q in parts]), full[k]), (b, k)


@pytest.mark.slow
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("T,n,H", [(512, 4, 7168), (512, 4, 4096)])
def test_matches_reference_large(device, T, n, H, norm):
    inp = h.fused_inputs(T, n, H, seed=h.seed_of("fused-large", T, n, H, norm), norm=norm,
                         device=device)
    _check(_call(inp), inp, device)


# ----------------------------------------------------------------------------------------------
# CUDA kernels: every plan the planner reaches, at both DeepSeek-V4 widths.

@ch.cuda_test
@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", ch.WIDTHS)
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
def test_every_cuda_plan(norm, H, monkeypatch):
    ch.every_plan(KernelType.MHC_FUSED_POST_PRE, norm, H, monkeypatch)
