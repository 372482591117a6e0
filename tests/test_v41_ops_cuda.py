"""CUDA kernels of the DeepSeek-V4.1 ops (SPEC §2.9) at the sizes they are built for: every plan
the planner reaches at the DeepSeek widths, other hc_mult, odd widths (one to three combine
vectors per thread), misaligned inputs, and T·n·H past 2^31. Inputs are drawn on the GPU;
outputs are allocated NaN-filled (an unwritten element fails the finiteness check); sampled
token rows (always the first and the last) are checked against the float64 reference with the
SPEC §3 bounds (helpers.check_v41_outputs, which also checks the same-device bit identities).
The CPU-and-CUDA tests (views, NaN isolation, bad input, the lagged-pre stack) are in
tests/test_v41_ops.py.
"""

from __future__ import annotations

import pytest
import torch

import cuda_helpers as ch
import helpers as h
from mhc_ops import plan
from mhc_ops.plan import KernelType

pytestmark = ch.needs_cuda

KINDS = {"mhc_stats": KernelType.MHC_STATS, "mhc_combine": KernelType.MHC_COMBINE,
         "mhc_post_combine": KernelType.MHC_POST_COMBINE,
         "mhc_shifted_post_pre": KernelType.MHC_SHIFTED_POST_PRE}
V41_WIDTHS = (5120,) + ch.WIDTHS  # DeepSeek-V4.1, then V4 Flash and Pro


def _inputs(T: int, H: int, seed: int, norm: bool, n: int = ch.N_HC) -> dict:
    """Every tensor argument of mhc_shifted_post_pre, drawn on the GPU (helpers.v41_inputs'
    scales): pre_mix a positive carried pre in (0, 1)."""
    g = ch.gen(seed)
    x = ch.randn(g, T, H, dtype=torch.bfloat16)
    res = ch.randn(g, T, n, H, dtype=torch.bfloat16)
    post, comb = ch.post_gates(g, T, n)
    pre = torch.sigmoid(ch.randn(g, T, n)) + 1e-6
    return {"x": x, "residual": res, "post_mix": post, "comb_mix": comb, "pre_mix": pre,
            **ch.pre_params(g, n, H, norm)}


def _rows(a: dict, idx) -> dict:
    return {k: (v[idx] if k in h.V41_PER_TOKEN else v) for k, v in a.items()}


def check(op: str, T: int, H: int, norm: bool, seed: int, n: int = ch.N_HC) -> None:
    a = _inputs(T, H, seed, norm and op != "mhc_stats", n)
    outs = h.outs_of(h.v41_call(op, a))
    for o in outs:
        assert torch.isfinite(o).all(), f"{op}: unwritten or non-finite output"
    if op in ("mhc_post_combine", "mhc_shifted_post_pre"):
        # the same-device identities on the whole batch (check_v41_outputs repeats them on rows)
        r, li = outs[:2]
        assert torch.equal(r, torch.ops.mhc.mhc_post(*(a[k] for k in h.POST_KEYS)))
        assert torch.equal(li, torch.ops.mhc.mhc_combine(r, a["pre_mix"], a["norm_weight"]))
    idx = ch.rows(T)
    h.check_v41_outputs(op, tuple(o[idx] for o in outs), _rows(a, idx))


# (op, norm): mhc_stats takes no norm_weight
OP_NORMS = [("mhc_stats", False)] + [(op, norm) for op in h.V41_OPS[1:] for norm in (False, True)]


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", V41_WIDTHS)
@pytest.mark.parametrize("op,norm", OP_NORMS,
                         ids=[f"{o}-{'norm' if n else 'plain'}" for o, n in OP_NORMS])
def test_every_cuda_plan(op, norm, H, monkeypatch):
    # Every plan of the op reachable for T in 1..16384 on this GPU, once each (its largest T),
    # plus the smallest decode sizes; the launcher must record the plan it ran.
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    kind = KINDS[op]
    sms = plan.device_num_sms("cuda")
    reps = plan.token_count_representatives(kind, ch.MAX_TOKENS, hidden_size=H, hc_mult=ch.N_HC,
                                            num_sms=sms, norm=norm, batch_invariant=False)
    for T in sorted(set(reps) | {1, 7}):
        check(op, T, H, norm, seed=h.seed_of("plan", op, T, H, norm))
        want = plan.plan_of(kind, T, hidden_size=H, num_sms=sms, norm=norm,
                            batch_invariant=False)
        assert want in ch.launched(kind), f"T={T}: launcher did not record {want}"


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 8])
@pytest.mark.parametrize("T", [3, 200, 6000])  # decode split, mid split, FULL_K (at 132 SMs)
def test_other_hc_mult(n, T):
    for op in h.V41_OPS:
        check(op, T, 1024, norm=T == 200, seed=h.seed_of("n", op, n, T), n=n)


@pytest.mark.usefixtures("nan_filled")
# 8, 40: fewer vectors than a warp; 520, 1032: H % 16 != 0 / K % 64 != 0; 7176: a partial
# group past the Pro width; 8200, 16384: three and four combine vectors per thread
@pytest.mark.parametrize("H", [8, 40, 520, 1032, 7176, 8200, 16384])
def test_odd_widths(H):
    for T in (1, 50, 3000 if H <= 1032 else 300):
        for op in h.V41_OPS:
            check(op, T, H, norm=T != 1, seed=h.seed_of("w", op, H, T))


