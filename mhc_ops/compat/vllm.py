"""vLLM 0.33's DeepSeek-V4 and V4.1 mHC functions over mhc_ops (SPEC §7.1).

Each function has the name, positional order, keyword names, defaults, accepted input forms
and output shapes of its namesake in ``vllm.model_executor.kernels.mhc.tilelang``, so that
vLLM's model code calls it unchanged. ``n_splits`` and ``tile_n`` only steer vLLM's TileLang /
DeepGEMM kernels and are accepted and ignored: mhc_ops plans its splits itself (SPEC §4).

What differs from vLLM's kernels is numerics only, within SPEC §3: the prenorm GEMM is
accurate to fp32 (DeepGEMM's ``tf32_hc_prenorm_gemm`` truncates ``fn`` to TF32), and
``mhc_fused_post_pre_tilelang`` follows ``MHC_FUSE_POST_PRE`` (its residual is bit-identical
either way).

DeepSeek-V4.1 (SPEC §2.9, the lagged pre that vLLM calls "delayed"):
``mhc_pre_delayed_tilelang`` runs :func:`mhc_ops.mhc_stats` and :func:`mhc_ops.mhc_combine`, and
``mhc_fused_post_pre_delayed_tilelang``, vLLM 0.33's V4.1 boundary, runs
:func:`mhc_ops.mhc_shifted_post_pre` (fused unless ``MHC_FUSE_POST_PRE=0``). vLLM 0.33 has no
function named ``mhc_shifted_post_pre``. ``pre_mix=None`` (model entry, where vLLM takes
residual stream 0) is the combine with a one-hot pre on stream 0: the same bits wherever the
other streams are finite, as they are at entry (all streams equal the embedding).

vLLM has no tensor-level warmup hook for these functions: its JIT warmup compiles TileLang
kernels by compile key (``JitWarmupRegistry``). Warm mhc_ops with
:func:`mhc_ops.warmup.warmup` before CUDA-graph capture (docs/integration.md).

``install()`` replaces vLLM's functions with these (nothing is replaced at import);
``uninstall()`` puts vLLM's back. :func:`register` is the entry point of the vLLM general
plugin (group ``vllm.general_plugins``, name ``mhc_ops``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import ops as _ops
from ._install import Patcher, SignatureMismatch, Target

__all__ = [
    "mhc_pre_tilelang",
    "mhc_post_tilelang",
    "mhc_fused_post_pre_tilelang",
    "mhc_pre_broadcast_tilelang",
    "hc_head_fused_kernel_tilelang",
    "mhc_pre_delayed_tilelang",
    "mhc_fused_post_pre_delayed_tilelang",
    "install",
    "uninstall",
    "register",
    "SignatureMismatch",
]

MODULE = "vllm.model_executor.kernels.mhc.tilelang"

# vLLM's default eps of the fused RMSNorm
_NORM_EPS = 1e-6


def _norm_args(norm_weight: Tensor | None, norm_eps: float | None):
    """vLLM rounds a non-bf16 norm weight to bf16 once per call; mhc_ops takes bf16."""
    if norm_weight is not None and norm_weight.dtype != torch.bfloat16:
        norm_weight = norm_weight.to(torch.bfloat16)
    return norm_weight, float(_NORM_EPS if norm_eps is None else norm_eps)


def mhc_pre_tilelang(
    residual: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    n_splits: int = 1,
    norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    """vLLM's ``mhc_pre_tilelang`` on :func:`mhc_ops.mhc_pre`.

    residual [..., n, H] bf16 -> post_mix [..., n, 1] fp32, comb_mix [..., n, n] fp32,
    layer_input [..., H] bf16 (RMS-normalised with norm_weight when given).
    """
    w, eps = _norm_args(norm_weight, norm_eps)
    return _ops.mhc_pre(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                        hc_post_mult_value, sinkhorn_repeat, w, eps)


def mhc_post_tilelang(
    x: Tensor,
    residual: Tensor,
    post_layer_mix: Tensor,
    comb_res_mix: Tensor,
) -> Tensor:
    """vLLM's ``mhc_post_tilelang`` on :func:`mhc_ops.mhc_post`: x [..., H],
    residual [..., n, H], post_layer_mix [..., n, 1] or [..., n], comb_res_mix [..., n, n]
    -> [..., n, H] bf16."""
    return _ops.mhc_post(x, residual, post_layer_mix, comb_res_mix)


def mhc_fused_post_pre_tilelang(
    x: Tensor,
    residual: Tensor,
    post_layer_mix: Tensor,
    comb_res_mix: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    n_splits: int = 1,
    tile_n: int = 1,
    norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """vLLM's ``mhc_fused_post_pre_tilelang`` on :func:`mhc_ops.mhc_post_pre` (fused unless
    ``MHC_FUSE_POST_PRE=0``).

    Returns residual [..., n, H] bf16, post_mix [..., n, 1] fp32, comb_mix [..., n, n] fp32,
    layer_input [..., H] bf16.
    """
    w, eps = _norm_args(norm_weight, norm_eps)
    return _ops.mhc_post_pre(x, residual, post_layer_mix, comb_res_mix, fn, hc_scale, hc_base,
                             rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
                             sinkhorn_repeat, w, eps)


def mhc_pre_broadcast_tilelang(
    residual: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    n_splits: int = 1,
    norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
    fn_broadcast: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """vLLM's first-layer ``mhc_pre_broadcast_tilelang``: the n streams all start as the
    embedding residual [T, H].

    Returns residual_out [T, n, H] bf16 (the broadcast streams), post_mix [T, n, 1] fp32,
    comb_mix [T, n, n] fp32, layer_input [T, H] bf16. The gates come from ``fn`` on the
    broadcast streams, which is the same math as vLLM's ``fn_broadcast`` (fn summed over the
    streams) on [T, H]; fn_broadcast is accepted and not needed. As in vLLM, norm_weight is
    required.
    """
    if norm_weight is None:
        raise ValueError("mhc_pre_broadcast_tilelang: norm_weight is required (the broadcast "
                         "pre always folds the RMSNorm in); got None")
    if residual.dim() != 2:
        raise ValueError("mhc_pre_broadcast_tilelang: residual must be [T, H]; got "
                         f"{list(residual.shape)}")
    hidden_size = residual.shape[-1]
    hc_mult = fn.shape[1] // hidden_size
    residual_out = residual.unsqueeze(1).expand(-1, hc_mult, -1).contiguous()
    w, eps = _norm_args(norm_weight, norm_eps)
    post, comb, layer_input = _ops.mhc_pre(residual_out, fn, hc_scale, hc_base, rms_eps,
                                           hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
                                           sinkhorn_repeat, w, eps)
    return residual_out, post, comb, layer_input


def hc_head_fused_kernel_tilelang(
    hs_flat: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float,
    hc_eps: float,
) -> Tensor:
    """vLLM's ``hc_head_fused_kernel_tilelang`` on :func:`mhc_ops.hc_head`: hs_flat [T, n, H]
    bf16, fn [n, n*H] fp32, hc_scale of one element ([1] or []), hc_base [n] -> [T, H] bf16."""
    if hc_scale.dim() == 0:
        hc_scale = hc_scale.reshape(1)
    return _ops.hc_head(hs_flat, fn, hc_scale, hc_base, rms_eps, hc_eps)


def _carried_pre(pre_mix: Tensor | None, residual: Tensor) -> Tensor:
    """The pre of the combine: the carried pre_mix [T, n], or at model entry (None) one-hot on
    stream 0, which is vLLM's choice of residual stream zero."""
    if pre_mix is not None:
        return pre_mix
    T, n = residual.shape[0], residual.shape[1]
    entry = torch.zeros(T, n, dtype=torch.float32, device=residual.device)
    entry[:, 0] = 1.0
    return entry


