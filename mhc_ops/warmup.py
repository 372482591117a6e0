"""Warmup: run every kernel plan once before serving, and prove it (SPEC §6).

Everything in mhc_ops is compiled ahead of time, so there is no JIT to pay for; what warmup
still moves out of live requests and CUDA-graph captures is the rest of a first call: the
caching allocator growing to each plan's workspace, cuBLAS handles and workspaces, lazy module
loads. It walks, per op, one representative token count per plan
(:func:`mhc_ops.plan.token_count_representatives` for the device in use), with the attention
and the FFN parameter sets and with and without the folded RMSNorm.

Coverage is checked, not assumed: the launchers record every plan they launch, per device, and
:func:`unwarmed_plans` lists those first launched after the last :func:`warmup`::

    report = mhc_ops.warmup.warmup(hidden_size=7168, max_tokens=8192)
    print(report)
    ...                                  # serve
    assert not mhc_ops.warmup.unwarmed_plans()
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, NamedTuple

import torch

from . import envs
from . import ops as _ops
from ._lib import _C
from .plan import (KernelType, Plan, device_num_sms, device_supports_clusters, plan_of,
                   token_count_representatives)

__all__ = [
    "KernelType",
    "WarmupExecutor",
    "WarmupReport",
    "KindReport",
    "LaunchedPlan",
    "warmup",
    "token_counts_for",
    "unwarmed_plans",
    "launched_plans",
]

logger = logging.getLogger("mhc_ops.warmup")

# Out features of the linear_bf16_fp32 warmup (a router-sized projection).
LINEAR_OUT_FEATURES = 256
# max_tokens is halved when memory is short, but never below this.
MIN_MAX_TOKENS = 4096
# The ops with a folded RMSNorm: warmup walks their plans with and without it.
NORM_KINDS = frozenset({KernelType.MHC_PRE, KernelType.MHC_FUSED_POST_PRE,
                        KernelType.MHC_COMBINE, KernelType.MHC_POST_COMBINE,
                        KernelType.MHC_SHIFTED_POST_PRE})

# Device key ("cpu", "cuda:0") -> plan sequence number at the end of the last warmup there.
_warmed_marks: dict[str, int] = {}


def _device_key(index: int) -> str:
    return "cpu" if index < 0 else f"cuda:{index}"


def _resolve_device(device) -> torch.device:
    if device is None:
        if _C.with_cuda and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def token_counts_for(kind: KernelType | str, max_tokens: int, *, hidden_size: int,
                     hc_mult: int = 4, num_sms: int, norm: bool = False,
                     clusters: bool = True) -> tuple[int, ...]:
    """The token counts warmup runs for one op: one per plan reachable in 1..max_tokens."""
    return token_count_representatives(kind, max_tokens, hidden_size=hidden_size,
                                       hc_mult=hc_mult, num_sms=num_sms, norm=norm,
                                       clusters=clusters)


class WarmupExecutor:
    """Runs one op at any token count up to max_tokens on preallocated inputs.

    ``WarmupExecutor.create(kind, ...)`` picks the executor class of the op. Inputs are
    allocated once at max_tokens (random, well-scaled values) and sliced per call; the two
    parameter sets stand for the attention and the FFN sub-layers of a real layer.
    """

    kind: ClassVar[KernelType]
    _registry: ClassVar[dict[KernelType, type["WarmupExecutor"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        WarmupExecutor._registry[cls.kind] = cls

    @classmethod
    def create(cls, kind: KernelType | str, *, max_tokens: int, hidden_size: int,
               hc_mult: int = 4, device=None, norm: bool = False) -> "WarmupExecutor":
        kind = KernelType[kind.upper()] if isinstance(kind, str) else KernelType(kind)
        impl = cls._registry[kind]
        device = _resolve_device(device)
        free = _free_bytes(device)
        tokens = max_tokens
        while tokens > MIN_MAX_TOKENS and impl.bytes_needed(tokens, hidden_size, hc_mult) > free:
            tokens = max(MIN_MAX_TOKENS, tokens // 2)
        if tokens != max_tokens:
            logger.warning("mhc_ops warmup: %s needs %.1f MiB at max_tokens=%d but %.1f MiB are "
                           "free on %s; using max_tokens=%d", kind.name,
                           impl.bytes_needed(max_tokens, hidden_size, hc_mult) / 2**20,
                           max_tokens, free / 2**20, device, tokens)
        return impl(max_tokens=tokens, hidden_size=hidden_size, hc_mult=hc_mult, device=device,
                    norm=norm)

    def __init__(self, *, max_tokens: int, hidden_size: int, hc_mult: int, device: torch.device,
                 norm: bool):
        self.max_tokens = int(max_tokens)
        self.hidden_size = int(hidden_size)
        self.hc_mult = int(hc_mult)
        self.device = device
        self.norm = bool(norm)
        # A generator of its own: warmup must not move the caller's RNG state.
        self._gen = torch.Generator(device=device).manual_seed(0)
        self._allocate()

    def _rand(self, *shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
        """Normal random values generated on the device, in their final dtype."""
        return torch.randn(*shape, generator=self._gen, device=self.device, dtype=dtype).mul_(scale)

    def _uniform(self, *shape: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(*shape, generator=self._gen, device=self.device).mul_(high - low).add_(low)

    def _allocate(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def bytes_needed(max_tokens: int, hidden_size: int, hc_mult: int) -> int:
        raise NotImplementedError  # pragma: no cover - abstract

    def memory_requirement(self) -> int:
        """Bytes of the preallocated inputs plus the outputs of one call at max_tokens."""
        return self.bytes_needed(self.max_tokens, self.hidden_size, self.hc_mult)

    def execute(self, num_tokens: int, param_set: int = 0):
        """Run the op once on the first num_tokens tokens with parameter set 0 or 1; returns
        its outputs (warmup measures memory while it holds them)."""
        raise NotImplementedError  # pragma: no cover - abstract


class _StreamParams:
    """Residual [T, n, H] plus two sets of (fn, hc_scale, hc_base) for n*(n+2) or n rows."""

    def _stream_inputs(self, rows: int, scale_len: int) -> None:
        n, H, K = self.hc_mult, self.hidden_size, self.hc_mult * self.hidden_size
        self.residual = self._rand(self.max_tokens, n, H, dtype=torch.bfloat16)
        self.params = [
            (self._rand(rows, K, dtype=torch.float32, scale=K ** -0.5),
             self._uniform(scale_len, low=0.5, high=1.5),
             self._rand(rows, dtype=torch.float32, scale=0.5))
            for _ in range(2)
        ]
        self.norm_weight = self._rand(H, dtype=torch.bfloat16, scale=0.1).add_(1) if self.norm \
            else None


class _PreExecutor(_StreamParams, WarmupExecutor):
    kind = KernelType.MHC_PRE

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        n, H = hc_mult, hidden_size
        m3 = n * (n + 2)
        return max_tokens * (2 * n * H + 2 * H + 4 * (n + n * n)) + 2 * 4 * m3 * n * H

    def _allocate(self):
        n = self.hc_mult
        self._stream_inputs(n * (n + 2), 3)

    def execute(self, num_tokens, param_set=0):
        fn, scale, base = self.params[param_set]
        return _ops.mhc_pre(self.residual[:num_tokens], fn, scale, base, norm_weight=self.norm_weight)


class _FusedExecutor(_StreamParams, WarmupExecutor):
    kind = KernelType.MHC_FUSED_POST_PRE

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        n, H = hc_mult, hidden_size
        m3 = n * (n + 2)
        return max_tokens * (4 * n * H + 4 * H + 8 * (n + n * n)) + 2 * 4 * m3 * n * H

    def _allocate(self):
        n = self.hc_mult
        self._stream_inputs(n * (n + 2), 3)
        self.x = self._rand(self.max_tokens, self.hidden_size, dtype=torch.bfloat16)
        self.post_mix = self._uniform(self.max_tokens, n, 1, low=0.0, high=2.0)
        self.comb_mix = torch.softmax(self._rand(self.max_tokens, n, n, dtype=torch.float32), -2)

    def execute(self, num_tokens, param_set=0):
        fn, scale, base = self.params[param_set]
        t = num_tokens
        return _ops.mhc_fused_post_pre(self.x[:t], self.residual[:t], self.post_mix[:t],
                                self.comb_mix[:t], fn, scale, base, norm_weight=self.norm_weight)


class _PostExecutor(_FusedExecutor):
    kind = KernelType.MHC_POST

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        n, H = hc_mult, hidden_size
        return max_tokens * (4 * n * H + 2 * H + 4 * (n + n * n))

    def execute(self, num_tokens, param_set=0):
        t = num_tokens
        return _ops.mhc_post(self.x[:t], self.residual[:t], self.post_mix[:t], self.comb_mix[:t])


class _StatsExecutor(_PreExecutor):
    kind = KernelType.MHC_STATS

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        n, H = hc_mult, hidden_size
        m3 = n * (n + 2)
        return max_tokens * (2 * n * H + 4 * (2 * n + n * n)) + 2 * 4 * m3 * n * H

    def execute(self, num_tokens, param_set=0):
        fn, scale, base = self.params[param_set]
        return _ops.mhc_stats(self.residual[:num_tokens], fn, scale, base)


class _CombineExecutor(WarmupExecutor):
    kind = KernelType.MHC_COMBINE

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        n, H = hc_mult, hidden_size
        return max_tokens * (2 * n * H + 2 * H + 4 * n) + 2 * H

    def _allocate(self):
        n, H = self.hc_mult, self.hidden_size
        self.residual = self._rand(self.max_tokens, n, H, dtype=torch.bfloat16)
        self.pre_mix = self._uniform(self.max_tokens, n, low=0.0, high=1.0)
        self.norm_weight = self._rand(H, dtype=torch.bfloat16, scale=0.1).add_(1) if self.norm \
            else None

    def execute(self, num_tokens, param_set=0):
        t = num_tokens
        return _ops.mhc_combine(self.residual[:t], self.pre_mix[:t], norm_weight=self.norm_weight)


class _ShiftedExecutor(_FusedExecutor):
    kind = KernelType.MHC_SHIFTED_POST_PRE

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        n, H = hc_mult, hidden_size
        m3 = n * (n + 2)
        return max_tokens * (4 * n * H + 4 * H + 8 * (2 * n + n * n)) + 2 * 4 * m3 * n * H

    def _allocate(self):
        super()._allocate()
        self.pre_mix = self._uniform(self.max_tokens, self.hc_mult, low=0.0, high=1.0)

    def execute(self, num_tokens, param_set=0):
        fn, scale, base = self.params[param_set]
        t = num_tokens
        # the fused op whatever MHC_FUSE_POST_PRE says: it is the plan this kind stands for
        return _ops._shifted_post_pre_fused(self.x[:t], self.residual[:t], self.post_mix[:t],
                                            self.comb_mix[:t], self.pre_mix[:t], fn, scale, base,
                                            norm_weight=self.norm_weight)


class _PostCombineExecutor(_ShiftedExecutor):
    kind = KernelType.MHC_POST_COMBINE

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        n, H = hc_mult, hidden_size
        return max_tokens * (4 * n * H + 4 * H + 4 * (2 * n + n * n))

    def execute(self, num_tokens, param_set=0):
        t = num_tokens
        return _ops.mhc_post_combine(self.x[:t], self.residual[:t], self.post_mix[:t],
                                     self.comb_mix[:t], self.pre_mix[:t],
                                     norm_weight=self.norm_weight)


class _HeadExecutor(_StreamParams, WarmupExecutor):
    kind = KernelType.HC_HEAD

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        n, H = hc_mult, hidden_size
        return max_tokens * (2 * n * H + 2 * H) + 2 * 4 * n * n * H

    def _allocate(self):
        self._stream_inputs(self.hc_mult, 1)

    def execute(self, num_tokens, param_set=0):
        fn, scale, base = self.params[param_set]
        return _ops.hc_head(self.residual[:num_tokens], fn, scale, base)


class _PrenormExecutor(_StreamParams, WarmupExecutor):
    kind = KernelType.PRENORM_GEMM

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        n, H = hc_mult, hidden_size
        m3 = n * (n + 2)
        splits = -(-n * H // 64)
        return max_tokens * 2 * n * H + 2 * 4 * m3 * n * H + splits * max_tokens * 4 * (m3 + 1)

    def _allocate(self):
        n = self.hc_mult
        self._stream_inputs(n * (n + 2), 3)
        self.num_sms = device_num_sms(self.device)

    def execute(self, num_tokens, param_set=0):
        fn = self.params[param_set][0]
        K = self.hc_mult * self.hidden_size
        splits = plan_of(KernelType.PRENORM_GEMM, num_tokens, hidden_size=self.hidden_size,
                         hc_mult=self.hc_mult, num_sms=self.num_sms).num_splits
        return _ops.hc_prenorm_gemm(self.residual[:num_tokens].view(num_tokens, K), fn, splits)


class _LinearExecutor(WarmupExecutor):
    kind = KernelType.LINEAR_BF16_FP32

    @staticmethod
    def bytes_needed(max_tokens, hidden_size, hc_mult):
        return max_tokens * (2 * hidden_size + 4 * LINEAR_OUT_FEATURES) + \
            2 * 2 * LINEAR_OUT_FEATURES * hidden_size

    def _allocate(self):
        H = self.hidden_size
        self.x = self._rand(self.max_tokens, H, dtype=torch.bfloat16)
        self.weights = [self._rand(LINEAR_OUT_FEATURES, H, dtype=torch.bfloat16, scale=H ** -0.5)
                        for _ in range(2)]

    def execute(self, num_tokens, param_set=0):
        return _ops.linear_bf16_fp32(self.x[:num_tokens], self.weights[param_set])


@dataclass
class KindReport:
    kind: KernelType
    norm: bool
    token_counts: tuple[int, ...]
    seconds: float
    peak_bytes: int
    max_tokens: int


@dataclass
class WarmupReport:
    device: str
    hidden_size: int
    hc_mult: int
    max_tokens: int
    kinds: list[KindReport] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False

    @property
    def calls(self) -> int:
        return sum(2 * len(k.token_counts) for k in self.kinds)

    def summary(self) -> str:
        if self.skipped:
            return "mhc_ops warmup skipped (MHC_SKIP_WARMUP)"
        plans = sum(len(k.token_counts) for k in self.kinds)
        return (f"mhc_ops warmup: {plans} plans, {self.calls} calls, {self.seconds:.2f} s on "
                f"{self.device} (H={self.hidden_size}, n={self.hc_mult}, "
                f"max_tokens={self.max_tokens})")

    def __str__(self) -> str:
        lines = [self.summary()]
        for k in self.kinds:
            name = k.kind.name + (" +norm" if k.norm else "")
            counts = ", ".join(map(str, k.token_counts))
            if len(counts) > 60:
                counts = counts[:57] + "..."
            lines.append(f"  {name:<26} {len(k.token_counts):>3} plans {k.seconds * 1e3:8.1f} ms "
                         f"peak {k.peak_bytes / 2**20:9.1f} MiB  T = {counts}")
        return "\n".join(lines)


class LaunchedPlan(NamedTuple):
    device: str
    plan: Plan


def launched_plans() -> list[LaunchedPlan]:
    """Every plan launched in this process, in the order first seen."""
    return [LaunchedPlan(_device_key(d), Plan._from_c(p)) for d, p, _ in _C.launched_plans()]


def unwarmed_plans(device=None) -> list[LaunchedPlan]:
    """Plans first launched after the last warmup() on their device (all of them on a device
    that was never warmed). `device` restricts the answer to one device."""
    key = None if device is None else str(_resolve_device(device))
    out = []
    for d, p, first_seen in _C.launched_plans():
        dev = _device_key(d)
        if key is not None and dev != key:
            continue
        if first_seen >= _warmed_marks.get(dev, 0):
            out.append(LaunchedPlan(dev, Plan._from_c(p)))
    return out


def _is_rank0() -> bool:
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return True
    return dist.get_rank() == 0


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done = max(total, 1), 0
        self.enabled = enabled and sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = width * self.done // self.total
            sys.stderr.write(f"\rmhc_ops warmup [{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total} {label:<28}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class _PeakMeter:
    """Bytes allocated on a CUDA device above the level at entry, at their highest, measured
    without resetting torch's peak statistics (serving stacks size their KV cache from them).

    Where this stretch raises the process's high-water mark, that mark is exact; where it
    stays below an earlier one, the highest of the samples taken (after each call, with its
    inputs and outputs held: only an op's transient workspace escapes them) stands in. On the
    CPU it measures nothing (peak 0)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self) -> "_PeakMeter":
        if self.device.type == "cuda":
            self._base = torch.cuda.memory_allocated(self.device)
            self._mark = torch.cuda.max_memory_allocated(self.device)
        return self

    def sample(self) -> None:
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.memory_allocated(self.device) - self._base)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            mark = torch.cuda.max_memory_allocated(self.device)
            if mark > self._mark:
                self.peak = max(self.peak, mark - self._base)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warmup(hidden_size: int, *, max_tokens: int | None = None,
           kinds: Iterable[KernelType | str] | None = None, hc_mult: int = 4,
           norm: Iterable[bool] = (False, True), device=None,
           progress: bool = True) -> WarmupReport:
    """Run every plan each op can reach for T in 1..max_tokens once, and synchronise.

    max_tokens defaults to MHC_WARMUP_MAX_TOKENS; kinds to every KernelType; norm lists the
    folded-RMSNorm variants to cover of the ops that have one (NORM_KINDS: mhc_pre,
    mhc_fused_post_pre, mhc_combine, mhc_post_combine, mhc_shifted_post_pre). Each token count
    runs with the attention and the FFN parameter sets. MHC_SKIP_WARMUP=1 makes this a logged no-op.
    Returns a WarmupReport (token counts, seconds and peak bytes per op) and logs one summary
    line (on rank 0 only under torch.distributed).

    Leaves the process as it found it apart from the allocator's cache: torch's peak-memory
    statistics are not reset (vLLM sizes its KV cache from them) and every buffer warmup
    allocated is freed before it returns. Peak bytes per op are measured around that (see
    _PeakMeter); on the CPU they are the executor's memory_requirement().
    """
    dev = _resolve_device(device)
    max_tokens = envs.MHC_WARMUP_MAX_TOKENS.get() if max_tokens is None else int(max_tokens)
    report = WarmupReport(str(dev), int(hidden_size), int(hc_mult), max_tokens)
    if envs.MHC_SKIP_WARMUP.get():
        report.skipped = True
        if _is_rank0():
            logger.warning(report.summary())
        return report
    kinds = [KernelType[k.upper()] if isinstance(k, str) else KernelType(k)
             for k in (kinds if kinds is not None else list(KernelType))]
    norms = tuple(dict.fromkeys(bool(v) for v in norm)) or (False,)
    num_sms = device_num_sms(dev)
    clusters = device_supports_clusters(dev)
    jobs = [(k, nv) for k in kinds for nv in (norms if k in NORM_KINDS else (False,))]
    bar = _Progress(len(jobs), progress)
    start = time.perf_counter()
    with torch.no_grad():
        for kind, nv in jobs:
            t0 = time.perf_counter()
            with _PeakMeter(dev) as meter:
                ex = WarmupExecutor.create(kind, max_tokens=max_tokens, hidden_size=hidden_size,
                                           hc_mult=hc_mult, device=dev, norm=nv)
                counts = token_counts_for(kind, ex.max_tokens, hidden_size=hidden_size,
                                          hc_mult=hc_mult, num_sms=num_sms, norm=nv,
                                          clusters=clusters)
                for t in counts:
                    for param_set in (0, 1):
                        out = ex.execute(t, param_set)
                        meter.sample()
                        del out
                _sync(dev)
                requirement, tokens = ex.memory_requirement(), ex.max_tokens
                # The inputs go before the next executor allocates its own, and none outlive
                # warmup: serving sizes its caches from what is allocated afterwards.
                del ex
            peak = meter.peak if dev.type == "cuda" else requirement
            report.kinds.append(KindReport(kind, nv, counts, time.perf_counter() - t0, peak,
                                           tokens))
            bar.step(kind.name + (" +norm" if nv else ""))
    bar.close()
    report.seconds = time.perf_counter() - start
    _warmed_marks[_device_key(dev.index if dev.type == "cuda" else -1)] = _C.plan_sequence()
    if _is_rank0():
        logger.info(report.summary())
    return report
