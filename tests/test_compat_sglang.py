"""mhc_ops.compat.sglang: sglang 0.5.23's mHC functions, called exactly as sglang's model code
calls them, against mhc_ops' own ops (bit-identical where the math is the same call), and
install() / uninstall() on a stand-in of sglang's module tree (SPEC §7.1)."""

import logging
import sys
import types

import pytest
import torch

import helpers as h
import mhc_ops
from mhc_ops import envs
from mhc_ops.compat import sglang as sg
from mhc_ops.compat._install import SignatureMismatch, signature_of

N, H = 4, 64
EPS = dict(rms_eps=1e-6, hc_pre_eps=1e-6, hc_sinkhorn_eps=1e-6, hc_post_mult_value=2.0,
           sinkhorn_repeat=20)
DSV4 = tuple(EPS.values())  # the positional tail sglang's DeepSeek-V4 model passes

# sglang 0.5.23's signatures as its source spells them (annotations dropped): the drop-ins
# must take exactly these calls, and the stand-in stack below defines functions with them.
RECORDED = {
    "mhc_pre": "(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, hc_sinkhorn_eps, "
               "hc_post_mult_value, sinkhorn_repeat, n_splits=1, n_splits_pre=32, *, "
               "norm_weight=None, norm_eps=None)",
    "mhc_post": "(x, residual, post_layer_mix, comb_res_mix)",
    "mhc_fused_post_pre": "(x, residual, post_layer_mix, comb_res_mix, fn, hc_scale, hc_base, "
                          "rms_eps, hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, "
                          "sinkhorn_repeat, n_splits=1, tile_n=1, *, norm_weight=None, "
                          "norm_eps=None)",
    "hc_pre": "(x, hc_fn, hc_scale, hc_base, hc_mult, rms_eps, hc_eps, sinkhorn_iters, "
              "post_mult_value=2.0, hc_norm_weight=None, out_norm_weight=None, "
              "out_norm_eps=None)",
    "hc_post": "(x, residual, h_post, h_res, hc_mult)",
    "get_mhc_pre_token_count_representatives": "(max_num_tokens, hc_hidden_size)",
    "prewarm_mhc_pre": "(residual, fn, hc_scale, hc_base, rms_eps, hc_pre_eps, "
                       "hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, n_splits, "
                       "n_splits_pre, norm_weight, norm_eps)",
    "fused_hc_head": "(x, hc_fn, hc_scale, hc_base, norm_eps, hc_eps)",
}
MHC = "sglang.kernels.ops.layernorm.mhc"
HEAD = "sglang.kernels.ops.layernorm.mhc_head"


def assert_same(got, want):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype and torch.equal(g, w)


@pytest.fixture(autouse=True)
def no_flags(monkeypatch):
    for name in ("MHC_DISABLE_KERNELS", "MHC_FUSE_POST_PRE", "MHC_BATCH_INVARIANT"):
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------------------------
# The functions, as sglang's model code calls them


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_signatures_are_sglangs(name):
    fn = getattr(sg, name) if name != "fused_hc_head" else sg.fused_hc_head
    assert str(signature_of(fn)) == RECORDED[name]


@pytest.mark.parametrize("T", [0, 1, 7])
def test_mhc_pre_positional_call_with_split_arguments(T):
    a = h.pre_inputs(T, N, H, seed=h.seed_of("sg_pre", T), norm=True)
    w = a["norm_weight"]
    # sglang's call: 9 positional + n_splits, n_splits_pre positional, norm by keyword
    got = sg.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4, 1, 32,
                     norm_weight=w, norm_eps=1e-6)
    want = mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4, w, 1e-6)
    assert_same(got, want)
    assert got[0].shape == (T, N, 1) and got[1].shape == (T, N, N) and got[2].shape == (T, H)
    # the split arguments steer nothing here
    assert_same(sg.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4, 7, 3,
                           norm_weight=w, norm_eps=1e-6), want)


