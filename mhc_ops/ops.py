"""Typed wrappers over torch.ops.mhc.* (SPEC §2, §7).

Each wrapper accepts leading dimensions (``[..., n, H]`` instead of ``[T, n, H]``), flattens
them, calls the op positionally and restores them on the outputs. With ``MHC_DISABLE_KERNELS``
set, the wrappers route to :mod:`mhc_ops.reference` instead (debugging). Flags are read at
every eager call; under ``torch.compile`` the value seen while tracing is baked into the graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import envs, reference
from ._lib import _C  # noqa: F401  (registers torch.ops.mhc.*)

__all__ = [
    "mhc_pre",
    "mhc_post",
    "mhc_fused_post_pre",
    "mhc_post_pre",
    "mhc_stats",
    "mhc_combine",
    "mhc_post_combine",
    "mhc_shifted_post_pre",
    "hc_head",
    "hc_prenorm_gemm",
    "tf32_hc_prenorm_gemm",
    "linear_bf16_fp32",
]

_ops = torch.ops.mhc


def _flatten(t: Tensor, rank: int) -> tuple[Tensor, tuple[int, ...]]:
    """Collapse the leading dims of t into one so it has `rank` dims; ranks below are left
    alone so that the op itself reports them."""
    if t.dim() < rank - 1:
        return t, ()
    lead = tuple(t.shape[: t.dim() - rank + 1])
    if t.dim() == rank:
        return t, lead
    return t.reshape(-1, *t.shape[t.dim() - rank + 1 :]), lead


def _unflatten(t: Tensor, lead: tuple[int, ...]) -> Tensor:
    """Give an output of the flattened call the caller's leading dims back."""
    return t.reshape(*lead, *t.shape[1:])


def _describe(t: Tensor) -> str:
    """'bfloat16 [2, 3, 64]', as the ops print a tensor (csrc/core/checks.h)."""
    return f"{str(t.dtype).removeprefix('torch.')} [{', '.join(map(str, t.shape))}]"


def _flatten_like(op: str, name: str, t: Tensor, lead: tuple[int, ...],
                  residual: Tensor) -> Tensor:
    """Collapse the leading dims `lead` of residual in a companion argument (x, post_mix,
    comb_mix). They must be the same dims: flattened on its own, a companion with the same
    number of tokens in another arrangement would be paired with the wrong tokens."""
    k = len(lead)
    if t.dim() <= k or tuple(t.shape[:k]) != lead:
        if torch.compiler.is_compiling():
            # dynamo cannot format symbolic sizes (str of a SymInt does not trace)
            raise RuntimeError(f"{op}: {name} must have the leading dims of residual")
        dims = ", ".join(map(str, lead))
        raise RuntimeError(f"{op}: {name} must have the leading dims [{dims}] of residual "
                           f"{_describe(residual)}; got {_describe(t)}")
    return t.reshape(-1, *t.shape[k:])


def _flat_call(name: str, residual: Tensor, rest: tuple = (), x: Tensor | None = None,
               **per_token: Tensor):
    """torch.ops.mhc.<name>(x, residual, *per_token, *rest) (x where given) with the leading
    dims of residual collapsed into one in residual, x and the per-token arguments
    (_flatten_like names them in its error), and given back to the outputs."""
    op = getattr(_ops, name).default
    res, lead = _flatten(residual, 3)
    head = () if x is None else (x,)
    if res is residual:
        return op(*head, residual, *per_token.values(), *rest)
    if x is not None:
        head = (_flatten_like(name, "x", x, lead, residual),)
    out = op(*head, res, *(_flatten_like(name, k, v, lead, residual)
                           for k, v in per_token.items()), *rest)
    return _unflatten(out, lead) if isinstance(out, Tensor) else \
        tuple(_unflatten(t, lead) for t in out)


