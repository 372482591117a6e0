"""Warmup leaves memory as it found it (SPEC §6): torch's peak-memory statistics are not reset
(vLLM sizes its KV cache from them) and no warmup buffer outlives warmup()."""

import gc
import weakref

import pytest
import torch

from mhc_ops import warmup
from mhc_ops.plan import KernelType

H = 64


@pytest.fixture(autouse=True)
def no_flags(monkeypatch):
    for name in ("MHC_SKIP_WARMUP", "MHC_WARMUP_MAX_TOKENS", "MHC_DISABLE_KERNELS"):
        monkeypatch.delenv(name, raising=False)


def test_warmup_does_not_reset_peak_memory_stats(monkeypatch):
    calls = []
    for name in ("reset_peak_memory_stats", "reset_max_memory_allocated",
                 "reset_max_memory_cached", "reset_accumulated_memory_stats"):
        monkeypatch.setattr(torch.cuda, name,
                            lambda *a, _n=name, **k: calls.append(_n), raising=False)
    report = warmup.warmup(H, max_tokens=40, device="cpu", progress=False)
    assert report.kinds and not calls


def test_cuda_walk_keeps_peak_stats_and_frees_executors(monkeypatch):
    """The real warmup() loop on its CUDA branch, with the device calls faked: no statistic is
    reset, each op's peak is the high-water mark it raised, every executor is gone at the end."""
    calls = []
    for name in ("reset_peak_memory_stats", "reset_max_memory_allocated",
                 "reset_accumulated_memory_stats"):
        monkeypatch.setattr(torch.cuda, name,
                            lambda *a, _n=name, **k: calls.append(_n), raising=False)
    mem = _FakeCudaMemory(allocated=10_000, high_water=10_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", mem.memory_allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", mem.max_memory_allocated)
    monkeypatch.setattr(warmup, "device_num_sms", lambda device: 132)
    monkeypatch.setattr(warmup, "device_supports_clusters", lambda device: True)
    monkeypatch.setattr(warmup, "_sync", lambda device: None)
    live = weakref.WeakSet()

    class Outputs:
        def __init__(self, n):
            self.n = n

        def __del__(self):
            mem.free(self.n)

    class FakeExecutor:
        def __init__(self, kind, max_tokens):
            self.kind, self.max_tokens = kind, max_tokens
            self.inputs = 100 * (int(kind) + 1)
            mem.alloc(self.inputs)

        def execute(self, t, param_set=0):
            mem.alloc(7 * t)  # the outputs, freed when warmup drops them
            mem.alloc(3 * t)  # workspace inside the op, freed before it returns
            mem.free(3 * t)
            return Outputs(7 * t)

        def memory_requirement(self):
            return self.inputs

        def __del__(self):
            mem.free(self.inputs)

    def create(cls, kind, **kw):
        ex = FakeExecutor(KernelType(kind), kw["max_tokens"])
        live.add(ex)
        return ex

    monkeypatch.setattr(warmup.WarmupExecutor, "create", classmethod(create))
    report = warmup.warmup(H, max_tokens=300, device=torch.device("cuda", 0), progress=False)
    assert calls == []
    assert len(live) == 0 and mem.allocated == 10_000
    # exact where an op raised the high-water mark (the first, here); otherwise its inputs and
    # outputs, sampled after each call
    first = report.kinds[0]
    assert first.peak_bytes == 100 * (int(first.kind) + 1) + 10 * max(first.token_counts)
    for k in report.kinds:
        held = 100 * (int(k.kind) + 1) + 7 * max(k.token_counts)
        assert held <= k.peak_bytes <= held + 3 * max(k.token_counts)


def test_warmup_frees_its_buffers(monkeypatch):
    """Every tensor an executor holds is gone once warmup() returns (weak references die)."""
    refs, created = [], []
    real_create = warmup.WarmupExecutor.create.__func__

    def create(cls, kind, **kw):
        ex = real_create(cls, kind, **kw)
        created.append(kind)
        for value in vars(ex).values():
            items = value if isinstance(value, (list, tuple)) else [value]
            for item in items:
                for t in (item if isinstance(item, tuple) else (item,)):
                    if isinstance(t, torch.Tensor):
                        refs.append(weakref.ref(t))
        return ex

    monkeypatch.setattr(warmup.WarmupExecutor, "create", classmethod(create))
    warmup.warmup(H, max_tokens=40, device="cpu", progress=False)
    assert set(created) == set(KernelType) and len(refs) > len(created)
    # no gc.collect() first: the buffers go by reference counting, when warmup drops them
    alive = [r for r in refs if r() is not None]
    gc.collect()
    assert not alive and all(r() is None for r in refs)


def test_each_executor_is_freed_before_the_next_allocates(monkeypatch):
    """Warmup holds one op's inputs at a time: its peak is the largest op's, not their sum."""
    live = weakref.WeakSet()
    overlap = []
    real_create = warmup.WarmupExecutor.create.__func__

    def create(cls, kind, **kw):
        if len(live):
            overlap.append(kind)
        ex = real_create(cls, kind, **kw)
        live.add(ex)
        return ex

    monkeypatch.setattr(warmup.WarmupExecutor, "create", classmethod(create))
    warmup.warmup(H, max_tokens=40, device="cpu", progress=False)
    assert overlap == [] and len(live) == 0


class _FakeCudaMemory:
    """torch.cuda's allocation counters, driven by hand (the CPU run has no CUDA)."""

    def __init__(self, allocated: int, high_water: int):
        self.allocated, self.high_water = allocated, high_water

    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_allocated(self, device=None):
        return self.high_water

    def alloc(self, n):
        self.allocated += n
        self.high_water = max(self.high_water, self.allocated)

    def free(self, n):
        self.allocated -= n


def test_peak_meter_reads_a_new_high_water_mark(monkeypatch):
    mem = _FakeCudaMemory(allocated=1000, high_water=1000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", mem.memory_allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", mem.max_memory_allocated)
    with warmup._PeakMeter(torch.device("cuda", 0)) as m:
        mem.alloc(300)
        mem.alloc(200)  # a transient workspace inside an op
        mem.free(200)
        m.sample()
        mem.free(300)
    assert m.peak == 500 and mem.high_water == 1500  # the process's mark is left as it is


def test_peak_meter_under_an_earlier_high_water_mark_uses_its_samples(monkeypatch):
    mem = _FakeCudaMemory(allocated=1000, high_water=10_000)
    monkeypatch.setattr(torch.cuda, "memory_allocated", mem.memory_allocated)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", mem.max_memory_allocated)
    with warmup._PeakMeter(torch.device("cuda", 0)) as m:
        mem.alloc(300)
        m.sample()
        mem.free(300)
    assert m.peak == 300 and mem.high_water == 10_000
