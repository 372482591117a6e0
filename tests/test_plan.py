"""The planner (SPEC §4): upstream split table, representatives, purity."""

import pytest

from mhc_ops import plan
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
    small = plan.plan_of("MHC_PRE", 8, hidden_size=7168, num_sms=132, batch_invariant=False)
    large = plan.plan_of("MHC_PRE", 16384, hidden_size=7168, num_sms=132, batch_invariant=False)
    assert small.num_splits == 112 and small.variant == "split_k"
    assert large.num_splits == 1 and large.variant != "split_k"
    assert small.hidden_spec == 7168
    assert plan.plan_of("MHC_PRE", 8, hidden_size=520, num_sms=132).hidden_spec == 0


def test_norm_is_part_of_the_plan_only_where_it_applies():
    kw = dict(hidden_size=4096, num_sms=132)
    assert plan.plan_of("MHC_PRE", 8, norm=True, **kw) != plan.plan_of("MHC_PRE", 8, **kw)
    assert plan.plan_of("HC_HEAD", 8, norm=True, **kw) == plan.plan_of("HC_HEAD", 8, **kw)


def test_batch_invariant_plan_does_not_depend_on_t():
    kw = dict(hidden_size=4096, num_sms=132, batch_invariant=True)
    for kind in (KernelType.MHC_PRE, KernelType.MHC_FUSED_POST_PRE, KernelType.HC_HEAD):
        assert len({plan.plan_of(kind, t, **kw) for t in (1, 7, 64, 4096, 16384)}) == 1
        assert len(plan.token_count_representatives(kind, 16384, **kw)) == 1


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
    assert plan.plan_of("MHC_PRE", 5000, **kw) == plan.plan_of("MHC_PRE", 1, **kw)
    assert plan.plan_of("MHC_PRE", 5000, batch_invariant=False, **kw).num_splits == 1
    monkeypatch.setenv("MHC_BF16_FP32_GEMM_ALGO", "fp32")
    assert plan.plan_of("LINEAR_BF16_FP32", 8, **kw).variant == "fp32_gemm"
    monkeypatch.delenv("MHC_BF16_FP32_GEMM_ALGO")
    assert plan.plan_of("LINEAR_BF16_FP32", 8, **kw).variant == "cublas"
