"""mhc_pre (SPEC §2.1) against the float64 reference, with the §3 bounds.

Bounds (helpers.check_pre_outputs): post_mix / comb_mix max abs ≤ 1e-3; layer_input within
2 bf16 ulps + 5e-4·Σ pre·|residual| (atol floor 1e-5), ≥ 99% within 1 ulp + that term; 4 ulps
with norm_weight.
"""

from __future__ import annotations

import pytest
import torch

import cuda_helpers as ch
import helpers as h
import mhc_ops
from mhc_ops.plan import KernelType
from mhc_ops import reference

# (T, n, H): why the case is here.
CASES = [
    (1, 4, 4096),   # decode: one token at DeepSeek-V4 Flash width, K = 16384
    (7, 4, 72),     # odd T; H not a power of two, K = 288 not a multiple of 64
    (129, 4, 200),  # odd T just past a 128-token boundary; H = 200
    (64, 4, 64),    # a full decode batch
    (33, 1, 64),    # n = 1: a single stream, M3 = 3, 1x1 Sinkhorn
    (17, 2, 8),     # n = 2 and the smallest legal H
    (9, 8, 128),    # n = 8: the largest hc_mult, M3 = 80
    (5, 3, 64),     # odd n
]


def _call(inp: dict, **kw):
    return torch.ops.mhc.mhc_pre(inp["residual"], inp["fn"], inp["hc_scale"], inp["hc_base"],
                                 norm_weight=inp["norm_weight"], **kw)


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("T,n,H", CASES)
def test_matches_reference(device, T, n, H, norm):
    inp = h.pre_inputs(T, n, H, seed=h.seed_of("pre", T, n, H, norm), norm=norm, device=device)
    outs = _call(inp)
    h.check_pre_outputs(outs, inp["residual"], {k: v for k, v in inp.items() if k != "residual"})


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
def test_empty(device, norm):
    n, H = 4, 64
    inp = h.pre_inputs(0, n, H, seed=1, norm=norm, device=device)
    post, comb, li = _call(inp)
    assert post.shape == (0, n, 1) and post.dtype == torch.float32
    assert comb.shape == (0, n, n) and comb.dtype == torch.float32
    assert li.shape == (0, H) and li.dtype == torch.bfloat16
    assert all(t.device.type == device for t in (post, comb, li))


@pytest.mark.parametrize("repeat", [0, 1, 3, 20])
def test_sinkhorn_repeat(device, repeat):
    inp = h.pre_inputs(31, 4, 64, seed=h.seed_of("rep", repeat), device=device)
    outs = _call(inp, sinkhorn_repeat=repeat)
    p = {k: v for k, v in inp.items() if k != "residual"}
    h.check_pre_outputs(outs, inp["residual"], p, sinkhorn_repeat=repeat)


