"""Fake (meta) implementations: output metadata only, for FakeTensor and torch.compile.

Signatures carry the schema defaults: a call through ``torch.ops.mhc.<op>`` that omits
defaulted arguments reaches the fake with only the arguments given. Device is metadata too: a
mix of devices that includes ``meta`` dispatches here rather than to a real kernel, so the
fakes reject it with the same message as csrc/core/checks.h.
"""

from __future__ import annotations

import torch
from torch.library import register_fake


def _same_device(op, ref_name, ref, **tensors):
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"{op}: {name} must be on the same device as {ref_name} "
                               f"({ref.device}); got {t.device}")


@register_fake("mhc::mhc_pre")
def _mhc_pre(residual, fn, hc_scale, hc_base, rms_eps=1e-6, hc_pre_eps=1e-6,
             hc_sinkhorn_eps=1e-6, hc_post_mult_value=2.0, sinkhorn_repeat=20,
             norm_weight=None, norm_eps=1e-6):
    _same_device("mhc_pre", "residual", residual, fn=fn, hc_scale=hc_scale, hc_base=hc_base,
                 norm_weight=norm_weight)
    T, n, H = residual.shape
    return (
        residual.new_empty((T, n, 1), dtype=torch.float32),
        residual.new_empty((T, n, n), dtype=torch.float32),
        residual.new_empty((T, H)),
    )


@register_fake("mhc::mhc_post")
def _mhc_post(x, residual, post_mix, comb_mix):
    _same_device("mhc_post", "residual", residual, x=x, post_mix=post_mix, comb_mix=comb_mix)
    return residual.new_empty(residual.shape)


@register_fake("mhc::mhc_fused_post_pre")
def _mhc_fused_post_pre(x, residual, post_mix, comb_mix, fn, hc_scale, hc_base, rms_eps=1e-6,
                        hc_pre_eps=1e-6, hc_sinkhorn_eps=1e-6, hc_post_mult_value=2.0,
                        sinkhorn_repeat=20, norm_weight=None, norm_eps=1e-6):
    _same_device("mhc_fused_post_pre", "residual", residual, x=x, post_mix=post_mix,
                 comb_mix=comb_mix, fn=fn, hc_scale=hc_scale, hc_base=hc_base,
                 norm_weight=norm_weight)
    T, n, H = residual.shape
    return (
        residual.new_empty((T, n, H)),
        residual.new_empty((T, n, 1), dtype=torch.float32),
        residual.new_empty((T, n, n), dtype=torch.float32),
        residual.new_empty((T, H)),
    )


@register_fake("mhc::hc_head")
def _hc_head(residual, fn, hc_scale, hc_base, rms_eps=1e-6, hc_eps=1e-6):
    _same_device("hc_head", "residual", residual, fn=fn, hc_scale=hc_scale, hc_base=hc_base)
    T, n, H = residual.shape
    return residual.new_empty((T, H))


@register_fake("mhc::hc_prenorm_gemm")
def _hc_prenorm_gemm(x, fn, num_splits=1):
    _same_device("hc_prenorm_gemm", "x", x, fn=fn)
    M, N = x.shape[0], fn.shape[0]
    return (
        x.new_empty((num_splits, M, N), dtype=torch.float32),
        x.new_empty((num_splits, M), dtype=torch.float32),
    )


@register_fake("mhc::tf32_hc_prenorm_gemm")
def _tf32_hc_prenorm_gemm(x, fn, out, sqrsum, num_splits=None):
    _same_device("tf32_hc_prenorm_gemm", "x", x, fn=fn, out=out, sqrsum=sqrsum)
    return None


@register_fake("mhc::linear_bf16_fp32")
def _linear_bf16_fp32(x, weight):
    _same_device("linear_bf16_fp32", "x", x, weight=weight)
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)