def test_mhc_pre_keyword_call_and_the_stack_defaults():
    a = h.pre_inputs(5, N, H, seed=h.seed_of("sg_pre_kw"))
    got = sg.mhc_pre(residual=a["residual"], fn=a["fn"], hc_scale=a["hc_scale"],
                     hc_base=a["hc_base"], **EPS)  # norm_weight=None, norm_eps=None
    assert_same(got, mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"]))
    h.check_pre_outputs(got, a["residual"], a, what="sglang mhc_pre")


def test_mhc_pre_norm_eps_none_takes_rms_eps_and_fp32_weight_is_rounded_once():
    a = h.pre_inputs(6, N, H, seed=h.seed_of("sg_pre_norm"), norm=True)
    w32 = a["norm_weight"].float() + 1e-3  # not a bf16 value: it must be rounded
    eps = dict(EPS, rms_eps=1e-5)
    got = sg.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *eps.values(),
                     norm_weight=w32, norm_eps=None)
    want = mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *eps.values(),
                           w32.bfloat16(), 1e-5)
    assert_same(got, want)
    p = dict(a, norm_weight=w32.bfloat16())
    h.check_pre_outputs(got, a["residual"], p, what="sglang mhc_pre norm", rms_eps=1e-5,
                        norm_eps=1e-5)


def test_mhc_pre_leading_dims():
    a = h.pre_inputs(6, N, H, seed=h.seed_of("sg_pre_lead"))
    r = a["residual"].reshape(2, 3, N, H)
    post, comb, li = sg.mhc_pre(r, a["fn"], a["hc_scale"], a["hc_base"], *DSV4)
    assert post.shape == (2, 3, N, 1) and comb.shape == (2, 3, N, N) and li.shape == (2, 3, H)
    want = mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    assert_same((post.reshape(6, N, 1), comb.reshape(6, N, N), li.reshape(6, H)), want)


@pytest.mark.parametrize("post_2d", [False, True])
@pytest.mark.parametrize("T", [0, 3])
def test_mhc_post(T, post_2d):
    a = h.post_inputs(T, N, H, seed=h.seed_of("sg_post", T), post_2d=post_2d)
    got = sg.mhc_post(a["x"], a["residual"], a["post_mix"], a["comb_mix"])
    assert_same(got, mhc_ops.mhc_post(**a))
    assert got.shape == (T, N, H)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("T", [0, 1, 9])
def test_mhc_fused_post_pre_positional_call(T, fuse):
    a = h.fused_inputs(T, N, H, seed=h.seed_of("sg_fused", T), norm=True)
    w32 = a["norm_weight"].float()
    pre = (a["fn"], a["hc_scale"], a["hc_base"])
    with envs.MHC_FUSE_POST_PRE.override(fuse):
        got = sg.mhc_fused_post_pre(a["x"], a["residual"], a["post_mix"], a["comb_mix"], *pre,
                                    *DSV4, 1, 1, norm_weight=w32, norm_eps=None)
    want = mhc_ops.mhc_fused_post_pre(a["x"], a["residual"], a["post_mix"], a["comb_mix"],
                                      *pre, *DSV4, a["norm_weight"], 1e-6)
    assert [t.shape for t in got] == [(T, N, H), (T, N, 1), (T, N, N), (T, H)]
    if fuse:
        assert_same(got, want)
    else:
        # mhc_post then mhc_pre: the residual is bit-identical, the rest within SPEC §3
        assert_same(got[0], want[0])
        r = got[0]
        assert_same(got[1:], mhc_ops.mhc_pre(r, *pre, *DSV4, a["norm_weight"], 1e-6))


def test_hc_pre_flat_residual():
    s = 7
    a = h.pre_inputs(s, N, H, seed=h.seed_of("sg_hc_pre"), norm=True)
    x = a["residual"].reshape(s, N * H)
    layer_input, comb, post, fused = sg.hc_pre(x, a["fn"], a["hc_scale"], a["hc_base"], N,
                                               1e-6, 1e-6, 20)
    want = mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    assert fused is False
    assert layer_input.shape == (s, H) and comb.shape == (s, N * N) and post.shape == (s, N)
    assert_same((post.reshape(s, N, 1), comb.reshape(s, N, N), layer_input), want)


