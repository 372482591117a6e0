"""CUDA kernels (csrc/cuda) at the sizes they are built for, checked against the float64
reference with the SPEC §3 bounds (helpers.check_*).

Every plan the CUDA planner reaches for T in 1..16384 at this GPU's SM count is run once per
op (its representative token count), at both DeepSeek-V4 widths, with outputs pre-filled with
NaN so that an element no kernel wrote fails the check. Large batches are checked on sampled
token rows (every op is per token), always including the first and the last tokens.
"""

from __future__ import annotations

import math

import pytest
import torch

import helpers as h
import mhc_ops
from mhc_ops import plan
from mhc_ops.plan import KernelType

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (mhc_ops.cuda_available() and torch.cuda.is_available()),
                                 reason="needs the CUDA kernels and a GPU")]

WIDTHS = (4096, 7168)  # DeepSeek-V4 Flash and Pro hidden sizes
N_HC = 4


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


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def _randn(g, *shape, std=1.0, mean=0.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=g, device="cuda") * std + mean).to(dtype)


def _pre_params(g, n, H, norm):
    """Same scales as helpers.pre_params, drawn on the GPU (large T stays fast)."""
    K, m3 = n * H, n * (n + 2)
    return {"fn": _randn(g, m3, K, std=1 / math.sqrt(K)),
            "hc_scale": 0.5 + torch.rand(3, generator=g, device="cuda"),
            "hc_base": _randn(g, m3, std=0.5),
            "norm_weight": _randn(g, H, std=0.1, mean=1.0, dtype=torch.bfloat16) if norm else None}


def _call_inputs(seed: int, T: int, H: int, norm: bool):
    """x [T, H], residual [T, n, H], post / comb gates and the pre parameters (norm_weight
    when norm) of a pre / fused / head call, drawn from one generator in that order."""
    g = _gen(seed)
    x = _randn(g, T, H, dtype=torch.bfloat16)
    res = _randn(g, T, N_HC, H, dtype=torch.bfloat16)
    post, comb = _post_gates(g, T, N_HC)
    return x, res, post, comb, _pre_params(g, N_HC, H, norm=norm)


def _post_gates(g, T, n):
    post = 2 * torch.sigmoid(_randn(g, T, n, 1))
    comb = mhc_ops.reference.sinkhorn(_randn(g, T, n, n), 1e-6, 20)
    return post, comb


def _rows(T: int) -> torch.Tensor:
    """Sampled token rows: the first and last 8, and 16 spread in between."""
    idx = set(range(min(T, 8))) | set(range(max(0, T - 8), T))
    idx |= {int(i) for i in torch.linspace(0, T - 1, 16).round().tolist()}
    return torch.tensor(sorted(idx), device="cuda")


def _sub(p: dict, **kw) -> dict:
    return {k: v for k, v in p.items() if k not in kw} | kw


def _head_params(p: dict) -> dict:
    """hc_head's fn / hc_scale / hc_base: the first n rows of mhc_pre's."""
    return {"fn": p["fn"][:N_HC].contiguous(), "hc_scale": p["hc_scale"][:1],
            "hc_base": p["hc_base"][:N_HC]}


def _runs_under(setter, values, calls: dict, check=None) -> dict:
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


def _assert_same_bits(got: dict) -> None:
    """Every run of each kind equals its first to the bit, and is finite (written)."""
    for kind, runs in got.items():
        for run in runs[1:]:
            for a, b in zip(runs[0], run):
                assert torch.isfinite(b).all(), kind
                assert torch.equal(a, b), kind


def check_pre(T, H, norm, seed, n=N_HC):
    g = _gen(seed)
    res = _randn(g, T, n, H, dtype=torch.bfloat16)
    p = _pre_params(g, n, H, norm)
    outs = mhc_ops.mhc_pre(res, **p)
    for o in outs:
        assert torch.isfinite(o).all(), "unwritten or non-finite output"
    idx = _rows(T)
    h.check_pre_outputs(tuple(o[idx] for o in outs), res[idx], p)