def test_sinkhorn_repeat_zero_is_one(device):
    # SPEC §2.6: R = 0 and R = 1 both mean "softmax + eps, then one column step".
    inp = h.pre_inputs(13, 4, 64, seed=3, device=device)
    a, b = _call(inp, sinkhorn_repeat=0), _call(inp, sinkhorn_repeat=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # ...and differs from R = 3, so the count is honoured at all.
    assert not torch.equal(a[1], _call(inp, sinkhorn_repeat=3)[1])


@pytest.mark.parametrize("eps", [1e-6, 0.0], ids=["eps", "eps0"])
def test_sinkhorn_peaky_logits(device, eps):
    # comb logits spread over ~±30 (hc_base std 10): softmax rows close to one-hot, entries
    # down to ~1e-26, so the Sinkhorn's scale vectors span many orders of magnitude (the
    # kernels keep the matrix after the softmax fixed and iterate only those vectors,
    # core/math.h). Still within the §3 bound of the float64 reference, with and without eps.
    inp = h.pre_inputs(64, 4, 64, seed=h.seed_of("peaky", eps), device=device)
    g = torch.Generator().manual_seed(h.seed_of("peaky-base", eps))
    inp["hc_base"][8:] = (torch.randn(16, generator=g) * 10.0).to(device)
    outs = _call(inp, hc_sinkhorn_eps=eps)
    h.check_pre_outputs(outs, inp["residual"], {k: v for k, v in inp.items() if k != "residual"},
                        hc_sinkhorn_eps=eps)
    logits = inp["hc_base"][8:].reshape(4, 4).cpu()
    assert float((logits.max(1).values - logits.min(1).values).max()) > 20  # the case is peaky


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
def test_non_default_scalars(device, norm):
    # Every float argument away from its default, large enough to move the result: a kernel
    # that ignored or swapped one of them fails the reference comparison.
    kw = dict(rms_eps=0.5, hc_pre_eps=0.05, hc_sinkhorn_eps=0.02, hc_post_mult_value=1.5,
              sinkhorn_repeat=5, norm_eps=0.25)
    inp = h.pre_inputs(11, 4, 72, seed=h.seed_of("eps", norm), norm=norm, device=device)
    outs = _call(inp, **kw)
    h.check_pre_outputs(outs, inp["residual"], {k: v for k, v in inp.items() if k != "residual"},
                        **kw)
    # zero eps is legal (>= 0)
    kw0 = dict(rms_eps=0.0, hc_pre_eps=0.0, hc_sinkhorn_eps=0.0, norm_eps=0.0)
    outs0 = _call(inp, **kw0)
    h.check_pre_outputs(outs0, inp["residual"],
                        {k: v for k, v in inp.items() if k != "residual"}, **kw0)


def test_comb_is_column_stochastic(device):
    # Sinkhorn ends with a column step: with the default eps column sums are 1 to within the
    # eps it adds (~n·1e-6) and fp32 rounding; 1e-3 is the §3 gate bound. Entries stay positive.
    inp = h.pre_inputs(64, 4, 128, seed=5, device=device)
    _, comb, _ = _call(inp)
    col = comb.double().sum(-2)
    assert float((col - 1).abs().max()) <= 1e-3
    assert (comb > 0).all()
    # rows only approximately (SPEC §2.6): ~1e-3 after 20 rounds on these logits
    assert float((comb.double().sum(-1) - 1).abs().max()) <= 1e-2


def test_post_mix_range(device):
    # post = sigmoid(·)·hc_post_mult_value lies strictly inside (0, mult).
    inp = h.pre_inputs(32, 4, 64, seed=6, device=device)
    post, _, _ = _call(inp, hc_post_mult_value=3.0)
    assert (post > 0).all() and (post < 3.0).all()


def test_norm_is_rmsnorm_of_plain(device):
    # SPEC §2.1 step 9: mhc_pre(..., norm_weight=w) equals rmsnorm(mhc_pre(...).layer_input, w);
    # the gates do not depend on the norm at all.
    inp = h.pre_inputs(19, 4, 200, seed=7, norm=True, device=device)
    w = inp["norm_weight"]
    post_n, comb_n, li_n = _call(inp)
    post_p, comb_p, li_p = _call({**inp, "norm_weight": None})
    assert torch.equal(post_n, post_p) and torch.equal(comb_n, comb_p)
    z = li_p.cpu().double()
    want = (z * torch.rsqrt(z.square().mean(-1, keepdim=True) + 1e-6) * w.cpu().double())
    # one rounding of a fp32 norm vs the float64 one: 1 ulp
    h.assert_bf16_within_ulp(li_n, want.to(torch.bfloat16), what="norm vs rmsnorm(plain)")


def test_float32_norm_weight_is_rounded_once(device):
    # docs/spec.md §2.8: a float32 norm_weight is accepted and rounded to bf16, as the serving
    # stacks do: the same bits as the bf16 weight it rounds to
    inp = h.pre_inputs(13, 4, 200, seed=8, norm=True, device=device)
    w32 = inp["norm_weight"].float() + 1e-3 * torch.randn(200, device=device)
    got = _call({**inp, "norm_weight": w32})
    want = _call({**inp, "norm_weight": w32.to(torch.bfloat16)})
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_wrapper_leading_dims(device):
    # The Python wrapper takes [..., n, H], flattens and restores; same bits as the flat call.
    B, S, n, H = 3, 5, 4, 64
    inp = h.pre_inputs(B * S, n, H, seed=8, norm=True, device=device)
    p = {k: v for k, v in inp.items() if k != "residual"}
    flat = mhc_ops.mhc_pre(inp["residual"], **p)
    post, comb, li = mhc_ops.mhc_pre(inp["residual"].reshape(B, S, n, H), **p)
    assert post.shape == (B, S, n, 1) and comb.shape == (B, S, n, n) and li.shape == (B, S, H)
    assert torch.equal(post.reshape(B * S, n, 1), flat[0])
    assert torch.equal(comb.reshape(B * S, n, n), flat[1])
    assert torch.equal(li.reshape(B * S, H), flat[2])
    # zero-size leading dims give empty outputs of the right shape
    e = mhc_ops.mhc_pre(inp["residual"][:0].reshape(0, 2, n, H), **p)
    assert [t.shape for t in e] == [(0, 2, n, 1), (0, 2, n, n), (0, 2, H)]


@pytest.mark.parametrize("mode", h.VIEW_MODES)
def test_odd_views(device, mode):
    # SPEC §2.8: any strides, any storage offset. Each tensor argument alone, then all at once,
    # must give the contiguous call's bits.
    inp = h.pre_inputs(7, 4, 72, seed=9, norm=True, device=device)
    want = _call(inp)
    for names in [[k] for k in inp] + [list(inp)]:
        odd = {k: (h.odd_view(v, mode) if k in names else v) for k, v in inp.items()}
        got = _call(odd)
        for g, w in zip(got, want):
            assert torch.equal(g, w), f"{mode} view of {names}"


def test_nonfinite_token_isolated(device):
    # SPEC §2.8: NaN / Inf in one token's inputs affects only that token. Tokens 2 and 6 sit in
    # CPU dot groups of 4 with clean neighbours.
    inp = h.pre_inputs(9, 4, 64, seed=10, norm=True, device=device)
    clean = _call(inp)
    dirty = dict(inp)
    dirty["residual"] = inp["residual"].clone()
    dirty["residual"][2, 1, 5] = float("nan")
    dirty["residual"][6, 0, 3] = float("inf")
    got = _call(dirty)
    for g, c in zip(got, clean):
        g, c = h.tokens_except(g, [2, 6]), h.tokens_except(c, [2, 6])
        assert torch.equal(g, c) and torch.isfinite(g).all()


def test_deterministic(device):
    inp = h.pre_inputs(37, 4, 200, seed=11, norm=True, device=device)
    first = _call(inp)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(_call(inp), first))


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
def test_batch_invariant_cpu(norm):
    # The CPU kernel is built to give every token the same bits whatever T is and whoever its
    # neighbours are (fixed 4-token dot groups padded with a real row).
    T = 300
    inp = h.pre_inputs(T, 4, 256, seed=12, norm=norm)
    p = {k: v for k, v in inp.items() if k != "residual"}
    full = mhc_ops.mhc_pre(inp["residual"], **p)
    for b in (1, 7, 64, 300):
        parts = [mhc_ops.mhc_pre(inp["residual"][i:i + b], **p) for i in range(0, T, b)]
        for k in range(3):
            assert torch.equal(torch.cat([q[k] for q in parts]), full[k]), (b, k)


