"""sglang 0.5.23's DeepSeek-V4 and V4.1 mHC functions over mhc_ops (SPEC §7.1).

Each function has the name, positional order, keyword names, defaults, accepted input forms
and output shapes of its namesake in ``sglang.kernels.ops.layernorm.mhc`` (or ``.mhc_head``,
``.hc_combine_norm``, ``.mhc_post_combine_norm_prefill``, ``.mhc_mega``), so that model code
calls it unchanged. Arguments that only steer sglang's own kernels (``n_splits``,
``n_splits_pre``, ``tile_n``, the compensated weight parts of the bf16x3 stats) are accepted
and ignored or folded back: mhc_ops plans its splits itself (SPEC §4).

DeepSeek-V4.1 (SPEC §2.9; sglang's ``srt/models/deepseek_v4_mhc.py`` calls these):
``hc_mix_stats_sinkhorn`` and ``hc_mix_stats_sinkhorn_bf16x3`` run :func:`mhc_ops.mhc_stats`;
``mhc_combine`` and ``hc_combine_norm`` run :func:`mhc_ops.mhc_combine`;
``mhc_post_combine_norm_prefill`` runs :func:`mhc_ops.mhc_post_combine`; ``mhc_mega_boundary``
runs :func:`mhc_ops.mhc_shifted_post_pre` (fused unless ``MHC_FUSE_POST_PRE=0``). These forms
are not tied to sglang's H = 5120, T-range or Blackwell conditions. ``hc_mix_stats``,
``hc_split_sinkhorn`` and ``split_bf16_hc_weight`` are here with sglang's signatures but are not
installed: the first two are the halves of a stats path whose intermediate (the RMS-scaled
mixes) mhc_ops' fused stats never materialise, so sglang keeps its own kernels there (Hopper,
1 < T < 32), and the third is plain PyTorch at weight load.

What differs from sglang's kernels is numerics only, within SPEC §3: the prenorm GEMM is
accurate to fp32 (sglang's TileLang / DeepGEMM paths use TF32 products), and
``mhc_fused_post_pre`` follows ``MHC_FUSE_POST_PRE`` (its residual is bit-identical either way).

``norm_eps=None`` with a ``norm_weight``: sglang's TileLang path requires a value there and its
AITER path falls back to ``rms_eps``; these functions take ``rms_eps`` too.

``install()`` replaces sglang's functions with these (nothing is replaced at import);
``uninstall()`` puts sglang's back.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from .. import ops as _ops
from .. import reference as _reference
from ..plan import KernelType, device_num_sms, device_supports_clusters
from ..plan import token_count_representatives as _representatives
from ._install import Patcher, SignatureMismatch, Target

__all__ = [
    "mhc_pre",
    "mhc_post",
    "mhc_fused_post_pre",
    "hc_pre",
    "hc_post",
    "fused_hc_head",
    "get_mhc_pre_token_count_representatives",
    "prewarm_mhc_pre",
    "linear_bf16_fp32",
    "hc_mix_stats_sinkhorn",
    "hc_mix_stats",
    "hc_split_sinkhorn",
    "split_bf16_hc_weight",
    "hc_mix_stats_sinkhorn_bf16x3",
    "mhc_combine",
    "hc_combine_norm",
    "mhc_post_combine_norm_prefill",
    "mhc_mega_boundary",
    "install",
    "uninstall",
    "SignatureMismatch",
]

logger = logging.getLogger("mhc_ops.compat")

MHC_MODULE = "sglang.kernels.ops.layernorm.mhc"
HEAD_MODULE = "sglang.kernels.ops.layernorm.mhc_head"
COMBINE_NORM_MODULE = "sglang.kernels.ops.layernorm.hc_combine_norm"
POST_COMBINE_NORM_MODULE = "sglang.kernels.ops.layernorm.mhc_post_combine_norm_prefill"
MEGA_MODULE = "sglang.kernels.ops.layernorm.mhc_mega"


def _norm_args(norm_weight: Tensor | None, norm_eps: float | None, rms_eps: float):
    """sglang rounds a non-bf16 norm weight to bf16 once per call; mhc_ops takes bf16."""
    if norm_weight is None:
        return None, 1e-6  # unused by the op
    if norm_weight.dtype != torch.bfloat16:
        norm_weight = norm_weight.to(torch.bfloat16)
    return norm_weight, float(rms_eps if norm_eps is None else norm_eps)


def mhc_pre(
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
    n_splits_pre: int = 32,
    *,
    norm_weight: Tensor | None = None,
    norm_eps: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """sglang's ``mhc_pre`` on :func:`mhc_ops.mhc_pre`.

    residual [..., n, H] bf16 -> post_mix [..., n, 1] fp32, comb_mix [..., n, n] fp32,
    layer_input [..., H] bf16 (RMS-normalised with norm_weight when given).
    """
    w, eps = _norm_args(norm_weight, norm_eps, rms_eps)
    return _ops.mhc_pre(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                        hc_post_mult_value, sinkhorn_repeat, w, eps)


def mhc_post(
    x: Tensor,
    residual: Tensor,
    post_layer_mix: Tensor,
    comb_res_mix: Tensor,
) -> Tensor:
    """sglang's ``mhc_post`` on :func:`mhc_ops.mhc_post`: x [..., H], residual [..., n, H],
    post_layer_mix [..., n, 1] or [..., n], comb_res_mix [..., n, n] -> [..., n, H] bf16."""
    return _ops.mhc_post(x, residual, post_layer_mix, comb_res_mix)


def mhc_fused_post_pre(
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
    *,
    norm_weight: Tensor | None = None,
    norm_eps: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sglang's ``mhc_fused_post_pre`` on :func:`mhc_ops.mhc_post_pre` (fused unless
    ``MHC_FUSE_POST_PRE=0``).

    Returns residual [..., n, H] bf16, post_mix [..., n, 1] fp32, comb_mix [..., n, n] fp32,
    layer_input [..., H] bf16.
    """
    w, eps = _norm_args(norm_weight, norm_eps, rms_eps)
    return _ops.mhc_post_pre(x, residual, post_layer_mix, comb_res_mix, fn, hc_scale, hc_base,
                             rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
                             sinkhorn_repeat, w, eps)


