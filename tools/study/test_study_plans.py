"""The plans the study knobs reach (csrc/core/study.h), on the CPU."""

from __future__ import annotations

import contextlib

from mhc_ops import _C, plan


@contextlib.contextmanager
def knob(name, value):
    old = getattr(_C, "set_" + name)(value)
    try:
        yield
    finally:
        getattr(_C, "set_" + name)(old)
    assert getattr(_C, name)() == old


def test_decode_blocks_under_a_ring_study():
    # the 32-token blocks have no ring kernel: a study that starts the ring at T <= 64 gets the
    # 64-token blocks, which have one
    kw = dict(hidden_size=4096, num_sms=132, batch_invariant=False, clusters=False)
    with knob("fn_ring_min_tokens", 1):
        for kind in ("MHC_PRE", "HC_HEAD"):
            p = plan.plan_of(kind, 40, **kw)
            assert p.fn_ring and p.block_tokens == 64
        half = plan.plan_of("MHC_FUSED_POST_PRE", 8, **kw)
        assert half.split_streams and not half.fn_ring  # half units take no ring
    assert plan.plan_of("MHC_PRE", 40, **kw).block_tokens == 32


def test_cluster_plans_from_a_threshold():
    kw = dict(hidden_size=7168, num_sms=132, batch_invariant=False)
    with knob("cluster_min_tokens", 64):
        # hc_head only: 224 K groups over 16 CTAs of 14 groups, blocks of 16 tokens; the
        # persistent kernel is specialised for its width
        p = plan.plan_of("HC_HEAD", 64, **kw)
        assert (p.variant, p.num_splits, p.block_tokens, p.hidden_spec) == (
            "cluster", 16, 16, 7168)
        assert plan.plan_of("HC_HEAD", 63, **kw).variant == "split_k"
        assert plan.plan_of("HC_HEAD", 64, hidden_size=5120, num_sms=132).cluster_buffers == 0
        # pre / fused have no cluster kernel; n > 4, batch invariance and no clusters neither
        for kind in ("MHC_PRE", "MHC_FUSED_POST_PRE"):
            assert plan.plan_of(kind, 16384, **kw).variant == "full_k"
        assert plan.plan_of("HC_HEAD", 16384, hc_mult=8, **kw).variant == "full_k"
        assert plan.plan_of("HC_HEAD", 16384, clusters=False, **kw).variant == "full_k"
        assert plan.plan_of("HC_HEAD", 16384, hidden_size=7168, num_sms=132,
                            batch_invariant=True).variant == "split_k"
        # small hidden sizes: fewer CTAs (H = 64: 2 groups, a cluster of 2)
        assert plan.plan_of("HC_HEAD", 4096, hidden_size=64, num_sms=132).num_splits == 2
        reps = plan.token_count_representatives("HC_HEAD", 128, **kw)
        assert 63 in reps and reps[-1] == 128


def test_split_target_ctas_moves_split_counts():
    kw = dict(hidden_size=7168, num_sms=132, batch_invariant=False, clusters=False)
    assert _C.split_target_ctas() < 0  # the planner's choice unless a study sets one
    with knob("split_target_ctas", 264):
        assert plan.plan_of("MHC_PRE", 8, **kw).num_splits == 224  # one group per split
        assert plan.plan_of("MHC_PRE", 8, **{**kw, "batch_invariant": True}).num_splits == 16


def test_thresholds_move_their_flags():
    kw = dict(hidden_size=7168, num_sms=132, batch_invariant=False, clusters=False)
    assert _C.staged_fn_min_tokens() == _C.fn_ring_min_tokens() == 512
    with knob("staged_fn_min_tokens", 2**63 - 1):
        assert not plan.plan_of("MHC_PRE", 16384, **kw).staged_fn
    with knob("fn_ring_min_tokens", 2**63 - 1):
        assert not plan.plan_of("MHC_PRE", 16384, **kw).fn_ring
    fused = "MHC_FUSED_POST_PRE"
    with knob("evict_inputs_max_bytes", -1):
        assert not plan.plan_of(fused, 512, **{**kw, "hidden_size": 4096}).evict_inputs
    with knob("evict_inputs_max_bytes", 2**62):
        assert plan.plan_of(fused, 16384, **{**kw, "hidden_size": 4096}).evict_inputs


