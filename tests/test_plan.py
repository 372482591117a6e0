"""The planner (SPEC §4): upstream split table, representatives, purity."""

import pytest

from mhc_ops import _C, plan
from mhc_ops.plan import KernelType

SM_COUNTS = (78, 132, 148)
STREAM_KINDS = (KernelType.PRENORM_GEMM, KernelType.MHC_PRE, KernelType.MHC_FUSED_POST_PRE,
                KernelType.HC_HEAD, KernelType.MHC_POST, KernelType.LINEAR_BF16_FP32)


def test_upstream_split_table_132_sms():
    # The figures SPEC §4 quotes for 132 SMs.
    for t in (1, 17, 64):
        assert plan.num_splits(t, 16384, 132) == 64
        assert plan.num_splits(t, 28672, 132) == 112
    assert plan.num_splits(65, 16384, 132) == 64      # 132 // 2 = 66, capped at 256 // 4
    assert plan.num_splits(129, 28672, 132) == 44     # 132 // 3
    assert plan.num_splits(4224, 16384, 132) == 2     # ceil(4224/64) = 66
    for t in (4225, 8192, 16384):
        assert plan.num_splits(t, 16384, 132) == 1


def test_num_splits_matches_formula():
    for sms in SM_COUNTS:
        for k in (256, 16384, 28672, 64 * 7 + 5):
            for t in (1, 63, 64, 65, 200, 1000, 5000, 20000):
                expected = max(1, min(sms // -(-t // 64), -(-k // 64) // 4))
                assert plan.num_splits(t, k, sms) == expected


@pytest.mark.parametrize("num_sms", SM_COUNTS)
@pytest.mark.parametrize("hidden", (4096, 7168))
@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_representatives_one_per_plan_the_largest(kind, hidden, num_sms):
    max_tokens = 16384
    plans = {}
    for t in range(1, max_tokens + 1):
        plans.setdefault(plan.plan_of(kind, t, hidden_size=hidden, num_sms=num_sms,
                                      batch_invariant=False), []).append(t)
    reps = plan.token_count_representatives(kind, max_tokens, hidden_size=hidden,
                                            num_sms=num_sms, batch_invariant=False)
    assert list(reps) == sorted(reps)
    assert sorted(reps) == sorted(max(ts) for ts in plans.values())
    # one representative per plan, and they reach every plan
    rep_plans = [plan.plan_of(kind, t, hidden_size=hidden, num_sms=num_sms,
                              batch_invariant=False) for t in reps]
    assert len(set(rep_plans)) == len(reps) == len(plans)


def test_representatives_empty_for_no_budget():
    for budget in (0, -1):
        assert plan.token_count_representatives("MHC_PRE", budget, hidden_size=4096,
                                                num_sms=132) == ()


def test_small_t_splits_large_t_does_not():
    kw = dict(hidden_size=7168, num_sms=132, batch_invariant=False, clusters=False)
    small = plan.plan_of("MHC_PRE", 8, **kw)
    large = plan.plan_of("MHC_PRE", 16384, **kw)
    # decode: about half the SMs (224 K groups in 56 splits); from T = 65, all of them (two
    # token blocks of 64 x 56 splits)
    assert small.num_splits == 56 and small.variant == "split_k"
    assert plan.plan_of("MHC_PRE", 64, **kw).num_splits == 56
    assert plan.plan_of("MHC_PRE", 65, **kw).num_splits == 56
    assert plan.plan_of("MHC_PRE", 129, **kw).num_splits == 38  # 3 blocks x 38
    assert large.num_splits == 1 and large.variant == "full_k"
    assert small.hidden_spec == 7168
    assert plan.plan_of("MHC_PRE", 8, hidden_size=520, num_sms=132).hidden_spec == 0


def test_decode_blocks_of_pre_and_head():
    kw = dict(num_sms=132, batch_invariant=False, clusters=False)
    for kind in ("MHC_PRE", "HC_HEAD"):
        for hidden in (4096, 7168, 520):
            plans = [plan.plan_of(kind, t, hidden_size=hidden, **kw) for t in (1, 32, 33, 64, 65)]
            # 32-token blocks up to T = 64, each with the split count of one block (about half
            # the SMs per block), then 64-token blocks
            assert [p.block_tokens for p in plans] == [32, 32, 32, 32, 64]
            assert len({p.num_splits for p in plans[:4]}) == 1
            if hidden != 520:  # 17 K groups: at most 17 splits
                assert 2 * plans[3].num_splits <= 132 < 4 * plans[3].num_splits
        # n > 4 keeps one tile; batch invariance keeps its one plan
        assert plan.plan_of(kind, 64, hidden_size=4096, hc_mult=8, **kw).block_tokens == 16
        inv = [plan.plan_of(kind, t, hidden_size=4096, num_sms=132, batch_invariant=True)
               for t in (1, 64, 65)]
        assert {(p.block_tokens, p.num_splits) for p in inv} == {(64, 16)}
    assert plan.plan_of("MHC_FUSED_POST_PRE", 64, hidden_size=7168, **kw).block_tokens == 32


def test_pre_full_k_from_lower_t_at_4096():
    kw = dict(num_sms=132, batch_invariant=False, clusters=False)

    def variant(kind, t, hidden, **more):
        return plan.plan_of(kind, t, hidden_size=hidden, **{**kw, **more}).variant

    # pre at H = 4096: FULL_K once its 32-token CTAs cover 8 / 11 of the SMs (96 of 132)
    assert variant("MHC_PRE", 3040, 4096) == "split_k"
    assert variant("MHC_PRE", 3041, 4096) == "full_k"
    assert variant("MHC_PRE", 4224, 4096) == "full_k"
    assert variant("MHC_PRE", 2208, 4096, num_sms=78) == "full_k"  # 69 CTAs of 78
    # not at other widths or n, not for the other ops, not under batch invariance
    for kind, hidden, more in (("MHC_PRE", 7168, {}), ("MHC_PRE", 4096, {"hc_mult": 2}),
                               ("MHC_FUSED_POST_PRE", 4096, {}), ("HC_HEAD", 4096, {}),
                               ("MHC_PRE", 4096, {"batch_invariant": True})):
        assert variant(kind, 4224, hidden, **more) == "split_k"
        assert variant(kind, 4225, hidden, **more) == ("split_k" if more.get("batch_invariant")
                                                       else "full_k")


def test_cluster_plans_in_their_measured_windows():
    def variants(kind, hidden, tokens):
        return [plan.plan_of(kind, t, hidden_size=hidden, num_sms=132,
                             batch_invariant=False).variant for t in tokens]

    # hc_head at n = 4, H = 4096 / 7168 (the persistent kernel) from T = 256 on; at other
    # hidden sizes above 4096 (the one-block kernel) for T = 2048 .. 8191; nothing else
    # (pre / fused must reduce in the same order with and without the folded norm, which the
    # cluster kernels lack)
    for hidden in (4096, 7168):
        assert variants("HC_HEAD", hidden, (16, 64, 255, 256, 2048, 8192, 16384)) == [
            "split_k", "split_k", "split_k", "cluster", "cluster", "cluster", "cluster"]
    for hidden in (7176, 8192):
        assert variants("HC_HEAD", hidden, (2047, 2048, 8191, 8192)) == [
            "split_k", "cluster", "cluster", "full_k"]
    n2 = [plan.plan_of("HC_HEAD", t, hidden_size=7168, hc_mult=2, num_sms=132,
                       batch_invariant=False).variant for t in (2048, 8192)]
    assert n2 == ["cluster", "full_k"]
    assert "cluster" not in variants("HC_HEAD", 2048, (16, 1024, 4096, 16384))
    for kind in ("MHC_PRE", "MHC_FUSED_POST_PRE"):
        for hidden in (200, 4096, 7168):
            assert "cluster" not in variants(kind, hidden, (16, 19, 64, 128, 4096, 16384))
    assert plan.plan_of("HC_HEAD", 4096, hidden_size=7168, num_sms=132, clusters=False,
                        batch_invariant=False).variant != "cluster"


def test_norm_is_part_of_the_plan_only_where_it_applies():
    kw = dict(hidden_size=4096, num_sms=132)
    assert plan.plan_of("MHC_PRE", 8, norm=True, **kw) != plan.plan_of("MHC_PRE", 8, **kw)
    assert plan.plan_of("HC_HEAD", 8, norm=True, **kw) == plan.plan_of("HC_HEAD", 8, **kw)


def test_batch_invariant_plan_does_not_depend_on_t():
    kw = dict(hidden_size=4096, num_sms=132, batch_invariant=True)
    for kind in (KernelType.MHC_PRE, KernelType.MHC_FUSED_POST_PRE, KernelType.HC_HEAD):
        # The reduction (split count, order) is one for every T; only how fn reaches the mma
        # changes with T (staged first, through the main kernel's ring), and those runs are
        # bit-identical (tools/study/test_study_kernels.py, which runs each way at one T), and
        # for the fused op the ring's L2 policy.
        plans = {plan.plan_of(kind, t, **kw) for t in (1, 7, 64, 512, 4096, 16384)}
        # (the epilogue's chunks of H change with T too: each chunk's CTA adds the same
        # partials in the same order, so a token's bits do not depend on them)
        assert len({p._replace(staged_fn=False, fn_ring=False, evict_inputs=False,
                               epilogue_chunks=0) for p in plans}) == 1
        staged = kind != KernelType.HC_HEAD
        assert {p.staged_fn for p in plans} == {False, staged}
        assert {p.fn_ring for p in plans} == {False, True}
        fused = kind == KernelType.MHC_FUSED_POST_PRE
        assert {p.evict_inputs for p in plans} == ({False, True} if fused else {False})
        # pre / fused stage fn and ring from the same T: one plan below it, one from it; the
        # fused op's inputs go evict_first from that T while its residual_out fits the limit
        reps = plan.token_count_representatives(kind, 16384, **kw)
        assert len({plan.plan_of(kind, t, **kw)._replace(epilogue_chunks=0) for t in reps}) == (
            3 if fused else 2)


def test_cpu_has_one_plan_per_op():
    for kind in STREAM_KINDS:
        assert plan.token_count_representatives(kind, 5000, hidden_size=4096, num_sms=0) == (5000,)


def test_kind_by_name_and_bad_kind():
    assert plan.plan_of("mhc_pre", 1, hidden_size=4096, num_sms=132).kind == KernelType.MHC_PRE
    with pytest.raises(ValueError, match="unknown kind"):
        plan.plan_of("mhc_pree", 1, hidden_size=4096, num_sms=132)


def test_plan_follows_flags_unless_given(monkeypatch):
    kw = dict(hidden_size=4096, num_sms=132)
    monkeypatch.setenv("MHC_BATCH_INVARIANT", "1")
    assert (plan.plan_of("MHC_PRE", 5000, **kw)._replace(staged_fn=False, fn_ring=False,
                                                         epilogue_chunks=0)
            == plan.plan_of("MHC_PRE", 1, **kw)._replace(epilogue_chunks=0))
    assert plan.plan_of("MHC_PRE", 5000, batch_invariant=False, **kw).num_splits == 1
    monkeypatch.setenv("MHC_BF16_FP32_GEMM_ALGO", "fp32")
    assert plan.plan_of("LINEAR_BF16_FP32", 8, **kw).variant == "fp32_gemm"
    monkeypatch.delenv("MHC_BF16_FP32_GEMM_ALGO")
    assert plan.plan_of("LINEAR_BF16_FP32", 8, **kw).variant == "cublas"


def _flag_from(field, start, kinds, kw):
    """The plans of `kinds` carry `field` from T = start on, FULL_K included, never on the CPU."""
    for kind in kinds:
        assert not getattr(plan.plan_of(kind, start - 1, **kw), field)
        assert getattr(plan.plan_of(kind, start, **kw), field)
        assert getattr(plan.plan_of(kind, 16384, **kw), field)  # FULL_K as well
        assert not getattr(plan.plan_of(kind, 16384, **{**kw, "num_sms": 0}), field)  # CPU


# The thresholds of the installed library (csrc/core/plan.cpp; docs/performance.md, "Staged
# fn", "The fn ring", "L2 evict-first inputs"). A study build moves them (tools/study/).
STAGED_FN_TOKENS = FN_RING_TOKENS = 512
EVICT_INPUTS_BYTES = 40 << 20


def test_staged_fn_from_its_token_count():
    kw = dict(hidden_size=7168, num_sms=132, batch_invariant=False, clusters=False)
    _flag_from("staged_fn", STAGED_FN_TOKENS,
               (KernelType.MHC_PRE, KernelType.MHC_FUSED_POST_PRE), kw)
    for kind in (KernelType.HC_HEAD, KernelType.MHC_POST):  # n rows of fn / no fn
        assert not any(plan.plan_of(kind, t, **kw).staged_fn
                       for t in (STAGED_FN_TOKENS, 4096, 16384))


def test_fn_ring_from_its_token_count():
    kw = dict(hidden_size=7168, num_sms=132, batch_invariant=False, clusters=False)
    kinds = (KernelType.MHC_PRE, KernelType.HC_HEAD, KernelType.MHC_FUSED_POST_PRE)
    _flag_from("fn_ring", FN_RING_TOKENS, kinds, kw)
    for kind in kinds:
        assert plan.plan_of(kind, 16384, **{**kw, "norm": True}).fn_ring
    # CLUSTER plans and mhc_post have no such ring
    assert not plan.plan_of(KernelType.MHC_POST, 4096, **kw).fn_ring
    cluster = plan.plan_of(KernelType.HC_HEAD, 4096, hidden_size=7168, num_sms=132,
                           batch_invariant=False)
    assert cluster.variant == "cluster" and not cluster.fn_ring


def test_evict_inputs_for_the_fused_ring_within_its_bytes():
    kw = dict(num_sms=132, batch_invariant=False, clusters=False)
    ring = FN_RING_TOKENS
    for hidden in (4096, 7168, 520):
        last = EVICT_INPUTS_BYTES // (4 * hidden * 2)  # the largest T whose residual_out fits
        fused = KernelType.MHC_FUSED_POST_PRE
        if last >= ring:
            assert plan.plan_of(fused, last, hidden_size=hidden, **kw).evict_inputs
            assert plan.plan_of(fused, ring, hidden_size=hidden, **kw).evict_inputs
        assert not plan.plan_of(fused, last + 1, hidden_size=hidden, **kw).evict_inputs
        assert not plan.plan_of(fused, ring - 1, hidden_size=hidden, **kw).evict_inputs  # no ring
        assert not plan.plan_of(fused, 8, hidden_size=hidden, **kw).evict_inputs
        assert not plan.plan_of(fused, ring, hidden_size=hidden,
                                **{**kw, "num_sms": 0}).evict_inputs  # CPU
        for kind in (KernelType.MHC_PRE, KernelType.HC_HEAD, KernelType.MHC_POST):
            assert not any(plan.plan_of(kind, t, hidden_size=hidden, **kw).evict_inputs
                           for t in (ring, last, 4096))


def test_launch_shape_fields_are_planned():
    kw = dict(num_sms=132, batch_invariant=False, clusters=True)
    # SPLIT_K: epilogue chunks of H (2 num_sms / T at decode, capped at H / 1024; one with the
    # folded norm), the fused op's half units capping the epilogue at 3 CTAs per SM
    p = plan.plan_of("MHC_PRE", 1, hidden_size=7168, **kw)
    assert (p.variant, p.main_warps, p.epilogue_chunks, p.epilogue_ctas_per_sm) == (
        "split_k", 8, 7, 0)
    assert plan.plan_of("MHC_PRE", 1, hidden_size=7168, norm=True, **kw).epilogue_chunks == 1
    assert plan.plan_of("MHC_PRE", 4096, hidden_size=7168, **kw).epilogue_chunks == 4
    f = plan.plan_of("MHC_FUSED_POST_PRE", 8, hidden_size=7168, **kw)
    assert f.split_streams and f.epilogue_ctas_per_sm == 3
    # FULL_K: eight warps, no epilogue
    full = plan.plan_of("MHC_PRE", 16384, hidden_size=7168, **kw)
    assert (full.variant, full.main_warps, full.epilogue_chunks) == ("full_k", 8, 0)
    # the persistent hc_head kernel: 2 buffers at H = 4096, 3 and the rotated reduction at 7168
    for hidden, buffers, rotated in ((4096, 2, False), (7168, 3, True)):
        h = plan.plan_of("HC_HEAD", 4096, hidden_size=hidden, **kw)
        assert (h.variant, h.cluster_buffers, h.cluster_rotated) == ("cluster", buffers, rotated)
    one = plan.plan_of("HC_HEAD", 4096, hidden_size=5120, **kw)
    assert (one.variant, one.cluster_buffers) == ("cluster", 0)


def test_split_streams_only_for_fused_decode():
    kw = dict(hidden_size=7168, num_sms=132, batch_invariant=False, clusters=False)
    fused = KernelType.MHC_FUSED_POST_PRE
    assert all(plan.plan_of(fused, t, **kw).split_streams for t in (1, 8, 32))
    # from T = 33 (two token blocks) the CTA target would give a split 7 groups at H = 7168
    # (14 half units for 8 warps): 56 splits of 4 instead, 112 CTAs within the 132 SMs
    for t in (33, 48, 64):
        p = plan.plan_of(fused, t, **kw)
        assert p.split_streams and p.num_splits == 56
        p = plan.plan_of(fused, t, **{**kw, "num_sms": 100})  # 112 CTAs would not fit
        assert not p.split_streams and p.num_splits == 25  # 50 CTAs' count, 9 groups each
    assert not any(plan.plan_of(fused, t, **kw).split_streams for t in (65, 4096, 16384))
    narrow = {**kw, "hidden_size": 4096}  # 4 groups per split at T = 33 .. 64
    assert all(plan.plan_of(fused, t, **narrow).split_streams for t in (1, 32, 33, 64))
    assert not any(plan.plan_of(fused, t, **narrow).split_streams for t in (65, 4096))
    for t in (1, 8, 64):
        p = plan.plan_of(fused, t, **{**kw, "hidden_size": 16384})  # 8 or more groups per split
        assert p.variant == "split_k" and -(-512 // p.num_splits) >= 8 and not p.split_streams
    assert not plan.plan_of(fused, 8, **{**kw, "batch_invariant": True}).split_streams
    assert not plan.plan_of(fused, 8, hc_mult=3, **kw).split_streams  # halves need even n
    assert plan.plan_of(fused, 8, hc_mult=2, **kw).split_streams
    assert not plan.plan_of(fused, 8, **{**kw, "num_sms": 0}).split_streams  # CPU
    for kind in (KernelType.MHC_PRE, KernelType.HC_HEAD, KernelType.MHC_POST):
        assert not plan.plan_of(kind, 8, **kw).split_streams


POST_ROW_TOKENS = 4096  # csrc/core/plan.cpp, docs/performance.md "mhc_post load and store schemes"


def test_post_takes_a_cta_per_token_from_its_token_count():
    kw = dict(hidden_size=7168, num_sms=132, clusters=False)
    for bi in (False, True):  # the same element arithmetic either way
        assert plan.plan_of(KernelType.MHC_POST, POST_ROW_TOKENS - 1, batch_invariant=bi,
                            **kw).block_tokens == 0
        for t in (POST_ROW_TOKENS, 16384):
            assert plan.plan_of(KernelType.MHC_POST, t, batch_invariant=bi,
                                **kw).block_tokens == 1
    for n in (5, 8):  # measured at n = 4 only
        assert plan.plan_of(KernelType.MHC_POST, 16384, hc_mult=n, batch_invariant=False,
                            **kw).block_tokens == 0
    assert plan.plan_of(KernelType.MHC_POST, 16384, batch_invariant=False,
                        **{**kw, "num_sms": 0}).variant == "cpu"
    # a CTA of 256 threads per token, against H / 1024 CTAs of 128 per token
    def launches(t):
        return [tuple(x[:4]) for x in _C.launches_of(int(KernelType.MHC_POST), t, 4, 7168, 132,
                                                     False, False, False, False, 0)]
    assert launches(5000) == [("post_row<4,1>", 5000, 1, 256)]
    assert launches(4000) == [("post<4,1>", 4000, 7, 128)]