@pytest.mark.parametrize("H", [520, 5120])
@pytest.mark.parametrize("op", h.V41_OPS)
def test_misaligned_inputs_are_bit_identical(op, H):
    # Contiguous inputs 2 bytes (one element) past 16-byte alignment take the copy / scalar
    # path: the same bits as the aligned call, argument by argument and all at once.
    T = 37
    a = _inputs(T, H, seed=h.seed_of("misaligned", op, H), norm=op != "mhc_stats")
    want = h.outs_of(h.v41_call(op, a))
    names = [k for k in h.V41_ARGS[op] if a[k] is not None]
    for sel in [[k] for k in names] + [names]:
        odd = {k: (h.odd_view(v, "offset") if k in sel else v) for k, v in a.items()}
        for g, w in zip(h.outs_of(h.v41_call(op, odd)), want):
            assert torch.equal(g, w), f"offset view of {sel}"


@pytest.mark.parametrize("op", h.V41_OPS)
def test_deterministic_large_batch(op):
    a = _inputs(4096, 5120, seed=h.seed_of("det", op), norm=op != "mhc_stats")
    first = h.outs_of(h.v41_call(op, a))
    for _ in range(2):
        assert all(torch.equal(x, y) for x, y in zip(h.outs_of(h.v41_call(op, a)), first))


@pytest.mark.parametrize("H", [5120, 4096, 7168, 520, 1088, 16384])
@pytest.mark.parametrize("op", ["mhc_combine", "mhc_post_combine"])
def test_split_combine_bits_match_row_plan(op, H):
    # At small T a row is split over a cluster of CTAs (Plan.num_splits > 1), at large T one CTA
    # per token: the same arithmetic and norm order (cuda/norm_tree.cuh), so a token's outputs
    # are the same bits in either plan. 1088 splits in two CTAs, 520 does not split.
    kind = KINDS[op]
    sms = plan.device_num_sms("cuda")
    cl = plan.device_supports_clusters("cuda")
    big = 300
    for norm in (False, True):
        a = _inputs(big, H, seed=h.seed_of("split", op, H, norm), norm=norm)
        kw = dict(hidden_size=H, num_sms=sms, norm=norm, clusters=cl)
        assert plan.plan_of(kind, big, **kw).num_splits == 1
        whole = h.outs_of(h.v41_call(op, a))
        splits = 1 if H == 520 or (norm and not cl) else min(8, -(-(H // 8) // 128))
        for T in (1, 5, 8):
            assert plan.plan_of(kind, T, **kw).num_splits == splits
            part = h.outs_of(h.v41_call(op, _rows(a, slice(0, T))))
            for g, w in zip(part, whole):
                assert torch.equal(g, w[:T]), f"T={T}, norm={norm}"


def test_cpu_and_cuda_both_within_bounds():
    # SPEC §3 "CPU vs CUDA: each within the bounds above", on the same inputs; the gates then
    # agree within twice the gate bound.
    a = _inputs(64, 5120, seed=5, norm=True)
    cpu_in = {k: (v.cpu() if v is not None else None) for k, v in a.items()}
    got = {}
    for dev, inp in (("cuda", a), ("cpu", cpu_in)):
        got[dev] = h.outs_of(h.v41_call("mhc_shifted_post_pre", inp))
        h.check_v41_outputs("mhc_shifted_post_pre", got[dev], inp)
    for g, c in zip(got["cuda"][2:], got["cpu"][2:]):
        assert float((g.cpu().double() - c.double()).abs().max()) <= 2e-3


# ----------------------------------------------------------------------------------------------
# T·n·H > 2^31 (helpers.BIG_*): the last two tokens lie wholly past element 2^31.

@pytest.fixture(scope="module")
def big_inputs():
    T, n, H = h.BIG_T, h.BIG_N, h.BIG_H
    # residual, residual_out (4 GiB each), x and layer_input (1 GiB each)
    need = 2 * T * n * H * 2 + 2 * T * H * 2
    if torch.cuda.mem_get_info()[0] < need * 1.25:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on the GPU")
    assert T * n * H > 2**31
    small = _inputs(len(h.BIG_CHECKED), H, seed=27, norm=True)
    idx = torch.tensor(h.BIG_CHECKED, device="cuda")
    a = {"x": torch.full((T, H), 0.25, dtype=torch.bfloat16, device="cuda"),
         "residual": h.big_residual("cuda", seed=28),
         "post_mix": torch.ones(T, n, 1, device="cuda"),
         "comb_mix": torch.full((T, n, n), 1.0 / n, device="cuda"),
         "pre_mix": torch.full((T, n), 0.5, device="cuda")}
    for k in ("x", "post_mix", "comb_mix", "pre_mix"):
        a[k][idx] = small[k]
    a.update({k: small[k] for k in ("fn", "hc_scale", "hc_base", "norm_weight")})
    yield a, idx
    del a
    torch.cuda.empty_cache()


@pytest.mark.slow
@pytest.mark.parametrize("op", h.V41_OPS)
def test_token_index_past_2_31(big_inputs, op):
    a, idx = big_inputs
    outs = h.outs_of(h.v41_call(op, a))
    for o in outs:
        assert torch.isfinite(o[-2:]).all()
    h.check_v41_outputs(op, tuple(o[idx] for o in outs), _rows(a, idx))
    if op in ("mhc_post_combine", "mhc_shifted_post_pre"):
        # the last token's layer_input is the one mhc_combine gives for its residual_out
        r, li = outs[:2]
        assert torch.equal(li[-1:], torch.ops.mhc.mhc_combine(r[-1:], a["pre_mix"][-1:],
                                                              a["norm_weight"]))