def test_epilogue_knobs_move_the_plan():
    kw = dict(hidden_size=7168, num_sms=132, batch_invariant=False, clusters=False)
    with knob("epilogue_chunks", 2):
        assert plan.plan_of("MHC_PRE", 1, **kw).epilogue_chunks == 2
    with knob("epilogue_ctas_per_sm", -1):
        assert plan.plan_of("MHC_FUSED_POST_PRE", 8, **kw).epilogue_ctas_per_sm == 0
    with knob("epilogue_ctas_per_sm", 2):
        assert plan.plan_of("MHC_PRE", 8, **kw).epilogue_ctas_per_sm == 2


def test_post_row_threshold_moves_the_post_plan():
    kw = dict(hidden_size=7168, num_sms=132, batch_invariant=False, clusters=False)
    assert _C.post_row_min_tokens() == 4096
    with knob("post_row_min_tokens", 1):
        assert plan.plan_of("MHC_POST", 1, **kw).block_tokens == 1
        assert plan.plan_of("MHC_POST", 1, hc_mult=8, **kw).block_tokens == 0  # n <= 4 only
    with knob("post_row_min_tokens", 2**63 - 1):
        assert plan.plan_of("MHC_POST", 16384, **kw).block_tokens == 0


def test_full_k_threshold_moves_the_split_rule():
    kw = dict(hidden_size=5120, num_sms=132, batch_invariant=False, clusters=False)
    assert _C.full_k_min_tokens() < 0  # the planner's rule unless a study sets one
    assert plan.plan_of("MHC_STATS", 2048, **kw).variant == "split_k"
    with knob("full_k_min_tokens", 512):
        assert plan.plan_of("MHC_STATS", 512, **kw).variant == "full_k"
        assert plan.plan_of("MHC_STATS", 511, **kw).variant == "split_k"
        assert plan.plan_of("MHC_STATS", 512, **{**kw, "batch_invariant": True}).variant == (
            "split_k")
    with knob("full_k_min_tokens", 2**62):
        assert plan.plan_of("MHC_PRE", 16384, **kw).variant == "split_k"


def test_boundary_threshold_moves_the_fused_shifted_boundary():
    kw = dict(hidden_size=5120, num_sms=132, batch_invariant=False)
    default = _C.boundary_max_tokens()
    assert default > 0
    assert plan.plan_of("MHC_SHIFTED_POST_PRE", default, **kw).fused_boundary
    assert not plan.plan_of("MHC_SHIFTED_POST_PRE", default + 1, **kw).fused_boundary
    with knob("boundary_max_tokens", 2048):
        assert plan.plan_of("MHC_SHIFTED_POST_PRE", 2048, **kw).fused_boundary
        assert not plan.plan_of("MHC_SHIFTED_POST_PRE", 2049, **kw).fused_boundary
        # only where the fused op's plan is SPLIT_K
        assert not plan.plan_of("MHC_SHIFTED_POST_PRE", 2048, **{**kw, "batch_invariant": True}
                                ).fused_boundary
    with knob("boundary_max_tokens", 16384):
        p = plan.plan_of("MHC_SHIFTED_POST_PRE", 16384, **kw)
        assert not p.fused_boundary and p.variant == "full_k"
    with knob("boundary_max_tokens", 0):
        assert not plan.plan_of("MHC_SHIFTED_POST_PRE", 1, **kw).fused_boundary


def test_combine_split_threshold():
    kw = dict(hidden_size=5120, num_sms=132, batch_invariant=False, norm=True)
    default = _C.combine_split_max_tokens()
    assert default > 0
    for kind in ("MHC_COMBINE", "MHC_POST_COMBINE"):
        assert plan.plan_of(kind, default, **kw).num_splits == 5
        assert plan.plan_of(kind, default + 1, **kw).num_splits == 1
        with knob("combine_split_max_tokens", 4096):
            assert plan.plan_of(kind, 4096, **kw).num_splits == 5
        with knob("combine_split_max_tokens", 0):
            assert plan.plan_of(kind, 1, **kw).num_splits == 1
