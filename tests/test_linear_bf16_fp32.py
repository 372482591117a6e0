"""linear_bf16_fp32 (SPEC §2.7): bf16 x bf16 -> fp32 with fp32 accumulation.

Bound (SPEC §3): normwise relative error ≤ 1e-5 against the float64 product. bf16 products
are exact in fp32, so only fp32 accumulation error (~sqrt(K)·2⁻²⁴) remains; a GEMM that
rounded its output (or accumulated) in bf16 lands near 1e-3 and fails.
"""

from __future__ import annotations

import math

import pytest
import torch

import cuda_helpers as ch
import helpers as h
import mhc_ops
from mhc_ops.plan import KernelType
from mhc_ops import reference

# (M, N, K): why the case is here.
CASES = [
    (1, 512, 4096),    # decode: one token through a router-sized projection
    (7, 24, 72),       # odd M, K not a multiple of 64
    (129, 1, 200),     # odd M, N = 1
    (64, 256, 7168),   # Pro width
    (3, 5, 8),         # tiny
]


def _check(out, x, w):
    ref = reference.linear_bf16_fp32(x.cpu(), w.cpu(), dtype=torch.float64)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.isfinite(out).all()
    if out.numel():
        e = h.normwise_rel_err(out, ref)
        assert e <= 1e-5, f"normwise relative error {e:.3e} > 1e-5"


@pytest.mark.parametrize("M,N,K", CASES)
def test_matches_reference(device, M, N, K):
    inp = h.linear_inputs(M, N, K, seed=h.seed_of("linear", M, N, K), device=device)
    out = torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"])
    assert out.device == inp["x"].device
    _check(out, inp["x"], inp["weight"])


def test_wrapper(device):
    inp = h.linear_inputs(9, 24, 128, seed=1, device=device)
    assert torch.equal(mhc_ops.linear_bf16_fp32(**inp),
                       torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"]))


def test_empty(device):
    inp = h.linear_inputs(0, 24, 128, seed=2, device=device)
    out = torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"])
    assert out.shape == (0, 24) and out.dtype == torch.float32 and out.device.type == device


@pytest.mark.parametrize("mode", h.VIEW_MODES)
def test_odd_views(device, mode):
    # Any strides and offsets give correct results; the bound is the contract (a BLAS may
    # pick another blocking for a transposed operand), and on the CPU the bits match too.
    inp = h.linear_inputs(7, 24, 200, seed=3, device=device)
    want = torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"])
    for names in (["x"], ["weight"], ["x", "weight"]):
        odd = {k: (h.odd_view(v, mode) if k in names else v) for k, v in inp.items()}
        got = torch.ops.mhc.linear_bf16_fp32(odd["x"], odd["weight"])
        _check(got, inp["x"], inp["weight"])
        if device == "cpu":
            assert torch.equal(got, want), f"{mode} view of {names}"


def test_nonfinite_row_isolated(device):
    inp = h.linear_inputs(9, 24, 256, seed=4, device=device)
    clean = torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"])
    x = inp["x"].clone()
    x[2, 7] = float("nan")
    x[6, 100] = float("inf")
    got = torch.ops.mhc.linear_bf16_fp32(x, inp["weight"])
    g, c = h.tokens_except(got, [2, 6]), h.tokens_except(clean, [2, 6])
    assert torch.equal(g, c) and torch.isfinite(g).all()


def test_deterministic(device):
    inp = h.linear_inputs(37, 64, 1024, seed=5, device=device)
    first = torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"])
    for _ in range(3):
        assert torch.equal(torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"]), first)


def test_checker_rejects_bf16_output():
    inp = h.linear_inputs(32, 64, 1024, seed=6)
    out = torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"])
    _check(out, inp["x"], inp["weight"])
    with pytest.raises(AssertionError, match="normwise"):
        _check(out.to(torch.bfloat16).float(), inp["x"], inp["weight"])


@pytest.mark.parametrize("algo", ["cublas", "fp32"])
def test_algo_flag(device, algo):
    # MHC_BF16_FP32_GEMM_ALGO picks the CUDA backend (SPEC §5); both meet the bound.
    inp = h.linear_inputs(33, 128, 4096, seed=7, device=device)
    with mhc_ops.envs.MHC_BF16_FP32_GEMM_ALGO.override(algo):
        out = torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"])
    _check(out, inp["x"], inp["weight"])


@pytest.mark.slow
@pytest.mark.parametrize("M,N,K", [(512, 512, 7168), (4096, 64, 4096)])
def test_matches_reference_large(device, M, N, K):
    inp = h.linear_inputs(M, N, K, seed=h.seed_of("linear-large", M, N, K), device=device)
    _check(torch.ops.mhc.linear_bf16_fp32(inp["x"], inp["weight"]), inp["x"], inp["weight"])


# ----------------------------------------------------------------------------------------------
# CUDA backends (docs/spec.md §2.7, §5).

@ch.cuda_test
@pytest.mark.parametrize("algo", ["cublas", "fp32"])
def test_linear_backends(algo, monkeypatch):
    monkeypatch.setenv("MHC_BF16_FP32_GEMM_ALGO", algo)
    g = ch.gen(9)
    for M, N, K in ((1, 256, 7168), (77, 512, 4096), (4096, 64, 1000)):
        x = ch.randn(g, M, K, dtype=torch.bfloat16)
        w = ch.randn(g, N, K, std=1 / math.sqrt(K), dtype=torch.bfloat16)
        out = mhc_ops.linear_bf16_fp32(x, w)
        ref = x.double() @ w.double().t()
        err = float((out.double() - ref).norm() / ref.norm())
        assert err <= 1e-5, f"{algo} {M}x{N}x{K}: normwise error {err:.2e}"
    variant = "fp32_gemm" if algo == "fp32" else "cublas"
    assert any(p.variant == variant for p in ch.launched(KernelType.LINEAR_BF16_FP32))


@ch.cuda_test
def test_linear_invalid_algo_warns_and_uses_cublas():
    # TORCH_WARN_ONCE fires once per process: run it in a fresh one.
    import subprocess
    import sys
    code = ("import torch, mhc_ops\n"
            "x = torch.randn(4, 64, device='cuda').bfloat16()\n"
            "w = torch.randn(8, 64, device='cuda').bfloat16()\n"
            "mhc_ops.linear_bf16_fp32(x, w)\n"
            "print(sorted({p[1] for _, p, _ in mhc_ops._C.launched_plans()}))\n")
    env = {**__import__("os").environ, "MHC_BF16_FP32_GEMM_ALGO": "tf32"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "MHC_BF16_FP32_GEMM_ALGO=tf32 is not one of" in r.stderr
    assert r.stdout.strip() == "['cublas']"
