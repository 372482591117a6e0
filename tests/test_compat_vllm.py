"""mhc_ops.compat.vllm: vLLM 0.33's DeepSeek-V4 mHC functions, called exactly as vLLM's model
code calls them, against mhc_ops' own ops (bit-identical where the math is the same call), and
install() / uninstall() / the plugin's register() on a stand-in of vLLM's module tree
(SPEC §7.1)."""

import logging
import sys
import types

import pytest
import torch

import helpers as h
import mhc_ops
from mhc_ops import envs
from mhc_ops.compat import vllm as vl
from mhc_ops.compat._install import SignatureMismatch, signature_of

N, H = 4, 64
DSV4 = (1e-6, 1e-6, 1e-6, 2.0, 20)  # rms, pre, sinkhorn eps, post mult, repeat

# vLLM 0.33's signatures as its source spells them (annotations dropped)
RECORDED = {
    "mhc_pre_tilelang": "(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, "
                        "hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, n_splits=1, "
                        "norm_weight=None, norm_eps=1e-06)",
    "mhc_post_tilelang": "(x, residual, post_layer_mix, comb_res_mix)",
    "mhc_fused_post_pre_tilelang": "(x, residual, post_layer_mix, comb_res_mix, fn, hc_scale, "
                                   "hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, "
                                   "hc_post_mult_value, sinkhorn_repeat, n_splits=1, tile_n=1, "
                                   "norm_weight=None, norm_eps=1e-06)",
    "mhc_pre_broadcast_tilelang": "(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, "
                                  "hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, "
                                  "n_splits=1, norm_weight=None, norm_eps=1e-06, "
                                  "fn_broadcast=None)",
    "hc_head_fused_kernel_tilelang": "(hs_flat, fn, hc_scale, hc_base, rms_eps, hc_eps)",
}
MODULE = "vllm.model_executor.kernels.mhc.tilelang"


@pytest.fixture(autouse=True)
def no_flags(monkeypatch):
    for name in ("MHC_DISABLE_KERNELS", "MHC_FUSE_POST_PRE", "MHC_BATCH_INVARIANT"):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------------------------
# The functions, as vLLM's model code calls them


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_signatures_are_vllms(name):
    assert str(signature_of(getattr(vl, name))) == RECORDED[name]


@pytest.mark.parametrize("T", [0, 1, 7])
def test_mhc_pre_twelve_positional_arguments(T):
    a = h.pre_inputs(T, N, H, seed=h.seed_of("vl_pre", T), norm=True)
    w = a["norm_weight"]
    got = vl.mhc_pre_tilelang(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4, 1, w,
                              1e-6)
    want = mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4, w, 1e-6)
    h.assert_same(got, want)
    assert got[0].shape == (T, N, 1) and got[1].shape == (T, N, N) and got[2].shape == (T, H)


def test_mhc_pre_defaults_keywords_and_fp32_norm_weight():
    a = h.pre_inputs(6, N, H, seed=h.seed_of("vl_pre_kw"), norm=True)
    got = vl.mhc_pre_tilelang(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4)
    h.assert_same(got, mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"]))
    h.check_pre_outputs(got, a["residual"], dict(a, norm_weight=None), what="vllm mhc_pre")
    w32 = a["norm_weight"].float() + 1e-3
    got = vl.mhc_pre_tilelang(residual=a["residual"], fn=a["fn"], hc_scale=a["hc_scale"],
                              hc_base=a["hc_base"], rms_eps=1e-6, hc_pre_eps=1e-6,
                              hc_sinkhorn_eps=1e-6, hc_post_mult_value=2.0, sinkhorn_repeat=20,
                              norm_weight=w32)  # norm_eps: vLLM's default 1e-6
    want = mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"],
                           norm_weight=w32.bfloat16(), norm_eps=1e-6)
    h.assert_same(got, want)
    # norm_eps=None is not vLLM's API, but it means its default rather than an error
    h.assert_same(vl.mhc_pre_tilelang(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4,
                                    norm_weight=w32, norm_eps=None), want)