def mhc_pre(
    residual: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float = 1e-6,
    hc_pre_eps: float = 1e-6,
    hc_sinkhorn_eps: float = 1e-6,
    hc_post_mult_value: float = 2.0,
    sinkhorn_repeat: int = 20,
    norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor]:
    """mHC pre: gates of the n streams and the collapsed sub-layer input (SPEC §2.1).

    With x = residual[t] flattened (K = n*H), r = rsqrt(sum(x^2)/K + rms_eps) and
    m = (fn @ x) * r: pre = sigmoid(m[:n]*hc_scale[0] + hc_base[:n]) + hc_pre_eps,
    post = sigmoid(m[n:2n]*hc_scale[1] + hc_base[n:2n]) * hc_post_mult_value,
    comb = sinkhorn(m[2n:]*hc_scale[2] + hc_base[2n:]) and layer_input = bf16(sum_i pre[i] *
    residual[t, i]), RMS-normalised with norm_weight when given.

    Args: residual [..., n, H] bf16; fn [n(n+2), n*H] fp32; hc_scale [3] fp32;
    hc_base [n(n+2)] fp32; norm_weight [H] bf16 (float32 is rounded to bf16) or None;
    eps finite and >= 0;
    0 <= sinkhorn_repeat <= 1000 (the Sinkhorn rounds, SPEC §2.6; more is refused).
    Returns: post_mix [..., n, 1] fp32, comb_mix [..., n, n] fp32, layer_input [..., H] bf16.
    """
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.mhc_pre(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps,
                                 hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat,
                                 norm_weight, norm_eps)
    return _flat_call("mhc_pre", residual, (fn, hc_scale, hc_base, rms_eps, hc_pre_eps,
                                            hc_sinkhorn_eps, hc_post_mult_value,
                                            sinkhorn_repeat, norm_weight, norm_eps))


def mhc_post(x: Tensor, residual: Tensor, post_mix: Tensor, comb_mix: Tensor) -> Tensor:
    """mHC post: new[j] = bf16(post[j]*x + sum_i comb[i, j]*residual[i]) (SPEC §2.2).

    Args: x [..., H] bf16 (sub-layer output); residual [..., n, H] bf16;
    post_mix [..., n, 1] or [..., n] fp32; comb_mix [..., n, n] fp32; the same leading dims
    ``...`` in all four.
    Returns: the new residual [..., n, H] bf16.
    """
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.mhc_post(x, residual, post_mix, comb_mix)
    return _flat_call("mhc_post", residual, x=x, post_mix=post_mix, comb_mix=comb_mix)


