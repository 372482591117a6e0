"""mhc_post (SPEC §2.2) against the float64 reference.

Bound (SPEC §3): every element within 1 bf16 ulp of bf16(reference) — the op is one fp32
accumulation of n + 1 products and one rounding, so only a rounding-boundary flip is allowed
(plus the fp32 rounding of the terms where the sum cancels, see helpers.assert_bf16_within_ulp).
"""

from __future__ import annotations

import pytest
import torch

import cuda_helpers as ch
import helpers as h
import mhc_ops
from mhc_ops import plan

# (T, n, H): why the case is here.
CASES = [
    (1, 4, 4096),   # decode, one token at Flash width
    (7, 4, 72),     # odd T, H not a power of two
    (129, 4, 200),  # odd T past 128; H = 200
    (33, 1, 64),    # n = 1
    (17, 2, 8),     # n = 2, smallest H
    (9, 8, 128),    # n = 8
    (5, 3, 64),     # odd n
]


def _call(inp: dict) -> torch.Tensor:
    return torch.ops.mhc.mhc_post(inp["x"], inp["residual"], inp["post_mix"], inp["comb_mix"])


@pytest.mark.parametrize("post_2d", [False, True], ids=["post[T,n,1]", "post[T,n]"])
@pytest.mark.parametrize("T,n,H", CASES)
def test_matches_reference(device, T, n, H, post_2d):
    inp = h.post_inputs(T, n, H, seed=h.seed_of("post", T, n, H, post_2d), post_2d=post_2d,
                        device=device)
    out = _call(inp)
    assert out.device == inp["residual"].device
    h.check_post_output(out, inp)


def test_post_mix_shapes_agree(device):
    # post_mix [T, n, 1] and [T, n] are the same data (SPEC §2.2).
    inp = h.post_inputs(11, 4, 64, seed=1, device=device)
    a = _call(inp)
    b = _call({**inp, "post_mix": inp["post_mix"].reshape(11, 4)})
    assert torch.equal(a, b)


def test_comb_is_summed_over_first_index(device):
    # out[j] mixes column j of comb: with comb = e_0 e_1ᵀ (only comb[0, 1] = 1) and post = 0,
    # stream 1 is a copy of old stream 0 and every other stream is zero. A kernel that read
    # comb transposed would copy stream 1 into stream 0 instead.
    T, n, H = 3, 4, 64
    inp = h.post_inputs(T, n, H, seed=2, device=device)
    comb = torch.zeros(T, n, n, device=device)
    comb[:, 0, 1] = 1.0
    out = _call({**inp, "post_mix": torch.zeros_like(inp["post_mix"]), "comb_mix": comb})
    assert torch.equal(out[:, 1], inp["residual"][:, 0])
    assert (out[:, [0, 2, 3]] == 0).all()


def test_empty(device):
    inp = h.post_inputs(0, 4, 64, seed=3, device=device)
    out = _call(inp)
    assert out.shape == (0, 4, 64) and out.dtype == torch.bfloat16
    assert out.device.type == device


def test_wrapper_leading_dims(device):
    B, S, n, H = 2, 3, 4, 72
    inp = h.post_inputs(B * S, n, H, seed=4, device=device)
    flat = mhc_ops.mhc_post(**inp)
    out = mhc_ops.mhc_post(inp["x"].reshape(B, S, H), inp["residual"].reshape(B, S, n, H),
                           inp["post_mix"].reshape(B, S, n, 1), inp["comb_mix"].reshape(B, S, n, n))
    assert out.shape == (B, S, n, H)
    assert torch.equal(out.reshape(B * S, n, H), flat)
    # post_mix with leading dims and no trailing 1
    out2 = mhc_ops.mhc_post(inp["x"].reshape(B, S, H), inp["residual"].reshape(B, S, n, H),
                            inp["post_mix"].reshape(B, S, n), inp["comb_mix"].reshape(B, S, n, n))
    assert torch.equal(out2, out)


@pytest.mark.parametrize("mode", h.VIEW_MODES)
def test_odd_views(device, mode):
    inp = h.post_inputs(7, 4, 72, seed=5, device=device)
    want = _call(inp)
    for names in [[k] for k in inp] + [list(inp)]:
        odd = {k: (h.odd_view(v, mode) if k in names else v) for k, v in inp.items()}
        assert torch.equal(_call(odd), want), f"{mode} view of {names}"


@pytest.mark.parametrize("arg", ["x", "residual", "post_mix", "comb_mix"])
def test_nonfinite_token_isolated(device, arg):
    inp = h.post_inputs(9, 4, 64, seed=6, device=device)
    clean = _call(inp)
    bad = inp[arg].clone()
    bad[2].view(-1)[1] = float("nan")
    bad[6].view(-1)[0] = float("inf")
    got = _call({**inp, arg: bad})
    g, c = h.tokens_except(got, [2, 6]), h.tokens_except(clean, [2, 6])
    assert torch.equal(g, c) and torch.isfinite(g).all()