def test_hc_pre_norm_weights_and_keywords():
    s = 5
    a = h.pre_inputs(s, N, H, seed=h.seed_of("sg_hc_pre_norm"), norm=True)
    g = h.gen(3)
    hc_norm = h.uniform(g, N * H, lo=0.5, hi=1.5)  # scales the columns of hc_fn
    out_w = a["norm_weight"].float()
    got = sg.hc_pre(x=a["residual"].reshape(s, N * H), hc_fn=a["fn"], hc_scale=a["hc_scale"],
                    hc_base=a["hc_base"], hc_mult=N, rms_eps=1e-6, hc_eps=1e-6,
                    sinkhorn_iters=20, post_mult_value=2.0, hc_norm_weight=hc_norm,
                    out_norm_weight=out_w, out_norm_eps=None)
    want = mhc_ops.mhc_pre(a["residual"], a["fn"] * hc_norm, a["hc_scale"], a["hc_base"],
                           norm_weight=out_w.bfloat16(), norm_eps=1e-6)
    assert got[3] is True
    assert_same((got[2].reshape(s, N, 1), got[1].reshape(s, N, N), got[0]), want)


def test_hc_pre_empty_batch_is_sglangs():
    x = torch.empty(0, N * H, dtype=torch.bfloat16)
    a = h.pre_inputs(1, N, H, seed=1, norm=True)
    li, comb, post, fused = sg.hc_pre(x, a["fn"], a["hc_scale"], a["hc_base"], N, 1e-6, 1e-6,
                                      20, out_norm_weight=a["norm_weight"], out_norm_eps=1e-6)
    assert li.shape == (0, H) and li.dtype == torch.bfloat16
    assert comb.shape == (0, N * N) and comb.dtype == torch.float32
    assert post.shape == (0, N) and post.dtype == torch.float32
    assert fused is False  # as sglang answers for an empty batch


@pytest.mark.parametrize("s", [0, 4])
def test_hc_post_flat_residual(s):
    a = h.post_inputs(s, N, H, seed=h.seed_of("sg_hc_post", s))
    got = sg.hc_post(a["x"], a["residual"].reshape(s, N * H), a["post_mix"].reshape(s, N),
                     a["comb_mix"].reshape(s, N * N), N)
    assert got.shape == (s, N * H) and got.dtype == torch.bfloat16
    assert_same(got, mhc_ops.mhc_post(**a).reshape(s, N * H))


@pytest.mark.parametrize("T", [0, 5])
def test_fused_hc_head_keywords_and_scalar_scale(T):
    a = h.head_inputs(T, N, H, seed=h.seed_of("sg_head", T))
    want = mhc_ops.hc_head(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], 1e-6, 1e-6)
    got = sg.fused_hc_head(a["residual"], a["fn"], a["hc_scale"].reshape(()), a["hc_base"],
                           norm_eps=1e-6, hc_eps=1e-6)
    assert_same(got, want)
    assert_same(sg.fused_hc_head(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], 1e-6,
                                 1e-6), want)
    if T:
        h.check_head_output(got, a, what="sglang fused_hc_head")


def test_linear_bf16_fp32():
    a = h.linear_inputs(3, 8, 64, seed=2)
    assert_same(sg.linear_bf16_fp32(a["x"], a["weight"]), mhc_ops.linear_bf16_fp32(**a))