def mhc_fused_post_pre(
    x: Tensor,
    residual: Tensor,
    post_mix: Tensor,
    comb_mix: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float = 1e-6,
    hc_pre_eps: float = 1e-6,
    hc_sinkhorn_eps: float = 1e-6,
    hc_post_mult_value: float = 2.0,
    sinkhorn_repeat: int = 20,
    norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mhc_post followed by mhc_pre of the next sub-layer, in one op (SPEC §2.3).

    residual_out is bit-identical to mhc_post(x, residual, post_mix, comb_mix); the other
    outputs are those of mhc_pre(residual_out, fn, ...).
    Arguments as for :func:`mhc_post` and :func:`mhc_pre`; the leading dims of x, post_mix
    and comb_mix must be those of residual.
    Returns: residual_out [..., n, H] bf16, post_mix_out [..., n, 1] fp32,
    comb_mix_out [..., n, n] fp32, layer_input [..., H] bf16.
    """
    args = (rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat,
            norm_weight, norm_eps)
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.mhc_fused_post_pre(x, residual, post_mix, comb_mix, fn, hc_scale,
                                            hc_base, *args)
    return _flat_call("mhc_fused_post_pre", residual, (fn, hc_scale, hc_base, *args), x=x,
                      post_mix=post_mix, comb_mix=comb_mix)


def mhc_post_pre(
    x: Tensor,
    residual: Tensor,
    post_mix: Tensor,
    comb_mix: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float = 1e-6,
    hc_pre_eps: float = 1e-6,
    hc_sinkhorn_eps: float = 1e-6,
    hc_post_mult_value: float = 2.0,
    sinkhorn_repeat: int = 20,
    norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """post of one sub-layer and pre of the next, switched by ``MHC_FUSE_POST_PRE``.

    On (default): :func:`mhc_fused_post_pre`. Off: :func:`mhc_post` then :func:`mhc_pre`.
    Both return (residual_out, post_mix_out, comb_mix_out, layer_input) and agree per SPEC §3.
    The flag is read at every eager call; under torch.compile its value at trace time is part
    of the compiled graph.
    """
    args = (fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
            sinkhorn_repeat, norm_weight, norm_eps)
    if envs.MHC_FUSE_POST_PRE.get():
        return mhc_fused_post_pre(x, residual, post_mix, comb_mix, *args)
    r = mhc_post(x, residual, post_mix, comb_mix)
    return (r, *mhc_pre(r, *args))


def mhc_stats(
    residual: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float = 1e-6,
    hc_pre_eps: float = 1e-6,
    hc_sinkhorn_eps: float = 1e-6,
    hc_post_mult_value: float = 2.0,
    sinkhorn_repeat: int = 20,
) -> tuple[Tensor, Tensor, Tensor]:
    """DeepSeek-V4.1 stats: the gates of :func:`mhc_pre` with pre kept and no stream sum
    (SPEC §2.9).

    pre, post and comb as in :func:`mhc_pre` (SPEC §2.1 steps 1-7). The pre is the one the
    NEXT hyper-connection's combine uses (the lag).
    Args: residual [..., n, H] bf16; fn [n(n+2), n*H] fp32; hc_scale [3] fp32;
    hc_base [n(n+2)] fp32; eps finite and >= 0; 0 <= sinkhorn_repeat <= 1000.
    Returns: pre_mix [..., n] fp32, post_mix [..., n, 1] fp32, comb_mix [..., n, n] fp32.
    """
    args = (rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat)
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.mhc_stats(residual, fn, hc_scale, hc_base, *args)
    return _flat_call("mhc_stats", residual, (fn, hc_scale, hc_base, *args))


def mhc_combine(residual: Tensor, pre_mix: Tensor, norm_weight: Tensor | None = None,
                norm_eps: float = 1e-6) -> Tensor:
    """DeepSeek-V4.1 combine: layer_input = bf16(sum_i pre_mix[i] * residual[i]) in stream
    order in fp32, RMS-normalised with norm_weight when given (SPEC §2.9).

    pre_mix is the carried pre of the previous hyper-connection (:func:`mhc_stats`).
    Args: residual [..., n, H] bf16; pre_mix [..., n] or [..., n, 1] fp32 with the leading
    dims of residual; norm_weight [H] bf16 (float32 is rounded to bf16) or None.
    Returns: layer_input [..., H] bf16.
    """
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.mhc_combine(residual, pre_mix, norm_weight, norm_eps)
    return _flat_call("mhc_combine", residual, (norm_weight, norm_eps), pre_mix=pre_mix)


def mhc_post_combine(x: Tensor, residual: Tensor, post_mix: Tensor, comb_mix: Tensor,
                     pre_mix: Tensor, norm_weight: Tensor | None = None,
                     norm_eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """:func:`mhc_post`, then :func:`mhc_combine` of its result with the carried pre_mix, in
    one op (SPEC §2.9).

    residual_out is bit-identical to mhc_post(x, residual, post_mix, comb_mix) and
    layer_input to mhc_combine(residual_out, pre_mix, norm_weight, norm_eps).
    Arguments as for :func:`mhc_post` and :func:`mhc_combine`; the leading dims of x,
    post_mix, comb_mix and pre_mix must be those of residual.
    Returns: residual_out [..., n, H] bf16, layer_input [..., H] bf16.
    """
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.mhc_post_combine(x, residual, post_mix, comb_mix, pre_mix,
                                          norm_weight, norm_eps)
    return _flat_call("mhc_post_combine", residual, (norm_weight, norm_eps), x=x,
                      post_mix=post_mix, comb_mix=comb_mix, pre_mix=pre_mix)


def _shifted_post_pre_fused(
    x: Tensor, residual: Tensor, post_mix: Tensor, comb_mix: Tensor, pre_mix: Tensor,
    fn: Tensor, hc_scale: Tensor, hc_base: Tensor, rms_eps: float = 1e-6,
    hc_pre_eps: float = 1e-6, hc_sinkhorn_eps: float = 1e-6, hc_post_mult_value: float = 2.0,
    sinkhorn_repeat: int = 20, norm_weight: Tensor | None = None, norm_eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torch.ops.mhc.mhc_shifted_post_pre with leading dims, whatever MHC_FUSE_POST_PRE says
    (the fused path of :func:`mhc_shifted_post_pre`, and what warmup runs)."""
    args = (fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
            sinkhorn_repeat, norm_weight, norm_eps)
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.mhc_shifted_post_pre(x, residual, post_mix, comb_mix, pre_mix, *args)
    return _flat_call("mhc_shifted_post_pre", residual, args, x=x, post_mix=post_mix,
                      comb_mix=comb_mix, pre_mix=pre_mix)


def mhc_shifted_post_pre(
    x: Tensor,
    residual: Tensor,
    post_mix: Tensor,
    comb_mix: Tensor,
    pre_mix: Tensor,
    fn: Tensor,
    hc_scale: Tensor,
    hc_base: Tensor,
    rms_eps: float = 1e-6,
    hc_pre_eps: float = 1e-6,
    hc_sinkhorn_eps: float = 1e-6,
    hc_post_mult_value: float = 2.0,
    sinkhorn_repeat: int = 20,
    norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The DeepSeek-V4.1 boundary between two hyper-connections (SPEC §2.9), switched by
    ``MHC_FUSE_POST_PRE``.

    post of this hyper-connection (post_mix, comb_mix), combine of the next sub-layer's input
    with this hyper-connection's carried pre_mix, and stats of the next hyper-connection (fn,
    hc_scale, hc_base) from the new residual. On (default): the fused op
    ``torch.ops.mhc.mhc_shifted_post_pre``. Off: :func:`mhc_post_combine`, then
    :func:`mhc_stats`. residual_out and layer_input are bit-identical either way; the gates
    agree per SPEC §3. The flag is read at every eager call; under torch.compile its value at
    trace time is part of the compiled graph.
    Arguments as for :func:`mhc_post_combine` and :func:`mhc_stats`; the leading dims of x,
    post_mix, comb_mix and pre_mix must be those of residual.
    Returns: residual_out [..., n, H] bf16, layer_input [..., H] bf16,
    next_pre_mix [..., n] fp32, next_post_mix [..., n, 1] fp32, next_comb_mix [..., n, n] fp32.
    """
    if envs.MHC_FUSE_POST_PRE.get():
        return _shifted_post_pre_fused(x, residual, post_mix, comb_mix, pre_mix, fn, hc_scale,
                                       hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                                       hc_post_mult_value, sinkhorn_repeat, norm_weight,
                                       norm_eps)
    r, layer_input = mhc_post_combine(x, residual, post_mix, comb_mix, pre_mix, norm_weight,
                                      norm_eps)
    return (r, layer_input, *mhc_stats(r, fn, hc_scale, hc_base, rms_eps, hc_pre_eps,
                                       hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat))


def hc_head(residual: Tensor, fn: Tensor, hc_scale: Tensor, hc_base: Tensor,
            rms_eps: float = 1e-6, hc_eps: float = 1e-6) -> Tensor:
    """Final collapse of the streams (SPEC §2.4): bf16(sum_i pre[i]*residual[i]) with
    pre = sigmoid(((fn @ x) * rsqrt(sum(x^2)/K + rms_eps)) * hc_scale[0] + hc_base) + hc_eps.

    Args: residual [..., n, H] bf16; fn [n, n*H] fp32; hc_scale [1] fp32; hc_base [n] fp32.
    Returns: [..., H] bf16.
    """
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.hc_head(residual, fn, hc_scale, hc_base, rms_eps, hc_eps)
    return _flat_call("hc_head", residual, (fn, hc_scale, hc_base, rms_eps, hc_eps))


def hc_prenorm_gemm(x: Tensor, fn: Tensor, num_splits: int = 1) -> tuple[Tensor, Tensor]:
    """Split-K x @ fn^T with the sum of squares of each split (SPEC §2.5).

    Split s of S covers 64-wide K blocks [s*q + min(s, r), ...) with q, r = divmod(ceil(K/64), S).
    Args: x [M, K] bf16; fn [N, K] fp32, N <= 32; 1 <= num_splits <= ceil(K/64).
    Returns: out [S, M, N] fp32, sqrsum [S, M] fp32.
    """
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.hc_prenorm_gemm(x, fn, num_splits)
    return _ops.hc_prenorm_gemm.default(x, fn, num_splits)


def tf32_hc_prenorm_gemm(x: Tensor, fn: Tensor, out: Tensor, sqrsum: Tensor,
                         num_splits: int | None = None) -> None:
    """Drop-in for DeepGEMM's ``tf32_hc_prenorm_gemm``: writes out and sqrsum in place.

    num_splits=None: out [M, N], sqrsum [M]; otherwise out [S, M, N], sqrsum [S, M].
    Neither output may overlap itself, the other or an input (as for out= arguments).
    M = 0 is a no-op.
    """
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.tf32_hc_prenorm_gemm(x, fn, out, sqrsum, num_splits)
    _ops.tf32_hc_prenorm_gemm.default(x, fn, out, sqrsum, num_splits)


def linear_bf16_fp32(x: Tensor, weight: Tensor) -> Tensor:
    """x [M, K] bf16 @ weight [N, K]^T bf16 -> [M, N] fp32, fp32 accumulation (SPEC §2.7).

    The CUDA backend follows ``MHC_BF16_FP32_GEMM_ALGO`` (cublas or fp32).
    """
    if envs.MHC_DISABLE_KERNELS.get():
        return reference.linear_bf16_fp32(x, weight)
    return _ops.linear_bf16_fp32.default(x, weight)
