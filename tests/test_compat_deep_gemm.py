"""mhc_ops.compat.deep_gemm: DeepGEMM's tf32_hc_prenorm_gemm with its keyword names and forms,
against mhc_ops' own op, and install() / uninstall() over a stand-in DeepGEMM whose function is
a torch.ops operator, as DeepGEMM exposes it (SPEC §2.5, §7.1)."""

import sys
import types

import pytest
import torch

import helpers as h
import mhc_ops
from mhc_ops.compat import deep_gemm as dg
from mhc_ops.compat._install import SignatureMismatch, signature_of

RECORDED = "(a, b, d, sqr_sum, num_splits=None)"

# Stand-in operators with DeepGEMM 2.8's schema and with a changed one. Defined once per
# process: the dispatcher keeps them.
_LIB = torch.library.Library("mhc_compat_test", "DEF")
_LIB.define("tf32_hc_prenorm_gemm(Tensor a, Tensor b, Tensor(d!) d, Tensor(sqr_sum!) sqr_sum, "
            "int? num_splits=None) -> ()")
_LIB.define("tf32_hc_prenorm_gemm_v0(Tensor x, Tensor fn, Tensor(a!) out, Tensor(b!) sqrsum, "
            "int num_split) -> ()")


def test_signature_is_deep_gemms():
    assert str(signature_of(dg.tf32_hc_prenorm_gemm)) == RECORDED
    assert str(signature_of(torch.ops.mhc_compat_test.tf32_hc_prenorm_gemm)) == RECORDED


@pytest.mark.parametrize("M", [0, 1, 13])
@pytest.mark.parametrize("num_splits", [None, 1, 16])
def test_keyword_call_writes_in_place(M, num_splits):
    N, K = 24, 4 * 256
    a = h.prenorm_inputs(M, N, K, seed=h.seed_of("dg", M, num_splits))
    lead = () if num_splits is None else (num_splits,)
    d = torch.full((*lead, M, N), float("nan"))
    sq = torch.full((*lead, M), float("nan"))
    assert dg.tf32_hc_prenorm_gemm(a=a["x"], b=a["fn"], d=d, sqr_sum=sq,
                                   num_splits=num_splits) is None
    d2, sq2 = torch.empty_like(d), torch.empty_like(sq)
    mhc_ops.tf32_hc_prenorm_gemm(a["x"], a["fn"], d2, sq2, num_splits)
    assert torch.equal(d, d2) and torch.equal(sq, sq2)
    if M:
        S = num_splits or 1
        h.check_prenorm_outputs(d.reshape(S, M, N), sq.reshape(S, M), a["x"], a["fn"], S)
    # positional, as vLLM's and sglang's wrappers call it
    dg.tf32_hc_prenorm_gemm(a["x"], a["fn"], d2, sq2, num_splits)
    assert torch.equal(d, d2)


def build_stack(monkeypatch, op):
    mod = types.ModuleType("deep_gemm")
    mod.tf32_hc_prenorm_gemm = op
    c = types.ModuleType("deep_gemm._C")
    c.tf32_hc_prenorm_gemm = op  # DeepGEMM binds it in _C and re-exports it
    monkeypatch.setitem(sys.modules, "deep_gemm", mod)
    monkeypatch.setitem(sys.modules, "deep_gemm._C", c)
    monkeypatch.setitem(sys.modules, "vllm.third_party.deep_gemm", None)
    return mod, c


@pytest.fixture
def clean_install():
    yield
    dg.uninstall()


def test_install_over_an_operator_and_uninstall(monkeypatch, clean_install):
    op = torch.ops.mhc_compat_test.tf32_hc_prenorm_gemm
    mod, c = build_stack(monkeypatch, op)
    names = dg.install()
    assert names == ["deep_gemm.tf32_hc_prenorm_gemm", "deep_gemm._C.tf32_hc_prenorm_gemm"]
    assert mod.tf32_hc_prenorm_gemm is dg.tf32_hc_prenorm_gemm is c.tf32_hc_prenorm_gemm
    # torch.ops itself is not touched
    assert torch.ops.mhc_compat_test.tf32_hc_prenorm_gemm is op
    assert dg.uninstall() == names
    assert mod.tf32_hc_prenorm_gemm is op and c.tf32_hc_prenorm_gemm is op


def test_install_refuses_another_schema(monkeypatch, clean_install):
    mod, _ = build_stack(monkeypatch, torch.ops.mhc_compat_test.tf32_hc_prenorm_gemm_v0)
    with pytest.raises(SignatureMismatch, match=r"deep_gemm\.tf32_hc_prenorm_gemm: installed "
                                                r"\(x, fn, out, sqrsum, num_split\)"):
        dg.install()
    assert mod.tf32_hc_prenorm_gemm is torch.ops.mhc_compat_test.tf32_hc_prenorm_gemm_v0


def test_install_without_deep_gemm_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "deep_gemm", None)
    monkeypatch.setitem(sys.modules, "vllm.third_party.deep_gemm", None)
    with pytest.raises(ImportError, match="DeepGEMM 2.8 is not importable"):
        dg.install()