@pytest.mark.parametrize("T", [0, 3])
def test_mhc_post(T):
    a = h.post_inputs(T, N, H, seed=h.seed_of("vl_post", T))
    h.assert_same(vl.mhc_post_tilelang(a["x"], a["residual"], a["post_mix"], a["comb_mix"]),
                mhc_ops.mhc_post(**a))


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("T", [0, 1, 9])
def test_mhc_fused_post_pre_sixteen_positional_arguments(T, fuse):
    a = h.fused_inputs(T, N, H, seed=h.seed_of("vl_fused", T), norm=True)
    pre = (a["fn"], a["hc_scale"], a["hc_base"])
    with envs.MHC_FUSE_POST_PRE.override(fuse):
        got = vl.mhc_fused_post_pre_tilelang(a["x"], a["residual"], a["post_mix"].reshape(T, N),
                                             a["comb_mix"], *pre, *DSV4, 1, 1,
                                             a["norm_weight"].float(), 1e-6)
    want = mhc_ops.mhc_fused_post_pre(a["x"], a["residual"], a["post_mix"], a["comb_mix"], *pre,
                                      *DSV4, a["norm_weight"], 1e-6)
    assert [t.shape for t in got] == [(T, N, H), (T, N, 1), (T, N, N), (T, H)]
    if fuse:
        h.assert_same(got, want)
    else:
        h.assert_same(got[0], want[0])
        h.assert_same(got[1:], mhc_ops.mhc_pre(got[0], *pre, *DSV4, a["norm_weight"], 1e-6))


@pytest.mark.parametrize("T", [0, 5])
def test_mhc_pre_broadcast(T):
    a = h.pre_inputs(T, N, H, seed=h.seed_of("vl_bcast", T), norm=True)
    emb = a["residual"][:, 0]  # [T, H]
    fn_b = a["fn"].reshape(-1, N, H).sum(1)  # what vLLM precomputes; not needed here
    r, post, comb, li = vl.mhc_pre_broadcast_tilelang(emb, a["fn"], a["hc_scale"], a["hc_base"],
                                                      *DSV4, 1, a["norm_weight"], 1e-6, fn_b)
    streams = emb.unsqueeze(1).expand(T, N, H)
    assert r.shape == (T, N, H) and torch.equal(r, streams)
    h.assert_same((post, comb, li), mhc_ops.mhc_pre(streams.contiguous(), a["fn"], a["hc_scale"],
                                                  a["hc_base"], *DSV4, a["norm_weight"], 1e-6))
    with pytest.raises(ValueError, match="mhc_pre_broadcast_tilelang: norm_weight"):
        vl.mhc_pre_broadcast_tilelang(emb, a["fn"], a["hc_scale"], a["hc_base"], *DSV4)


@pytest.mark.parametrize("T", [0, 5])
def test_hc_head_scalar_scale(T):
    a = h.head_inputs(T, N, H, seed=h.seed_of("vl_head", T))
    want = mhc_ops.hc_head(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], 1e-6, 1e-6)
    h.assert_same(vl.hc_head_fused_kernel_tilelang(a["residual"], a["fn"],
                                                 a["hc_scale"].reshape(()), a["hc_base"], 1e-6,
                                                 1e-6), want)
    h.assert_same(vl.hc_head_fused_kernel_tilelang(hs_flat=a["residual"], fn=a["fn"],
                                                 hc_scale=a["hc_scale"], hc_base=a["hc_base"],
                                                 rms_eps=1e-6, hc_eps=1e-6), want)


# ----------------------------------------------------------------------------------------------
# install() / uninstall() / register() on a stand-in of vLLM's module tree


def stub(name: str, params: str):
    ns = {}
    exec(f"def {name}{params}:\n    return 'vllm'", ns)  # noqa: S102 - a signature stand-in
    return ns[name]


def build_stack(monkeypatch, overrides=None):
    sigs = dict(RECORDED, **(overrides or {}))
    parts = MODULE.split(".")
    for i in range(1, len(parts)):
        n = ".".join(parts[:i])
        monkeypatch.setitem(sys.modules, n, types.ModuleType(n))
    mod = types.ModuleType(MODULE)
    for n, p in sigs.items():
        setattr(mod, n, stub(n, p))
    monkeypatch.setitem(sys.modules, MODULE, mod)
    # vLLM's DeepSeek-V4 model imports the functions by name
    model = types.ModuleType("vllm.models.deepseek_v4.nvidia.model")
    model.mhc_pre_tilelang = mod.mhc_pre_tilelang
    model.mhc_fused_post_pre_tilelang = mod.mhc_fused_post_pre_tilelang
    monkeypatch.setitem(sys.modules, model.__name__, model)
    return mod, model


