"""torch.compile(fullgraph=True, dynamic=True) of a small mHC model built from the ops.

The model: embedding expanded to n = 4 streams -> mhc_pre -> stand-in sub-layer -> mhc_post
-> fused post/pre -> stand-in sub-layer -> mhc_post -> hc_head. The sub-layer is
linear_bf16_fp32 rounded to bf16, so every op in the graph is exact or opaque and the compiled
model must reproduce eager bit for bit. T = 129 compiles with a symbolic T; T = 0 and T = 1
are specialised by dynamo (0/1 specialisation) and recompile once each. TinyV41 builds the same
kind of model from the DeepSeek-V4.1 ops (SPEC §2.9).
"""

from __future__ import annotations

import math

import pytest
import torch

import helpers as h
import mhc_ops

N_HC, H, VOCAB = 4, 64, 97


class TinyMHC(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        g = h.gen(seed)
        self.embed = torch.nn.Parameter(h.randn(g, VOCAB, H, dtype=torch.bfloat16),
                                        requires_grad=False)
        for i in range(2):
            p = h.pre_params(g, N_HC, H, norm=True)
            w = h.randn(g, H, H, std=1 / math.sqrt(H), dtype=torch.bfloat16)
            for k, v in {**p, "w": w}.items():
                self.register_buffer(f"l{i}_{k}", v)
        hp = h.head_inputs(1, N_HC, H, seed=seed + 1)
        for k in ("fn", "hc_scale", "hc_base"):
            self.register_buffer(f"head_{k}", hp[k])

    def _p(self, i: int) -> dict:
        return {k: getattr(self, f"l{i}_{k}") for k in ("fn", "hc_scale", "hc_base",
                                                         "norm_weight")}

    def _sublayer(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return mhc_ops.linear_bf16_fp32(x, getattr(self, f"l{i}_w")).to(torch.bfloat16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.embedding(ids, self.embed)                # [T, H]
        residual = x.unsqueeze(1).expand(-1, N_HC, -1).contiguous()       # [T, n, H]
        post, comb, li = mhc_ops.mhc_pre(residual, **self._p(0))
        y = self._sublayer(0, li)
        residual, post, comb, li = mhc_ops.mhc_fused_post_pre(y, residual, post, comb,
                                                              **self._p(1))
        y = self._sublayer(1, li)
        residual = mhc_ops.mhc_post(y, residual, post, comb)
        return mhc_ops.hc_head(residual, self.head_fn, self.head_hc_scale, self.head_hc_base)


class TinyV41(TinyMHC):
    """The same model with DeepSeek-V4.1 hyper-connections (SPEC §2.9), through torch.ops.mhc:
    stats -> lagged combine -> sub-layer -> shifted post/pre -> sub-layer -> post_combine ->
    sub-layer -> post -> hc_head. The first combine carries the pre of the stats itself."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.mhc
        x = torch.nn.functional.embedding(ids, self.embed)
        residual = x.unsqueeze(1).expand(-1, N_HC, -1).contiguous()
        p0, p1 = self._p(0), self._p(1)
        gates0 = (p0["fn"], p0["hc_scale"], p0["hc_base"])
        gates1 = (p1["fn"], p1["hc_scale"], p1["hc_base"])
        pre, post, comb = ops.mhc_stats(residual, *gates0)
        li = ops.mhc_combine(residual, pre, p0["norm_weight"])
        y = self._sublayer(0, li)
        residual, li, pre_next, post, comb = ops.mhc_shifted_post_pre(
            y, residual, post, comb, pre, *gates1, norm_weight=p1["norm_weight"])
        y = self._sublayer(1, li)
        residual, li = ops.mhc_post_combine(y, residual, post, comb, pre_next.unsqueeze(-1))
        y = self._sublayer(0, li)
        residual = ops.mhc_post(y, residual, post, comb)
        return mhc_ops.hc_head(residual, self.head_fn, self.head_hc_scale, self.head_hc_base)


@pytest.mark.parametrize("model_cls, seed", [(TinyMHC, 1), (TinyV41, 3)],
                         ids=["v4", "v4.1"])
def test_compiled_model_matches_eager(device, model_cls, seed):
    torch._dynamo.reset()
    model = model_cls(seed=seed).to(device)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    g = h.gen(seed + 1)
    for T in (129, 1, 0, 7):
        ids = torch.randint(0, VOCAB, (T,), generator=g).to(device)
        want = model(ids)
        # T = 7 must reuse the symbolic-T graph compiled for 129: no recompile
        with torch._dynamo.config.patch(error_on_recompile=(T == 7)):
            got = compiled(ids)
        assert got.shape == (T, H) and got.dtype == torch.bfloat16
        assert torch.isfinite(got).all()
        assert torch.equal(got, want), T


def test_compiled_prenorm_gemm(device):
    # The mutating DeepGEMM form and the functional one inside one compiled graph
    # (auto-functionalised), dynamic in M.
    torch._dynamo.reset()

    def f(x, fn):
        out = torch.empty(x.shape[0], fn.shape[0], device=x.device)
        sq = torch.empty(x.shape[0], device=x.device)
        mhc_ops.tf32_hc_prenorm_gemm(x, fn, out, sq)
        o3, q3 = mhc_ops.hc_prenorm_gemm(x, fn, 3)
        return out * 2, sq, o3.sum(0), q3

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for M in (33, 0, 1):
        inp = h.prenorm_inputs(M, 24, 200, seed=M, device=device)
        want, got = f(**inp), cf(**inp)
        for a, b in zip(got, want):
            assert torch.equal(a, b), M
