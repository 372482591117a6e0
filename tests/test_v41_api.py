"""The Python surface of the DeepSeek-V4.1 ops (SPEC §2.9, §5, §6, §7): the wrappers
mhc_ops.mhc_stats / mhc_combine / mhc_post_combine / mhc_shifted_post_pre (leading dims, the
[..., n, 1] pre_mix, defaults), the MHC_FUSE_POST_PRE switch of mhc_shifted_post_pre, the
MHC_DISABLE_KERNELS route, the fakes, the warmup of the four kinds and
``python -m mhc_ops --model v4.1``. The numerics of the kernels live in tests/test_v41_ops.py."""

import inspect
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import helpers as h
import mhc_ops
from mhc_ops import envs, plan, reference, warmup
from mhc_ops.plan import KernelType

N, H = 4, 64
V41_KINDS = (KernelType.MHC_STATS, KernelType.MHC_COMBINE, KernelType.MHC_POST_COMBINE,
             KernelType.MHC_SHIFTED_POST_PRE)


@pytest.fixture(autouse=True)
def no_flags(monkeypatch):
    for name in ("MHC_DISABLE_KERNELS", "MHC_FUSE_POST_PRE", "MHC_BATCH_INVARIANT",
                 "MHC_SKIP_WARMUP", "MHC_WARMUP_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)


def inputs(T, *, seed, norm=False):
    """Every tensor argument of mhc_shifted_post_pre on the CPU: x, residual, post_mix
    [T, n, 1], comb_mix, pre_mix [T, n] (a carried sigmoid pre), fn, hc_scale, hc_base,
    norm_weight."""
    a = h.post_inputs(T, N, H, seed=seed)
    g = h.gen(seed + 1)
    pre = torch.sigmoid(h.randn(g, T, N)) + 1e-6
    return {**a, "pre_mix": pre, **h.pre_params(g, N, H, norm=norm)}


def stats_args(a):
    return a["residual"], a["fn"], a["hc_scale"], a["hc_base"]


def boundary_args(a):
    return (a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["pre_mix"], a["fn"],
            a["hc_scale"], a["hc_base"])


def lead(t, dims=(2, 3)):
    """t [6, ...] as [2, 3, ...]."""
    return t.reshape(*dims, *t.shape[1:])


# ----------------------------------------------------------------------------------------------
# Wrappers: signatures, outputs, leading dims


@pytest.mark.parametrize("op", ["mhc_stats", "mhc_combine", "mhc_post_combine",
                                "mhc_shifted_post_pre"])
def test_wrapper_signature_is_the_schema(op):
    """Names, order and defaults of mhc_ops.<op> are those of torch.ops.mhc.<op> (SPEC §2:
    the defaults of the schema and of the wrapper are identical)."""
    schema = getattr(torch.ops.mhc, op).default._schema
    params = list(inspect.signature(getattr(mhc_ops, op)).parameters.values())
    assert [p.name for p in params] == [a.name for a in schema.arguments]
    for p, a in zip(params, schema.arguments):
        want = a.default_value if a.has_default_value() else inspect.Parameter.empty
        assert p.default == want, (op, p.name)
    assert op in mhc_ops.__all__ and getattr(mhc_ops, op) is getattr(mhc_ops.ops, op)


@pytest.mark.parametrize("T", [0, 1, 6])
def test_wrappers_are_the_ops(T):
    a = inputs(T, seed=h.seed_of("v41_ops", T), norm=True)
    w = a["norm_weight"]
    stats = mhc_ops.mhc_stats(*stats_args(a))
    h.assert_same(stats, torch.ops.mhc.mhc_stats(*stats_args(a)))
    assert [t.shape for t in stats] == [(T, N), (T, N, 1), (T, N, N)]
    assert all(t.dtype == torch.float32 for t in stats)
    li = mhc_ops.mhc_combine(a["residual"], a["pre_mix"], w)
    h.assert_same(li, torch.ops.mhc.mhc_combine(a["residual"], a["pre_mix"], w))
    assert li.shape == (T, H) and li.dtype == torch.bfloat16
    pc = mhc_ops.mhc_post_combine(a["x"], a["residual"], a["post_mix"], a["comb_mix"],
                                  a["pre_mix"], w)
    assert [t.shape for t in pc] == [(T, N, H), (T, H)]
    h.assert_same(pc, torch.ops.mhc.mhc_post_combine(a["x"], a["residual"], a["post_mix"],
                                                   a["comb_mix"], a["pre_mix"], w))
    sp = mhc_ops.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w)
    assert [t.shape for t in sp] == [(T, N, H), (T, H), (T, N), (T, N, 1), (T, N, N)]
    h.assert_same(sp, torch.ops.mhc.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w))


