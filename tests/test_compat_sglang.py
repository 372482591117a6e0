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
    h.assert_same(got, want)
    assert got[0].shape == (T, N, 1) and got[1].shape == (T, N, N) and got[2].shape == (T, H)
    # the split arguments steer nothing here
    h.assert_same(sg.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4, 7, 3,
                           norm_weight=w, norm_eps=1e-6), want)


def test_mhc_pre_keyword_call_and_the_stack_defaults():
    a = h.pre_inputs(5, N, H, seed=h.seed_of("sg_pre_kw"))
    got = sg.mhc_pre(residual=a["residual"], fn=a["fn"], hc_scale=a["hc_scale"],
                     hc_base=a["hc_base"], **EPS)  # norm_weight=None, norm_eps=None
    h.assert_same(got, mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"]))
    h.check_pre_outputs(got, a["residual"], a, what="sglang mhc_pre")


def test_mhc_pre_norm_eps_none_takes_rms_eps_and_fp32_weight_is_rounded_once():
    a = h.pre_inputs(6, N, H, seed=h.seed_of("sg_pre_norm"), norm=True)
    w32 = a["norm_weight"].float() + 1e-3  # not a bf16 value: it must be rounded
    eps = dict(EPS, rms_eps=1e-5)
    got = sg.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *eps.values(),
                     norm_weight=w32, norm_eps=None)
    want = mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *eps.values(),
                           w32.bfloat16(), 1e-5)
    h.assert_same(got, want)
    p = dict(a, norm_weight=w32.bfloat16())
    h.check_pre_outputs(got, a["residual"], p, what="sglang mhc_pre norm", rms_eps=1e-5,
                        norm_eps=1e-5)


def test_mhc_pre_leading_dims():
    a = h.pre_inputs(6, N, H, seed=h.seed_of("sg_pre_lead"))
    r = a["residual"].reshape(2, 3, N, H)
    post, comb, li = sg.mhc_pre(r, a["fn"], a["hc_scale"], a["hc_base"], *DSV4)
    assert post.shape == (2, 3, N, 1) and comb.shape == (2, 3, N, N) and li.shape == (2, 3, H)
    want = mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    h.assert_same((post.reshape(6, N, 1), comb.reshape(6, N, N), li.reshape(6, H)), want)


@pytest.mark.parametrize("post_2d", [False, True])
@pytest.mark.parametrize("T", [0, 3])
def test_mhc_post(T, post_2d):
    a = h.post_inputs(T, N, H, seed=h.seed_of("sg_post", T), post_2d=post_2d)
    got = sg.mhc_post(a["x"], a["residual"], a["post_mix"], a["comb_mix"])
    h.assert_same(got, mhc_ops.mhc_post(**a))
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
        h.assert_same(got, want)
    else:
        # mhc_post then mhc_pre: the residual is bit-identical, the rest within SPEC §3
        h.assert_same(got[0], want[0])
        r = got[0]
        h.assert_same(got[1:], mhc_ops.mhc_pre(r, *pre, *DSV4, a["norm_weight"], 1e-6))


def test_hc_pre_flat_residual():
    s = 7
    a = h.pre_inputs(s, N, H, seed=h.seed_of("sg_hc_pre"), norm=True)
    x = a["residual"].reshape(s, N * H)
    layer_input, comb, post, fused = sg.hc_pre(x, a["fn"], a["hc_scale"], a["hc_base"], N,
                                               1e-6, 1e-6, 20)
    want = mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    assert fused is False
    assert layer_input.shape == (s, H) and comb.shape == (s, N * N) and post.shape == (s, N)
    h.assert_same((post.reshape(s, N, 1), comb.reshape(s, N, N), layer_input), want)


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
    h.assert_same((got[2].reshape(s, N, 1), got[1].reshape(s, N, N), got[0]), want)


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
    h.assert_same(got, mhc_ops.mhc_post(**a).reshape(s, N * H))