def mhc_pre_delayed_tilelang(
    residual: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    pre_mix: Tensor | None = None,
    x: Tensor | None = None,
    norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """vLLM's V4.1 ``mhc_pre_delayed_tilelang`` on :func:`mhc_ops.mhc_stats` and
    :func:`mhc_ops.mhc_combine`.

    residual [T, n, H] bf16; pre_mix [T, n] fp32, the previous hyper-connection's pre, or None
    for residual stream 0; x [T, input_size] bf16 with fn [n(n+2), input_size] (the first
    layer's embedding and summed projection) or None for the residual with fn [n(n+2), n*H].
    Returns post_mix [T, n, 1] fp32, comb_mix [T, n, n] fp32, layer_input [T, H] bf16 (the
    combine of residual with pre_mix, RMS-normalised with norm_weight when given) and
    next_pre_mix [T, n] fp32 (the stats' pre, for the next combine).

    With x, the stats read x as n streams of input_size / n (the same products and the same
    RMS); warm that width with ``mhc_ops.warmup.warmup(input_size // n, kinds=["MHC_STATS"])``.
    """
    n = residual.shape[1]
    stats_in = residual if x is None else x.reshape(x.shape[0], n, x.shape[1] // n)
    next_pre, post, comb = _ops.mhc_stats(stats_in, fn, hc_scale, hc_base, rms_eps, hc_pre_eps,
                                          hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat)
    w, eps = _norm_args(norm_weight, norm_eps)
    layer_input = _ops.mhc_combine(residual, _carried_pre(pre_mix, residual), w, eps)
    return post, comb, layer_input, next_pre


def mhc_fused_post_pre_delayed_tilelang(
    x: Tensor,
    residual: Tensor,
    post_layer_mix: Tensor,
    comb_res_mix: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    pre_mix: Tensor | None = None,
    norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
    capture_aux: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """vLLM's V4.1 boundary ``mhc_fused_post_pre_delayed_tilelang`` on
    :func:`mhc_ops.mhc_shifted_post_pre` (fused unless ``MHC_FUSE_POST_PRE=0``).

    post of this hyper-connection (post_layer_mix [T, n, 1] or [T, n], comb_res_mix), combine
    of the next sub-layer's input with the carried pre_mix [T, n] (None: residual stream 0),
    stats of the next hyper-connection (fn, hc_scale, hc_base) from the new residual.
    Returns residual_out [T, n, H] bf16, post_mix [T, n, 1] fp32, comb_mix [T, n, n] fp32,
    layer_input [T, H] bf16, next_pre_mix [T, n] fp32, and aux: with capture_aux the bf16 mean
    of residual_out's streams [T, H] (vLLM's draft models read it), else an empty [0, H].
    """
    w, eps = _norm_args(norm_weight, norm_eps)
    residual_out, layer_input, next_pre, post, comb = _ops.mhc_shifted_post_pre(
        x, residual, post_layer_mix, comb_res_mix, _carried_pre(pre_mix, residual), fn,
        hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
        sinkhorn_repeat, w, eps)
    if capture_aux:
        aux = residual_out.float().mean(1).to(torch.bfloat16)
    else:
        aux = residual_out.new_empty((0, residual_out.shape[-1]))
    return residual_out, post, comb, layer_input, next_pre, aux


_PATCHER = Patcher("vLLM 0.33", [
    Target(MODULE, "mhc_pre_tilelang", mhc_pre_tilelang),
    Target(MODULE, "mhc_post_tilelang", mhc_post_tilelang),
    Target(MODULE, "mhc_fused_post_pre_tilelang", mhc_fused_post_pre_tilelang),
    Target(MODULE, "mhc_pre_broadcast_tilelang", mhc_pre_broadcast_tilelang),
    Target(MODULE, "hc_head_fused_kernel_tilelang", hc_head_fused_kernel_tilelang),
    Target(MODULE, "mhc_pre_delayed_tilelang", mhc_pre_delayed_tilelang),
    Target(MODULE, "mhc_fused_post_pre_delayed_tilelang", mhc_fused_post_pre_delayed_tilelang),
], op_namespace="vllm")


def install() -> list[str]:
    """Replace vLLM's DeepSeek-V4 and V4.1 mHC functions
    (``vllm.model_executor.kernels.mhc.tilelang``, every loaded module that imported them by
    name, and the kernels of the ``torch.ops.vllm`` operators vLLM registers them as) with
    these. Returns the names replaced; raises ImportError without vLLM and SignatureMismatch,
    replacing nothing, when an installed function's signature differs from vLLM 0.33's."""
    return _PATCHER.install()


def uninstall() -> list[str]:
    """Put vLLM's own functions back; returns the names restored."""
    return _PATCHER.uninstall()


def installed() -> bool:
    return _PATCHER.installed


def register() -> None:
    """vLLM general-plugin entry point (``vllm.general_plugins``: ``mhc_ops``): install().
    vLLM calls it in every process it starts, before the model is built; it may run more than
    once. A signature mismatch stops start-up with the message naming both signatures."""
    install()
