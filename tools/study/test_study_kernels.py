"""The CUDA kernels under the study knobs (csrc/core/study.h): each knob moves a threshold of
the planner, and the kernels it sends a call to must give the same bits as the planner's
choice (staged fn, the cp.async ring, the fused op's L2 policy, the epilogue's chunks and CTA
cap), every element written, within the float64 reference's bounds; hc_head's cluster plans at
every T.
"""

from __future__ import annotations

import pytest
import torch

import cuda_helpers as ch
import helpers as h
import mhc_ops
from mhc_ops import plan
from mhc_ops.plan import KernelType

pytestmark = ch.needs_cuda


# ----------------------------------------------------------------------------------------------
# Staged fn (Plan.staged_fn): the same products in the same order, so the same bits.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [520, 4096, 7168])
@pytest.mark.parametrize("T", [300, 5000])  # SPLIT_K, FULL_K
def test_staged_fn_is_bit_identical(T, H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    old_cluster = mhc_ops._C.set_cluster_min_tokens(2**63 - 1)
    x, res, post, comb, p = ch.call_inputs(h.seed_of("staged", T, H), T, H, norm=True)
    plain = ch.sub(p, norm_weight=None)
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
        got = ch.runs_under(mhc_ops._C.set_staged_fn_min_tokens, (2**63 - 1, 1), calls, check)
    finally:
        mhc_ops._C.set_cluster_min_tokens(old_cluster)
    ch.assert_same_bits(got)  # unstaged, staged
    idx = ch.rows(T)
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
    x, res, post, comb, p = ch.call_inputs(h.seed_of("fn_ring", T, H, staged), T, H, norm=True)
    plain = ch.sub(p, norm_weight=None)
    hp = ch.head_params(p)
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
        got = ch.runs_under(mhc_ops._C.set_fn_ring_min_tokens, (2**63 - 1, 1), calls, check)
    finally:
        mhc_ops._C.set_staged_fn_min_tokens(old_staged)
        mhc_ops._C.set_cluster_min_tokens(old_cluster)
    ch.assert_same_bits(got)  # without the ring, with it
    idx = ch.rows(T)
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
    x, res, post, comb, p = ch.call_inputs(h.seed_of("evict_inputs", T, H), T, H, norm=True)
    plain = ch.sub(p, norm_weight=None)
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
        got = ch.runs_under(mhc_ops._C.set_evict_inputs_max_bytes, (-1, 2**62), calls, check)
    finally:
        mhc_ops._C.set_cluster_min_tokens(old_cluster)
    ch.assert_same_bits(got)  # without the policy, with it
    idx = ch.rows(T)
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
    x, res, post, comb, p = ch.call_inputs(h.seed_of(seed, T, H), T, H, norm=False)
    p = ch.sub(p, norm_weight=None)
    hp = ch.head_params(p)
    calls = {
        KernelType.MHC_PRE: lambda: mhc_ops.mhc_pre(res, **p),
        KernelType.MHC_FUSED_POST_PRE: lambda: mhc_ops.mhc_fused_post_pre(x, res, post, comb, **p),
        KernelType.HC_HEAD: lambda: (mhc_ops.hc_head(res, **hp),),
    }
    kw = dict(hidden_size=H, num_sms=plan.device_num_sms("cuda"), batch_invariant=False)

    def check(kind, value):
        assert plan.plan_of(kind, T, **kw).variant == "split_k"

    try:
        got = ch.runs_under(setter, values, calls, check)
    finally:
        mhc_ops._C.set_cluster_min_tokens(old_cluster)
    ch.assert_same_bits(got)
    idx = ch.rows(T)
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
# hc_head's CLUSTER plans (sm_90+) at any T: token blocks split over a cluster, partial groups,
# tails; at n = 4, H = 4096 / 7168 the persistent kernel.

@pytest.fixture
def clusters_on(monkeypatch):
    """CLUSTER plans for every T from 64 (by default only in measured windows, plan.cpp)."""
    if not plan.device_supports_clusters("cuda"):
        pytest.skip("CLUSTER plans need sm_90+")
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    old = mhc_ops._C.set_cluster_min_tokens(64)
    yield
    mhc_ops._C.set_cluster_min_tokens(old)


def _variant(kind, T, H, n=ch.N_HC):
    return plan.plan_of(kind, T, hidden_size=H, hc_mult=n, num_sms=plan.device_num_sms("cuda"),
                        batch_invariant=False).variant


@pytest.mark.usefixtures("nan_filled", "clusters_on")
@pytest.mark.parametrize("H", [8, 264, 520, 4096, 7168, 7176])  # 1..16 CTAs, partial groups
@pytest.mark.parametrize("T", [64, 65, 95, 97, 300])  # whole and partial token blocks
def test_cluster_plan(T, H):
    assert _variant(KernelType.HC_HEAD, T, H) == "cluster", (T, H)
    ch.check_head(T, H, seed=h.seed_of("ch", T, H))


@pytest.mark.usefixtures("nan_filled", "clusters_on")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_cluster_plan_small_hc_mult(n):
    assert _variant(KernelType.HC_HEAD, 333, 7168, n) == "cluster"
    ch.check_head(333, 7168, seed=h.seed_of("chn", n), n=n)


# ----------------------------------------------------------------------------------------------
# mhc_post's two grids (Plan.block_tokens): H / 1024 CTAs per token, or a CTA per token walking
# H; the same element arithmetic, so the same bits, for every n the row kernel has, at widths of
# one partial step (520), whole steps (4096) and a partial last step (5120), contiguous and
# misaligned (2-byte loads).

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [520, 4096, 5120])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("T", [1, 37])
def test_post_row_kernel_is_bit_identical(T, n, H):
    g = ch.gen(h.seed_of("post-row", T, n, H))
    x = ch.randn(g, T, H, dtype=torch.bfloat16)
    res = ch.randn(g, T, n, H, dtype=torch.bfloat16)
    post, comb = ch.post_gates(g, T, n)
    odd = {"x": h.odd_view(x, "offset"), "residual": h.odd_view(res, "offset")}
    calls = {"aligned": lambda: (mhc_ops.mhc_post(x, res, post, comb),),
             "misaligned": lambda: (mhc_ops.mhc_post(odd["x"], odd["residual"], post, comb),)}
    kw = dict(hc_mult=n, hidden_size=H, num_sms=plan.device_num_sms("cuda"),
              batch_invariant=False)

    def check(kind, start):
        assert plan.plan_of(KernelType.MHC_POST, T, **kw).block_tokens == (start == 1)

    got = ch.runs_under(mhc_ops._C.set_post_row_min_tokens, (2**63 - 1, 1), calls, check)
    ch.assert_same_bits(got)  # H / 1024 CTAs per token, a CTA per token
    assert torch.equal(got["aligned"][0][0], got["misaligned"][1][0])
    h.check_post_output(got["aligned"][1][0], {"x": x, "residual": res, "post_mix": post,
                                                "comb_mix": comb})