def check_fused(T, H, norm, seed, n=N_HC):
    g = _gen(seed)
    x = _randn(g, T, H, dtype=torch.bfloat16)
    res = _randn(g, T, n, H, dtype=torch.bfloat16)
    post, comb = _post_gates(g, T, n)
    p = _pre_params(g, n, H, norm)
    outs = mhc_ops.mhc_fused_post_pre(x, res, post, comb, **p)
    for o in outs:
        assert torch.isfinite(o).all(), "unwritten or non-finite output"
    idx = _rows(T)
    r = outs[0][idx]
    h.check_post_output(r, {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                            "comb_mix": comb[idx]}, what="fused residual_out")
    h.check_pre_outputs(tuple(o[idx] for o in outs[1:]), r, p, what="fused")
    # residual_out is bit-identical to mhc_post on the same device (SPEC §2.3)
    assert torch.equal(outs[0], mhc_ops.mhc_post(x, res, post, comb))


def check_head(T, H, seed, n=N_HC):
    g = _gen(seed)
    K = n * H
    inp = {"residual": _randn(g, T, n, H, dtype=torch.bfloat16),
           "fn": _randn(g, n, K, std=1 / math.sqrt(K)),
           "hc_scale": 0.5 + torch.rand(1, generator=g, device="cuda"),
           "hc_base": _randn(g, n, std=0.5)}
    out = mhc_ops.hc_head(**inp)
    assert torch.isfinite(out).all(), "unwritten or non-finite output"
    idx = _rows(T)
    h.check_head_output(out[idx], _sub(inp, residual=inp["residual"][idx]))


def check_post(T, H, seed, n=N_HC):
    g = _gen(seed)
    x = _randn(g, T, H, dtype=torch.bfloat16)
    res = _randn(g, T, n, H, dtype=torch.bfloat16)
    post, comb = _post_gates(g, T, n)
    out = mhc_ops.mhc_post(x, res, post, comb)
    assert torch.isfinite(out).all(), "unwritten or non-finite output"
    idx = _rows(T)
    h.check_post_output(out[idx], {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                                   "comb_mix": comb[idx]})


def check_prenorm(M, K, S, seed, N=24):
    g = _gen(seed)
    x = _randn(g, M, K, dtype=torch.bfloat16)
    fn = _randn(g, N, K, std=1 / math.sqrt(K))
    out, sq = mhc_ops.hc_prenorm_gemm(x, fn, S)
    assert torch.isfinite(out).all() and torch.isfinite(sq).all()
    idx = _rows(M)
    h.check_prenorm_outputs(out[:, idx], sq[:, idx], x[idx], fn, S)


def _launched(kind) -> set:
    """Plans the launchers recorded on the current GPU (mhc_ops._C registry)."""
    dev = torch.cuda.current_device()
    plans = {plan.Plan._from_c(p) for d, p, _ in mhc_ops._C.launched_plans() if d == dev}
    return {p for p in plans if p.kind == kind}


# ----------------------------------------------------------------------------------------------
# Every plan reachable for T in 1..16384 at this GPU's SM count, once each.

MAX_TOKENS = 16384


