"""The flag registry (SPEC §5) and the switches it drives."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import helpers as h
import mhc_ops
from mhc_ops import envs


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("MHC_"):
            monkeypatch.delenv(name)
    envs._warned.clear()
    envs._reported_unknown.clear()


def test_every_flag_of_the_spec_is_declared_once_with_its_default():
    expected = {
        "MHC_FUSE_POST_PRE": True,
        "MHC_BF16_FP32_GEMM_ALGO": "cublas",
        "MHC_BATCH_INVARIANT": False,
        "MHC_WARMUP_MAX_TOKENS": 8192,
        "MHC_SKIP_WARMUP": False,
        "MHC_DISABLE_KERNELS": False,
        "MHC_LOG_LEVEL": "WARNING",
    }
    assert {name: f.default for name, f in envs.FLAGS.items()} == expected
    for name, f in envs.FLAGS.items():
        assert getattr(envs, name) is f and f.name == name and f.doc
        assert f.get() == expected[name] and not f.is_set()


@pytest.mark.parametrize("raw,value", [("1", True), ("true", True), ("ON", True),
                                       ("0", False), ("no", False), ("False", False)])
def test_bool_parsing(monkeypatch, raw, value):
    monkeypatch.setenv("MHC_FUSE_POST_PRE", raw)
    assert envs.MHC_FUSE_POST_PRE.get() is value


def test_typed_values(monkeypatch):
    monkeypatch.setenv("MHC_WARMUP_MAX_TOKENS", " 4096 ")
    assert envs.MHC_WARMUP_MAX_TOKENS.get() == 4096
    monkeypatch.setenv("MHC_BF16_FP32_GEMM_ALGO", "FP32")
    assert envs.MHC_BF16_FP32_GEMM_ALGO.get() == "fp32"
    monkeypatch.setenv("MHC_LOG_LEVEL", "debug")
    assert envs.MHC_LOG_LEVEL.get() == "DEBUG"


@pytest.mark.parametrize("name,raw", [("MHC_FUSE_POST_PRE", "maybe"),
                                      ("MHC_WARMUP_MAX_TOKENS", "lots"),
                                      ("MHC_BF16_FP32_GEMM_ALGO", "cutlass"),
                                      ("MHC_LOG_LEVEL", "LOUD")])
def test_invalid_value_warns_once_and_falls_back(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    flag = envs.FLAGS[name]
    with pytest.warns(UserWarning, match=f"{name}='{raw}' is invalid"):
        assert flag.get() == flag.default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert flag.get() == flag.default  # second read: no second warning


def test_set_is_set_clear():
    f = envs.MHC_WARMUP_MAX_TOKENS
    f.set(1234)
    assert f.is_set() and f.get() == 1234 and os.environ["MHC_WARMUP_MAX_TOKENS"] == "1234"
    with pytest.raises(ValueError):
        f.set("many")
    assert f.get() == 1234
    f.clear()
    assert not f.is_set() and f.get() == 8192


def test_override_restores_unset_and_previous_values():
    f = envs.MHC_FUSE_POST_PRE
    with f.override(False):
        assert f.get() is False and os.environ["MHC_FUSE_POST_PRE"] == "0"
    assert not f.is_set()
    f.set(False)
    with f.override(True):
        assert f.get() is True
    assert f.get() is False and f.is_set()
    with pytest.raises(RuntimeError):
        with f.override(True):
            raise RuntimeError("boom")
    assert f.get() is False


def test_unknown_mhc_variable_is_reported_once(monkeypatch):
    monkeypatch.setenv("MHC_FUSE_POSTPRE", "1")
    monkeypatch.setenv("MHC_BUILD_CUDA", "0")  # a build-time variable, not a typo
    with pytest.warns(UserWarning, match="unknown environment variable MHC_FUSE_POSTPRE.*"
                                         "did you mean MHC_FUSE_POST_PRE"):
        assert envs.check_unknown() == ["MHC_FUSE_POSTPRE"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envs.check_unknown()


def test_python_m_envs_prints_flags_and_paths():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MHC_")}
    env["MHC_FUSE_POST_PRE"] = "0"
    out = subprocess.run([sys.executable, "-m", "mhc_ops.envs"], env=env, capture_output=True,
                         text=True, check=True).stdout
    for name in envs.FLAGS:
        assert name in out
    assert "mhc_post_pre" in out and "torch.ops.mhc.mhc_post + torch.ops.mhc.mhc_pre" in out


def test_log_level_configures_the_package_logger(monkeypatch):
    monkeypatch.setenv("MHC_LOG_LEVEL", "DEBUG")
    assert envs.configure_logging().level == 10
    monkeypatch.delenv("MHC_LOG_LEVEL")
    assert envs.configure_logging().level == 30


def _post_pre_inputs(T=5, n=4, H=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = n * H
    return (torch.randn(T, H, generator=g).bfloat16(),
            torch.randn(T, n, H, generator=g).bfloat16(),
            2 * torch.rand(T, n, 1, generator=g),
            torch.softmax(torch.randn(T, n, n, generator=g), -2),
            torch.randn(n * (n + 2), K, generator=g) / K ** 0.5,
            0.5 + torch.rand(3, generator=g),
            0.5 * torch.randn(n * (n + 2), generator=g))


def test_fuse_flag_switches_the_path_and_both_agree():
    args = _post_pre_inputs()
    with h.OpLog() as log:
        fused = mhc_ops.mhc_post_pre(*args)
    assert log.ops == ["mhc_fused_post_pre"]
    with envs.MHC_FUSE_POST_PRE.override(False), h.OpLog() as log:
        unfused = mhc_ops.mhc_post_pre(*args)
    assert log.ops == ["mhc_post", "mhc_pre"]
    assert torch.equal(fused[0], unfused[0])  # residual: bit-identical by contract
    for a, b in zip(fused[1:], unfused[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_disable_kernels_routes_to_the_reference():
    args = _post_pre_inputs()
    with envs.MHC_DISABLE_KERNELS.override(True), h.OpLog() as log:
        out = mhc_ops.mhc_fused_post_pre(*args)
        head = mhc_ops.hc_head(args[1], args[4][:4], args[5][:1], args[6][:4])
    assert log.ops == []
    ref = mhc_ops.reference.mhc_fused_post_pre(*args)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    assert torch.equal(head, mhc_ops.reference.hc_head(args[1], args[4][:4], args[5][:1],
                                                       args[6][:4]))


def test_flag_flip_after_compile_never_half_applies():
    # Under torch.compile the flag value seen while tracing is part of the graph: a flip after
    # compiling must leave each compiled graph entirely on one path (fused, or post + pre).
    f, graphs = h.compiled_recording_mhc_ops(mhc_ops.mhc_post_pre)
    args = _post_pre_inputs()
    first = f(*args)
    with envs.MHC_FUSE_POST_PRE.override(False):
        second = f(*args)
        eager = mhc_ops.mhc_post_pre(*args)
    torch._dynamo.reset()
    fused_graph = {"mhc.mhc_fused_post_pre.default"}
    unfused_graph = {"mhc.mhc_post.default", "mhc.mhc_pre.default"}
    assert graphs and all(g in (fused_graph, unfused_graph) for g in graphs)
    assert graphs[0] == fused_graph
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert torch.equal(second[0], eager[0])