def test_wrappers_agree_with_the_reference():
    # float32 reference on the same inputs: gates within 1e-3 (SPEC §3), bf16 outputs within
    # one bf16 ulp of relative norm (the per-element bounds are tests/test_v41_ops.py's)
    a = inputs(9, seed=h.seed_of("v41_ref"), norm=True)
    w = a["norm_weight"]
    got = mhc_ops.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w)
    want = reference.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w)
    for g, r in zip(got, want):
        assert g.shape == r.shape and g.dtype == r.dtype
        if g.dtype == torch.float32:
            torch.testing.assert_close(g, r, rtol=0, atol=1e-3)
        else:
            assert ((g.double() - r.double()).norm() / r.double().norm()).item() <= 2 ** -8


def test_leading_dims_are_flattened_and_restored():
    a = inputs(6, seed=h.seed_of("v41_lead"), norm=True)
    w = a["norm_weight"]
    L = {k: lead(v) for k, v in a.items() if k in ("x", "residual", "post_mix", "comb_mix",
                                                   "pre_mix")}
    flat = mhc_ops.mhc_stats(*stats_args(a))
    got = mhc_ops.mhc_stats(L["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    assert [t.shape for t in got] == [(2, 3, N), (2, 3, N, 1), (2, 3, N, N)]
    h.assert_same(got, tuple(lead(t) for t in flat))

    got = mhc_ops.mhc_combine(L["residual"], L["pre_mix"], w)
    assert got.shape == (2, 3, H)
    h.assert_same(got, lead(mhc_ops.mhc_combine(a["residual"], a["pre_mix"], w)))

    got = mhc_ops.mhc_post_combine(L["x"], L["residual"], L["post_mix"], L["comb_mix"],
                                   L["pre_mix"], w)
    want = mhc_ops.mhc_post_combine(a["x"], a["residual"], a["post_mix"], a["comb_mix"],
                                    a["pre_mix"], w)
    assert [t.shape for t in got] == [(2, 3, N, H), (2, 3, H)]
    h.assert_same(got, tuple(lead(t) for t in want))

    for fuse in (True, False):
        with envs.MHC_FUSE_POST_PRE.override(fuse):
            got = mhc_ops.mhc_shifted_post_pre(L["x"], L["residual"], L["post_mix"],
                                               L["comb_mix"], L["pre_mix"], a["fn"],
                                               a["hc_scale"], a["hc_base"], norm_weight=w)
            want = mhc_ops.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w)
        assert [t.shape for t in got] == [(2, 3, N, H), (2, 3, H), (2, 3, N), (2, 3, N, 1),
                                          (2, 3, N, N)]
        h.assert_same(got, tuple(lead(t) for t in want))


def test_pre_mix_with_a_trailing_one_is_the_same_pre():
    a = inputs(6, seed=h.seed_of("v41_pre3"), norm=True)
    w, pre3 = a["norm_weight"], a["pre_mix"].unsqueeze(-1)  # [T, n, 1]
    h.assert_same(mhc_ops.mhc_combine(a["residual"], pre3, w),
                mhc_ops.mhc_combine(a["residual"], a["pre_mix"], w))
    pc = (a["x"], a["residual"], a["post_mix"], a["comb_mix"])
    h.assert_same(mhc_ops.mhc_post_combine(*pc, pre3, w),
                mhc_ops.mhc_post_combine(*pc, a["pre_mix"], w))
    with_pre3 = dict(a, pre_mix=pre3)
    for fuse in (True, False):
        with envs.MHC_FUSE_POST_PRE.override(fuse):
            h.assert_same(mhc_ops.mhc_shifted_post_pre(*boundary_args(with_pre3), norm_weight=w),
                        mhc_ops.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w))
    # and with leading dims: [2, 3, n, 1]
    h.assert_same(mhc_ops.mhc_combine(lead(a["residual"]), lead(pre3), w),
                lead(mhc_ops.mhc_combine(a["residual"], a["pre_mix"], w)))