def _reps(kind, H, norm=False):
    return plan.token_count_representatives(kind, MAX_TOKENS, hidden_size=H, hc_mult=N_HC,
                                            num_sms=plan.device_num_sms("cuda"), norm=norm,
                                            batch_invariant=False)


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", WIDTHS)
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("kind", [KernelType.MHC_PRE, KernelType.MHC_FUSED_POST_PRE])
def test_every_plan_pre_fused(kind, norm, H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    check = check_pre if kind == KernelType.MHC_PRE else check_fused
    reps = _reps(kind, H, norm)
    # the small decode sizes of the same plans too (a plan runs every T up to its representative)
    for T in sorted(set(reps) | {1, 7}):
        check(T, H, norm, seed=h.seed_of(kind.name, T, H, norm))
        want = plan.plan_of(kind, T, hidden_size=H, num_sms=plan.device_num_sms("cuda"),
                            norm=norm, batch_invariant=False)
        assert want in _launched(kind), f"T={T}: launcher did not record {want}"


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", WIDTHS)
def test_every_plan_head(H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    for T in sorted(set(_reps(KernelType.HC_HEAD, H)) | {1, 7}):
        check_head(T, H, seed=h.seed_of("head", T, H))
    assert len(_launched(KernelType.HC_HEAD)) >= len(_reps(KernelType.HC_HEAD, H))


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", WIDTHS)
def test_every_plan_prenorm(H):
    sms = plan.device_num_sms("cuda")
    for T in sorted(set(_reps(KernelType.PRENORM_GEMM, H)) | {1}):
        S = plan.plan_of(KernelType.PRENORM_GEMM, T, hidden_size=H, num_sms=sms).num_splits
        check_prenorm(T, N_HC * H, S, seed=h.seed_of("prenorm", T, H))


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", WIDTHS)
@pytest.mark.parametrize("T", [1, 8, 64, 4096, 16384])
def test_post_sizes(T, H):
    check_post(T, H, seed=h.seed_of("post", T, H))


# ----------------------------------------------------------------------------------------------
# Other hc_mult, odd widths and the scalar fallbacks, on the CUDA paths.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 8])
@pytest.mark.parametrize("T", [3, 200, 6000])  # decode split, mid split, FULL_K (at 132 SMs)
def test_other_hc_mult(n, T):
    H = 1024
    check_pre(T, H, norm=T == 200, seed=h.seed_of("n", n, T), n=n)
    check_fused(T, H, norm=False, seed=h.seed_of("nf", n, T), n=n)
    check_head(T, H, seed=h.seed_of("nh", n, T), n=n)


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [8, 40, 264, 1000, 7176])  # G = ceil(H/32) with a partial group
def test_odd_widths(H):
    for T in (1, 50, 5000 if H <= 1000 else 300):
        check_pre(T, H, norm=True, seed=h.seed_of("w", H, T))
        check_fused(T, H, norm=False, seed=h.seed_of("wf", H, T))
        check_head(T, H, seed=h.seed_of("wh", H, T))


def test_post_scalar_fallback_is_bit_identical():
    g = _gen(5)
    T, n, H = 37, 4, 520
    x = _randn(g, T, H, dtype=torch.bfloat16)
    res = _randn(g, T, n, H, dtype=torch.bfloat16)
    post, comb = _post_gates(g, T, n)
    want = mhc_ops.mhc_post(x, res, post, comb)
    for name in ("x", "residual"):
        a = {"x": x, "residual": res}
        a[name] = h.odd_view(a[name], "offset")  # contiguous, 2 bytes past alignment
        assert torch.equal(mhc_ops.mhc_post(a["x"], a["residual"], post, comb), want)


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("K", [24, 100, 4 * 520 + 6, 16384])
@pytest.mark.parametrize("N", [1, 8, 24, 32])
def test_prenorm_shapes(N, K):
    blocks = -(-K // 64)
    for M in (1, 70, 300):
        for S in sorted({1, min(3, blocks), blocks}):
            check_prenorm(M, K, S, seed=h.seed_of("pn", M, N, K, S), N=N)


def test_prenorm_misaligned_x_and_deepgemm_form():
    g = _gen(6)
    M, N, K = 33, 24, 4096
    x = _randn(g, M, K, dtype=torch.bfloat16)
    fn = _randn(g, N, K, std=1 / 64)
    want_o, want_s = mhc_ops.hc_prenorm_gemm(x, fn, 1)
    xo = h.odd_view(x, "offset")
    got_o, got_s = mhc_ops.hc_prenorm_gemm(xo, fn, 1)
    assert torch.equal(got_o, want_o) and torch.equal(got_s, want_s)
    out = torch.full((M, N), float("nan"), device="cuda")
    sq = torch.full((M,), float("nan"), device="cuda")
    mhc_ops.tf32_hc_prenorm_gemm(x, fn, out, sq)
    assert torch.equal(out, want_o[0]) and torch.equal(sq, want_s[0])
    # non-contiguous out / sqrsum of the split form are written through a temporary
    out = torch.full((1, N, M), float("nan"), device="cuda").transpose(1, 2)
    sq = torch.full((1, 2 * M), float("nan"), device="cuda")[:, ::2]
    mhc_ops.tf32_hc_prenorm_gemm(x, fn, out, sq, 1)
    assert torch.equal(out, want_o) and torch.equal(sq, want_s)


# ----------------------------------------------------------------------------------------------
# Batch invariance at real widths (SPEC §5): a token's bits do not depend on its batch.

@pytest.mark.parametrize("H", WIDTHS)
def test_batch_invariant_real_widths(H, monkeypatch):
    monkeypatch.setenv("MHC_BATCH_INVARIANT", "1")
    g = _gen(7)
    pool = 4096
    x = _randn(g, pool, H, dtype=torch.bfloat16)
    res = _randn(g, pool, N_HC, H, dtype=torch.bfloat16)
    post, comb = _post_gates(g, pool, N_HC)
    p = _pre_params(g, N_HC, H, norm=True)
    hp = {"fn": p["fn"][:N_HC], "hc_scale": p["hc_scale"][:1], "hc_base": p["hc_base"][:N_HC]}

    def run(rows):
        a = mhc_ops.mhc_pre(res[rows], **p)
        b = mhc_ops.mhc_pre(res[rows], **_sub(p, norm_weight=None))
        c = mhc_ops.mhc_fused_post_pre(x[rows], res[rows], post[rows], comb[rows], **p)
        d = mhc_ops.hc_head(res[rows], **hp)
        return (*a, *b, *c, d)

    probe = 0
    want = [o[0] for o in run(torch.tensor([probe], device="cuda"))]
    for T in (7, 64, 4096):
        rows = torch.arange(1, T, device="cuda")
        rows = torch.cat([rows[: T // 2], torch.tensor([probe], device="cuda"), rows[T // 2:]])
        for w, o in zip(want, run(rows)):
            assert torch.equal(o[T // 2], w), f"batch of {T}"


# ----------------------------------------------------------------------------------------------
# T·n·H > 2^31 at the Pro width: the last tokens start past 2^31 elements.

BIG_T, BIG_H = 74_900, 7168


@pytest.fixture(scope="module")
def big_inputs():
    need = BIG_T * N_HC * BIG_H * 2 * 2 + BIG_T * BIG_H * 2 * 3
    if torch.cuda.mem_get_info()[0] < need * 1.2:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on the GPU")
    g = _gen(8)
    assert BIG_T * N_HC * BIG_H > 2**31
    x = _randn(g, BIG_T, BIG_H, dtype=torch.bfloat16)
    res = _randn(g, BIG_T, N_HC, BIG_H, dtype=torch.bfloat16)
    post, comb = _post_gates(g, BIG_T, N_HC)
    p = _pre_params(g, N_HC, BIG_H, norm=True)
    yield x, res, post, comb, p
    del x, res
    torch.cuda.empty_cache()


def test_past_2_31_pre_head_post(big_inputs):
    x, res, post, comb, p = big_inputs
    idx = _rows(BIG_T)
    outs = mhc_ops.mhc_pre(res, **p)
    h.check_pre_outputs(tuple(o[idx] for o in outs), res[idx], p)
    del outs
    hp = _head_params(p)
    out = mhc_ops.hc_head(res, **hp)
    h.check_head_output(out[idx], {"residual": res[idx], **hp})
    del out
    r = mhc_ops.mhc_post(x, res, post, comb)
    h.check_post_output(r[idx], {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                                 "comb_mix": comb[idx]})


def test_past_2_31_fused(big_inputs):
    x, res, post, comb, p = big_inputs
    idx = _rows(BIG_T)
    outs = mhc_ops.mhc_fused_post_pre(x, res, post, comb, **p)
    r = outs[0][idx]
    h.check_post_output(r, {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                            "comb_mix": comb[idx]}, what="fused residual_out")
    h.check_pre_outputs(tuple(o[idx] for o in outs[1:]), r, p, what="fused")


# ----------------------------------------------------------------------------------------------
# linear_bf16_fp32 backends (SPEC §2.7, §5).

@pytest.mark.parametrize("algo", ["cublas", "fp32"])
def test_linear_backends(algo, monkeypatch):
    monkeypatch.setenv("MHC_BF16_FP32_GEMM_ALGO", algo)
    g = _gen(9)
    for M, N, K in ((1, 256, 7168), (77, 512, 4096), (4096, 64, 1000)):
        x = _randn(g, M, K, dtype=torch.bfloat16)
        w = _randn(g, N, K, std=1 / math.sqrt(K), dtype=torch.bfloat16)
        out = mhc_ops.linear_bf16_fp32(x, w)
        ref = x.double() @ w.double().t()
        err = float((out.double() - ref).norm() / ref.norm())
        assert err <= 1e-5, f"{algo} {M}x{N}x{K}: normwise error {err:.2e}"
    variant = "fp32_gemm" if algo == "fp32" else "cublas"
    assert any(p.variant == variant for p in _launched(KernelType.LINEAR_BF16_FP32))


def test_linear_invalid_algo_warns_and_uses_cublas():
    # TORCH_WARN_ONCE fires once per process: run it in a fresh one.
    import subprocess
    import sys
    code = ("import torch, mhc_ops\n"
            "x = torch.randn(4, 64, device='cuda').bfloat16()\n"
            "w = torch.randn(8, 64, device='cuda').bfloat16()\n"
            "mhc_ops.linear_bf16_fp32(x, w)\n"
            "print(sorted({p[1] for _, p, _ in mhc_ops._C.launched_plans()}))\n")
    env = {**__import__("os").environ, "MHC_BF16_FP32_GEMM_ALGO": "tf32"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "MHC_BF16_FP32_GEMM_ALGO=tf32 is not one of" in r.stderr
    assert r.stdout.strip() == "['cublas']"


# ----------------------------------------------------------------------------------------------
# Staged fn (Plan.staged_fn): the same products in the same order, so the same bits.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [520, 4096, 7168])
@pytest.mark.parametrize("T", [300, 5000])  # SPLIT_K, FULL_K
def test_staged_fn_is_bit_identical(T, H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    old_cluster = mhc_ops._C.set_cluster_min_tokens(2**63 - 1)
    x, res, post, comb, p = _call_inputs(h.seed_of("staged", T, H), T, H, norm=True)
    plain = _sub(p, norm_weight=None)
    calls = {
        KernelType.MHC_PRE: lambda: mhc_ops.mhc_pre(res, **plain),
        "norm": lambda: mhc_ops.mhc_pre(res, **p),
        KernelType.MHC_FUSED_POST_PRE: lambda: mhc_ops.mhc_fused_post_pre(x, res, post, comb,
                                                                          **plain),
    }
    kw = dict(hidden_size=H, num_sms=plan.device_num_sms("cuda"), batch_invariant=False)

    def check(kind, start):
        if kind != "norm":
            assert plan.plan_of(kind, T, **kw).staged_fn == (start == 1)

    try:
        got = _runs_under(mhc_ops._C.set_staged_fn_min_tokens, (2**63 - 1, 1), calls, check)
    finally:
        mhc_ops._C.set_cluster_min_tokens(old_cluster)
    _assert_same_bits(got)  # unstaged, staged
    idx = _rows(T)
    h.check_pre_outputs(tuple(o[idx] for o in got["norm"][1]), res[idx], p)


# ----------------------------------------------------------------------------------------------
# The main kernel's cp.async ring (Plan.fn_ring): for pre / head fn through the ring, for the
# fused op x and the input streams; the same fragments, units and order as without it, so the
# same bits; raw and staged fn, SPLIT_K and FULL_K, with and without the folded norm.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("staged", [False, True], ids=["raw", "staged"])
@pytest.mark.parametrize("H", [520, 4096, 7168])
@pytest.mark.parametrize("T", [40, 300, 5000])  # SPLIT_K (decode, prefill), FULL_K
def test_fn_ring_is_bit_identical(T, H, staged, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    old_cluster = mhc_ops._C.set_cluster_min_tokens(2**63 - 1)
    old_staged = mhc_ops._C.set_staged_fn_min_tokens(1 if staged else 2**63 - 1)
    x, res, post, comb, p = _call_inputs(h.seed_of("fn_ring", T, H, staged), T, H, norm=True)
    plain = _sub(p, norm_weight=None)
    hp = _head_params(p)
    calls = {
        KernelType.MHC_PRE: lambda: mhc_ops.mhc_pre(res, **plain),
        "norm": lambda: mhc_ops.mhc_pre(res, **p),
        KernelType.HC_HEAD: lambda: (mhc_ops.hc_head(res, **hp),),
        KernelType.MHC_FUSED_POST_PRE: lambda: mhc_ops.mhc_fused_post_pre(x, res, post, comb,
                                                                          **plain),
        "fused norm": lambda: mhc_ops.mhc_fused_post_pre(x, res, post, comb, **p),
    }
    kw = dict(hidden_size=H, num_sms=plan.device_num_sms("cuda"), batch_invariant=False)

    def check(kind, start):
        if isinstance(kind, KernelType):
            p_ = plan.plan_of(kind, T, **kw)
            # the fused op's half units (T <= 64) take no ring; at T <= 64 pre / head run their
            # 32-token blocks without the ring and 64-token blocks with it (same sums)
            assert p_.fn_ring == (start == 1 and not p_.split_streams)

    try:
        got = _runs_under(mhc_ops._C.set_fn_ring_min_tokens, (2**63 - 1, 1), calls, check)
    finally:
        mhc_ops._C.set_staged_fn_min_tokens(old_staged)
        mhc_ops._C.set_cluster_min_tokens(old_cluster)
    _assert_same_bits(got)  # without the ring, with it
    idx = _rows(T)
    h.check_pre_outputs(tuple(o[idx] for o in got["norm"][1]), res[idx], p)
    fused = got["fused norm"][1]
    h.check_post_output(fused[0][idx], {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                                        "comb_mix": comb[idx]}, what="fused residual_out")
    h.check_pre_outputs(tuple(o[idx] for o in fused[1:]), fused[0][idx], p, what="fused")


# The fused ring's loads with L2 evict_first (Plan.evict_inputs): a cache policy only, so the
# same bits with it and without it, SPLIT_K and FULL_K, with and without the folded norm.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [520, 4096])
@pytest.mark.parametrize("T", [600, 5000])  # SPLIT_K, FULL_K
def test_evict_inputs_is_bit_identical(T, H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    old_cluster = mhc_ops._C.set_cluster_min_tokens(2**63 - 1)
    x, res, post, comb, p = _call_inputs(h.seed_of("evict_inputs", T, H), T, H, norm=True)
    plain = _sub(p, norm_weight=None)
    calls = {
        KernelType.MHC_FUSED_POST_PRE: lambda: mhc_ops.mhc_fused_post_pre(x, res, post, comb,
                                                                          **plain),
        "fused norm": lambda: mhc_ops.mhc_fused_post_pre(x, res, post, comb, **p),
    }
    kw = dict(hidden_size=H, num_sms=plan.device_num_sms("cuda"), batch_invariant=False)

    def check(kind, limit):
        if isinstance(kind, KernelType):
            assert plan.plan_of(kind, T, **kw).evict_inputs == (limit > 0)

    try:
        got = _runs_under(mhc_ops._C.set_evict_inputs_max_bytes, (-1, 2**62), calls, check)
    finally:
        mhc_ops._C.set_cluster_min_tokens(old_cluster)
    _assert_same_bits(got)  # without the policy, with it
    idx = _rows(T)
    fused = got["fused norm"][1]
    h.check_post_output(fused[0][idx], {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                                        "comb_mix": comb[idx]}, what="fused residual_out")
    h.check_pre_outputs(tuple(o[idx] for o in fused[1:]), fused[0][idx], p, what="fused")


# ----------------------------------------------------------------------------------------------
# SPLIT_K epilogue launch shapes: each must give the same bits, with every element written
# (outputs NaN-filled).

def _epilogue_knob_runs(T: int, H: int, seed: str, setter, values) -> None:
    """pre / fused / head at T (SPLIT_K, no CLUSTER plan) once per value of an epilogue knob:
    every run's bits equal the first's, and pre's outputs match the float64 reference."""
    old_cluster = mhc_ops._C.set_cluster_min_tokens(2**63 - 1)
    x, res, post, comb, p = _call_inputs(h.seed_of(seed, T, H), T, H, norm=False)
    p = _sub(p, norm_weight=None)
    hp = _head_params(p)
    calls = {
        KernelType.MHC_PRE: lambda: mhc_ops.mhc_pre(res, **p),
        KernelType.MHC_FUSED_POST_PRE: lambda: mhc_ops.mhc_fused_post_pre(x, res, post, comb, **p),
        KernelType.HC_HEAD: lambda: (mhc_ops.hc_head(res, **hp),),
    }
    kw = dict(hidden_size=H, num_sms=plan.device_num_sms("cuda"), batch_invariant=False)

    def check(kind, value):
        assert plan.plan_of(kind, T, **kw).variant == "split_k"

    try:
        got = _runs_under(setter, values, calls, check)
    finally:
        mhc_ops._C.set_cluster_min_tokens(old_cluster)
    _assert_same_bits(got)
    idx = _rows(T)
    h.check_pre_outputs(tuple(o[idx] for o in got[KernelType.MHC_PRE][-1]), res[idx], p)


# Chunks: a token's row over 1..H/1024 CTAs; each chunk reduces the partials and computes the
# gates the same way (0: the launcher's rule).
@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [520, 4096, 7168])
@pytest.mark.parametrize("T", [300, 1000])  # SPLIT_K
def test_epilogue_chunks_are_bit_identical(T, H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    _epilogue_knob_runs(T, H, "epilogue_chunks", mhc_ops._C.set_epilogue_chunks,
                        (1, 2, 3, 4, 7, 0))


# CTAs per SM (the launcher caps the fused op's through shared memory when its plan has half
# units, T <= 64; 0: that rule, -1: no cap).
@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [520, 7168])
@pytest.mark.parametrize("T", [5, 64, 300])  # SPLIT_K, within the rule's T and above
def test_epilogue_ctas_per_sm_are_bit_identical(T, H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    _epilogue_knob_runs(T, H, "epilogue_ctas", mhc_ops._C.set_epilogue_ctas_per_sm,
                        (-1, 1, 2, 3, 0))


# ----------------------------------------------------------------------------------------------
# CLUSTER plans (sm_90+): token blocks split over a cluster, partial groups, tails, isolation.

@pytest.fixture
def clusters_on(monkeypatch):
    """CLUSTER plans for every T from 64 (by default only in measured windows, plan.cpp)."""
    if not plan.device_supports_clusters("cuda"):
        pytest.skip("CLUSTER plans need sm_90+")
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    old = mhc_ops._C.set_cluster_min_tokens(64)
    yield
    mhc_ops._C.set_cluster_min_tokens(old)


def _variant(kind, T, H, n=N_HC):
    return plan.plan_of(kind, T, hidden_size=H, hc_mult=n, num_sms=plan.device_num_sms("cuda"),
                        batch_invariant=False).variant


@pytest.mark.usefixtures("nan_filled", "clusters_on")
@pytest.mark.parametrize("H", [8, 264, 520, 4096, 7168, 7176])  # 1..16 CTAs, partial groups
@pytest.mark.parametrize("T", [64, 65, 95, 97, 300])  # whole and partial token blocks
def test_cluster_plan(T, H):
    for kind in (KernelType.MHC_PRE, KernelType.MHC_FUSED_POST_PRE, KernelType.HC_HEAD):
        assert _variant(kind, T, H) == "cluster", (kind, T, H)
    check_pre(T, H, norm=False, seed=h.seed_of("cp", T, H))
    check_fused(T, H, norm=False, seed=h.seed_of("cf", T, H))
    check_head(T, H, seed=h.seed_of("ch", T, H))


@pytest.mark.usefixtures("nan_filled", "clusters_on")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_cluster_plan_small_hc_mult(n):
    assert _variant(KernelType.MHC_PRE, 333, 7168, n) == "cluster"
    check_pre(333, 7168, norm=False, seed=h.seed_of("cpn", n), n=n)
    check_fused(333, 7168, norm=False, seed=h.seed_of("cfn", n), n=n)
    check_head(333, 7168, seed=h.seed_of("chn", n), n=n)


# hc_head at n = 4, H = 4096 / 7168 runs the persistent cluster kernel (a cluster walks token
# blocks with 2 or 3 shared-memory buffers; hc_cluster.cuh): the same units, fragments and sums
# as the one-block-per-cluster kernel (cluster_buffers 1), so the same bits, every element
# written, and the float64 reference.
# T = 2500: ~20 blocks per cluster, the buffers rotate.
@pytest.mark.usefixtures("nan_filled", "clusters_on")
@pytest.mark.parametrize("H", [4096, 7168])
@pytest.mark.parametrize("T", [64, 97, 300, 2500])
def test_head_persistent_cluster_is_bit_identical(T, H):
    assert _variant(KernelType.HC_HEAD, T, H) == "cluster"
    g = _gen(h.seed_of("head_persist", T, H))
    K = N_HC * H
    inp = {"residual": _randn(g, T, N_HC, H, dtype=torch.bfloat16),
           "fn": _randn(g, N_HC, K, std=1 / math.sqrt(K)),
           "hc_scale": 0.5 + torch.rand(1, generator=g, device="cuda"),
           "hc_base": _randn(g, N_HC, std=0.5)}
    # buffers 1: the one-block kernel; 0: the launcher's choice
    got = _runs_under(mhc_ops._C.set_cluster_buffers, (1, 2, 3, 0),
                      {KernelType.HC_HEAD: lambda: (mhc_ops.hc_head(**inp),)})
    assert torch.isfinite(got[KernelType.HC_HEAD][0][0]).all(), "unwritten or non-finite output"
    _assert_same_bits(got)
    idx = _rows(T)
    h.check_head_output(got[KernelType.HC_HEAD][-1][0][idx],
                        _sub(inp, residual=inp["residual"][idx]))


@pytest.mark.usefixtures("clusters_on")
def test_cluster_nan_token_isolated_and_repeatable():
    assert _variant(KernelType.MHC_PRE, 100, 4096) == "cluster"
    g = _gen(11)
    T, H = 100, 4096
    res = _randn(g, T, N_HC, H, dtype=torch.bfloat16)
    x = _randn(g, T, H, dtype=torch.bfloat16)
    post, comb = _post_gates(g, T, N_HC)
    p = _pre_params(g, N_HC, H, norm=False)
    hp = _head_params(p)
    bad = res.clone()
    bad[37, 2, 100] = float("nan")
    others = torch.arange(T, device="cuda") != 37
    runs = [lambda r: mhc_ops.mhc_pre(r, **p), lambda r: (mhc_ops.hc_head(r, **hp),),
            lambda r: mhc_ops.mhc_fused_post_pre(x, r, post, comb, **p)]
    for run in runs:
        clean, first, again = run(res), run(bad), run(bad)
        for c, f, a in zip(clean, first, again):
            torch.testing.assert_close(f, a, rtol=0, atol=0, equal_nan=True)  # to the bit
            assert torch.equal(c[others], f[others])  # one token's NaN stays in its row
            assert torch.isnan(f[37]).any()


@pytest.mark.usefixtures("clusters_on")
def test_past_2_31_cluster(big_inputs):
    x, res, post, comb, p = big_inputs
    p = _sub(p, norm_weight=None)
    assert _variant(KernelType.MHC_PRE, BIG_T, BIG_H) == "cluster"
    idx = _rows(BIG_T)
    outs = mhc_ops.mhc_pre(res, **p)
    h.check_pre_outputs(tuple(o[idx] for o in outs), res[idx], p)
    del outs
    outs = mhc_ops.mhc_fused_post_pre(x, res, post, comb, **p)
    r = outs[0][idx]
    h.check_post_output(r, {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                            "comb_mix": comb[idx]}, what="fused residual_out")
    h.check_pre_outputs(tuple(o[idx] for o in outs[1:]), r, p, what="fused")
    del outs, r
    hp = _head_params(p)
    assert _variant(KernelType.HC_HEAD, BIG_T, BIG_H) == "cluster"  # persistent at H = 7168
    out = mhc_ops.hc_head(res, **hp)
    h.check_head_output(out[idx], {"residual": res[idx], **hp})
