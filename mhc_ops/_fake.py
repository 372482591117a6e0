"""Fake (meta) implementations: for FakeTensor, the meta device and torch.compile.

The checks are not repeated here: each fake first calls ``mhc_ops._C.validate_<op>``, the
code that the CPU and CUDA entry points run (csrc/core/validate.h), on the fake or meta
tensors, with symbolic sizes under dynamic shapes. So a fake refuses exactly what the kernels
refuse, with the same message (op name, argument, expected versus actual), before it describes
the outputs; that includes a mix of devices with ``meta``, which the dispatcher routes here
rather than to a real kernel.

Signatures carry the schema defaults: a call through ``torch.ops.mhc.<op>`` that omits
defaulted arguments reaches the fake with only the arguments given.
"""

from __future__ import annotations

import torch
from torch.library import register_fake

from ._lib import _C


@register_fake("mhc::mhc_pre")
def _mhc_pre(residual, fn, hc_scale, hc_base, rms_eps=1e-6, hc_pre_eps=1e-6,
             hc_sinkhorn_eps=1e-6, hc_post_mult_value=2.0, sinkhorn_repeat=20,
             norm_weight=None, norm_eps=1e-6):
    _C.validate_mhc_pre(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                        hc_post_mult_value, sinkhorn_repeat, norm_weight, norm_eps)
    T, n, H = residual.shape
    return (
        residual.new_empty((T, n, 1), dtype=torch.float32),
        residual.new_empty((T, n, n), dtype=torch.float32),
        residual.new_empty((T, H)),
    )


@register_fake("mhc::mhc_post")
def _mhc_post(x, residual, post_mix, comb_mix):
    _C.validate_mhc_post(x, residual, post_mix, comb_mix)
    return residual.new_empty(residual.shape)


@register_fake("mhc::mhc_fused_post_pre")
def _mhc_fused_post_pre(x, residual, post_mix, comb_mix, fn, hc_scale, hc_base, rms_eps=1e-6,
                        hc_pre_eps=1e-6, hc_sinkhorn_eps=1e-6, hc_post_mult_value=2.0,
                        sinkhorn_repeat=20, norm_weight=None, norm_eps=1e-6):
    _C.validate_mhc_fused_post_pre(x, residual, post_mix, comb_mix, fn, hc_scale, hc_base,
                                   rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value,
                                   sinkhorn_repeat, norm_weight, norm_eps)
    T, n, H = residual.shape
    return (
        residual.new_empty((T, n, H)),
        residual.new_empty((T, n, 1), dtype=torch.float32),
        residual.new_empty((T, n, n), dtype=torch.float32),
        residual.new_empty((T, H)),
    )


@register_fake("mhc::hc_head")
def _hc_head(residual, fn, hc_scale, hc_base, rms_eps=1e-6, hc_eps=1e-6):
    _C.validate_hc_head(residual, fn, hc_scale, hc_base, rms_eps, hc_eps)
    T, n, H = residual.shape
    return residual.new_empty((T, H))



@register_fake("mhc::mhc_stats")
def _mhc_stats(residual, fn, hc_scale, hc_base, rms_eps=1e-6, hc_pre_eps=1e-6,
               hc_sinkhorn_eps=1e-6, hc_post_mult_value=2.0, sinkhorn_repeat=20):
    _C.validate_mhc_stats(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                          hc_post_mult_value, sinkhorn_repeat)
    T, n, H = residual.shape
    return (
        residual.new_empty((T, n), dtype=torch.float32),
        residual.new_empty((T, n, 1), dtype=torch.float32),
        residual.new_empty((T, n, n), dtype=torch.float32),
    )


@register_fake("mhc::mhc_combine")
def _mhc_combine(residual, pre_mix, norm_weight=None, norm_eps=1e-6):
    _C.validate_mhc_combine(residual, pre_mix, norm_weight, norm_eps)
    T, n, H = residual.shape
    return residual.new_empty((T, H))


@register_fake("mhc::mhc_post_combine")
def _mhc_post_combine(x, residual, post_mix, comb_mix, pre_mix, norm_weight=None,
                      norm_eps=1e-6):
    _C.validate_mhc_post_combine(x, residual, post_mix, comb_mix, pre_mix, norm_weight, norm_eps)
    T, n, H = residual.shape
    return residual.new_empty((T, n, H)), residual.new_empty((T, H))


@register_fake("mhc::mhc_shifted_post_pre")
def _mhc_shifted_post_pre(x, residual, post_mix, comb_mix, pre_mix, fn, hc_scale, hc_base,
                          rms_eps=1e-6, hc_pre_eps=1e-6, hc_sinkhorn_eps=1e-6,
                          hc_post_mult_value=2.0, sinkhorn_repeat=20, norm_weight=None,
                          norm_eps=1e-6):
    _C.validate_mhc_shifted_post_pre(x, residual, post_mix, comb_mix, pre_mix, fn, hc_scale,
                                     hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps,
                                     hc_post_mult_value, sinkhorn_repeat, norm_weight, norm_eps)
    T, n, H = residual.shape
    return (
        residual.new_empty((T, n, H)),
        residual.new_empty((T, H)),
        residual.new_empty((T, n), dtype=torch.float32),
        residual.new_empty((T, n, 1), dtype=torch.float32),
        residual.new_empty((T, n, n), dtype=torch.float32),
    )

@register_fake("mhc::hc_prenorm_gemm")
def _hc_prenorm_gemm(x, fn, num_splits=1):
    _C.validate_hc_prenorm_gemm(x, fn, num_splits)
    M, N = x.shape[0], fn.shape[0]
    return (
        x.new_empty((num_splits, M, N), dtype=torch.float32),
        x.new_empty((num_splits, M), dtype=torch.float32),
    )


@register_fake("mhc::tf32_hc_prenorm_gemm")
def _tf32_hc_prenorm_gemm(x, fn, out, sqrsum, num_splits=None):
    _C.validate_tf32_hc_prenorm_gemm(x, fn, out, sqrsum, num_splits)
    return None


@register_fake("mhc::linear_bf16_fp32")
def _linear_bf16_fp32(x, weight):
    _C.validate_linear_bf16_fp32(x, weight)
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)