@pytest.fixture
def clean_install():
    yield
    vl.uninstall()


def test_register_installs_and_uninstall_restores(monkeypatch, caplog, clean_install):
    mod, model = build_stack(monkeypatch)
    before = {n: getattr(mod, n) for n in RECORDED}
    with caplog.at_level(logging.WARNING, logger="mhc_ops.compat"):
        vl.register()
        vl.register()  # vLLM may load plugins more than once per process
    assert caplog.text.count("installed mhc_ops over vLLM 0.33") == 1
    for n in RECORDED:
        assert getattr(mod, n) is getattr(vl, n)
    assert model.mhc_pre_tilelang is vl.mhc_pre_tilelang
    assert model.mhc_fused_post_pre_tilelang is vl.mhc_fused_post_pre_tilelang

    a = h.pre_inputs(3, N, H, seed=h.seed_of("vl_installed"))
    h.assert_same(model.mhc_pre_tilelang(a["residual"], a["fn"], a["hc_scale"], a["hc_base"],
                                       *DSV4, 1, None, 1e-6),
                mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"]))

    restored = vl.uninstall()
    assert f"{MODULE}.mhc_pre_tilelang" in restored
    assert "vllm.models.deepseek_v4.nvidia.model.mhc_pre_tilelang" in restored
    for n, f in before.items():
        assert getattr(mod, n) is f
    assert model.mhc_pre_tilelang is before["mhc_pre_tilelang"] and not vl.installed()


def test_install_refuses_a_changed_signature(monkeypatch, clean_install):
    changed = RECORDED["mhc_pre_tilelang"].replace("norm_eps=1e-06", "norm_eps=None")
    mod, model = build_stack(monkeypatch, {"mhc_pre_tilelang": changed})
    with pytest.raises(SignatureMismatch) as e:
        vl.register()
    msg = str(e.value)
    assert f"{MODULE}.mhc_pre_tilelang" in msg and "norm_eps=None" in msg
    assert "norm_eps=1e-06" in msg
    assert mod.mhc_post_tilelang(None, None, None, None) == "vllm" and not vl.installed()


def test_a_wrapped_stack_function_is_judged_by_its_signature(monkeypatch, clean_install):
    """A decorator with functools.wraps (as custom-op registration keeps) reads as the
    function it wraps."""
    import functools

    mod, _ = build_stack(monkeypatch)
    inner = mod.mhc_post_tilelang

    @functools.wraps(inner)
    def wrapped(*args, **kwargs):
        return inner(*args, **kwargs)

    mod.mhc_post_tilelang = wrapped
    assert f"{MODULE}.mhc_post_tilelang" in vl.install()
    vl.uninstall()
    assert mod.mhc_post_tilelang is wrapped


def test_install_without_vllm_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, MODULE, None)
    with pytest.raises(ImportError, match="vLLM 0.33 is not importable"):
        vl.install()
    assert not vl.installed()


# vLLM registers each function as torch.ops.vllm.<name> too (with its CUDA kernel); stand-ins
# with the schemas vLLM infers from its signatures, in namespaces of their own (the dispatcher
# keeps definitions for the life of the process), with CPU kernels.
_OK = torch.library.Library("vllm_compat_ok", "DEF")
_OK.define("mhc_post_tilelang(Tensor x, Tensor residual, Tensor post_layer_mix, "
           "Tensor comb_res_mix) -> Tensor")
_OK.define("mhc_pre_tilelang(Tensor residual, Tensor fn, Tensor hc_scale, Tensor hc_base, "
           "float rms_eps, float hc_pre_eps, float hc_sinkhorn_eps, float hc_post_mult_value, "
           "int sinkhorn_repeat, int n_splits=1, Tensor? norm_weight=None, "
           "float norm_eps=1e-06) -> (Tensor, Tensor, Tensor)")
_OK.impl("mhc_post_tilelang", lambda x, residual, post, comb: torch.zeros_like(residual), "CPU")
_OK.impl("mhc_pre_tilelang", lambda *a: (torch.zeros(1), torch.zeros(1), torch.zeros(1)), "CPU")
_BAD = torch.library.Library("vllm_compat_bad", "DEF")
_BAD.define("mhc_post_tilelang(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix) "
            "-> Tensor")