@pytest.mark.parametrize("op", ["mhc_combine", "mhc_post_combine", "mhc_shifted_post_pre"])
def test_leading_dims_of_pre_mix_must_be_residuals(op):
    # 6 tokens as [2, 3] against a pre_mix as [3, 2]: same count, other tokens
    a = inputs(6, seed=h.seed_of("v41_badlead"))
    L = {k: lead(v) for k, v in a.items() if k in ("x", "residual", "post_mix", "comb_mix")}
    bad = lead(a["pre_mix"], (3, 2))
    with pytest.raises(RuntimeError, match=f"{op}: pre_mix must have the leading dims"):
        if op == "mhc_combine":
            mhc_ops.mhc_combine(L["residual"], bad)
        elif op == "mhc_post_combine":
            mhc_ops.mhc_post_combine(L["x"], L["residual"], L["post_mix"], L["comb_mix"], bad)
        else:
            mhc_ops.mhc_shifted_post_pre(L["x"], L["residual"], L["post_mix"], L["comb_mix"],
                                         bad, a["fn"], a["hc_scale"], a["hc_base"])


# ----------------------------------------------------------------------------------------------
# MHC_FUSE_POST_PRE and MHC_DISABLE_KERNELS


def test_fuse_flag_switches_the_boundary_and_both_agree():
    a = inputs(5, seed=h.seed_of("v41_flag"), norm=True)
    w = a["norm_weight"]
    with h.OpLog() as log:
        fused = mhc_ops.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w)
    assert log.ops == ["mhc_shifted_post_pre"]
    with envs.MHC_FUSE_POST_PRE.override(False), h.OpLog() as log:
        unfused = mhc_ops.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w)
    assert log.ops == ["mhc_post_combine", "mhc_stats"]
    # residual_out and layer_input: bit-identical by contract (SPEC §2.9); gates within §3
    h.assert_same(fused[:2], unfused[:2])
    for f, u in zip(fused[2:], unfused[2:]):
        torch.testing.assert_close(f, u, rtol=0, atol=1e-6)
    with h.OpLog() as log:  # the override is gone: fused again
        mhc_ops.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w)
    assert log.ops == ["mhc_shifted_post_pre"]


def test_fuse_flag_is_read_at_every_call(monkeypatch):
    a = inputs(3, seed=h.seed_of("v41_flag_env"))
    seen = []
    for raw, want in (("0", ["mhc_post_combine", "mhc_stats"]), ("1", ["mhc_shifted_post_pre"]),
                      ("false", ["mhc_post_combine", "mhc_stats"])):
        monkeypatch.setenv("MHC_FUSE_POST_PRE", raw)
        with h.OpLog() as log:
            mhc_ops.mhc_shifted_post_pre(*boundary_args(a))
        seen.append(log.ops)
        assert log.ops == want, raw
    # the V4 dispatcher follows the same flag at the same call
    monkeypatch.setenv("MHC_FUSE_POST_PRE", "0")
    with h.OpLog() as log:
        mhc_ops.mhc_post_pre(a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["fn"],
                             a["hc_scale"], a["hc_base"])
    assert log.ops == ["mhc_post", "mhc_pre"]


def test_resolved_paths_name_the_v41_boundary():
    assert envs.resolved_paths()["mhc_shifted_post_pre"] == "torch.ops.mhc.mhc_shifted_post_pre"
    with envs.MHC_FUSE_POST_PRE.override(False):
        assert envs.resolved_paths()["mhc_shifted_post_pre"] == \
            "torch.ops.mhc.mhc_post_combine + torch.ops.mhc.mhc_stats"
    assert "mhc_shifted_post_pre" in envs.MHC_FUSE_POST_PRE.doc