def hc_pre(
    x: Tensor,
    hc_fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    hc_mult: int,
    rms_eps: float,
    hc_eps: float,
    sinkhorn_iters: int,
    post_mult_value: float = 2.0,
    hc_norm_weight: Tensor | None = None,
    out_norm_weight: Tensor | None = None,
    out_norm_eps: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, bool]:
    """sglang's model-level ``hc_pre`` on flat residuals.

    x [s, n*H] bf16 -> (layer_input [s, H] bf16, comb [s, n*n] fp32, post [s, n] fp32,
    norm_fused). hc_eps is both the pre and the Sinkhorn eps; hc_norm_weight scales the
    columns of hc_fn; out_norm_weight folds the sub-layer's RMSNorm in, and norm_fused says
    so (sglang reports False for an empty batch, and so does this).
    """
    s, total = x.shape
    hidden_size = total // hc_mult
    if x.numel() == 0:
        return (x.new_zeros((s, hidden_size)),
                torch.zeros((s, hc_mult * hc_mult), device=x.device, dtype=torch.float32),
                torch.zeros((s, hc_mult), device=x.device, dtype=torch.float32), False)
    fn = hc_fn if hc_norm_weight is None else hc_fn * hc_norm_weight
    if fn.dtype != torch.float32:
        fn = fn.float()
    w, eps = _norm_args(out_norm_weight, out_norm_eps, rms_eps)
    post, comb, layer_input = _ops.mhc_pre(
        x.reshape(s, hc_mult, hidden_size), fn, hc_scale, hc_base, rms_eps, hc_eps, hc_eps,
        post_mult_value, sinkhorn_iters, w, eps)
    return (layer_input, comb.reshape(s, hc_mult * hc_mult), post.reshape(s, hc_mult),
            out_norm_weight is not None)