_BAD.impl("mhc_post_tilelang", lambda x, residual, post, comb: torch.zeros_like(residual), "CPU")


def test_install_takes_over_the_torch_ops_registrations(monkeypatch, caplog, clean_install):
    mod, _ = build_stack(monkeypatch)
    monkeypatch.setattr(vl._PATCHER, "op_namespace", "vllm_compat_ok")
    a = h.post_inputs(3, N, H, seed=h.seed_of("vl_ops"))
    op = torch.ops.vllm_compat_ok.mhc_post_tilelang
    args = (a["x"], a["residual"], a["post_mix"], a["comb_mix"])
    assert torch.equal(op(*args), torch.zeros_like(a["residual"]))
    with caplog.at_level(logging.WARNING, logger="mhc_ops.compat"):
        names = vl.install()
    # the stand-in registers CPU kernels only (a CUDA build of torch may list more keys)
    assert any(n.startswith("torch.ops.vllm_compat_ok.mhc_post_tilelang (") and "CPU" in n
               for n in names), names
    assert "torch.ops.vllm_compat_ok.mhc_pre_tilelang (" in caplog.text
    h.assert_same(op(*args), mhc_ops.mhc_post(**a))
    p = h.pre_inputs(2, N, H, seed=h.seed_of("vl_ops_pre"))
    h.assert_same(tuple(torch.ops.vllm_compat_ok.mhc_pre_tilelang(
        p["residual"], p["fn"], p["hc_scale"], p["hc_base"], *DSV4)),
        mhc_ops.mhc_pre(p["residual"], p["fn"], p["hc_scale"], p["hc_base"]))
    assert any(n.startswith("torch.ops.vllm_compat_ok.mhc_post_tilelang (")
               for n in vl.uninstall())
    assert torch.equal(op(*args), torch.zeros_like(a["residual"]))  # vLLM's kernel again


def test_install_refuses_a_changed_operator_schema(monkeypatch, clean_install):
    mod, _ = build_stack(monkeypatch)
    monkeypatch.setattr(vl._PATCHER, "op_namespace", "vllm_compat_bad")
    with pytest.raises(SignatureMismatch, match=r"torch\.ops\.vllm_compat_bad\.mhc_post_tilelang"
                                                r": installed \(x, residual, post_mix, comb_mix\)"):
        vl.install()
    assert mod.mhc_post_tilelang(None, None, None, None) == "vllm" and not vl.installed()
    t = torch.zeros(1, N, H, dtype=torch.bfloat16)
    assert torch.equal(torch.ops.vllm_compat_bad.mhc_post_tilelang(t[:, 0], t, t, t), t)


# ----------------------------------------------------------------------------------------------
# DeepSeek-V4.1 (SPEC §2.9, §7.1): vLLM's delayed pre and its boundary (vLLM 0.33 has no
# function named mhc_shifted_post_pre; mhc_fused_post_pre_delayed_tilelang is that boundary)

RECORDED_V41 = {
    "mhc_pre_delayed_tilelang": "(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, "
                                "hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, "
                                "pre_mix=None, x=None, norm_weight=None, norm_eps=1e-06)",
    "mhc_fused_post_pre_delayed_tilelang": "(x, residual, post_layer_mix, comb_res_mix, fn, "
                                           "hc_scale, hc_base, rms_eps, hc_pre_eps, "
                                           "hc_sinkhorn_eps, hc_post_mult_value, "
                                           "sinkhorn_repeat, pre_mix=None, norm_weight=None, "
                                           "norm_eps=1e-06, capture_aux=False)",
}


def v41_inputs(T, *, seed):
    a = h.post_inputs(T, N, H, seed=seed)
    g = h.gen(seed + 1)
    pre = torch.sigmoid(h.randn(g, T, N)) + 1e-6
    return {**a, "pre_mix": pre, **h.pre_params(g, N, H, norm=True)}


def stream0(residual):
    """vLLM's model-entry pre: residual stream 0."""
    pre = torch.zeros(residual.shape[0], N)
    pre[:, 0] = 1
    return pre


@pytest.mark.parametrize("name", sorted(RECORDED_V41))
def test_v41_signatures_are_vllms(name):
    assert str(signature_of(getattr(vl, name))) == RECORDED_V41[name]
    assert name in vl.__all__