@pytest.mark.parametrize("T", [0, 5])
def test_fused_hc_head_keywords_and_scalar_scale(T):
    a = h.head_inputs(T, N, H, seed=h.seed_of("sg_head", T))
    want = mhc_ops.hc_head(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], 1e-6, 1e-6)
    got = sg.fused_hc_head(a["residual"], a["fn"], a["hc_scale"].reshape(()), a["hc_base"],
                           norm_eps=1e-6, hc_eps=1e-6)
    h.assert_same(got, want)
    h.assert_same(sg.fused_hc_head(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], 1e-6,
                                 1e-6), want)
    if T:
        h.check_head_output(got, a, what="sglang fused_hc_head")


def test_linear_bf16_fp32():
    a = h.linear_inputs(3, 8, 64, seed=2)
    h.assert_same(sg.linear_bf16_fp32(a["x"], a["weight"]), mhc_ops.linear_bf16_fp32(**a))


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
    h.assert_same(m["model"].mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *DSV4,
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


# ----------------------------------------------------------------------------------------------
# DeepSeek-V4.1 (SPEC §2.9, §7.1): the functions of sglang's V4.1 path

# sglang's signatures as its source spells them: layernorm/mhc.py and hc_combine_norm.py of
# 0.5.23, layernorm/mhc_post_combine_norm_prefill.py and layernorm/mhc_mega.py of its main line
RECORDED_V41 = {
    "hc_mix_stats_sinkhorn": "(x_flat, hc_fn, hc_scale, hc_base, hc_mult, sinkhorn_iters, "
                             "rms_eps, hc_eps)",
    "hc_mix_stats": "(x_flat, hc_fn, eps)",
    "hc_split_sinkhorn": "(mixes, hc_scale, hc_base, hc_mult=4, sinkhorn_iters=20, eps=1e-06)",
    "split_bf16_hc_weight": "(weight)",
    "hc_mix_stats_sinkhorn_bf16x3": "(x, weight_parts, scale, base, sinkhorn_iters, rms_eps, "
                                    "hc_eps, hc_mult=4)",
    "mhc_combine": "(x_flat, pre, hc, out_dtype)",
    "hc_combine_norm": "(x, pre, weight, eps)",
    "mhc_post_combine_norm_prefill": "(x, residual, post, comb, pre, weight, eps)",
    "mhc_mega_boundary": "(x, residual, pre, post, comb, fn, scale, base, weight, rms_eps, "
                         "hc_eps, norm_eps, sinkhorn_iters)",
}
V41_MODULES = {  # where sglang defines each installed V4.1 function
    "hc_mix_stats_sinkhorn": MHC, "hc_mix_stats_sinkhorn_bf16x3": MHC, "mhc_combine": MHC,
    "hc_combine_norm": "sglang.kernels.ops.layernorm.hc_combine_norm",
    "mhc_post_combine_norm_prefill": "sglang.kernels.ops.layernorm.mhc_post_combine_norm_prefill",
    "mhc_mega_boundary": "sglang.kernels.ops.layernorm.mhc_mega",
}
V41_EPS = (1e-6, 1e-6, 1e-6, 2.0, 20)  # rms, pre, sinkhorn eps, post mult, repeat: V4.1's


def v41_inputs(T, *, seed):
    """x, residual, post [T, n] and comb of a hyper-connection, its carried pre [T, n], and
    the next one's fn, scale, base, norm weight (sglang's V4.1 forms: 2-D post)."""
    a = h.post_inputs(T, N, H, seed=seed, post_2d=True)
    g = h.gen(seed + 1)
    pre = torch.sigmoid(h.randn(g, T, N)) + 1e-6
    return {**a, "pre_mix": pre, **h.pre_params(g, N, H, norm=True)}


@pytest.mark.parametrize("name", sorted(RECORDED_V41))
def test_v41_signatures_are_sglangs(name):
    assert str(signature_of(getattr(sg, name))) == RECORDED_V41[name]
    assert name in sg.__all__


@pytest.mark.parametrize("T", [0, 1, 7])
def test_hc_mix_stats_sinkhorn_is_mhc_stats(T):
    a = v41_inputs(T, seed=h.seed_of("sg41_stats", T))
    x_flat = a["residual"].reshape(T, N * H)
    pre, post, comb = sg.hc_mix_stats_sinkhorn(x_flat, a["fn"], a["hc_scale"], a["hc_base"], N,
                                               20, 1e-6, 1e-6)
    want = mhc_ops.mhc_stats(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], *V41_EPS)
    assert pre.shape == (T, N) and post.shape == (T, N) and comb.shape == (T, N, N)
    h.assert_same((pre, post.reshape(T, N, 1), comb), want)