def hc_post(
    x: Tensor,
    residual: Tensor,
    h_post: Tensor,
    h_res: Tensor,
    hc_mult: int,
) -> Tensor:
    """sglang's model-level ``hc_post``: x [s, H], residual [s, n*H] (or [s, n, H]),
    h_post [s, n] (or [s, n, 1]), h_res [s, n*n] (or [s, n, n]) -> [s, n*H] bf16."""
    s, hidden_size = x.shape
    if s == 0:
        return x.new_zeros((s, hc_mult * hidden_size))
    out = _ops.mhc_post(x, residual.reshape(s, hc_mult, hidden_size),
                        h_post.reshape(s, hc_mult, 1), h_res.reshape(s, hc_mult, hc_mult))
    return out.reshape(s, -1)


def fused_hc_head(
    x: Tensor,
    hc_fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    norm_eps: float,
    hc_eps: float,
) -> Tensor:
    """sglang's ``mhc_head.fused_hc_head`` on :func:`mhc_ops.hc_head`: x [T, n, H] bf16,
    hc_fn [n, n*H] fp32, hc_scale of one element ([1] or []), hc_base [n] -> [T, H] bf16.
    norm_eps is the RMS eps of the gate logits (mhc_ops' rms_eps)."""
    if hc_scale.dim() == 0:
        hc_scale = hc_scale.reshape(1)
    return _ops.hc_head(x, hc_fn, hc_scale, hc_base, norm_eps, hc_eps)


def linear_bf16_fp32(x: Tensor, y: Tensor) -> Tensor:
    """sglang's ``linear_bf16_fp32(x, y)``: x [M, K] bf16 @ y [N, K]^T bf16 -> [M, N] fp32.
    Not installed: sglang's module for it moves between releases; call it directly."""
    return _ops.linear_bf16_fp32(x, y)


# ----------------------------------------------------------------------------------------------
# DeepSeek-V4.1 (SPEC §2.9)