def test_deterministic(device):
    inp = h.post_inputs(37, 4, 200, seed=7, device=device)
    first = _call(inp)
    for _ in range(3):
        assert torch.equal(_call(inp), first)


def test_batch_invariant_cpu():
    T = 300
    inp = h.post_inputs(T, 4, 256, seed=8)
    full = _call(inp)
    for b in (1, 7, 64, 300):
        parts = [_call({k: v[i:i + b] for k, v in inp.items()}) for i in range(0, T, b)]
        assert torch.equal(torch.cat(parts), full), b


def test_checker_rejects_perturbed_output():
    inp = h.post_inputs(8, 4, 64, seed=9)
    out = _call(inp)
    h.check_post_output(out, inp)
    bad = out.clone()
    v = bad[1, 2, 3].double()
    bad[1, 2, 3] = (v + 2 * h.bf16_ulp(v)).to(torch.bfloat16)
    with pytest.raises(AssertionError, match="beyond 1 ulp"):
        h.check_post_output(bad, inp)


@pytest.mark.slow
@pytest.mark.parametrize("T,n,H", [(512, 4, 7168), (512, 4, 4096), (257, 8, 1024)])
def test_matches_reference_large(device, T, n, H):
    inp = h.post_inputs(T, n, H, seed=h.seed_of("post-large", T, n, H), device=device)
    h.check_post_output(_call(inp), inp)


@pytest.mark.slow
def test_token_index_past_2_31(device):
    # output and residual both past 2^31 elements (2 x 4 GiB)
    h.require_memory(device, 5 * h.BIG_T * h.BIG_N * h.BIG_H)
    T, n, H = h.BIG_T, h.BIG_N, h.BIG_H
    small = h.post_inputs(len(h.BIG_CHECKED), n, H, seed=25, device=device)
    idx = torch.tensor(h.BIG_CHECKED, device=device)
    inp = {"x": torch.full((T, H), 0.25, dtype=torch.bfloat16, device=device),
           "residual": h.big_residual(device, seed=26),
           "post_mix": torch.ones(T, n, 1, device=device),
           "comb_mix": torch.full((T, n, n), 1.0 / n, device=device)}
    for k in ("x", "post_mix", "comb_mix"):
        inp[k][idx] = small[k]
    out = _call(inp)
    h.check_post_output(out[idx], {k: v[idx] for k, v in inp.items()})


# ----------------------------------------------------------------------------------------------
# CUDA kernels at the sizes they are built for; the scalar fallback.

@ch.cuda_test
@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", ch.WIDTHS)
@pytest.mark.parametrize("T", [1, 8, 64, 4096, 16384])
def test_post_sizes(T, H):
    ch.check_post(T, H, seed=h.seed_of("post", T, H))

@ch.cuda_test
@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [520, 5120])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_post_row_plan(n, H):
    # From T = 4096 the plan at n <= 4 is a CTA per token walking H in 2048-column steps: odd T,
    # one partial step (H = 520) and a partial last step (5120); n = 8 keeps H / 1024 CTAs per
    # token. Misaligned views (2-byte loads) give the same bits.
    T = 4099
    kw = dict(hc_mult=n, hidden_size=H, num_sms=plan.device_num_sms("cuda"),
              batch_invariant=False)
    assert plan.plan_of(plan.KernelType.MHC_POST, T, **kw).block_tokens == (1 if n <= 4 else 0)
    g = ch.gen(h.seed_of("post-row", n, H))
    x = ch.randn(g, T, H, dtype=torch.bfloat16)
    res = ch.randn(g, T, n, H, dtype=torch.bfloat16)
    post, comb = ch.post_gates(g, T, n)
    out = mhc_ops.mhc_post(x, res, post, comb)
    assert torch.isfinite(out).all(), "unwritten or non-finite output"
    idx = ch.rows(T)
    h.check_post_output(out[idx], {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                                   "comb_mix": comb[idx]})
    odd = mhc_ops.mhc_post(h.odd_view(x, "offset"), h.odd_view(res, "offset"), post, comb)
    assert torch.equal(odd, out)

@ch.cuda_test
def test_post_scalar_fallback_is_bit_identical():
    g = ch.gen(5)
    T, n, H = 37, 4, 520
    x = ch.randn(g, T, H, dtype=torch.bfloat16)
    res = ch.randn(g, T, n, H, dtype=torch.bfloat16)
    post, comb = ch.post_gates(g, T, n)
    want = mhc_ops.mhc_post(x, res, post, comb)
    for name in ("x", "residual"):
        a = {"x": x, "residual": res}
        a[name] = h.odd_view(a[name], "offset")  # contiguous, 2 bytes past alignment
        assert torch.equal(mhc_ops.mhc_post(a["x"], a["residual"], post, comb), want)