# ----------------------------------------------------------------------------------------------
# FULL_K below the split rule (the stats crossover study): every output written and within the
# float64 reference's bounds, for pre (norm and plain) and stats, with 32-token blocks short of
# the SMs and a partial last block.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [4096, 5120])
@pytest.mark.parametrize("T", [1, 300, 1037])
def test_full_k_below_the_split_rule(T, H):
    kw = dict(hidden_size=H, num_sms=plan.device_num_sms("cuda"), batch_invariant=False,
              clusters=False)
    old = mhc_ops._C.set_full_k_min_tokens(1)
    try:
        for kind in (KernelType.MHC_PRE, KernelType.MHC_STATS):
            assert plan.plan_of(kind, T, **kw).variant == "full_k"
        for norm in (False, True):
            ch.check_pre(T, H, norm, seed=h.seed_of("full-k", T, H, norm))
        a = h.v41_inputs(T, ch.N_HC, H, seed=h.seed_of("full-k-stats", T, H), device="cuda")
        outs = h.outs_of(h.v41_call("mhc_stats", a))
        for o in outs:
            assert torch.isfinite(o).all(), "mhc_stats: unwritten or non-finite output"
        idx = ch.rows(T)
        h.check_v41_outputs("mhc_stats", tuple(o[idx] for o in outs),
                            {k: (v[idx] if k in h.V41_PER_TOKEN else v) for k, v in a.items()})
    finally:
        mhc_ops._C.set_full_k_min_tokens(old)