def test_hc_mix_stats_sinkhorn_hc_eps_and_a_float_residual():
    # hc_eps is both the pre and the Sinkhorn eps; a float32 residual runs the reference
    a = v41_inputs(5, seed=h.seed_of("sg41_stats_eps"))
    x_flat = a["residual"].reshape(5, N * H)
    got = sg.hc_mix_stats_sinkhorn(x_flat, a["fn"], a["hc_scale"], a["hc_base"], N, 7, 1e-5,
                                   1e-3)
    want = mhc_ops.mhc_stats(a["residual"], a["fn"], a["hc_scale"], a["hc_base"], 1e-5, 1e-3,
                             1e-3, 2.0, 7)
    h.assert_same((got[0], got[1].reshape(5, N, 1), got[2]), want)
    f32 = sg.hc_mix_stats_sinkhorn(x_flat.float(), a["fn"], a["hc_scale"], a["hc_base"], N, 7,
                                   1e-5, 1e-3)
    for g, w in zip(f32, got):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def test_split_bf16_hc_weight_and_the_bf16x3_stats():
    a = v41_inputs(6, seed=h.seed_of("sg41_bf16x3"))
    parts = sg.split_bf16_hc_weight(a["fn"])
    assert len(parts) == 3
    assert all(p.dtype == torch.bfloat16 and p.shape == a["fn"].shape for p in parts)
    high, middle, low = parts
    assert torch.equal((high.float() + middle.float()) + low.float(), a["fn"])  # exact
    assert torch.equal(high, a["fn"].bfloat16())
    x = a["residual"].reshape(6, N * H)
    got = sg.hc_mix_stats_sinkhorn_bf16x3(x, parts, a["hc_scale"], a["hc_base"], 20, 1e-6,
                                          1e-6)
    h.assert_same(got, sg.hc_mix_stats_sinkhorn(x, a["fn"], a["hc_scale"], a["hc_base"], N, 20,
                                              1e-6, 1e-6))


def test_hc_mix_stats_then_hc_split_sinkhorn_are_the_stats():
    # the two halves of sglang's small-T path, not installed: mixes = RMS-scaled fn @ x,
    # then the gates; together within fp32 rounding of mhc_stats
    a = v41_inputs(7, seed=h.seed_of("sg41_split"))
    x = a["residual"].reshape(7, N * H)
    mixes = sg.hc_mix_stats(x, a["fn"], 1e-6)
    xd = x.double()
    want = (xd @ a["fn"].double().t()) * torch.rsqrt(xd.square().mean(-1, keepdim=True) + 1e-6)
    assert mixes.shape == (7, N * (N + 2)) and mixes.dtype == torch.float32
    torch.testing.assert_close(mixes.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sg.hc_mix_stats(x.float(), a["fn"], 1e-6), mixes, rtol=1e-5,
                               atol=1e-5)
    pre, post, comb = sg.hc_split_sinkhorn(mixes.unsqueeze(1), a["hc_scale"], a["hc_base"], N,
                                           20, 1e-6)
    assert pre.shape == (7, 1, N) and post.shape == (7, 1, N) and comb.shape == (7, 1, N, N)
    fused = sg.hc_mix_stats_sinkhorn(x, a["fn"], a["hc_scale"], a["hc_base"], N, 20, 1e-6, 1e-6)
    for g, w in zip((pre, post, comb), fused):
        torch.testing.assert_close(g.squeeze(1), w, rtol=0, atol=1e-5)