@pytest.mark.parametrize("T", [0, 1, 7])
def test_mhc_pre_delayed_is_stats_then_combine(T):
    a = v41_inputs(T, seed=h.seed_of("vl41_pre", T))
    p = (a["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    w = a["norm_weight"]
    post, comb, li, next_pre = vl.mhc_pre_delayed_tilelang(*p, *DSV4, a["pre_mix"], None, w,
                                                           1e-6)
    assert [t.shape for t in (post, comb, li, next_pre)] == [(T, N, 1), (T, N, N), (T, H),
                                                             (T, N)]
    pre_s, post_s, comb_s = mhc_ops.mhc_stats(*p)
    h.assert_same((post, comb, next_pre), (post_s, comb_s, pre_s))
    h.assert_same(li, mhc_ops.mhc_combine(a["residual"], a["pre_mix"], w))
    # keywords, no norm (a float32 weight is rounded once, as vLLM does)
    got = vl.mhc_pre_delayed_tilelang(*p, *DSV4, pre_mix=a["pre_mix"])
    h.assert_same(got[2], mhc_ops.mhc_combine(a["residual"], a["pre_mix"]))
    got = vl.mhc_pre_delayed_tilelang(*p, *DSV4, pre_mix=a["pre_mix"], norm_weight=w.float())
    h.assert_same(got[2], li)


def test_mhc_pre_delayed_at_model_entry_takes_stream_zero():
    a = v41_inputs(5, seed=h.seed_of("vl41_entry"))
    p = (a["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    _, _, li, _ = vl.mhc_pre_delayed_tilelang(*p, *DSV4)
    assert torch.equal(li, a["residual"][:, 0])  # pre_mix=None, no norm: stream 0 itself
    _, _, li, _ = vl.mhc_pre_delayed_tilelang(*p, *DSV4, norm_weight=a["norm_weight"])
    h.assert_same(li, mhc_ops.mhc_combine(a["residual"], stream0(a["residual"]),
                                        a["norm_weight"]))


def test_mhc_pre_delayed_first_layer_projection_input():
    # vLLM's first layer: the streams are the embedding x [T, H] broadcast, and fn is the
    # projection summed over the streams [24, H]; the stats equal those of the broadcast
    # residual with fn spread over the streams
    T = 6
    a = v41_inputs(T, seed=h.seed_of("vl41_x"))
    x = a["x"]
    residual = x.unsqueeze(1).expand(-1, N, -1).contiguous()
    fn_summed = a["fn"].reshape(-1, N, H).sum(1)
    post, comb, li, next_pre = vl.mhc_pre_delayed_tilelang(
        residual, fn_summed, a["hc_scale"], a["hc_base"], *DSV4, None, x, a["norm_weight"])
    fn_spread = (fn_summed / N).repeat(1, N)
    want = mhc_ops.mhc_stats(residual, fn_spread, a["hc_scale"], a["hc_base"])
    for g, w in zip((next_pre, post, comb), want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    h.assert_same(li, mhc_ops.mhc_combine(residual, stream0(residual), a["norm_weight"]))


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("T", [0, 1, 9])
def test_mhc_fused_post_pre_delayed_is_the_shifted_boundary(T, fuse):
    a = v41_inputs(T, seed=h.seed_of("vl41_fused", T))
    args = (a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["fn"], a["hc_scale"],
            a["hc_base"], *DSV4)
    w = a["norm_weight"]
    with envs.MHC_FUSE_POST_PRE.override(fuse):
        got = vl.mhc_fused_post_pre_delayed_tilelang(*args, a["pre_mix"], w, 1e-6, False)
        want = mhc_ops.mhc_shifted_post_pre(a["x"], a["residual"], a["post_mix"], a["comb_mix"],
                                            a["pre_mix"], a["fn"], a["hc_scale"], a["hc_base"],
                                            *DSV4, w, 1e-6)
    assert [t.shape for t in got] == [(T, N, H), (T, N, 1), (T, N, N), (T, H), (T, N), (0, H)]
    residual_out, post, comb, li, next_pre, aux = got
    h.assert_same((residual_out, li, next_pre, post, comb), want)
    assert aux.dtype == torch.bfloat16
    h.assert_same(residual_out, mhc_ops.mhc_post(a["x"], a["residual"], a["post_mix"],
                                               a["comb_mix"]))


def test_mhc_fused_post_pre_delayed_aux_entry_and_2d_post():
    T = 5
    a = v41_inputs(T, seed=h.seed_of("vl41_aux"))
    args = (a["x"], a["residual"], a["post_mix"].reshape(T, N), a["comb_mix"], a["fn"],
            a["hc_scale"], a["hc_base"], *DSV4)
    got = vl.mhc_fused_post_pre_delayed_tilelang(*args, capture_aux=True)  # pre_mix=None
    residual_out, _, _, li, _, aux = got
    assert aux.shape == (T, H) and aux.dtype == torch.bfloat16
    h.assert_same(aux, residual_out.float().mean(1).bfloat16())  # the mean of the new streams
    assert torch.equal(li, residual_out[:, 0])  # entry: stream 0 of the new residual, no norm
    full = vl.mhc_fused_post_pre_delayed_tilelang(*args, pre_mix=a["pre_mix"],
                                                  norm_weight=a["norm_weight"])
    h.assert_same(full[3], mhc_ops.mhc_combine(full[0], a["pre_mix"], a["norm_weight"]))


def test_install_replaces_the_delayed_functions(monkeypatch, clean_install):
    mod, model = build_stack(monkeypatch, RECORDED_V41)
    model.mhc_fused_post_pre_delayed_tilelang = mod.mhc_fused_post_pre_delayed_tilelang
    before = {n: getattr(mod, n) for n in RECORDED_V41}
    names = vl.install()
    for n in RECORDED_V41:
        assert f"{MODULE}.{n}" in names and getattr(mod, n) is getattr(vl, n)
    assert model.mhc_fused_post_pre_delayed_tilelang is vl.mhc_fused_post_pre_delayed_tilelang
    vl.uninstall()
    for n, f in before.items():
        assert getattr(mod, n) is f
    assert model.mhc_fused_post_pre_delayed_tilelang is \
        before["mhc_fused_post_pre_delayed_tilelang"]


def test_install_refuses_a_changed_delayed_signature(monkeypatch, clean_install):
    changed = RECORDED_V41["mhc_pre_delayed_tilelang"].replace("x=None, ", "")
    mod, _ = build_stack(monkeypatch, dict(RECORDED_V41, mhc_pre_delayed_tilelang=changed))
    with pytest.raises(SignatureMismatch, match=f"{MODULE}.mhc_pre_delayed_tilelang"):
        vl.install()
    assert mod.mhc_post_tilelang(None, None, None, None) == "vllm" and not vl.installed()


# vLLM registers the delayed functions as torch.ops.vllm.* too: a stand-in with the schema vLLM
# infers from mhc_pre_delayed_tilelang's signature
_V41 = torch.library.Library("vllm_compat_v41", "DEF")
_V41.define("mhc_pre_delayed_tilelang(Tensor residual, Tensor fn, Tensor hc_scale, "
            "Tensor hc_base, float rms_eps, float hc_pre_eps, float hc_sinkhorn_eps, "
            "float hc_post_mult_value, int sinkhorn_repeat, Tensor? pre_mix=None, "
            "Tensor? x=None, Tensor? norm_weight=None, float norm_eps=1e-06) "
            "-> (Tensor, Tensor, Tensor, Tensor)")
_V41.impl("mhc_pre_delayed_tilelang", lambda *a: tuple(torch.zeros(1) for _ in range(4)), "CPU")


def test_install_takes_over_the_delayed_operator(monkeypatch, clean_install):
    build_stack(monkeypatch, RECORDED_V41)
    monkeypatch.setattr(vl._PATCHER, "op_namespace", "vllm_compat_v41")
    names = vl.install()
    assert any(n.startswith("torch.ops.vllm_compat_v41.mhc_pre_delayed_tilelang (")
               for n in names), names
    a = v41_inputs(3, seed=h.seed_of("vl41_op"))
    p = (a["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    got = torch.ops.vllm_compat_v41.mhc_pre_delayed_tilelang(*p, *DSV4, a["pre_mix"])
    h.assert_same(tuple(got), vl.mhc_pre_delayed_tilelang(*p, *DSV4, a["pre_mix"]))
    vl.uninstall()
    assert torch.equal(torch.ops.vllm_compat_v41.mhc_pre_delayed_tilelang(*p, *DSV4)[0],
                       torch.zeros(1))