def test_token_count_representatives_are_mhc_ops_plans():
    # the plans of mhc_pre, plain and with the folded norm, on the current device (on the CPU
    # every T has one plan)
    from mhc_ops import plan

    dev = "cuda" if torch.cuda.is_available() and mhc_ops.cuda_available() else "cpu"
    kw = dict(hidden_size=7168, num_sms=plan.device_num_sms(dev),
              clusters=plan.device_supports_clusters(dev))
    want = set(plan.token_count_representatives("MHC_PRE", 8192, **kw))
    want |= set(plan.token_count_representatives("MHC_PRE", 8192, norm=True, **kw))
    assert sg.get_mhc_pre_token_count_representatives(8192, N * 7168) == tuple(sorted(want))
    if dev == "cpu":
        assert sg.get_mhc_pre_token_count_representatives(8192, N * 7168) == (8192,)
    assert sg.get_mhc_pre_token_count_representatives(0, N * 7168) == ()


def test_prewarm_runs_mhc_ops_warmup_once_per_shape(monkeypatch):
    from mhc_ops import warmup

    calls = []
    monkeypatch.setattr(warmup, "warmup", lambda hidden, **kw: calls.append((hidden, kw))
                        or warmup.WarmupReport("cpu", hidden, kw["hc_mult"], 0))
    monkeypatch.setattr(sg, "_prewarmed", set())
    a = h.pre_inputs(2, N, H, seed=5, norm=True)
    args = (a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4, 1, 32,
            a["norm_weight"], 1e-6)
    sg.prewarm_mhc_pre(*args)
    sg.prewarm_mhc_pre(*args)  # sglang drives it from load_weights; once is enough
    assert len(calls) == 1
    hidden, kw = calls[0]
    assert hidden == H and kw["hc_mult"] == N and kw["device"] == a["residual"].device
    assert kw["max_tokens"] is None  # no sglang scheduler: MHC_WARMUP_MAX_TOKENS


def test_prewarm_reads_sglangs_prefill_budget(monkeypatch):
    from mhc_ops import warmup

    ctx = types.ModuleType("sglang.srt.runtime_context")
    ctx.get_schedule = lambda: types.SimpleNamespace(chunked_prefill_size=None,
                                                     max_prefill_tokens=3000)
    monkeypatch.setitem(sys.modules, "sglang.srt.runtime_context", ctx)
    calls = []
    monkeypatch.setattr(warmup, "warmup", lambda hidden, **kw: calls.append(kw["max_tokens"]))
    monkeypatch.setattr(sg, "_prewarmed", set())
    a = h.pre_inputs(1, N, H, seed=6)
    sg.prewarm_mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4, 1, 32,
                       None, None)
    assert calls == [3000]


# ----------------------------------------------------------------------------------------------
# install() / uninstall() on a stand-in of sglang's module tree


def stub(name: str, params: str, tag: str = "sglang"):
    ns = {}
    exec(f"def {name}{params}:\n    return {tag!r}", ns)  # noqa: S102 - a signature stand-in
    return ns[name]


def build_stack(monkeypatch, overrides=None, head=True):
    """sglang, sglang.kernels, ..., layernorm.mhc (and .mhc_head) in sys.modules with functions
    of the recorded signatures, plus a model module that imported two of them by name."""
    sigs = dict(RECORDED, **(overrides or {}))
    names = ["sglang", "sglang.kernels", "sglang.kernels.ops", "sglang.kernels.ops.layernorm"]
    for n in names:
        monkeypatch.setitem(sys.modules, n, types.ModuleType(n))
    mhc = types.ModuleType(MHC)
    for n, p in sigs.items():
        if n != "fused_hc_head":
            setattr(mhc, n, stub(n, p))
    monkeypatch.setitem(sys.modules, MHC, mhc)
    mods = {"mhc": mhc}
    if head:
        head_mod = types.ModuleType(HEAD)
        head_mod.fused_hc_head = stub("fused_hc_head", sigs["fused_hc_head"])
        monkeypatch.setitem(sys.modules, HEAD, head_mod)
        mods["head"] = head_mod
    model = types.ModuleType("sglang.srt.models.deepseek_v4")
    model.mhc_pre, model.pre_alias = mhc.mhc_pre, mhc.hc_pre  # from ... import name [as alias]
    monkeypatch.setitem(sys.modules, model.__name__, model)
    mods["model"] = model
    return mods