@pytest.mark.parametrize("T", [0, 1, 6])
def test_mhc_combine_is_mhc_ops_combine(T):
    a = v41_inputs(T, seed=h.seed_of("sg41_combine", T))
    x_flat = a["residual"].reshape(T, N * H)
    pre = a["pre_mix"].t().contiguous().t()  # sglang reads pre through its strides
    got = sg.mhc_combine(x_flat, pre, N, torch.bfloat16)
    assert got.shape == (T, H) and got.dtype == torch.bfloat16
    h.assert_same(got, mhc_ops.mhc_combine(a["residual"], a["pre_mix"]))
    f32 = sg.mhc_combine(x_flat, pre, N, torch.float32)  # the sum before its bf16 rounding
    assert f32.dtype == torch.float32
    want = (a["pre_mix"].double().unsqueeze(-1) * a["residual"].double()).sum(1)
    torch.testing.assert_close(f32.double(), want, rtol=1e-6, atol=1e-6)
    if T:
        assert torch.equal(f32.bfloat16(), got)


@pytest.mark.parametrize("T", [0, 5])
def test_hc_combine_norm_is_mhc_ops_combine_with_the_norm(T):
    a = v41_inputs(T, seed=h.seed_of("sg41_cnorm", T))
    got = sg.hc_combine_norm(a["residual"].reshape(T, N * H), a["pre_mix"], a["norm_weight"],
                             1e-6)
    assert got.shape == (T, H) and got.dtype == torch.bfloat16
    h.assert_same(got, mhc_ops.mhc_combine(a["residual"], a["pre_mix"], a["norm_weight"], 1e-6))


@pytest.mark.parametrize("T", [0, 1, 9])
def test_mhc_post_combine_norm_prefill_is_mhc_post_combine(T):
    a = v41_inputs(T, seed=h.seed_of("sg41_pcn", T))
    updated, normalized = sg.mhc_post_combine_norm_prefill(
        a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["pre_mix"], a["norm_weight"],
        1e-6)
    assert updated.shape == (T, N, H) and normalized.shape == (T, H)
    h.assert_same((updated, normalized), mhc_ops.mhc_post_combine(
        a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["pre_mix"], a["norm_weight"],
        1e-6))
    h.assert_same(updated, mhc_ops.mhc_post(a["x"], a["residual"], a["post_mix"], a["comb_mix"]))


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("T", [0, 1, 9])
def test_mhc_mega_boundary_is_mhc_shifted_post_pre(T, fuse):
    a = v41_inputs(T, seed=h.seed_of("sg41_mega", T))
    with envs.MHC_FUSE_POST_PRE.override(fuse):
        updated, normalized, (pre, post, comb) = sg.mhc_mega_boundary(
            a["x"], a["residual"], a["pre_mix"], a["post_mix"], a["comb_mix"], a["fn"],
            a["hc_scale"], a["hc_base"], a["norm_weight"], 1e-6, 1e-6, 1e-6, 20)
    assert [t.shape for t in (updated, normalized, pre, post, comb)] == [
        (T, N, H), (T, H), (T, N), (T, N), (T, N, N)]
    want = mhc_ops.mhc_shifted_post_pre(a["x"], a["residual"], a["post_mix"], a["comb_mix"],
                                        a["pre_mix"], a["fn"], a["hc_scale"], a["hc_base"],
                                        *V41_EPS, a["norm_weight"], 1e-6)
    h.assert_same((updated, normalized), want[:2])  # bit-identical fused or not (SPEC §2.9)
    got = (pre, post.reshape(T, N, 1), comb)
    if fuse:
        h.assert_same(got, want[2:])
    else:
        h.assert_same(got, mhc_ops.mhc_stats(updated, a["fn"], a["hc_scale"], a["hc_base"]))