def test_bound_checker_rejects_perturbed_outputs():
    # The §3 checker must catch what it is there to catch: a wrong element, a few percent of
    # elements off by 2 ulps, and a kernel whose gates are slightly off.
    g = h.gen(13)
    ref = torch.randn(64, 256, generator=g).to(torch.bfloat16)
    zero = torch.zeros(64, 256, dtype=torch.float64)
    u = h.bf16_ulp(ref.double())
    h.assert_bf16_stream_sum(ref, ref, zero)  # exact passes
    two = (ref.double() + 2 * u).to(torch.bfloat16)
    mask = torch.rand(64, 256, generator=g) < 0.005
    h.assert_bf16_stream_sum(torch.where(mask, two, ref), ref, zero)  # 0.5% at 2 ulp passes
    with pytest.raises(AssertionError, match="beyond 2 ulp"):
        bad = ref.clone()
        bad[3, 7] = (ref[3, 7].double() + 3 * u[3, 7]).to(torch.bfloat16)
        h.assert_bf16_stream_sum(bad, ref, zero)
    with pytest.raises(AssertionError, match="within 1 ulp"):
        mask = torch.rand(64, 256, generator=g) < 0.03
        h.assert_bf16_stream_sum(torch.where(mask, two, ref), ref, zero)
    with pytest.raises(AssertionError, match="non-finite"):
        bad = ref.clone()
        bad[0, 0] = float("nan")
        h.assert_bf16_stream_sum(bad, ref, zero)
    # a real output with one element moved by 3 ulps (where that exceeds the term) must fail
    inp = h.pre_inputs(16, 4, 64, seed=14)
    p = {k: v for k, v in inp.items() if k != "residual"}
    outs = _call(inp)
    h.check_pre_outputs(outs, inp["residual"], p)
    li = outs[2].clone()
    j = int(li.double().abs().flatten().argmax())
    v = li.flatten()[j].double()
    li.view(-1)[j] = (v + 3 * h.bf16_ulp(v)).to(torch.bfloat16)
    with pytest.raises(AssertionError, match="layer_input"):
        h.check_pre_outputs((outs[0], outs[1], li), inp["residual"], p)
    # gates computed with hc_base shifted by 0.05: layer_input and post_mix must both fail
    shifted = _call({**inp, "hc_base": inp["hc_base"] + 0.05})
    with pytest.raises(AssertionError):
        h.check_pre_outputs((outs[0], outs[1], shifted[2]), inp["residual"], p)
    with pytest.raises(AssertionError, match="post_mix"):
        h.check_pre_outputs((shifted[0], outs[1], outs[2]), inp["residual"], p)


