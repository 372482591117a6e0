"""Shapes the CUDA kernels must handle beyond the DeepSeek-V4 defaults, for pre, fused and head
together: every other hc_mult (1..8), hidden sizes with a partial K group, and T·n·H past 2^31
(the last tokens start past 2^31 elements). Checked against the float64 reference
(cuda_helpers.check_*), with NaN-filled outputs so that an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch

import cuda_helpers as ch
import helpers as h
import mhc_ops

pytestmark = ch.needs_cuda


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 8])
@pytest.mark.parametrize("T", [3, 200, 6000])  # decode split, mid split, FULL_K (at 132 SMs)
def test_other_hc_mult(n, T):
    H = 1024
    ch.check_pre(T, H, norm=T == 200, seed=h.seed_of("n", n, T), n=n)
    ch.check_fused(T, H, norm=False, seed=h.seed_of("nf", n, T), n=n)
    ch.check_head(T, H, seed=h.seed_of("nh", n, T), n=n)


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("H", [8, 40, 264, 1000, 7176])  # G = ceil(H/32) with a partial group
def test_odd_widths(H):
    for T in (1, 50, 5000 if H <= 1000 else 300):
        ch.check_pre(T, H, norm=True, seed=h.seed_of("w", H, T))
        ch.check_fused(T, H, norm=False, seed=h.seed_of("wf", H, T))
        ch.check_head(T, H, seed=h.seed_of("wh", H, T))


# T·n·H > 2^31 at the Pro width.
BIG_T, BIG_H = 74_900, 7168


@pytest.fixture(scope="module")
def big_inputs():
    need = BIG_T * ch.N_HC * BIG_H * 2 * 2 + BIG_T * BIG_H * 2 * 3
    if torch.cuda.mem_get_info()[0] < need * 1.2:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free on the GPU")
    g = ch.gen(8)
    assert BIG_T * ch.N_HC * BIG_H > 2**31
    x = ch.randn(g, BIG_T, BIG_H, dtype=torch.bfloat16)
    res = ch.randn(g, BIG_T, ch.N_HC, BIG_H, dtype=torch.bfloat16)
    post, comb = ch.post_gates(g, BIG_T, ch.N_HC)
    p = ch.pre_params(g, ch.N_HC, BIG_H, norm=True)
    yield x, res, post, comb, p
    del x, res
    torch.cuda.empty_cache()


def test_past_2_31_pre_head_post(big_inputs):
    x, res, post, comb, p = big_inputs
    idx = ch.rows(BIG_T)
    outs = mhc_ops.mhc_pre(res, **p)
    h.check_pre_outputs(tuple(o[idx] for o in outs), res[idx], p)
    del outs
    hp = ch.head_params(p)
    out = mhc_ops.hc_head(res, **hp)
    h.check_head_output(out[idx], {"residual": res[idx], **hp})
    del out
    r = mhc_ops.mhc_post(x, res, post, comb)
    h.check_post_output(r[idx], {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                                 "comb_mix": comb[idx]})


def test_past_2_31_fused(big_inputs):
    x, res, post, comb, p = big_inputs
    idx = ch.rows(BIG_T)
    outs = mhc_ops.mhc_fused_post_pre(x, res, post, comb, **p)
    r = outs[0][idx]
    h.check_post_output(r, {"x": x[idx], "residual": res[idx], "post_mix": post[idx],
                            "comb_mix": comb[idx]}, what="fused residual_out")
    h.check_pre_outputs(tuple(o[idx] for o in outs[1:]), r, p, what="fused")