def build_v41_stack(monkeypatch, overrides=None):
    """build_stack plus sglang's V4.1 functions in their modules, and a model module that
    imported two of them by name (as deepseek_v4_mhc.py does)."""
    m = build_stack(monkeypatch)
    sigs = dict(RECORDED_V41, **(overrides or {}))
    for name, params in sigs.items():
        module = V41_MODULES.get(name, MHC)
        if module != MHC and not isinstance(sys.modules.get(module), types.ModuleType):
            monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
        setattr(sys.modules[module], name, stub(name, params))
    model = types.ModuleType("sglang.srt.models.deepseek_v4_mhc")
    model.mhc_mega_boundary = sys.modules[V41_MODULES["mhc_mega_boundary"]].mhc_mega_boundary
    model.hc_combine_norm = sys.modules[V41_MODULES["hc_combine_norm"]].hc_combine_norm
    monkeypatch.setitem(sys.modules, model.__name__, model)
    m["v41_model"] = model
    return m


def test_install_replaces_the_v41_functions_and_uninstall_restores(monkeypatch, clean_install):
    m = build_v41_stack(monkeypatch)
    before = {n: getattr(sys.modules[V41_MODULES.get(n, MHC)], n) for n in RECORDED_V41}
    names = sg.install()
    for n, module in V41_MODULES.items():
        assert f"{module}.{n}" in names
        assert getattr(sys.modules[module], n) is getattr(sg, n)
    # the halves of the small-T stats and the weight split stay sglang's
    for n in ("hc_mix_stats", "hc_split_sinkhorn", "split_bf16_hc_weight"):
        assert f"{MHC}.{n}" not in names and getattr(m["mhc"], n) is before[n]
    model = m["v41_model"]
    assert model.mhc_mega_boundary is sg.mhc_mega_boundary
    assert model.hc_combine_norm is sg.hc_combine_norm
    assert m["mhc"].mhc_pre is sg.mhc_pre  # and V4's with them

    a = v41_inputs(3, seed=h.seed_of("sg41_installed"))
    got = model.hc_combine_norm(a["residual"].reshape(3, N * H), a["pre_mix"],
                                a["norm_weight"], 1e-6)
    h.assert_same(got, mhc_ops.mhc_combine(a["residual"], a["pre_mix"], a["norm_weight"]))

    restored = sg.uninstall()
    assert set(restored) == set(names)
    for n, f in before.items():
        assert getattr(sys.modules[V41_MODULES.get(n, MHC)], n) is f
    assert model.mhc_mega_boundary is before["mhc_mega_boundary"]


def test_install_refuses_a_changed_v41_signature(monkeypatch, clean_install):
    changed = RECORDED_V41["mhc_mega_boundary"].replace("sinkhorn_iters)",
                                                        "sinkhorn_iters, fp8_out=None)")
    m = build_v41_stack(monkeypatch, {"mhc_mega_boundary": changed})
    with pytest.raises(SignatureMismatch) as e:
        sg.install()
    msg = str(e.value)
    assert f"{V41_MODULES['mhc_mega_boundary']}.mhc_mega_boundary" in msg
    assert "fp8_out=None" in msg
    assert m["mhc"].mhc_post(None, None, None, None) == "sglang" and not sg.installed()


def test_install_of_a_stack_without_the_v41_modules(monkeypatch, clean_install):
    # a 0.5.23 stack that has hc_combine_norm but neither the prefill post+combine nor mega:
    # those are skipped, the rest replaced
    m = build_v41_stack(monkeypatch)
    for n in ("mhc_post_combine_norm_prefill", "mhc_mega_boundary"):
        monkeypatch.setitem(sys.modules, V41_MODULES[n], None)
    names = sg.install()
    assert f"{V41_MODULES['hc_combine_norm']}.hc_combine_norm" in names
    assert f"{MHC}.hc_mix_stats_sinkhorn" in names
    assert not any("mhc_mega" in n or "norm_prefill" in n for n in names)
    assert m["mhc"].mhc_combine is sg.mhc_combine
