"""DeepSeek-V4.1 ops (SPEC §2.9) through torch.ops.mhc: mhc_stats, mhc_combine, mhc_post_combine
and mhc_shifted_post_pre against the float64 reference, and the bit identities that tie the fused
forms to the unfused ones on one device.

Bounds (SPEC §3): pre_mix / post_mix / comb_mix max abs ≤ 1e-3 (helpers.check_stats_outputs);
layer_input within 2 bf16 ulps + 5e-4·Σ pre·|residual|, 4 ulps with norm_weight
(helpers.check_combine_output); residual_out within 1 bf16 ulp (helpers.check_post_output).
The reference tests allocate under `nan_filled`, so an output element that no kernel writes is
NaN and fails the finiteness check inside every bound. CUDA-only coverage (real widths at many
T, T·n·H > 2^31) is in tests/test_v41_ops_cuda.py.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import helpers as h
from mhc_ops import reference

OPS = h.V41_OPS
ARGS = h.V41_ARGS
NORM_OPS = OPS[1:]  # the ops that take norm_weight
POST_KEYS = h.POST_KEYS
PER_TOKEN = h.V41_PER_TOKEN
SCALARS = {"mhc_stats": h.GATE_KW, "mhc_combine": ("norm_eps",),
           "mhc_post_combine": ("norm_eps",), "mhc_shifted_post_pre": h.GATE_KW + ("norm_eps",)}

# (T, n, H): why the case is here.
CASES = [
    (1, 4, 5120),    # decode, one token at the DeepSeek-V4.1 width
    (3, 4, 4096),    # odd T at the V4 Flash width
    (2, 4, 7168),    # the V4 Pro width, K = 28672
    (7, 4, 520),     # odd T; H % 8 == 0 but H % 16 != 0
    (129, 4, 1032),  # odd T past 128; K = 4128 not a multiple of 64
    (64, 4, 64),     # a full decode batch
    (33, 1, 64),     # n = 1: one stream, 1x1 Sinkhorn
    (17, 2, 8),      # n = 2 and the smallest legal H
    (5, 3, 72),      # odd n
    (6, 5, 40),      # n = 5
    (4, 6, 48),      # n = 6
    (3, 7, 56),      # n = 7
    (9, 8, 128),     # n = 8: the largest hc_mult, M3 = 80
]
NORMS = (None, "bf16", "f32")  # no norm; a bf16 norm_weight; a float32 one (rounded to bf16)


def _inputs(T: int, n: int, H: int, *, seed: int, norm: str | None = "bf16",
            device="cpu") -> dict:
    """helpers.v41_inputs with the norm_weight of the given kind. The float32 weight is the bf16
    one plus noise below a bf16 ulp, so it is not representable and its rounding matters."""
    a = h.v41_inputs(T, n, H, seed=seed, norm=True, device=device)
    w = a["norm_weight"]
    if norm is None:
        a["norm_weight"] = None
    elif norm == "f32":
        noise = torch.randn(H, generator=h.gen(seed + 2)) * 2e-3
        a["norm_weight"] = w.float() + noise.to(device)
    return a


_call, _outs, _check = h.v41_call, h.outs_of, h.check_v41_outputs


def _stats_of(r, a: dict, **kw):
    return torch.ops.mhc.mhc_stats(r, a["fn"], a["hc_scale"], a["hc_base"], **kw)


# ----------------------------------------------------------------------------------------------
# Against the float64 reference.

@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("T,n,H", CASES)
def test_stats_matches_reference(device, T, n, H):
    a = _inputs(T, n, H, seed=h.seed_of("stats", T, n, H), device=device)
    _check("mhc_stats", _call("mhc_stats", a), a)


@pytest.mark.usefixtures("nan_filled")
@pytest.mark.parametrize("norm", NORMS, ids=["plain", "norm", "norm32"])
@pytest.mark.parametrize("T,n,H", CASES)
@pytest.mark.parametrize("op", NORM_OPS)
def test_matches_reference(device, op, T, n, H, norm):
    a = _inputs(T, n, H, seed=h.seed_of(op, T, n, H, norm), norm=norm, device=device)
    _check(op, _call(op, a), a)


# (op, norm_weight kind): mhc_stats takes no norm_weight
OP_NORMS = [("mhc_stats", None)] + [(op, norm) for op in NORM_OPS for norm in (None, "bf16")]


@pytest.mark.parametrize("op,norm", OP_NORMS, ids=[f"{o}-{n or 'plain'}" for o, n in OP_NORMS])
def test_empty(device, op, norm):
    # T = 0: correctly typed empty outputs on the inputs' device (SPEC §2.8)
    n, H = 4, 64
    a = _inputs(0, n, H, seed=1, norm=norm, device=device)
    shapes = {"residual_out": ((0, n, H), torch.bfloat16),
              "layer_input": ((0, H), torch.bfloat16),
              "pre_mix": ((0, n), torch.float32), "post_mix": ((0, n, 1), torch.float32),
              "comb_mix": ((0, n, n), torch.float32)}
    names = {"mhc_stats": ["pre_mix", "post_mix", "comb_mix"], "mhc_combine": ["layer_input"],
             "mhc_post_combine": ["residual_out", "layer_input"],
             "mhc_shifted_post_pre": ["residual_out", "layer_input", "pre_mix", "post_mix",
                                      "comb_mix"]}[op]
    outs = _outs(_call(op, a))
    assert len(outs) == len(names)
    for o, name in zip(outs, names):
        assert (tuple(o.shape), o.dtype) == shapes[name], (op, name)
        assert o.device.type == device


@pytest.mark.parametrize("op", OPS)
def test_non_default_scalars(device, op):
    # Every float argument away from its default, far enough to move the result: a kernel that
    # ignored or swapped one fails the reference comparison. Then all eps = 0 (legal: >= 0).
    a = _inputs(11, 4, 72, seed=h.seed_of("scalars", op), device=device)
    kw = dict(rms_eps=0.5, hc_pre_eps=0.05, hc_sinkhorn_eps=0.02, hc_post_mult_value=1.5,
              sinkhorn_repeat=5, norm_eps=0.25)
    zero = dict(rms_eps=0.0, hc_pre_eps=0.0, hc_sinkhorn_eps=0.0, norm_eps=0.0)
    for k in (kw, zero):
        k = {name: v for name, v in k.items() if name in SCALARS[op]}
        _check(op, _call(op, a, **k), a, **k)
    if op != "mhc_stats":
        # norm_eps reaches the folded norm: 0.25 against mean(z²) ~ 1 moves most elements
        i = 0 if op == "mhc_combine" else 1  # layer_input
        moved, base = _outs(_call(op, a, norm_eps=0.25))[i], _outs(_call(op, a))[i]
        assert not torch.equal(moved, base)


@pytest.mark.parametrize("repeat", [0, 1, 3, 20])
@pytest.mark.parametrize("op", ["mhc_stats", "mhc_shifted_post_pre"])
def test_sinkhorn_repeat(device, op, repeat):
    a = _inputs(31, 4, 64, seed=h.seed_of("rep", op, repeat), device=device)
    _check(op, _call(op, a, sinkhorn_repeat=repeat), a, sinkhorn_repeat=repeat)
    if repeat == 0:
        # SPEC §2.6: R = 0 and R = 1 are the same; R = 3 differs (the count is honoured)
        zero, one = _outs(_call(op, a, sinkhorn_repeat=0)), _outs(_call(op, a, sinkhorn_repeat=1))
        assert all(torch.equal(x, y) for x, y in zip(zero, one))
        assert not torch.equal(zero[-1], _outs(_call(op, a, sinkhorn_repeat=3))[-1])


@pytest.mark.parametrize("op", NORM_OPS)
def test_gate_shapes_accepted(device, op):
    # pre_mix [T, n] or [T, n, 1] (SPEC §2.9), post_mix [T, n, 1] or [T, n] (SPEC §2.2): the
    # same data, the same bits.
    T, n = 9, 4
    a = _inputs(T, n, 64, seed=h.seed_of("shapes", op), device=device)
    want = _outs(_call(op, a))
    variants = [{"pre_mix": a["pre_mix"].reshape(T, n, 1)}]
    if "post_mix" in ARGS[op]:
        variants += [{"post_mix": a["post_mix"].reshape(T, n)},
                     {"post_mix": a["post_mix"].reshape(T, n),
                      "pre_mix": a["pre_mix"].reshape(T, n, 1)}]
    for v in variants:
        got = _outs(_call(op, {**a, **v}))
        assert all(torch.equal(g, w) for g, w in zip(got, want)), list(v)


@pytest.mark.parametrize("n", [4, 8])
def test_combine_weights_stream_i_by_pre_i(device, n):
    # Integer residuals in [-8, 8] and pre_mix a per-token permutation of 1, 1/2, ..., 2^(1-n):
    # every product and partial sum is exact in fp32, so layer_input is bf16 of the exact sum,
    # bit for bit. A kernel that paired pre_mix[t, i] with any stream but i, or read pre_mix of
    # another token, gets other sums.
    T, H = 12, 64
    g = h.gen(h.seed_of("exact", n))
    res = torch.randint(-8, 9, (T, n, H), generator=g).to(torch.bfloat16)
    perms = torch.stack([torch.randperm(n, generator=g) for _ in range(T)])
    pre = torch.pow(2.0, -perms.float())
    want = reference.mhc_combine(res, pre, dtype=torch.float64)
    got = torch.ops.mhc.mhc_combine(res.to(device), pre.to(device))
    assert torch.equal(got.cpu(), want)
    # the same exactness through mhc_post_combine (post = 0, comb = I: residual_out = residual)
    eye = torch.eye(n).expand(T, n, n).contiguous()
    r, li = torch.ops.mhc.mhc_post_combine(torch.zeros(T, H, dtype=torch.bfloat16, device=device),
                                           res.to(device), torch.zeros(T, n, 1, device=device),
                                           eye.to(device), pre.to(device))
    assert torch.equal(r.cpu(), res) and torch.equal(li.cpu(), want)


def test_combine_norm_is_rmsnorm_of_plain(device):
    # SPEC §2.9 / §2.1 step 9: with norm_weight w, layer_input = rmsnorm(bf16(y), w)
    a = _inputs(19, 4, 200, seed=7, device=device)
    w = a["norm_weight"]
    plain = torch.ops.mhc.mhc_combine(a["residual"], a["pre_mix"])
    normed = torch.ops.mhc.mhc_combine(a["residual"], a["pre_mix"], w)
    z = plain.cpu().double()
    want = z * torch.rsqrt(z.square().mean(-1, keepdim=True) + 1e-6) * w.cpu().double()
    # one rounding of an fp32 norm against the float64 one: 1 ulp
    h.assert_bf16_within_ulp(normed, want.to(torch.bfloat16), what="norm vs rmsnorm(plain)")


@pytest.mark.parametrize("op", NORM_OPS)
def test_float32_norm_weight_is_rounded_once(device, op):
    # SPEC §2.8: a float32 norm_weight gives the bits of the bf16 weight it rounds to
    a = _inputs(13, 4, 200, seed=h.seed_of("w32", op), norm="f32", device=device)
    w32 = a["norm_weight"]
    assert not torch.equal(w32.to(torch.bfloat16).float(), w32)  # the rounding is not a no-op
    got = _outs(_call(op, a))
    want = _outs(_call(op, {**a, "norm_weight": w32.to(torch.bfloat16)}))
    assert all(torch.equal(g, w) for g, w in zip(got, want))


# ----------------------------------------------------------------------------------------------
# Fused against unfused on the same device (SPEC §2.9).

@pytest.mark.parametrize("norm", NORMS, ids=["plain", "norm", "norm32"])
@pytest.mark.parametrize("T,H", [(1, 5120), (37, 520), (300, 256)])
def test_fused_forms_are_bit_identical_to_unfused(device, T, H, norm):
    a = _inputs(T, 4, H, seed=h.seed_of("bits", T, H, norm), norm=norm, device=device)
    post = [a[k] for k in POST_KEYS]
    r, li = torch.ops.mhc.mhc_post_combine(*post, a["pre_mix"], a["norm_weight"])
    assert torch.equal(r, torch.ops.mhc.mhc_post(*post))
    assert torch.equal(li, torch.ops.mhc.mhc_combine(r, a["pre_mix"], a["norm_weight"]))
    s = _call("mhc_shifted_post_pre", a)
    assert torch.equal(s[0], r) and torch.equal(s[1], li)
    unfused = _stats_of(r, a)
    if device == "cpu":
        assert all(torch.equal(g, w) for g, w in zip(s[2:], unfused))
    else:
        # CUDA: within SPEC §3 of each other (bitwise under MHC_BATCH_INVARIANT:
        # tests/test_batch_invariant.py)
        for g, w in zip(s[2:], unfused):
            assert float((g.double() - w.double()).abs().max()) <= 1e-3
    h.check_stats_outputs(s[2:], r, a, what="shifted next")
    # the carried pre is not the one stats computes from residual_out: the identities above
    # would not see a kernel that combined with the new pre if the two were close
    assert float((s[2] - a["pre_mix"]).abs().max()) > 0.05


# ----------------------------------------------------------------------------------------------
# Layouts, non-finite input, determinism.

@pytest.mark.parametrize("mode", h.VIEW_MODES)
@pytest.mark.parametrize("op", OPS)
def test_odd_views(device, op, mode):
    # SPEC §2.8: any strides and storage offsets; each tensor argument alone, then all at once,
    # must give the contiguous call's bits ("offset" misaligns vectors by one element).
    a = _inputs(7, 4, 72, seed=h.seed_of("views", op), device=device)
    want = _outs(_call(op, a))
    names = list(ARGS[op])
    for sel in [[k] for k in names] + [names]:
        odd = {k: (h.odd_view(v, mode) if k in sel else v) for k, v in a.items()}
        for g, w in zip(_outs(_call(op, odd)), want):
            assert torch.equal(g, w), f"{mode} view of {sel}"


@pytest.mark.parametrize("op", OPS)
def test_sliced_views(device, op):
    # Layouts a model hands over: residual a window of a wider [T, n, H + 16] buffer (row
    # stride H + 16), x rows of a [T, H + 8] buffer at offset 1, pre_mix a [T, n, 1] column of a
    # [T, n, 3] buffer and a broadcast (stride 0) of one token's pre, comb_mix transposed twice.
    T, n, H = 9, 4, 264
    a = _inputs(T, n, H, seed=h.seed_of("sliced", op), device=device)
    want = _outs(_call(op, a))
    wide = torch.zeros(T, n, H + 16, dtype=torch.bfloat16, device=device)
    wide[:, :, 8:8 + H] = a["residual"]
    xb = torch.zeros(T, H + 8, dtype=torch.bfloat16, device=device)
    xb[:, 1:1 + H] = a["x"]
    col = torch.zeros(T, n, 3, device=device)
    col[..., 1] = a["pre_mix"]
    odd = {**a, "residual": wide[:, :, 8:8 + H], "x": xb[:, 1:1 + H], "pre_mix": col[..., 1:2],
           "comb_mix": a["comb_mix"].transpose(1, 2).contiguous().transpose(1, 2)}
    assert not odd["residual"].is_contiguous() and not odd["x"].is_contiguous()
    for g, w in zip(_outs(_call(op, odd)), want):
        assert torch.equal(g, w), "sliced views"
    if "pre_mix" in ARGS[op]:
        one = a["pre_mix"][3:4].expand(T, n)
        got = _outs(_call(op, {**a, "pre_mix": one}))
        ref = _outs(_call(op, {**a, "pre_mix": one.contiguous()}))
        assert all(torch.equal(g, w) for g, w in zip(got, ref)), "broadcast pre_mix"


NAN_TABLE = [(op, arg) for op in OPS for arg in ARGS[op] if arg in PER_TOKEN]


@pytest.mark.parametrize("op,arg", NAN_TABLE, ids=[f"{o}-{a}" for o, a in NAN_TABLE])
def test_nonfinite_token_isolated(device, op, arg):
    # SPEC §2.8: NaN / Inf in one token's inputs affects only that token's outputs. Tokens 2
    # and 6 sit among clean neighbours (CPU dot groups of 4, CUDA token blocks).
    a = _inputs(9, 4, 64, seed=h.seed_of("nan", op, arg), device=device)
    clean = _outs(_call(op, a))
    bad = a[arg].clone()
    bad[2].view(-1)[min(5, bad[2].numel() - 1)] = float("nan")
    bad[6].view(-1)[min(3, bad[6].numel() - 1)] = float("inf")
    got = _outs(_call(op, {**a, arg: bad}))
    for g, c in zip(got, clean):
        g, c = h.tokens_except(g, [2, 6]), h.tokens_except(c, [2, 6])
        assert torch.equal(g, c) and torch.isfinite(g).all()
    # and the poisoned tokens do see it (the values reached the kernel)
    assert any(not torch.isfinite(g[[2, 6]]).all() for g in got)


@pytest.mark.parametrize("op", OPS)
def test_deterministic(device, op):
    a = _inputs(37, 4, 200, seed=h.seed_of("det", op), device=device)
    first = _outs(_call(op, a))
    for _ in range(3):
        assert all(torch.equal(x, y) for x, y in zip(_outs(_call(op, a)), first))


@pytest.mark.parametrize("op", OPS)
def test_batch_invariant_cpu(op):
    # The CPU kernels give a token the same bits whatever batch it comes in (as for mhc_pre).
    T = 300
    a = _inputs(T, 4, 256, seed=h.seed_of("binv", op))
    full = _outs(_call(op, a))
    for b in (1, 7, 64):
        parts = [_outs(_call(op, {k: (v[i:i + b] if k in PER_TOKEN else v)
                                  for k, v in a.items()})) for i in range(0, T, b)]
        for k in range(len(full)):
            assert torch.equal(torch.cat([p[k] for p in parts]), full[k]), (b, k)


def test_checker_rejects_wrong_outputs():
    # The checks above must catch what they are there to catch: a layer_input 3 ulps off where
    # that exceeds the term, a combine with the wrong pre, gates from a shifted hc_base.
    a = _inputs(16, 4, 64, seed=14)
    li = torch.ops.mhc.mhc_combine(a["residual"], a["pre_mix"], a["norm_weight"])
    h.check_combine_output(li, a["residual"], a["pre_mix"], a["norm_weight"])
    bad = li.clone()
    j = int(li.double().abs().flatten().argmax())
    v = li.flatten()[j].double()
    bad.view(-1)[j] = (v + 5 * h.bf16_ulp(v)).to(torch.bfloat16)
    with pytest.raises(AssertionError, match="layer_input"):
        h.check_combine_output(bad, a["residual"], a["pre_mix"], a["norm_weight"])
    stats = _call("mhc_stats", a)
    wrong = torch.ops.mhc.mhc_combine(a["residual"], stats[0], a["norm_weight"])
    with pytest.raises(AssertionError, match="layer_input"):
        h.check_combine_output(wrong, a["residual"], a["pre_mix"], a["norm_weight"])
    h.check_stats_outputs(stats, a["residual"], a)
    # a random shift: one that is constant along a row or a column of the comb logits would
    # leave the Sinkhorn result unchanged
    shift = h.randn(h.gen(16), 24, std=0.1)
    shifted = _call("mhc_stats", {**a, "hc_base": a["hc_base"] + shift})
    for i, name in enumerate(("pre_mix", "post_mix", "comb_mix")):
        mixed = tuple(shifted[k] if k == i else stats[k] for k in range(3))
        with pytest.raises(AssertionError, match=name):
            h.check_stats_outputs(mixed, a["residual"], a)


# ----------------------------------------------------------------------------------------------
# A DeepSeek-V4.1 stack: hyper-connections with a lagged pre, unfused and fused.

STACK = 4  # hyper-connections (sub-layers) in the stack


def _sublayer(li: torch.Tensor) -> torch.Tensor:
    return (li.float() * 0.5 + 1.0).to(torch.bfloat16)


def _stack(mode: str, R0, pre0, params) -> list:
    """Runs STACK sub-layers. Boundary i (after sub-layer i) does the post of HC i with its
    (post, comb), the combine of sub-layer i+1's input with pre_i (the pre of the stats whose
    post / comb that boundary applies) and the stats of HC i+1 from the new residual.
    mode: "unfused" (mhc_post, mhc_combine, mhc_stats), "post_combine" (mhc_post_combine,
    mhc_stats), "shifted" (mhc_shifted_post_pre), or "new_pre": the bug of combining with the
    NEW pre_{i+1}. Returns [(residual, layer_input, pre, post, comb)] per sub-layer, then the
    final residual."""
    ops = torch.ops.mhc
    R = R0
    pre, post, comb = ops.mhc_stats(R, *params[0][:3])
    li = ops.mhc_combine(R, pre0, params[0][3])
    trace = [(R, li, pre, post, comb)]
    for i in range(STACK - 1):
        x = _sublayer(li)
        fn, scale, base, w = params[i + 1]
        if mode == "shifted":
            R, li, pre, post, comb = ops.mhc_shifted_post_pre(x, R, post, comb, pre, fn, scale,
                                                              base, norm_weight=w)
        elif mode == "post_combine":
            R, li = ops.mhc_post_combine(x, R, post, comb, pre, w)
            pre, post, comb = ops.mhc_stats(R, fn, scale, base)
        else:
            R = ops.mhc_post(x, R, post, comb)
            nxt = ops.mhc_stats(R, fn, scale, base)
            li = ops.mhc_combine(R, nxt[0] if mode == "new_pre" else pre, w)
            pre, post, comb = nxt
        trace.append((R, li, pre, post, comb))
    trace.append((ops.mhc_post(_sublayer(li), R, post, comb),))
    return trace


def _stack_inputs(T, H, seed, device):
    n = 4
    g = h.gen(seed)
    R0 = h.randn(g, T, n, H, dtype=torch.bfloat16).to(device)
    pre0 = (torch.sigmoid(h.randn(g, T, n)) + 1e-6).to(device)
    params = []
    for _ in range(STACK):
        p = h.pre_params(g, n, H, norm=True, device=device)
        params.append((p["fn"], p["hc_scale"], p["hc_base"], p["norm_weight"]))
    return R0, pre0, params


@pytest.mark.parametrize("invariant", [False, True], ids=["default", "batch_invariant"])
@pytest.mark.parametrize("T,H", [(13, 520), (3, 5120)])
def test_lagged_pre_stack_fused_equals_unfused(device, T, H, invariant, monkeypatch):
    if invariant:
        monkeypatch.setenv("MHC_BATCH_INVARIANT", "1")
    else:
        monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    R0, pre0, params = _stack_inputs(T, H, h.seed_of("stack", T, H), device)
    runs = {m: _stack(m, R0, pre0, params) for m in ("unfused", "post_combine", "shifted")}
    # every step of the fused stack is right on its own (SPEC §3)
    for (R, li, pre, post, comb), (R1, li1, *_), p in zip(runs["shifted"], runs["shifted"][1:],
                                                         params[1:]):
        h.check_combine_output(li1, R1, pre, p[3], what="stack")
    whole = device == "cpu" or invariant
    if whole:
        # CPU, or CUDA with batch-invariant stats: the gates agree bit for bit, so the whole
        # stack does, residual and layer_input of every sub-layer and the final residual.
        for m in ("post_combine", "shifted"):
            for i, (a, b) in enumerate(zip(runs["unfused"], runs[m])):
                for k, (x, y) in enumerate(zip(a, b)):
                    assert torch.equal(x, y), f"{m}: sub-layer {i}, output {k}"
        return
    # CUDA default plans: the stats of the fused form may differ within §3, and differences in
    # the gates then propagate. Step by step from the fused state, residual_out and layer_input
    # are still the unfused bits.
    ops = torch.ops.mhc
    s = runs["shifted"]
    for i in range(STACK - 1):
        R, li, pre, post, comb = s[i]
        x = _sublayer(li)
        w = params[i + 1][3]
        R1 = ops.mhc_post(x, R, post, comb)
        assert torch.equal(s[i + 1][0], R1), f"sub-layer {i + 1}: residual"
        assert torch.equal(s[i + 1][1], ops.mhc_combine(R1, pre, w)), f"sub-layer {i + 1}: li"
        h.check_stats_outputs(s[i + 1][2:], R1, dict(zip(("fn", "hc_scale", "hc_base"),
                                                         params[i + 1][:3])))


@pytest.mark.parametrize("T,H", [(13, 520), (3, 5120)])
def test_lagged_pre_stack_catches_combine_with_new_pre(device, T, H):
    # Negative control for the test above: the bug of combining with the pre just computed from
    # the new residual (no lag) gives the same residual at the first boundary but a layer_input
    # far outside the §3 bound of the right one, and the stack diverges from there on.
    R0, pre0, params = _stack_inputs(T, H, h.seed_of("stack", T, H), device)
    good = _stack("shifted", R0, pre0, params)
    bug = _stack("new_pre", R0, pre0, params)
    assert torch.equal(good[0][1], bug[0][1]) and torch.equal(good[1][0], bug[1][0])
    li_good, li_bug = good[1][1], bug[1][1]
    # the right layer_input passes the bound against the carried pre, the bug's fails it
    h.check_combine_output(li_good, good[1][0], good[0][2], params[1][3], what="carried")
    with pytest.raises(AssertionError, match="layer_input"):
        h.check_combine_output(li_bug, good[1][0], good[0][2], params[1][3], what="new pre")
    d = (li_good.double() - li_bug.double()).abs()
    assert float((d > 4 * h.bf16_ulp(li_good.double())).double().mean()) > 0.5
    assert not torch.equal(good[-1][0], bug[-1][0])  # and the final residual differs


# ----------------------------------------------------------------------------------------------
# Bad input (SPEC §2.8): a RuntimeError that starts with the op name and names the argument.
# Base call: T = 4, n = 4, H = 64 (K = 256, M3 = 24) with a bf16 norm_weight.

T0, N0, H0 = 4, 4, 64
bf16, f32 = torch.bfloat16, torch.float32
nan, inf = float("nan"), float("inf")


def _zeros(a, *shape, dtype=bf16):
    return torch.zeros(*shape, dtype=dtype, device=a["residual"].device)


RESIDUAL_CASES = [
    ("residual-dtype", lambda a: {"residual": a["residual"].float()}, "residual"),
    ("residual-rank2", lambda a: {"residual": a["residual"][:, 0]}, "residual"),
    ("residual-rank4", lambda a: {"residual": a["residual"][None]}, "residual"),
    ("residual-n9", lambda a: {"residual": _zeros(a, T0, 9, H0)}, "residual"),
    ("residual-H%8", lambda a: {"residual": a["residual"][..., :60]}, "residual"),
]
GATE_CASES = [
    ("fn-dtype", lambda a: {"fn": a["fn"].to(bf16)}, "fn"),
    ("fn-K", lambda a: {"fn": a["fn"][:, :248]}, "fn"),
    ("fn-M3", lambda a: {"fn": a["fn"][:20]}, "fn"),
    ("fn-rank", lambda a: {"fn": a["fn"][None]}, "fn"),
    ("hc_scale-len", lambda a: {"hc_scale": a["hc_scale"][:2]}, "hc_scale"),
    ("hc_base-len", lambda a: {"hc_base": a["hc_base"][:23]}, "hc_base"),
    ("hc_base-dtype", lambda a: {"hc_base": a["hc_base"].double()}, "hc_base"),
    ("sinkhorn_repeat<0", lambda a: {"sinkhorn_repeat": -1}, "sinkhorn_repeat"),
    ("sinkhorn_repeat-int64-max", lambda a: {"sinkhorn_repeat": 2**63 - 1}, "sinkhorn_repeat"),
    ("rms_eps-nan", lambda a: {"rms_eps": nan}, "rms_eps"),
    ("rms_eps<0", lambda a: {"rms_eps": -1e-6}, "rms_eps"),
    ("hc_pre_eps-inf", lambda a: {"hc_pre_eps": inf}, "hc_pre_eps"),
    ("hc_sinkhorn_eps-nan", lambda a: {"hc_sinkhorn_eps": nan}, "hc_sinkhorn_eps"),
    ("hc_post_mult_value-inf", lambda a: {"hc_post_mult_value": -inf}, "hc_post_mult_value"),
]
PRE_MIX_CASES = [
    ("pre_mix-bf16", lambda a: {"pre_mix": a["pre_mix"].to(bf16)}, "pre_mix"),
    ("pre_mix-f64", lambda a: {"pre_mix": a["pre_mix"].double()}, "pre_mix"),
    ("pre_mix-T", lambda a: {"pre_mix": a["pre_mix"][:3]}, "pre_mix"),
    ("pre_mix-n", lambda a: {"pre_mix": a["pre_mix"][:, :3]}, "pre_mix"),
    ("pre_mix-[T,n,2]", lambda a: {"pre_mix": a["pre_mix"][..., None].expand(T0, N0, 2)},
     "pre_mix"),
    ("pre_mix-[T,1,n]", lambda a: {"pre_mix": a["pre_mix"][:, None]}, "pre_mix"),
    ("pre_mix-rank1", lambda a: {"pre_mix": a["pre_mix"].reshape(-1)}, "pre_mix"),
    ("pre_mix-rank4", lambda a: {"pre_mix": a["pre_mix"][None, ..., None]}, "pre_mix"),
]
NORM_CASES = [
    ("norm_weight-size", lambda a: {"norm_weight": _zeros(a, 72)}, "norm_weight"),
    ("norm_weight-f16", lambda a: {"norm_weight": a["norm_weight"].half()}, "norm_weight"),
    ("norm_weight-rank2", lambda a: {"norm_weight": a["norm_weight"][None]}, "norm_weight"),
    ("norm_eps-nan", lambda a: {"norm_eps": nan}, "norm_eps"),
    ("norm_eps<0", lambda a: {"norm_eps": -1e-6}, "norm_eps"),
    ("norm_eps-inf", lambda a: {"norm_eps": inf}, "norm_eps"),
]
POST_CASES = [
    ("x-dtype", lambda a: {"x": a["x"].float()}, "x"),
    ("x-rank", lambda a: {"x": a["x"][None]}, "x"),
    ("x-T", lambda a: {"x": a["x"][:3]}, "x"),
    ("x-H", lambda a: {"x": a["x"][:, :56]}, "x"),
    ("post_mix-dtype", lambda a: {"post_mix": a["post_mix"].to(bf16)}, "post_mix"),
    ("post_mix-[T,n,2]", lambda a: {"post_mix": a["post_mix"].expand(T0, N0, 2)}, "post_mix"),
    ("post_mix-T", lambda a: {"post_mix": a["post_mix"][:3]}, "post_mix"),
    ("post_mix-n", lambda a: {"post_mix": a["post_mix"][:, :2]}, "post_mix"),
    ("comb_mix-dtype", lambda a: {"comb_mix": a["comb_mix"].double()}, "comb_mix"),
    ("comb_mix-shape", lambda a: {"comb_mix": a["comb_mix"][:, :, :3]}, "comb_mix"),
    ("comb_mix-T", lambda a: {"comb_mix": a["comb_mix"][:2]}, "comb_mix"),
    ("comb_mix-rank", lambda a: {"comb_mix": a["comb_mix"].reshape(T0, 16)}, "comb_mix"),
]
BAD_TABLE = (
    [("mhc_stats",) + c for c in RESIDUAL_CASES + GATE_CASES]
    + [("mhc_combine",) + c for c in RESIDUAL_CASES + PRE_MIX_CASES + NORM_CASES]
    + [("mhc_post_combine",) + c
       for c in RESIDUAL_CASES + POST_CASES + PRE_MIX_CASES + NORM_CASES]
    + [("mhc_shifted_post_pre",) + c
       for c in RESIDUAL_CASES + POST_CASES + PRE_MIX_CASES + GATE_CASES + NORM_CASES]
)
BAD_IDS = [f"{r[0]}-{r[1]}" for r in BAD_TABLE]


def _bad_base(op: str, device) -> dict:
    a = _inputs(T0, N0, H0, seed=0, device=device)
    return {k: a[k] for k in ARGS[op]}


def _raises(op: str, args: dict, arg: str):
    with pytest.raises(RuntimeError, match=rf"^{op}: {arg}\b") as e:
        getattr(torch.ops.mhc, op)(**args)
    assert e.type is RuntimeError  # TORCH_CHECK surfaces as a plain RuntimeError


@pytest.mark.parametrize("op,case,change,arg", BAD_TABLE, ids=BAD_IDS)
def test_bad_input(device, op, case, change, arg):
    args = _bad_base(op, device)
    getattr(torch.ops.mhc, op)(**args)  # the unchanged call is valid
    _raises(op, {**args, **change(args)}, arg)


@pytest.mark.parametrize("op,case,change,arg", BAD_TABLE, ids=BAD_IDS)
def test_bad_input_meta_and_fake(op, case, change, arg):
    # The fakes run the kernels' checks: the same refusal on the meta device and under
    # FakeTensorMode (what torch.compile traces with).
    base = _bad_base(op, "cpu")
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in base.items()}
    getattr(torch.ops.mhc, op)(**meta)
    _raises(op, {**meta, **change(meta)}, arg)
    mode = FakeTensorMode()
    fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in base.items()}
    with mode:
        getattr(torch.ops.mhc, op)(**fake)
        _raises(op, {**fake, **change(fake)}, arg)


DEVICE_TABLE = [(op, arg) for op in OPS for arg in ARGS[op] if arg != "residual"]


@pytest.mark.parametrize("op,arg", DEVICE_TABLE, ids=[f"{o}-{a}" for o, a in DEVICE_TABLE])
def test_mixed_devices(device, op, arg):
    # One argument away from the others: on "cpu" while the rest are on CUDA (the CUDA kernel's
    # checks), and everywhere on "meta" (routed to the fake, which must refuse the mix too).
    args = _bad_base(op, device)
    for other in ["meta"] + (["cpu"] if device != "cpu" else []):
        _raises(op, {**args, arg: args[arg].to(other)}, arg)
    with pytest.raises(RuntimeError, match=rf"^{op}: \w+ must be on the same device as "
                                           rf"residual"):
        getattr(torch.ops.mhc, op)(**{**args, "residual": args["residual"].to("meta")})


# ----------------------------------------------------------------------------------------------
# opcheck: schema, autograd registration, fake tensor, AOT dispatch (dynamic).

def _opcheck_cases():
    a = _inputs(5, 4, 64, seed=2)
    w32 = _inputs(5, 4, 64, seed=2, norm="f32")["norm_weight"]
    e = _inputs(0, 4, 64, seed=3)
    req = {op: tuple(a[k] for k in ARGS[op] if k != "norm_weight") for op in OPS}
    return [
        ("mhc_stats", req["mhc_stats"], {}),
        ("mhc_stats-repeat", req["mhc_stats"], {"sinkhorn_repeat": 3, "rms_eps": 1e-5}),
        ("mhc_stats-T0", tuple(e[k] for k in ARGS["mhc_stats"]), {}),
        ("mhc_combine", req["mhc_combine"], {}),
        ("mhc_combine-norm", req["mhc_combine"], {"norm_weight": a["norm_weight"]}),
        ("mhc_combine-norm32-pre3d", (a["residual"], a["pre_mix"].reshape(5, 4, 1)),
         {"norm_weight": w32, "norm_eps": 1e-5}),
        ("mhc_post_combine", req["mhc_post_combine"], {}),
        ("mhc_post_combine-norm", req["mhc_post_combine"], {"norm_weight": a["norm_weight"]}),
        ("mhc_shifted_post_pre", req["mhc_shifted_post_pre"], {}),
        ("mhc_shifted_post_pre-norm", req["mhc_shifted_post_pre"],
         {"norm_weight": a["norm_weight"], "sinkhorn_repeat": 3}),
    ]


OPCHECK = _opcheck_cases()


@pytest.mark.parametrize("case", OPCHECK, ids=[c[0] for c in OPCHECK])
def test_opcheck(case):
    name, args, kwargs = case
    torch.library.opcheck(getattr(torch.ops.mhc, name.split("-")[0]).default, args, kwargs)


# ----------------------------------------------------------------------------------------------
# Larger grids (pytest -m slow).

@pytest.mark.slow
@pytest.mark.parametrize("T,n,H", [(512, 4, 5120), (512, 4, 7168), (257, 8, 1024)])
@pytest.mark.parametrize("op,norm", OP_NORMS, ids=[f"{o}-{n or 'plain'}" for o, n in OP_NORMS])
def test_matches_reference_large(device, op, norm, T, n, H):
    a = _inputs(T, n, H, seed=h.seed_of("large", op, T, n, H, norm), norm=norm, device=device)
    _check(op, _call(op, a), a)


def test_reference_consistency():
    # The float64 reference the bounds use is the composition SPEC §2.9 writes down, and agrees
    # with mhc_pre's: stats' post/comb are mhc_pre's, combine with stats' pre is mhc_pre's
    # layer_input (so a mistake in reference.py shows up here, not as a kernel failure).
    a = _inputs(9, 4, 64, seed=15)
    p = (a["fn"], a["hc_scale"], a["hc_base"])
    f64 = torch.float64
    pre, post, comb = reference.mhc_stats(a["residual"], *p, dtype=f64)
    r_post, r_comb, r_li = reference.mhc_pre(a["residual"], *p, norm_weight=a["norm_weight"],
                                             dtype=f64)
    assert torch.equal(post, r_post) and torch.equal(comb, r_comb)
    assert torch.equal(reference.mhc_combine(a["residual"], pre, a["norm_weight"], dtype=f64),
                       r_li)
    s = reference.mhc_shifted_post_pre(*(a[k] for k in ARGS["mhc_shifted_post_pre"][:-1]),
                                       norm_weight=a["norm_weight"], dtype=f64)
    r = reference.mhc_post(*(a[k] for k in POST_KEYS), dtype=f64)
    assert torch.equal(s[0], r)
    assert torch.equal(s[1], reference.mhc_combine(r, a["pre_mix"], a["norm_weight"], dtype=f64))
    assert all(torch.equal(x, y) for x, y in zip(s[2:], reference.mhc_stats(r, *p, dtype=f64)))
