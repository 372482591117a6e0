"""Fake (meta) implementations: output metadata only, for FakeTensor and torch.compile."""

from __future__ import annotations

import torch
from torch.library import register_fake


@register_fake("mhc::mhc_pre")
def _mhc_pre(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
             hc_post_mult_value, sinkhorn_repeat, norm_weight, norm_eps):
    T, n, H = residual.shape
    return (
        residual.new_empty((T, n, 1), dtype=torch.float32),
        residual.new_empty((T, n, n), dtype=torch.float32),
        residual.new_empty((T, H)),
    )


@register_fake("mhc::mhc_post")
def _mhc_post(x, residual, post_mix, comb_mix):
    return residual.new_empty(residual.shape)


@register_fake("mhc::mhc_fused_post_pre")
def _mhc_fused_post_pre(x, residual, post_mix, comb_mix, fn, hc_scale, hc_base, rms_eps,
                        hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat,
                        norm_weight, norm_eps):
    T, n, H = residual.shape
    return (
        residual.new_empty((T, n, H)),
        residual.new_empty((T, n, 1), dtype=torch.float32),
        residual.new_empty((T, n, n), dtype=torch.float32),
        residual.new_empty((T, H)),
    )


@register_fake("mhc::hc_head")
def _hc_head(residual, fn, hc_scale, hc_base, rms_eps, hc_eps):
    T, n, H = residual.shape
    return residual.new_empty((T, H))


@register_fake("mhc::hc_prenorm_gemm")
def _hc_prenorm_gemm(x, fn, num_splits):
    M, N = x.shape[0], fn.shape[0]
    return (
        x.new_empty((num_splits, M, N), dtype=torch.float32),
        x.new_empty((num_splits, M), dtype=torch.float32),
    )


@register_fake("mhc::tf32_hc_prenorm_gemm")
def _tf32_hc_prenorm_gemm(x, fn, out, sqrsum, num_splits):
    return None


@register_fake("mhc::linear_bf16_fp32")
def _linear_bf16_fp32(x, weight):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)
