"""The mHC ops in plain PyTorch: the oracle of the tests and the eager baseline of benchmarks.

Same signatures and semantics as ``mhc_ops`` (SPEC §2), computed with ordinary tensor ops in
``dtype`` (float32 by default; ``dtype=torch.float64`` for the reference the tests compare
against). Gate outputs come back in ``dtype``; bf16 outputs are rounded to bf16 once, at the end,
as the kernels do. Runs on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "sinkhorn",
    "mhc_pre",
    "mhc_post",
    "mhc_fused_post_pre",
    "mhc_post_pre",
    "hc_head",
    "mhc_stats",
    "mhc_combine",
    "mhc_post_combine",
    "mhc_shifted_post_pre",
    "hc_prenorm_gemm",
    "tf32_hc_prenorm_gemm",
    "linear_bf16_fp32",
    "split_ranges",
]


def sinkhorn(logits: Tensor, eps: float = 1e-6, repeat: int = 20) -> Tensor:
    """Sinkhorn-Knopp on the trailing n x n logits (SPEC §2.6); ends with a column step."""
    c = torch.softmax(logits, dim=-1) + eps
    c = c / (c.sum(-2, keepdim=True) + eps)
    for _ in range(max(repeat, 1) - 1):
        c = c / (c.sum(-1, keepdim=True) + eps)
        c = c / (c.sum(-2, keepdim=True) + eps)
    return c


def _flat(residual: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    lead = tuple(residual.shape[:-2])
    return residual.reshape(-1, *residual.shape[-2:]), lead


def _rmsnorm_bf16(v: Tensor, weight: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    z = v.to(torch.bfloat16).to(dtype)
    r = torch.rsqrt(z.square().mean(-1, keepdim=True) + eps)
    return (z * r * weight.to(dtype)).to(torch.bfloat16)


def _gates(res: Tensor, fn: Tensor, hc_scale: Tensor, hc_base: Tensor, rms_eps: float,
           hc_pre_eps: float, hc_sinkhorn_eps: float, hc_post_mult_value: float,
           sinkhorn_repeat: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, pre [T, n], post [T, n], comb [T, n, n]) of SPEC §2.1 steps 1-7 for res [T, n, H]."""
    T, n, H = res.shape
    x = res.to(dtype)
    xf = x.reshape(T, n * H)
    d = xf @ fn.to(dtype).t()
    r = torch.rsqrt(xf.square().sum(-1, keepdim=True) / (n * H) + rms_eps)
    m = d * r
    scale, base = hc_scale.to(dtype), hc_base.to(dtype)
    pre = torch.sigmoid(m[:, :n] * scale[0] + base[:n]) + hc_pre_eps
    post = torch.sigmoid(m[:, n : 2 * n] * scale[1] + base[n : 2 * n]) * hc_post_mult_value
    logits = (m[:, 2 * n :] * scale[2] + base[2 * n :]).reshape(T, n, n)
    comb = sinkhorn(logits, hc_sinkhorn_eps, sinkhorn_repeat)
    return x, pre, post, comb


def _stream_sum(x: Tensor, pre: Tensor, norm_weight: Tensor | None, norm_eps: float,
                dtype: torch.dtype) -> Tensor:
    """bf16(sum_i pre[i] * x[i]), then the folded RMSNorm (SPEC §2.1 steps 8-9); x [T, n, H]."""
    y = (pre.unsqueeze(-1) * x).sum(1)
    if norm_weight is None:
        return y.to(torch.bfloat16)
    return _rmsnorm_bf16(y, norm_weight, norm_eps, dtype)


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
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """(post_mix [..., n, 1], comb_mix [..., n, n], layer_input [..., H] bf16) of SPEC §2.1."""
    res, lead = _flat(residual)
    T, n, H = res.shape
    x, pre, post, comb = _gates(res, fn, hc_scale, hc_base, rms_eps, hc_pre_eps,
                                hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, dtype)
    layer_input = _stream_sum(x, pre, norm_weight, norm_eps, dtype)
    return (
        post.reshape(*lead, n, 1),
        comb.reshape(*lead, n, n),
        layer_input.reshape(*lead, H),
    )