def _streams(x_flat: Tensor, hc_mult: int) -> Tensor:
    """[M, n*H] -> [M, n, H] (a view where the rows are dense)."""
    return x_flat.reshape(x_flat.shape[0], hc_mult, x_flat.shape[1] // hc_mult)


def _stats(x_flat: Tensor, fn: Tensor, hc_scale: Tensor, hc_base: Tensor, hc_mult: int,
           sinkhorn_iters: int, rms_eps: float, hc_eps: float):
    """sglang's stats triplet: pre [M, n], post [M, n], comb [M, n, n] fp32, with hc_eps the
    pre and the Sinkhorn eps and post mult 2.0 (as sglang's kernels hard-code)."""
    residual = _streams(x_flat, hc_mult)
    args = (fn, hc_scale.float(), hc_base.float(), rms_eps, hc_eps, hc_eps, 2.0, sinkhorn_iters)
    if residual.dtype == torch.bfloat16:
        pre, post, comb = _ops.mhc_stats(residual, *args)
    else:  # sglang's kernel reads any float residual; mhc_ops' ops take bf16
        pre, post, comb = _reference.mhc_stats(residual, *args)
    return pre, post.reshape(post.shape[0], hc_mult), comb


def hc_mix_stats_sinkhorn(
    x_flat: Tensor,
    hc_fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    hc_mult: int,
    sinkhorn_iters: int,
    rms_eps: float,
    hc_eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """sglang's V4.1 stats (the decode path) on :func:`mhc_ops.mhc_stats`.

    x_flat [M, n*H] (bf16; other float dtypes run mhc_ops.reference), hc_fn [n(n+2), n*H]
    fp32 -> pre [M, n], post [M, n], comb [M, n, n] fp32. hc_eps is the pre and the Sinkhorn
    eps, the post multiplier 2.0.
    """
    return _stats(x_flat, hc_fn, hc_scale, hc_base, hc_mult, sinkhorn_iters, rms_eps, hc_eps)


def split_bf16_hc_weight(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """sglang's weight split for the bf16x3 stats: fp32 [R, K] -> (high, middle, low) bf16,
    each the bf16 rounding of what the previous parts leave of weight."""
    high = weight.to(torch.bfloat16)
    rest = weight - high.float()
    middle = rest.to(torch.bfloat16)
    return high, middle, (rest - middle.float()).to(torch.bfloat16)


def hc_mix_stats_sinkhorn_bf16x3(
    x: Tensor,
    weight_parts,
    scale: Tensor,
    base: Tensor,
    sinkhorn_iters: int,
    rms_eps: float,
    hc_eps: float,
    hc_mult: int = 4,
) -> tuple[Tensor, Tensor, Tensor]:
    """sglang's V4.1 stats (the Hopper prefill path) on :func:`mhc_ops.mhc_stats`.

    weight_parts: the (high, middle, low) bf16 parts of :func:`split_bf16_hc_weight`; fn is
    rebuilt from them in fp32, exactly (three bf16 significands hold the 24 bits of an fp32
    weight), since mhc_ops' stats are accurate to fp32 on their own. No T range is required.
    x [M, n*H] bf16 -> pre [M, n], post [M, n], comb [M, n, n] fp32.
    """
    high, middle, low = weight_parts
    fn = (high.float() + middle.float()) + low.float()
    return _stats(x, fn, scale, base, hc_mult, sinkhorn_iters, rms_eps, hc_eps)


def hc_mix_stats(x_flat: Tensor, hc_fn: Tensor, eps: float) -> Tensor:
    """sglang's ``hc_mix_stats``: the RMS-scaled mixes (x_flat @ hc_fn^T) * rsqrt(mean(x^2) +
    eps), x_flat [M, K] (any float dtype), hc_fn [MIX, K] fp32 -> [M, MIX] fp32.

    A bf16 x_flat runs :func:`mhc_ops.hc_prenorm_gemm` (one split), others plain PyTorch.
    Not installed (see the module docstring)."""
    m, k = x_flat.shape
    if x_flat.dtype == torch.bfloat16:
        out, sqrsum = _ops.hc_prenorm_gemm(x_flat, hc_fn, 1)
        d, ss = out[0], sqrsum[0]
    else:
        xf = x_flat.float()
        d, ss = xf @ hc_fn.t(), xf.square().sum(-1)
    return d * torch.rsqrt(ss / k + eps).unsqueeze(-1)


def hc_split_sinkhorn(
    mixes: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    hc_mult: int = 4,
    sinkhorn_iters: int = 20,
    eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    """sglang's ``hc_split_sinkhorn``: the gates of SPEC §2.1 steps 5-7 from RMS-scaled mixes
    [b, s, n(n+2)] fp32 -> pre [b, s, n], post [b, s, n] (multiplier 2.0), comb [b, s, n, n],
    in the dtype of mixes. eps is the pre and the Sinkhorn eps.

    Plain PyTorch (mhc_ops has no op over precomputed mixes); not installed."""
    n = hc_mult
    scale, base = hc_scale.to(mixes.dtype), hc_base.to(mixes.dtype)
    pre = torch.sigmoid(mixes[..., :n] * scale[0] + base[:n]) + eps
    post = torch.sigmoid(mixes[..., n:2 * n] * scale[1] + base[n:2 * n]) * 2.0
    logits = mixes[..., 2 * n:] * scale[2] + base[2 * n:]
    comb = _reference.sinkhorn(logits.reshape(*mixes.shape[:-1], n, n), eps, sinkhorn_iters)
    return pre, post, comb


def mhc_combine(x_flat: Tensor, pre: Tensor, hc: int, out_dtype: torch.dtype) -> Tensor:
    """sglang's ``mhc_combine``: y[m, h] = sum_k pre[m, k] * x_flat[m, k*H + h] in fp32, stored
    as out_dtype; x_flat [M, hc*H], pre [M, hc] (any strides, read as fp32) -> [M, H].

    bf16 in and out runs :func:`mhc_ops.mhc_combine`; other dtypes plain PyTorch (the same
    sum in stream order)."""
    residual, w = _streams(x_flat, hc), pre.float()
    if residual.dtype == torch.bfloat16 and out_dtype == torch.bfloat16:
        return _ops.mhc_combine(residual, w)
    y = w[:, 0:1] * residual[:, 0].float()
    for k in range(1, hc):
        y = y + w[:, k:k + 1] * residual[:, k].float()
    return y.to(out_dtype)


def hc_combine_norm(x: Tensor, pre: Tensor, weight: Tensor, eps: float) -> Tensor:
    """sglang's ``hc_combine_norm.hc_combine_norm`` on :func:`mhc_ops.mhc_combine`: the
    combine rounded to bf16, then the RMSNorm with weight.

    x [M, n*H] bf16, pre [M, n] (read as fp32), weight [H] bf16 -> [M, H] bf16. Any H
    (sglang's kernel is for H = 5120, n = 4)."""
    return _ops.mhc_combine(_streams(x, pre.shape[-1]), pre.float(), weight, eps)


def mhc_post_combine_norm_prefill(
    x: Tensor,
    residual: Tensor,
    post: Tensor,
    comb: Tensor,
    pre: Tensor,
    weight: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """sglang's ``mhc_post_combine_norm_prefill`` on :func:`mhc_ops.mhc_post_combine`.

    x [T, H] bf16, residual [T, n, H] bf16, post [T, n] fp32, comb [T, n, n] fp32, pre [T, n]
    fp32 (the carried pre), weight [H] bf16 -> (updated [T, n, H] bf16, normalized [T, H]
    bf16): updated = mhc_post(x, residual, post, comb), normalized = the RMSNorm of the combine
    of updated with pre. Any T and H (sglang's kernel: Blackwell, H = 5120, 4096 <= T)."""
    return _ops.mhc_post_combine(x, residual, post, comb, pre, weight, eps)


def mhc_mega_boundary(
    x: Tensor,
    residual: Tensor,
    pre: Tensor,
    post: Tensor,
    comb: Tensor,
    fn: Tensor,
    scale: Tensor,
    base: Tensor,
    weight: Tensor,
    rms_eps: float,
    hc_eps: float,
    norm_eps: float,
    sinkhorn_iters: int,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """sglang's ``mhc_mega.mhc_mega_boundary`` (DeepGEMM's ``mega_mhc`` in shifted mode) on
    :func:`mhc_ops.mhc_shifted_post_pre` (fused unless ``MHC_FUSE_POST_PRE=0``).

    x [T, H] bf16, residual [T, n, H] bf16, pre / post [T, n] fp32 and comb [T, n, n] of this
    hyper-connection; fn, scale, base of the next one; weight [H] bf16, the next sub-layer's
    norm (None: no norm). Returns (updated [T, n, H] bf16, normalized [T, H] bf16,
    (next_pre [T, n], next_post [T, n], next_comb [T, n, n]) fp32): updated = post, normalized =
    the RMSNorm of the combine of updated with the carried pre, the triplet = the next stats
    from updated (hc_eps the pre and the Sinkhorn eps, post multiplier 2.0). Only these: the
    FP8-quantised copy of normalized that mega_mhc can also write is not produced.
    """
    updated, normalized, next_pre, next_post, next_comb = _ops.mhc_shifted_post_pre(
        x, residual, post, comb, pre, fn, scale.float(), base.float(), rms_eps, hc_eps, hc_eps,
        2.0, sinkhorn_iters, weight, norm_eps)
    return updated, normalized, (next_pre, next_post.reshape(next_pre.shape), next_comb)


def _device_of(t: Tensor | None = None) -> torch.device:
    if t is not None:
        return t.device
    from .. import cuda_available

    if cuda_available() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def get_mhc_pre_token_count_representatives(max_num_tokens: int,
                                            hc_hidden_size: int) -> tuple[int, ...]:
    """One token count per distinct mhc_ops ``mhc_pre`` plan over [1, max_num_tokens] on the
    current device, with and without the folded norm (sglang's answers the same question for
    its own split buckets). hc_hidden_size is n*H; n = 4 (DeepSeek-V4)."""
    hc_mult = 4
    dev = _device_of()
    sms, clusters = device_num_sms(dev), device_supports_clusters(dev)
    reps = set()
    for norm in (False, True):
        reps.update(_representatives(KernelType.MHC_PRE, int(max_num_tokens),
                                     hidden_size=int(hc_hidden_size) // hc_mult,
                                     hc_mult=hc_mult, num_sms=sms, norm=norm,
                                     clusters=clusters))
    return tuple(sorted(reps))


# (device, hidden_size, hc_mult, max_tokens) already warmed by prewarm_mhc_pre in this process
_prewarmed: set[tuple[str, int, int, int]] = set()


def _schedule_max_tokens() -> int | None:
    """sglang's prewarm budget: chunked_prefill_size, else max_prefill_tokens."""
    try:
        from sglang.srt.runtime_context import get_schedule

        schedule = get_schedule()
        max_tokens = schedule.chunked_prefill_size
        if max_tokens is None or max_tokens <= 0:
            max_tokens = schedule.max_prefill_tokens
        return int(max_tokens) if max_tokens and max_tokens > 0 else None
    except Exception:  # noqa: BLE001 - no sglang scheduler here: use mhc_ops' own default
        return None


def prewarm_mhc_pre(
    residual: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float,
    hc_pre_eps: float,
    hc_sinkhorn_eps: float,
    hc_post_mult_value: float,
    sinkhorn_repeat: int,
    n_splits: int,
    n_splits_pre: int,
    norm_weight: Tensor | None,
    norm_eps: float | None,
):
    """sglang's prewarm hook, run from load_weights: :func:`mhc_ops.warmup.warmup` of every
    mhc_ops op (not only mhc_pre: with mhc_ops installed all of them run in the model) for
    residual's hidden size and device, up to sglang's prefill budget (chunked_prefill_size,
    else max_prefill_tokens; MHC_WARMUP_MAX_TOKENS outside an sglang server). Once per
    process and shape; the gate parameters do not change which plans run."""
    from .. import warmup as _warmup

    hc_mult, hidden_size = int(residual.shape[-2]), int(residual.shape[-1])
    max_tokens = _schedule_max_tokens()
    key = (str(residual.device), hidden_size, hc_mult, max_tokens or -1)
    if key in _prewarmed:
        return None
    with torch.inference_mode():
        report = _warmup.warmup(hidden_size, max_tokens=max_tokens, hc_mult=hc_mult,
                                device=residual.device, progress=False)
    _prewarmed.add(key)
    logger.info("%s", report)
    return None


_PATCHER = Patcher("sglang 0.5.23", [
    Target(MHC_MODULE, "mhc_pre", mhc_pre),
    Target(MHC_MODULE, "mhc_post", mhc_post),
    Target(MHC_MODULE, "mhc_fused_post_pre", mhc_fused_post_pre),
    Target(MHC_MODULE, "hc_pre", hc_pre),
    Target(MHC_MODULE, "hc_post", hc_post),
    Target(MHC_MODULE, "get_mhc_pre_token_count_representatives",
           get_mhc_pre_token_count_representatives),
    Target(MHC_MODULE, "prewarm_mhc_pre", prewarm_mhc_pre),
    Target(HEAD_MODULE, "fused_hc_head", fused_hc_head),
    Target(MHC_MODULE, "hc_mix_stats_sinkhorn", hc_mix_stats_sinkhorn),
    Target(MHC_MODULE, "hc_mix_stats_sinkhorn_bf16x3", hc_mix_stats_sinkhorn_bf16x3),
    Target(MHC_MODULE, "mhc_combine", mhc_combine),
    Target(COMBINE_NORM_MODULE, "hc_combine_norm", hc_combine_norm),
    Target(POST_COMBINE_NORM_MODULE, "mhc_post_combine_norm_prefill",
           mhc_post_combine_norm_prefill),
    Target(MEGA_MODULE, "mhc_mega_boundary", mhc_mega_boundary),
])


def install() -> list[str]:
    """Replace sglang's mHC functions (``sglang.kernels.ops.layernorm.mhc``, ``.mhc_head``,
    ``.hc_combine_norm``, ``.mhc_post_combine_norm_prefill`` and ``.mhc_mega`` where they
    import, and every loaded module that imported them by name) with these. Returns the
    names replaced; raises ImportError without sglang and SignatureMismatch, replacing nothing,
    when an installed function's signature differs from sglang 0.5.23's."""
    return _PATCHER.install()


def uninstall() -> list[str]:
    """Put sglang's own functions back; returns the names restored."""
    return _PATCHER.uninstall()


def installed() -> bool:
    return _PATCHER.installed