@pytest.mark.parametrize("fuse", [True, False])
def test_disable_kernels_routes_to_the_reference(fuse):
    a = inputs(4, seed=h.seed_of("v41_disable"), norm=True)
    w = a["norm_weight"]
    pc = (a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["pre_mix"])
    with envs.MHC_DISABLE_KERNELS.override(True), envs.MHC_FUSE_POST_PRE.override(fuse), \
            h.OpLog() as log:
        got = (mhc_ops.mhc_stats(*stats_args(a)),
               mhc_ops.mhc_combine(a["residual"], a["pre_mix"], w),
               mhc_ops.mhc_post_combine(*pc, w),
               mhc_ops.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w))
    assert log.ops == []
    want = (reference.mhc_stats(*stats_args(a)),
            reference.mhc_combine(a["residual"], a["pre_mix"], w),
            reference.mhc_post_combine(*pc, w))
    for g, r in zip(got[:3], want):
        h.assert_same(g, r)
    ref = reference.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w)
    # fused: the reference's fused form; unfused: its post_combine then its stats (the same)
    h.assert_same(got[3], ref)


def test_flag_flip_after_compile_never_half_applies():
    # Under torch.compile the flag value seen while tracing is part of the graph (SPEC §5).
    f, graphs = h.compiled_recording_mhc_ops(mhc_ops.mhc_shifted_post_pre)
    a = inputs(5, seed=h.seed_of("v41_compile"))
    first = f(*boundary_args(a))
    with envs.MHC_FUSE_POST_PRE.override(False):
        second = f(*boundary_args(a))
        eager = mhc_ops.mhc_shifted_post_pre(*boundary_args(a))
    torch._dynamo.reset()
    fused_graph = {"mhc.mhc_shifted_post_pre.default"}
    unfused_graph = {"mhc.mhc_post_combine.default", "mhc.mhc_stats.default"}
    assert graphs and all(g in (fused_graph, unfused_graph) for g in graphs)
    assert graphs[0] == fused_graph
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    h.assert_same(second[:2], eager[:2])


# ----------------------------------------------------------------------------------------------
# Fakes: shapes and dtypes without running a kernel


def fake_case(mode, T, *, pre3=False, norm=True):
    a = inputs(T, seed=h.seed_of("v41_fake", T), norm=norm)
    if pre3:
        a["pre_mix"] = a["pre_mix"].unsqueeze(-1)
    return {k: (mode.from_tensor(v) if v is not None else None) for k, v in a.items()}


@pytest.mark.parametrize("pre3", [False, True])
@pytest.mark.parametrize("T", [0, 7])
def test_fakes_describe_the_outputs(T, pre3):
    mode = FakeTensorMode()
    a = fake_case(mode, T, pre3=pre3)
    w = a["norm_weight"]
    f32, bf16 = torch.float32, torch.bfloat16
    with mode:
        outs = {
            "mhc_stats": torch.ops.mhc.mhc_stats(*stats_args(a)),
            "mhc_combine": (torch.ops.mhc.mhc_combine(a["residual"], a["pre_mix"], w),),
            "mhc_post_combine": torch.ops.mhc.mhc_post_combine(
                a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["pre_mix"], w),
            "mhc_shifted_post_pre": torch.ops.mhc.mhc_shifted_post_pre(*boundary_args(a),
                                                                       norm_weight=w),
        }
    want = {
        "mhc_stats": [((T, N), f32), ((T, N, 1), f32), ((T, N, N), f32)],
        "mhc_combine": [((T, H), bf16)],
        "mhc_post_combine": [((T, N, H), bf16), ((T, H), bf16)],
        "mhc_shifted_post_pre": [((T, N, H), bf16), ((T, H), bf16), ((T, N), f32),
                                 ((T, N, 1), f32), ((T, N, N), f32)],
    }
    for op, got in outs.items():
        assert [(tuple(t.shape), t.dtype) for t in got] == want[op], op
        assert all(t.device.type == "cpu" for t in got)