def test_reference_self_consistency():
    # The float64 reference the bounds use agrees with the float32 one the benchmarks use (so a
    # mistake in either shows up here rather than as a mysterious kernel failure).
    inp = h.pre_inputs(9, 4, 64, seed=15, norm=True)
    a = reference.mhc_pre(inp["residual"], inp["fn"], inp["hc_scale"], inp["hc_base"],
                          norm_weight=inp["norm_weight"], dtype=torch.float64)
    b = reference.mhc_pre(inp["residual"], inp["fn"], inp["hc_scale"], inp["hc_base"],
                          norm_weight=inp["norm_weight"])
    assert float((a[0] - b[0].double()).abs().max()) < 1e-5
    assert float((a[1] - b[1].double()).abs().max()) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("T,n,H", [(512, 4, 7168), (512, 4, 4096), (257, 8, 1024)])
def test_matches_reference_large(device, T, n, H, norm):
    inp = h.pre_inputs(T, n, H, seed=h.seed_of("pre-large", T, n, H, norm), norm=norm,
                       device=device)
    h.check_pre_outputs(_call(inp), inp["residual"],
                        {k: v for k, v in inp.items() if k != "residual"})


@pytest.mark.slow
def test_token_index_past_2_31(device):
    # T·n·H > 2^31: tokens whose data starts beyond 2^31 elements are still right.
    h.require_memory(device, 2 * h.BIG_T * h.BIG_N * h.BIG_H)
    res = h.big_residual(device, seed=21)
    p = h.pre_params(h.gen(22), h.BIG_N, h.BIG_H, norm=True, device=device)
    outs = torch.ops.mhc.mhc_pre(res, **p)
    idx = torch.tensor(h.BIG_CHECKED, device=device)
    h.check_pre_outputs(tuple(o[idx] for o in outs), res[idx], p)


# ----------------------------------------------------------------------------------------------
# CUDA kernels: every plan the planner reaches, at both DeepSeek-V4 widths.

@ch.cuda_test
@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", ch.WIDTHS)
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
def test_every_cuda_plan(norm, H, monkeypatch):
    ch.every_plan(KernelType.MHC_PRE, norm, H, monkeypatch)
