"""The planner (SPEC §4): which kernels run, with which split, for a given op and token count.

These are pure functions of their arguments and call the same C++ function the launchers use
(csrc/core/plan.cpp), so token counts derived here are exactly the launchers' buckets.
``num_sms=0`` asks for the CPU backend's plan (one plan per op, whatever T is).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from ._lib import _C

__all__ = [
    "KernelType",
    "Plan",
    "num_splits",
    "plan_of",
    "token_count_representatives",
    "device_num_sms",
    "device_supports_clusters",
]


class KernelType(enum.IntEnum):
    PRENORM_GEMM = 0
    MHC_PRE = 1
    MHC_POST = 2
    MHC_FUSED_POST_PRE = 3
    HC_HEAD = 4
    LINEAR_BF16_FP32 = 5
    # DeepSeek-V4.1 (SPEC §2.9)
    MHC_STATS = 6
    MHC_COMBINE = 7
    MHC_POST_COMBINE = 8
    MHC_SHIFTED_POST_PRE = 9


class Plan(NamedTuple):
    """What a launcher runs. Equal plans: same kernels, same launch shapes up to grid size."""

    kind: KernelType
    variant: str  # cpu, split_k, full_k, cluster, stream, cublas, fp32_gemm
    num_splits: int
    block_tokens: int
    hc_mult: int  # 0 for PRENORM_GEMM, which only sees K
    hidden_spec: int  # hidden size of a specialised kernel, 0 for the generic one
    norm: bool
    staged_fn: bool = False  # fn split into mma fragments by a first kernel (large T)
    split_streams: bool = False  # fused, decode: work units of half a group's output streams
    fn_ring: bool = False  # main kernel's cp.async ring (large T): fn for pre / head, x and
    #                        the input streams for the fused op
    evict_inputs: bool = False  # fused, ring, residual_out within L2-sized bytes: the ring's
    #                             loads of x and the input streams go L2 evict_first
    main_warps: int = 0  # SPLIT_K / FULL_K: warps of a main-kernel CTA
    epilogue_chunks: int = 0  # SPLIT_K: epilogue CTAs per token (chunks of H)
    epilogue_ctas_per_sm: int = 0  # SPLIT_K: epilogue CTAs per SM at most (0: no cap)
    cluster_buffers: int = 0  # CLUSTER: buffers of the persistent hc_head kernel (0: one-block)
    cluster_rotated: bool = False  # CLUSTER, persistent: next block's mma behind the barrier
    fused_boundary: bool = False  # shifted, SPLIT_K: the fused op's kernels, the combine with
    #                               the carried pre in the epilogue

    @classmethod
    def _from_c(cls, t: tuple) -> "Plan":
        return cls(KernelType(t[0]), *t[1:])


def _kind(kind: KernelType | str | int) -> KernelType:
    if isinstance(kind, str):
        try:
            return KernelType[kind.upper()]
        except KeyError:
            raise ValueError(f"mhc_ops.plan: unknown kind {kind!r}; expected one of "
                             f"{[k.name for k in KernelType]}") from None
    return KernelType(kind)


def _batch_invariant(value: bool | None) -> bool:
    if value is not None:
        return bool(value)
    from . import envs

    return envs.MHC_BATCH_INVARIANT.get()


def _fp32_gemm(value: bool | None) -> bool:
    if value is not None:
        return bool(value)
    from . import envs

    return envs.MHC_BF16_FP32_GEMM_ALGO.get() == "fp32"


def num_splits(num_tokens: int, hc_hidden_size: int, num_sms: int) -> int:
    """Upstream's split rule, max(1, min(sms // ceil(T/64), ceil(K/64) // 4)), where
    hc_hidden_size is K = hc_mult * hidden_size. Kept for DeepGEMM-style callers."""
    return _C.upstream_num_splits(int(num_tokens), int(hc_hidden_size), int(num_sms))


def plan_of(kind: KernelType | str, num_tokens: int, *, hidden_size: int, hc_mult: int = 4,
            num_sms: int, norm: bool = False, batch_invariant: bool | None = None,
            fp32_gemm: bool | None = None, clusters: bool = True) -> Plan:
    """The plan the launcher of `kind` uses for `num_tokens` tokens on a device with
    `num_sms` multiprocessors (0: the CPU). batch_invariant and fp32_gemm default to the
    current MHC_BATCH_INVARIANT / MHC_BF16_FP32_GEMM_ALGO flags, as the launchers read them;
    clusters says whether the device runs thread-block clusters (sm_90+, see
    device_supports_clusters; True for the H100 / H200 this pack is tuned for)."""
    return Plan._from_c(_C.plan_of(int(_kind(kind)), int(num_tokens), int(hc_mult),
                                   int(hidden_size), int(num_sms), bool(norm),
                                   _batch_invariant(batch_invariant), _fp32_gemm(fp32_gemm),
                                   bool(clusters)))


def token_count_representatives(kind: KernelType | str, max_tokens: int, *, hidden_size: int,
                                hc_mult: int = 4, num_sms: int, norm: bool = False,
                                batch_invariant: bool | None = None,
                                fp32_gemm: bool | None = None,
                                clusters: bool = True) -> tuple[int, ...]:
    """For every distinct plan_of over T in 1..max_tokens, the largest such T, sorted;
    () for max_tokens <= 0."""
    if max_tokens <= 0:
        return ()
    return tuple(_C.token_count_representatives(
        int(_kind(kind)), int(max_tokens), int(hc_mult), int(hidden_size), int(num_sms),
        bool(norm), _batch_invariant(batch_invariant), _fp32_gemm(fp32_gemm), bool(clusters)))


def _cuda_index(device) -> int | None:
    """The CUDA device index of `device` (the current one when it names none); None for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def device_supports_clusters(device) -> bool:
    """Whether the launchers may run CLUSTER plans on `device` (compute capability 9.0+)."""
    import torch

    index = _cuda_index(device)
    return index is not None and torch.cuda.get_device_capability(index)[0] >= 9


def device_num_sms(device) -> int:
    """Multiprocessors of `device` as the launchers see them; 0 for the CPU."""
    import torch

    index = _cuda_index(device)
    return 0 if index is None else torch.cuda.get_device_properties(index).multi_processor_count
