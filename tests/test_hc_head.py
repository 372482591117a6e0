"""hc_head (SPEC §2.4) against the float64 reference.

Bound (SPEC §3): within 2 bf16 ulps + 5e-4·Σ pre·|residual| (atol floor 1e-5), ≥ 99% within
1 ulp + that term — the same stream-sum bound as layer_input of mhc_pre.
"""

from __future__ import annotations

import pytest
import torch

import cuda_helpers as ch
import helpers as h
import mhc_ops
from mhc_ops import plan
from mhc_ops.plan import KernelType

CASES = [
    (1, 4, 4096),   # decode, one token at Flash width
    (7, 4, 72),     # odd T, H not a power of two
    (129, 4, 200),  # odd T past 128; H = 200
    (64, 4, 64),    # a full decode batch
    (33, 1, 64),    # n = 1
    (17, 2, 8),     # n = 2, smallest H
    (9, 8, 128),    # n = 8
    (5, 3, 64),     # odd n
]


def _call(inp: dict, **kw) -> torch.Tensor:
    return torch.ops.mhc.hc_head(inp["residual"], inp["fn"], inp["hc_scale"], inp["hc_base"], **kw)


@pytest.mark.parametrize("T,n,H", CASES)
def test_matches_reference(device, T, n, H):
    inp = h.head_inputs(T, n, H, seed=h.seed_of("head", T, n, H), device=device)
    out = _call(inp)
    assert out.device == inp["residual"].device
    h.check_head_output(out, inp)


def test_non_default_eps(device):
    inp = h.head_inputs(11, 4, 72, seed=1, device=device)
    for rms_eps, hc_eps in [(0.5, 0.05), (0.0, 0.0), (1e-3, 0.2)]:
        h.check_head_output(_call(inp, rms_eps=rms_eps, hc_eps=hc_eps), inp, rms_eps, hc_eps)


def test_empty(device):
    inp = h.head_inputs(0, 4, 64, seed=2, device=device)
    out = _call(inp)
    assert out.shape == (0, 64) and out.dtype == torch.bfloat16 and out.device.type == device


def test_wrapper_leading_dims(device):
    B, S, n, H = 3, 5, 4, 64
    inp = h.head_inputs(B * S, n, H, seed=3, device=device)
    p = {k: v for k, v in inp.items() if k != "residual"}
    flat = mhc_ops.hc_head(inp["residual"], **p)
    out = mhc_ops.hc_head(inp["residual"].reshape(B, S, n, H), **p)
    assert out.shape == (B, S, H)
    assert torch.equal(out.reshape(B * S, H), flat)


@pytest.mark.parametrize("mode", h.VIEW_MODES)
def test_odd_views(device, mode):
    inp = h.head_inputs(7, 4, 72, seed=4, device=device)
    want = _call(inp)
    for names in [[k] for k in inp] + [list(inp)]:
        odd = {k: (h.odd_view(v, mode) if k in names else v) for k, v in inp.items()}
        assert torch.equal(_call(odd), want), f"{mode} view of {names}"


def test_nonfinite_token_isolated(device):
    inp = h.head_inputs(9, 4, 64, seed=5, device=device)
    clean = _call(inp)
    res = inp["residual"].clone()
    res[2, 1, 5] = float("nan")
    res[6, 3, 0] = float("inf")
    got = _call({**inp, "residual": res})
    g, c = h.tokens_except(got, [2, 6]), h.tokens_except(clean, [2, 6])
    assert torch.equal(g, c) and torch.isfinite(g).all()


def test_deterministic(device):
    inp = h.head_inputs(37, 4, 200, seed=6, device=device)
    first = _call(inp)
    for _ in range(3):
        assert torch.equal(_call(inp), first)


def test_batch_invariant_cpu():
    T = 300
    inp = h.head_inputs(T, 4, 256, seed=7)
    p = {k: v for k, v in inp.items() if k != "residual"}
    full = mhc_ops.hc_head(inp["residual"], **p)
    for b in (1, 7, 64, 300):
        parts = [mhc_ops.hc_head(inp["residual"][i:i + b], **p) for i in range(0, T, b)]
        assert torch.equal(torch.cat(parts), full), b


def test_checker_rejects_wrong_gates():
    # hc_head computed with hc_scale off by 10% must fail the bound.
    inp = h.head_inputs(32, 4, 128, seed=8)
    h.check_head_output(_call(inp), inp)
    wrong = _call({**inp, "hc_scale": inp["hc_scale"] * 1.1})
    with pytest.raises(AssertionError, match="hc_head"):
        h.check_head_output(wrong, inp)


@pytest.mark.slow
@pytest.mark.parametrize("T,n,H", [(512, 4, 7168), (512, 4, 4096), (257, 8, 1024)])
def test_matches_reference_large(device, T, n, H):
    inp = h.head_inputs(T, n, H, seed=h.seed_of("head-large", T, n, H), device=device)
    h.check_head_output(_call(inp), inp)


@pytest.mark.slow
def test_token_index_past_2_31(device):
    h.require_memory(device, 2 * h.BIG_T * h.BIG_N * h.BIG_H)
    inp = h.head_inputs(1, h.BIG_N, h.BIG_H, seed=23, device=device)
    inp["residual"] = h.big_residual(device, seed=24)
    out = _call(inp)
    idx = torch.tensor(h.BIG_CHECKED, device=device)
    h.check_head_output(out[idx], {**inp, "residual": inp["residual"][idx]})


# ----------------------------------------------------------------------------------------------
# CUDA kernels: every plan the planner reaches; the cluster plan's NaN isolation.

@ch.cuda_test
@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", ch.WIDTHS)
def test_every_plan_head(H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    for T in sorted(set(ch.reps(KernelType.HC_HEAD, H)) | {1, 7}):
        ch.check_head(T, H, seed=h.seed_of("head", T, H))
    assert len(ch.launched(KernelType.HC_HEAD)) >= len(ch.reps(KernelType.HC_HEAD, H))

@ch.cuda_test
@pytest.mark.usefixtures("nan_filled")
def test_cuda_cluster_nan_token_isolated_and_repeatable(monkeypatch):
    # T = 300 at H = 4096 runs the persistent cluster kernel (hc_head_persistent.cuh)
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    T, H = 300, 4096
    assert plan.plan_of(KernelType.HC_HEAD, T, hidden_size=H, num_sms=plan.device_num_sms("cuda"),
                        batch_invariant=False).variant == "cluster"
    g = ch.gen(11)
    res = ch.randn(g, T, ch.N_HC, H, dtype=torch.bfloat16)
    hp = ch.head_params(ch.pre_params(g, ch.N_HC, H, norm=False))
    bad = res.clone()
    bad[37, 2, 100] = float("nan")
    others = torch.arange(T, device="cuda") != 37
    clean, first, again = (mhc_ops.hc_head(r, **hp) for r in (res, bad, bad))
    torch.testing.assert_close(first, again, rtol=0, atol=0, equal_nan=True)  # to the bit
    assert torch.equal(clean[others], first[others])  # one token's NaN stays in its row
    assert torch.isnan(first[37]).any()