# ----------------------------------------------------------------------------------------------
# The fused shifted boundary past its planner threshold: at every SPLIT_K size of the fused op
# residual_out stays mhc_post's bits, layer_input mhc_combine's, the next gates within bounds.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [520, 5120])
@pytest.mark.parametrize("T", [65, 300, 2049])
def test_fused_boundary_at_prefill_sizes(T, H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    kw = dict(hidden_size=H, num_sms=plan.device_num_sms("cuda"), batch_invariant=False)
    old = mhc_ops._C.set_boundary_max_tokens(1 << 20)
    try:
        for norm in (False, True):
            p = plan.plan_of(KernelType.MHC_SHIFTED_POST_PRE, T, norm=norm, **kw)
            assert p.fused_boundary and p.variant == "split_k"
            a = h.v41_inputs(T, ch.N_HC, H, seed=h.seed_of("boundary", T, H, norm),
                             device="cuda", norm=norm)
            outs = h.outs_of(h.v41_call("mhc_shifted_post_pre", a))
            for o in outs:
                assert torch.isfinite(o).all(), "mhc_shifted_post_pre: unwritten output"
            r, li = outs[:2]
            assert torch.equal(r, torch.ops.mhc.mhc_post(*(a[k] for k in h.POST_KEYS)))
            assert torch.equal(li, torch.ops.mhc.mhc_combine(r, a["pre_mix"], a["norm_weight"]))
            idx = ch.rows(T)
            h.check_v41_outputs("mhc_shifted_post_pre", tuple(o[idx] for o in outs),
                                {k: (v[idx] if k in h.V41_PER_TOKEN else v) for k, v in a.items()})
    finally:
        mhc_ops._C.set_boundary_max_tokens(old)


# ----------------------------------------------------------------------------------------------
# The split combine past its planner threshold: the same bits as one CTA per token.

@pytest.mark.parametrize("H", [1088, 5120, 16384])
@pytest.mark.parametrize("op", ["mhc_combine", "mhc_post_combine"])
def test_split_combine_at_prefill_sizes(op, H):
    T = 1000
    kind = KernelType.MHC_COMBINE if op == "mhc_combine" else KernelType.MHC_POST_COMBINE
    kw = dict(hidden_size=H, num_sms=plan.device_num_sms("cuda"))
    for norm in (False, True):
        a = h.v41_inputs(T, ch.N_HC, H, seed=h.seed_of("split", op, H, norm), device="cuda",
                         norm=norm)
        assert plan.plan_of(kind, T, norm=norm, **kw).num_splits == 1
        want = h.outs_of(h.v41_call(op, a))
        old = mhc_ops._C.set_combine_split_max_tokens(1 << 20)
        try:
            assert plan.plan_of(kind, T, norm=norm, **kw).num_splits > 1
            got = h.outs_of(h.v41_call(op, a))
        finally:
            mhc_ops._C.set_combine_split_max_tokens(old)
        for g, w in zip(got, want):
            assert torch.equal(g, w), f"norm={norm}"


# ----------------------------------------------------------------------------------------------
# Plans over token chunks (chunk_tokens): each chunk is the call on its rows (fn staged once
# for the chunks whose plan stages it, one partial buffer), so the outputs are those of the
# calls on the slices, bit for bit, every row written.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("chunk", [256, 512])  # SPLIT_K chunks; from 512 with staged fn
@pytest.mark.parametrize("T", [700, 1301])
def test_chunked_plans_equal_calls_on_slices(T, chunk, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    H = 4096
    kw = dict(hidden_size=H, num_sms=plan.device_num_sms("cuda"), batch_invariant=False)
    assert plan.plan_of(KernelType.MHC_PRE, chunk, **kw).staged_fn == (chunk >= 512)
    x, res, post, comb, p = ch.call_inputs(h.seed_of("chunk", T, chunk), T, H, norm=True)
    plain = ch.sub(p, norm_weight=None)
    a = h.v41_inputs(T, ch.N_HC, 5120, seed=h.seed_of("chunk41", T, chunk), device="cuda")
    calls = {
        "pre": lambda r: mhc_ops.mhc_pre(res[r], **plain),
        "pre_norm": lambda r: mhc_ops.mhc_pre(res[r], **p),
        "fused": lambda r: mhc_ops.mhc_fused_post_pre(x[r], res[r], post[r], comb[r], **p),
        "stats": lambda r: h.outs_of(h.v41_call("mhc_stats", {
            k: (v[r] if k == "residual" else v) for k, v in a.items()})),
    }
    whole = {k: (lambda f=f: f(slice(0, T))) for k, f in calls.items()}
    got = {k: runs[0] for k, runs in ch.runs_under(mhc_ops._C.set_chunk_tokens, (chunk,),
                                                   whole).items()}
    for k, f in calls.items():
        parts = [f(slice(t0, min(T, t0 + chunk))) for t0 in range(0, T, chunk)]
        want = [torch.cat(col) for col in zip(*parts)]
        for g, w in zip(got[k], want):
            assert torch.equal(g, w), k
    h.check_pre_outputs(got["pre_norm"], res, p)


# ----------------------------------------------------------------------------------------------
# The pipelined pre kernel (pipe_tokens, hc_pipe.cuh): the SPLIT_K plan of 256 tokens over all
# T in one launch, so the bits of the same plan run chunk by chunk; every row written, within
# the float64 reference's bounds at a T that is no multiple of the 64-token block.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [4096, 7168])
@pytest.mark.parametrize("T", [512, 1280, 1301])
def test_pipelined_pre_is_the_chunked_plan(T, H, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    chunk = 256
    for norm in (False, True):  # a plan the pipelined kernel runs (else the launcher declines)
        c = plan.plan_of(KernelType.MHC_PRE, chunk, hidden_size=H, norm=norm,
                         num_sms=plan.device_num_sms("cuda"), batch_invariant=False)
        assert (c.variant, c.block_tokens, c.main_warps) == ("split_k", 64, 8)
        assert not (c.staged_fn or c.fn_ring)
    x, res, post, comb, p = ch.call_inputs(h.seed_of("pipe", T, H), T, H, norm=True)
    plain = ch.sub(p, norm_weight=None)
    calls = {"plain": lambda: mhc_ops.mhc_pre(res, **plain),
             "norm": lambda: mhc_ops.mhc_pre(res, **p)}

    def under(name):
        runs = ch.runs_under(getattr(mhc_ops._C, "set_" + name), (chunk,), calls)
        return {k: r[0] for k, r in runs.items()}

    got, want = under("pipe_tokens"), under("chunk_tokens")
    for k in calls:
        assert all(bool(torch.isfinite(o).all()) for o in got[k]), k
        h.check_pre_outputs(got[k], res, p if k == "norm" else plain)
        whole = T - T % chunk  # the last chunk's own plan differs from the 256-token plan
        for g, w in zip(got[k], want[k]):
            assert torch.equal(g[:whole], w[:whole]), k


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("T", [512, 1301])
def test_pipelined_stats_is_the_chunked_plan(T, monkeypatch):
    monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    chunk, H = 256, 5120
    c = plan.plan_of(KernelType.MHC_STATS, chunk, hidden_size=H,
                     num_sms=plan.device_num_sms("cuda"), batch_invariant=False)
    assert (c.variant, c.block_tokens, c.main_warps) == ("split_k", 64, 8)
    assert not (c.staged_fn or c.fn_ring)
    a = h.v41_inputs(T, ch.N_HC, H, seed=h.seed_of("pipe41", T), device="cuda")

    def under(name):
        runs = ch.runs_under(getattr(mhc_ops._C, "set_" + name), (chunk,),
                             {"stats": lambda: h.outs_of(h.v41_call("mhc_stats", a))})
        return runs["stats"][0]

    got, want = under("pipe_tokens"), under("chunk_tokens")
    h.check_stats_outputs(got, a["residual"], {k: a[k] for k in h.V41_ARGS["mhc_stats"]
                                               if k != "residual"})
    whole = T - T % chunk
    for g, w in zip(got, want):
        assert torch.equal(g[:whole], w[:whole])