@pytest.fixture
def clean_install():
    yield
    sg.uninstall()


def test_install_replaces_every_lookup_and_uninstall_restores(monkeypatch, caplog,
                                                             clean_install):
    m = build_stack(monkeypatch)
    before = {n: getattr(m["mhc"], n) for n in RECORDED if n != "fused_hc_head"}
    head_before = m["head"].fused_hc_head
    with caplog.at_level(logging.WARNING, logger="mhc_ops.compat"):
        names = sg.install()
    assert f"{MHC}.mhc_pre" in names and f"{HEAD}.fused_hc_head" in names
    assert "sglang.srt.models.deepseek_v4.pre_alias" in names
    assert "installed mhc_ops over sglang" in caplog.text and f"{MHC}.hc_post" in caplog.text
    for n in before:
        assert getattr(m["mhc"], n) is getattr(sg, n)
    assert m["head"].fused_hc_head is sg.fused_hc_head
    assert m["model"].mhc_pre is sg.mhc_pre and m["model"].pre_alias is sg.hc_pre
    assert sg.installed() and sg.install() == []  # a second install changes nothing

    # model code's call now runs mhc_ops
    a = h.pre_inputs(3, N, H, seed=h.seed_of("sg_installed"))
    assert_same(m["model"].mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4,
                                   1, 32, norm_weight=None, norm_eps=None),
                mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"]))

    restored = sg.uninstall()
    assert set(restored) == set(names)
    for n, f in before.items():
        assert getattr(m["mhc"], n) is f
    assert m["head"].fused_hc_head is head_before
    assert m["model"].mhc_pre is before["mhc_pre"] and m["model"].pre_alias is before["hc_pre"]
    assert not sg.installed() and sg.uninstall() == []


def test_install_refuses_a_changed_signature_and_patches_nothing(monkeypatch, clean_install):
    changed = RECORDED["mhc_pre"].replace("n_splits_pre=32", "n_splits_pre=64")
    m = build_stack(monkeypatch, {"mhc_pre": changed,
                                  "hc_post": "(x, residual, h_post, h_res, hc_mult, extra=0)"})
    with pytest.raises(SignatureMismatch) as e:
        sg.install()
    msg = str(e.value)
    assert f"{MHC}.mhc_pre" in msg and "n_splits_pre=64" in msg and "n_splits_pre=32" in msg
    assert f"{MHC}.hc_post" in msg and "extra=0" in msg
    assert m["mhc"].mhc_post(None, None, None, None) == "sglang"  # nothing replaced
    assert m["mhc"].hc_pre is m["model"].pre_alias and not sg.installed()


def test_install_without_the_head_module_replaces_the_rest(monkeypatch, clean_install):
    m = build_stack(monkeypatch, head=False)
    monkeypatch.setitem(sys.modules, HEAD, None)  # `import` of it fails
    names = sg.install()
    assert f"{MHC}.mhc_pre" in names and not any(n.startswith(HEAD) for n in names)
    assert m["mhc"].mhc_post is sg.mhc_post


def test_install_without_sglang_raises_and_patches_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, MHC, None)
    monkeypatch.setitem(sys.modules, HEAD, None)
    with pytest.raises(ImportError, match="sglang 0.5.23 is not importable"):
        sg.install()
    assert not sg.installed()


def test_importing_compat_patches_nothing(monkeypatch):
    m = build_stack(monkeypatch)
    before = dict(vars(m["mhc"]))
    import importlib

    for name in ("mhc_ops.compat", "mhc_ops.compat.sglang", "mhc_ops.compat.vllm",
                 "mhc_ops.compat.deep_gemm"):
        importlib.reload(importlib.import_module(name))
    assert dict(vars(m["mhc"])) == before and not sg.installed()