def test_fakes_under_the_wrappers_with_leading_dims():
    mode = FakeTensorMode()
    a = fake_case(mode, 6)
    L = {k: lead(v) for k, v in a.items() if k in ("x", "residual", "post_mix", "comb_mix",
                                                   "pre_mix")}
    with mode:
        sp = mhc_ops.mhc_shifted_post_pre(L["x"], L["residual"], L["post_mix"], L["comb_mix"],
                                          L["pre_mix"], a["fn"], a["hc_scale"], a["hc_base"],
                                          norm_weight=a["norm_weight"])
        st = mhc_ops.mhc_stats(L["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    assert [tuple(t.shape) for t in sp] == [(2, 3, N, H), (2, 3, H), (2, 3, N), (2, 3, N, 1),
                                            (2, 3, N, N)]
    assert [tuple(t.shape) for t in st] == [(2, 3, N), (2, 3, N, 1), (2, 3, N, N)]


def test_fakes_on_the_meta_device_match_the_kernels():
    a = inputs(3, seed=h.seed_of("v41_meta"), norm=True)
    meta = {k: (v.to("meta") if v is not None else None) for k, v in a.items()}
    got = torch.ops.mhc.mhc_shifted_post_pre(*boundary_args(meta),
                                             norm_weight=meta["norm_weight"])
    real = torch.ops.mhc.mhc_shifted_post_pre(*boundary_args(a), norm_weight=a["norm_weight"])
    assert [(t.shape, t.dtype) for t in got] == [(t.shape, t.dtype) for t in real]
    assert all(t.device.type == "meta" for t in got)


def test_fakes_refuse_what_the_kernels_refuse():
    # a fake checks before it describes (mhc_ops/_fake.py): a wrong pre_mix fails under
    # FakeTensorMode with the kernel's message
    mode = FakeTensorMode()
    a = fake_case(mode, 4)
    with mode, pytest.raises(RuntimeError, match="mhc_combine: pre_mix"):
        torch.ops.mhc.mhc_combine(a["residual"], a["pre_mix"][:, :3])


# ----------------------------------------------------------------------------------------------
# Warmup of the four kinds (SPEC §6)


def test_kernel_types_and_executors_of_the_v41_ops():
    assert [(k.name, int(k)) for k in V41_KINDS] == [
        ("MHC_STATS", 6), ("MHC_COMBINE", 7), ("MHC_POST_COMBINE", 8),
        ("MHC_SHIFTED_POST_PRE", 9)]
    assert warmup.KernelType is KernelType
    assert set(V41_KINDS) <= set(KernelType)  # so in warmup()'s default kinds=all
    assert {KernelType.MHC_COMBINE, KernelType.MHC_POST_COMBINE,
            KernelType.MHC_SHIFTED_POST_PRE} <= warmup.NORM_KINDS
    assert KernelType.MHC_STATS not in warmup.NORM_KINDS
    for kind in V41_KINDS:
        for norm in (False, True):
            ex = warmup.WarmupExecutor.create(kind, max_tokens=40, hidden_size=H, device="cpu",
                                              norm=norm)
            assert type(ex).kind == kind and ex.max_tokens == 40
            assert ex.memory_requirement() == type(ex).bytes_needed(40, H, 4) > 0
            for t in (1, 17, 40):
                ex.execute(t, 0)
                ex.execute(t, 1)
            want = plan.plan_of(kind, 17, hidden_size=H, num_sms=0,
                                norm=norm and kind != KernelType.MHC_STATS)
            assert any(lp.plan == want for lp in warmup.launched_plans())


def test_combine_kernels_hold_the_norm_group_sums():
    # The combine kernel's dynamic shared memory: a float per 32 columns with the folded norm
    # (cuda/norm_tree.cuh), none without; the shifted boundary's combine launch the same (past
    # the fused boundary's token counts).
    from mhc_ops import _C
    for kind, T in ((KernelType.MHC_COMBINE, 3), (KernelType.MHC_POST_COMBINE, 3),
                    (KernelType.MHC_SHIFTED_POST_PRE, 4000)):
        for hidden, groups in ((5120, 160), (520, 17), (8, 1)):
            plain = _C.launches_of(int(kind), T, 4, hidden, 132, False, False, False, True, 1)
            normed = _C.launches_of(int(kind), T, 4, hidden, 132, True, False, False, True, 1)
            assert plain[0][0].startswith("combine<") and normed[0][0].startswith("combine<")
            assert plain[0][4] == 0 and normed[0][4] == 4 * groups


def test_split_combine_plans():
    # Up to 8 tokens mhc_combine / mhc_post_combine split a row over CTAs of about 128 vectors
    # (at most 8, whole 32-column groups each), with the norm a cluster per token (sm_90+);
    # beyond, or with one CTA's worth of row, one CTA per token.
    from mhc_ops import _C
    for kind in (KernelType.MHC_COMBINE, KernelType.MHC_POST_COMBINE):
        post = int(kind == KernelType.MHC_POST_COMBINE)
        for hidden, ctas, threads in ((5120, 5, 128), (4096, 4, 128), (7168, 7, 128),
                                      (1088, 2, 96), (16384, 8, 256), (65536, 8, 512),
                                      (520, 1, 96), (8, 1, 32)):
            for norm in (False, True):
                kw = dict(hidden_size=hidden, num_sms=132, norm=norm, batch_invariant=False)
                for T in (1, 5, 8):
                    p = plan.plan_of(kind, T, **kw)
                    assert p.variant == "stream" and p.num_splits == ctas
                    ls = _C.launches_of(int(kind), T, 4, hidden, 132, norm, False, False, True, 1)
                    cluster = ctas if ctas > 1 and norm else 0
                    assert ls == [(f"combine<4,{post},{int(norm)},{int(ctas > 1)}>", T * ctas,
                                   1, threads if ctas > 1 else ls[0][3],
                                   4 * -(-hidden // 32) if norm else 0, cluster)]
                    # without clusters (before sm_90) only the plain combine splits
                    nc = plan.plan_of(kind, T, clusters=False, **kw)
                    assert nc.num_splits == (1 if norm else ctas)
                    # batch invariance keeps the split: the bits do not depend on it
                    assert plan.plan_of(kind, T, **{**kw, "batch_invariant": True}) == p
                assert plan.plan_of(kind, 9, **kw).num_splits == 1
                assert _C.launches_of(int(kind), 9, 4, hidden, 132, norm, False, False, True,
                                      1)[0][1:2] == (9,)


@pytest.mark.parametrize("n", [1, 3, 4, 8])
def test_shifted_boundary_plans(n):
    # Up to 64 tokens (not batch-invariant) the shifted boundary is the fused op's SPLIT_K plan
    # with its epilogue combining with the carried pre (no combine kernel); past that, and under
    # batch invariance, the combine kernel then the stats.
    from mhc_ops import _C
    shifted = KernelType.MHC_SHIFTED_POST_PRE
    for hidden in (5120, 4096, 520):
        for norm in (False, True):
            kw = dict(hidden_size=hidden, hc_mult=n, num_sms=132, norm=norm)
            for T in (1, 7, 33, 64):
                p = plan.plan_of(shifted, T, batch_invariant=False, **kw)
                f = plan.plan_of(KernelType.MHC_FUSED_POST_PRE, T, batch_invariant=False, **kw)
                assert p.fused_boundary and f.variant == "split_k"
                assert p._replace(kind=f.kind, hidden_spec=f.hidden_spec,
                                  fused_boundary=False) == f
                assert p.hidden_spec == 0
                ls = _C.launches_of(int(shifted), T, n, hidden, 132, norm, False, False, True, 1)
                fl = _C.launches_of(int(f.kind), T, n, hidden, 132, norm, False, False, True, 1)
                assert [r[0].split("<")[0] for r in ls] == ["main", "epilogue"]
                assert ls[0] == fl[0] and ls[0][0].startswith(f"main<{n},FUSED,")
                assert ls[1][0] == f"epilogue<{n},CARRY,{int(norm)},0>"
                groups = -(-hidden // 32)
                if f.epilogue_ctas_per_sm == 0:  # else the cap sizes the shared memory
                    assert ls[1][4] == fl[1][4] + (4 * groups if norm else 0)
            for T, bi in ((65, False), (4000, False), (1, True), (64, True)):
                p = plan.plan_of(shifted, T, batch_invariant=bi, **kw)
                assert not p.fused_boundary
                ls = _C.launches_of(int(shifted), T, n, hidden, 132, norm, bi, False, True, 1)
                assert ls[0][0] == f"combine<{n},1,{int(norm)},0>" and ls[0][1] == T


def test_shifted_executor_runs_the_fused_op_whatever_the_flag():
    ex = warmup.WarmupExecutor.create("MHC_SHIFTED_POST_PRE", max_tokens=8, hidden_size=H,
                                      device="cpu")
    with envs.MHC_FUSE_POST_PRE.override(False), h.OpLog() as log:
        ex.execute(8)
    assert log.ops == ["mhc_shifted_post_pre"]


def run_v41_calls(T, norm, g):
    """The four wrappers as a V4.1 server calls them, fused and unfused."""
    a = inputs(T, seed=g.randint(0, 1 << 30), norm=norm)
    w = a["norm_weight"]
    mhc_ops.mhc_stats(*stats_args(a))
    mhc_ops.mhc_combine(a["residual"], a["pre_mix"], w)
    for fuse in (True, False):
        with envs.MHC_FUSE_POST_PRE.override(fuse):
            mhc_ops.mhc_shifted_post_pre(*boundary_args(a), norm_weight=w)


def test_warmup_covers_the_v41_plans_on_the_cpu():
    import random

    mhc_ops._C.clear_launched_plans()  # forget what earlier tests launched
    report = warmup.warmup(H, max_tokens=50, kinds=[k.name for k in V41_KINDS], device="cpu",
                           progress=False)
    assert [(k.kind, k.norm) for k in report.kinds] == [
        (KernelType.MHC_STATS, False),
        (KernelType.MHC_COMBINE, False), (KernelType.MHC_COMBINE, True),
        (KernelType.MHC_POST_COMBINE, False), (KernelType.MHC_POST_COMBINE, True),
        (KernelType.MHC_SHIFTED_POST_PRE, False), (KernelType.MHC_SHIFTED_POST_PRE, True)]
    for k in report.kinds:
        assert k.token_counts == plan.token_count_representatives(
            k.kind, 50, hidden_size=H, num_sms=0, norm=k.norm)
    assert "MHC_SHIFTED_POST_PRE +norm" in str(report)
    assert warmup.unwarmed_plans("cpu") == []
    g = random.Random(0)
    for _ in range(4):
        for norm in (False, True):
            run_v41_calls(g.randint(1, 50), norm, g)
    assert warmup.unwarmed_plans("cpu") == []


def test_default_warmup_walks_the_v41_kinds():
    report = warmup.warmup(H, max_tokens=8, device="cpu", progress=False)
    walked = {(k.kind, k.norm) for k in report.kinds}
    for kind in V41_KINDS:
        assert (kind, False) in walked
        assert ((kind, True) in walked) == (kind in warmup.NORM_KINDS)


# ----------------------------------------------------------------------------------------------
# python -m mhc_ops --model v4.1


def run_main(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MHC_")}
    return subprocess.run([sys.executable, "-m", "mhc_ops", "--device", "cpu", "--layers", "2",
                           "--tokens", "24", "--hidden-size", "256", "--iters", "1", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_main_job_v41_runs_on_the_cpu_and_agrees():
    p = run_main("--model", "v4.1")
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "DeepSeek-V4.1 (lagged pre)-shaped mHC stack" in out
    for op in ("mhc_stats", "mhc_combine", "mhc_shifted_post_pre", "mhc_post", "hc_head"):
        assert f"\n  {op} " in out, op
    # 2 layers: 4 sub-layers, 3 boundaries
    assert "residual_out of mhc_shifted_post_pre bit-identical to mhc_post: 3/3  ok" in out
    assert "layer_input of mhc_shifted_post_pre bit-identical to mhc_combine: 3/3  ok" in out
    assert "pre_mix" in out and "plans first launched after warmup: 0  ok" in out
    assert "MHC_SHIFTED_POST_PRE +norm" in out
    assert "FAIL" not in out and out.rstrip().endswith("PASS")


def test_main_job_v4_is_still_the_default():
    p = run_main()
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "DeepSeek-V4-shaped mHC stack" in out
    assert "residual_out of mhc_post_pre bit-identical to mhc_post: 3/3  ok" in out
    assert "mhc_combine" not in out and "MHC_STATS" not in out
    assert out.rstrip().endswith("PASS")


def test_main_job_help_names_the_models():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MHC_")}
    p = subprocess.run([sys.executable, "-m", "mhc_ops", "--help"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0 and "--model {v4,v4.1}" in p.stdout and "lagged pre" in p.stdout