def mhc_post(x: Tensor, residual: Tensor, post_mix: Tensor, comb_mix: Tensor, *,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """new[j] = post[j] * x + sum_i comb[i, j] * old[i], rounded to bf16 (SPEC §2.2)."""
    res, lead = _flat(residual)
    T, n, H = res.shape
    post = post_mix.reshape(T, n, 1).to(dtype)
    comb = comb_mix.reshape(T, n, n, 1).to(dtype)
    # In stream order, as SPEC §2.2 states it, one broadcast term per input stream: an einsum
    # here became a batched matmul with an inner dimension of n, which torch.compile does not
    # fuse (the compile baseline of mhc_post ran at ~11x its byte floor, T = 4096, H = 7168).
    out = post * x.reshape(T, 1, H).to(dtype)
    for i in range(n):
        out = out + comb[:, i] * res[:, i : i + 1].to(dtype)
    return out.to(torch.bfloat16).reshape(*lead, n, H)


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
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mhc_post, rounded to bf16, then mhc_pre on the result (SPEC §2.3)."""
    r = mhc_post(x, residual, post_mix, comb_mix, dtype=dtype)
    post, comb, layer_input = mhc_pre(r, fn, hc_scale, hc_base, rms_eps, hc_pre_eps,
                                      hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat,
                                      norm_weight, norm_eps, dtype=dtype)
    return r, post, comb, layer_input


mhc_post_pre = mhc_fused_post_pre


def hc_head(residual: Tensor, fn: Tensor, hc_scale: Tensor, hc_base: Tensor,
            rms_eps: float = 1e-6, hc_eps: float = 1e-6, *,
            dtype: torch.dtype = torch.float32) -> Tensor:
    """Collapse the n streams with sigmoid gates (SPEC §2.4); [..., H] bf16."""
    res, lead = _flat(residual)
    T, n, H = res.shape
    x = res.to(dtype)
    xf = x.reshape(T, n * H)
    r = torch.rsqrt(xf.square().sum(-1, keepdim=True) / (n * H) + rms_eps)
    mix = (xf @ fn.to(dtype).t()) * r
    pre = torch.sigmoid(mix * hc_scale.to(dtype)[0] + hc_base.to(dtype)) + hc_eps
    return (pre.unsqueeze(-1) * x).sum(1).to(torch.bfloat16).reshape(*lead, H)


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
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor]:
    """(pre_mix [..., n], post_mix [..., n, 1], comb_mix [..., n, n]) of SPEC §2.9: steps 1-7
    of mhc_pre with pre kept."""
    res, lead = _flat(residual)
    T, n, H = res.shape
    _, pre, post, comb = _gates(res, fn, hc_scale, hc_base, rms_eps, hc_pre_eps,
                                hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, dtype)
    return pre.reshape(*lead, n), post.reshape(*lead, n, 1), comb.reshape(*lead, n, n)


def mhc_combine(residual: Tensor, pre_mix: Tensor, norm_weight: Tensor | None = None,
                norm_eps: float = 1e-6, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """layer_input [..., H] bf16 = bf16(sum_i pre_mix[i] * residual[i]), optionally RMS-normed
    (SPEC §2.9); pre_mix [..., n] or [..., n, 1]."""
    res, lead = _flat(residual)
    T, n, H = res.shape
    pre = pre_mix.reshape(T, n).to(dtype)
    return _stream_sum(res.to(dtype), pre, norm_weight, norm_eps, dtype).reshape(*lead, H)


def mhc_post_combine(x: Tensor, residual: Tensor, post_mix: Tensor, comb_mix: Tensor,
                     pre_mix: Tensor, norm_weight: Tensor | None = None, norm_eps: float = 1e-6,
                     *, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """(residual_out, layer_input): mhc_post, then mhc_combine of its bf16 result with the
    carried pre_mix (SPEC §2.9)."""
    r = mhc_post(x, residual, post_mix, comb_mix, dtype=dtype)
    return r, mhc_combine(r, pre_mix, norm_weight, norm_eps, dtype=dtype)


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
    *,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(residual_out, layer_input, next_pre_mix, next_post_mix, next_comb_mix): mhc_post_combine,
    then mhc_stats of residual_out (SPEC §2.9)."""
    r, layer_input = mhc_post_combine(x, residual, post_mix, comb_mix, pre_mix, norm_weight,
                                      norm_eps, dtype=dtype)
    pre, post, comb = mhc_stats(r, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                                hc_post_mult_value, sinkhorn_repeat, dtype=dtype)
    return r, layer_input, pre, post, comb


def split_ranges(K: int, num_splits: int) -> list[tuple[int, int]]:
    """[k_begin, k_end) of every split: contiguous 64-wide blocks, remainder first (SPEC §2.5)."""
    blocks = -(-K // 64)
    q, rem = divmod(blocks, num_splits)
    out = []
    for s in range(num_splits):
        b0 = s * q + min(s, rem)
        nb = q + (1 if s < rem else 0)
        out.append((min(b0 * 64, K), min((b0 + nb) * 64, K)))
    return out


def hc_prenorm_gemm(x: Tensor, fn: Tensor, num_splits: int = 1, *,
                    dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """out [S, M, N] = x[:, Ks] @ fn[:, Ks]^T per split, sqrsum [S, M] (SPEC §2.5)."""
    xd, fd = x.to(dtype), fn.to(dtype)
    outs, sqs = [], []
    for k0, k1 in split_ranges(x.shape[1], num_splits):
        outs.append(xd[:, k0:k1] @ fd[:, k0:k1].t())
        sqs.append(xd[:, k0:k1].square().sum(-1))
    return torch.stack(outs), torch.stack(sqs)


def tf32_hc_prenorm_gemm(x: Tensor, fn: Tensor, out: Tensor, sqrsum: Tensor,
                         num_splits: int | None = None) -> None:
    """DeepGEMM form: writes out [M, N] / [S, M, N] and sqrsum [M] / [S, M]."""
    o, s = hc_prenorm_gemm(x, fn, num_splits or 1, dtype=torch.float32)
    out.copy_(o.reshape(out.shape))
    sqrsum.copy_(s.reshape(sqrsum.shape))


def linear_bf16_fp32(x: Tensor, weight: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """x [M, K] bf16 @ weight [N, K]^T bf16 -> [M, N] in dtype (float32 by default)."""
    return x.to(dtype) @ weight.to(dtype).t()
