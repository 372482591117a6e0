"""Warmup (SPEC §6): executors, the walk over representatives, coverage and its proof."""

import logging
import random

import pytest
import torch

import mhc_ops
from mhc_ops import envs, plan, warmup
from mhc_ops.plan import KernelType

H = 64  # small hidden size: the CPU kernels run every token count quickly


@pytest.fixture(autouse=True)
def no_flags(monkeypatch):
    for name in ("MHC_SKIP_WARMUP", "MHC_WARMUP_MAX_TOKENS", "MHC_BATCH_INVARIANT",
                 "MHC_DISABLE_KERNELS"):
        monkeypatch.delenv(name, raising=False)


def test_kernel_type_is_the_planners():
    assert warmup.KernelType is plan.KernelType
    assert [k.name for k in KernelType] == ["PRENORM_GEMM", "MHC_PRE", "MHC_POST",
                                            "MHC_FUSED_POST_PRE", "HC_HEAD", "LINEAR_BF16_FP32",
                                            "MHC_STATS", "MHC_COMBINE", "MHC_POST_COMBINE",
                                            "MHC_SHIFTED_POST_PRE"]


@pytest.mark.parametrize("kind", list(KernelType))
def test_executor_per_kind_runs_any_token_count(kind):
    ex = warmup.WarmupExecutor.create(kind, max_tokens=40, hidden_size=H, device="cpu",
                                      norm=True)
    assert type(ex).kind == kind and ex.max_tokens == 40
    assert ex.memory_requirement() == type(ex).bytes_needed(40, H, 4) > 0
    before = mhc_ops._C.plan_sequence()
    for t in (1, 17, 40):
        ex.execute(t, 0)
        ex.execute(t, 1)
    assert mhc_ops._C.plan_sequence() >= before
    assert any(lp.plan.kind == kind for lp in warmup.launched_plans())


def test_executor_halves_max_tokens_when_memory_is_short(monkeypatch, caplog):
    monkeypatch.setattr(warmup, "_free_bytes", lambda device: 1)
    with caplog.at_level(logging.WARNING, logger="mhc_ops.warmup"):
        ex = warmup.WarmupExecutor.create("MHC_POST", max_tokens=16384, hidden_size=H,
                                          device="cpu")
    assert ex.max_tokens == warmup.MIN_MAX_TOKENS == 4096
    assert "using max_tokens=4096" in caplog.text
    # enough memory: no reduction
    monkeypatch.setattr(warmup, "_free_bytes", lambda device: 1 << 40)
    assert warmup.WarmupExecutor.create("MHC_POST", max_tokens=6000, hidden_size=H,
                                        device="cpu").max_tokens == 6000


def test_warmup_report_and_no_unwarmed_plans_after_it():
    mhc_ops._C.clear_launched_plans()  # forget what earlier tests launched
    report = warmup.warmup(H, max_tokens=50, device="cpu", progress=False)
    names = [(k.kind, k.norm) for k in report.kinds]
    expected = []
    for k in KernelType:
        expected += [(k, False), (k, True)] if k in warmup.NORM_KINDS else [(k, False)]
    assert names == expected
    for k in report.kinds:
        assert k.token_counts == plan.token_count_representatives(
            k.kind, 50, hidden_size=H, num_sms=0, norm=k.norm)
        assert k.seconds > 0 and k.peak_bytes > 0
    assert report.seconds > 0 and not report.skipped
    assert "mhc_ops warmup:" in str(report) and "MHC_FUSED_POST_PRE +norm" in str(report)
    assert warmup.unwarmed_plans("cpu") == []

    # serving traffic inside the warmed budget launches nothing new
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    fn = torch.randn(24, 4 * H, generator=g) / 16
    for _ in range(5):
        t = rng.randint(1, 50)
        mhc_ops.mhc_pre(torch.randn(t, 4, H, generator=g).bfloat16(), fn, torch.rand(3),
                        torch.rand(24))
    assert warmup.unwarmed_plans("cpu") == []

    # a plan nobody warmed (hc_mult 2) is reported
    mhc_ops.hc_head(torch.randn(3, 2, H).bfloat16(), torch.randn(2, 2 * H), torch.rand(1),
                    torch.rand(2))
    fresh = warmup.unwarmed_plans("cpu")
    assert [(lp.device, lp.plan.kind, lp.plan.hc_mult) for lp in fresh] == [
        ("cpu", KernelType.HC_HEAD, 2)]


def test_skip_warmup_is_a_logged_no_op(monkeypatch, caplog):
    monkeypatch.setenv("MHC_SKIP_WARMUP", "1")
    before = mhc_ops._C.plan_sequence()
    with caplog.at_level(logging.WARNING, logger="mhc_ops.warmup"):
        report = warmup.warmup(H, max_tokens=50, device="cpu", progress=False)
    assert report.skipped and report.kinds == []
    assert "skipped" in caplog.text
    assert mhc_ops._C.plan_sequence() == before


def test_default_max_tokens_comes_from_the_flag(monkeypatch):
    monkeypatch.setenv("MHC_WARMUP_MAX_TOKENS", "33")
    report = warmup.warmup(H, kinds=["HC_HEAD"], device="cpu", progress=False)
    assert report.max_tokens == 33 and report.kinds[0].token_counts == (33,)


@pytest.mark.parametrize("num_sms", (78, 132, 148))
@pytest.mark.parametrize("hidden", (4096, 7168))
def test_warmup_walk_covers_every_reachable_plan(monkeypatch, num_sms, hidden):
    """Runs the real warmup() loop as if on a GPU with num_sms SMs, recording the token counts
    it executes, and proves every plan of T in 1..max_tokens is among the plans they hit."""
    max_tokens = 16384
    ran = {}

    class Recorder:
        def __init__(self, kind, norm):
            self.kind, self.norm, self.max_tokens = kind, norm, max_tokens

        def execute(self, t, param_set=0):
            ran.setdefault((self.kind, self.norm), set()).add((t, param_set))

        def memory_requirement(self):
            return 1

    monkeypatch.setattr(warmup, "device_num_sms", lambda device: num_sms)
    monkeypatch.setattr(warmup, "device_supports_clusters", lambda device: True)  # sm_90
    monkeypatch.setattr(warmup.WarmupExecutor, "create",
                        classmethod(lambda cls, kind, **kw: Recorder(kind, kw["norm"])))
    warmup.warmup(hidden, max_tokens=max_tokens, device="cpu", progress=False)
    assert len(ran) == len(KernelType) + len(warmup.NORM_KINDS)
    for (kind, norm), calls in ran.items():
        assert {p for _, p in calls} == {0, 1}  # attention and FFN parameter sets
        reachable = {plan.plan_of(kind, t, hidden_size=hidden, num_sms=num_sms, norm=norm)
                     for t in range(1, max_tokens + 1)}
        warmed = {plan.plan_of(kind, t, hidden_size=hidden, num_sms=num_sms, norm=norm)
                  for t, _ in calls}
        assert warmed == reachable
        assert len({t for t, _ in calls}) == len(reachable)  # one token count per plan
