"""Bad input (SPEC §2.8): every op rejects it before any work, with a RuntimeError whose message
starts with the op name, names the argument and prints expected versus actual.

One table row per case: (op, case id, change to a valid call, anchored regex). The valid base
call uses T = 4, n = 4, H = 64 (K = 256, M3 = 24) and, for the GEMMs, M = 4, N = 24,
K = 64·7 + 5 (ceil(K/64) = 8). Every row runs on each backend, on the meta device and under
FakeTensorMode: the fakes run the kernels' own checks (csrc/core/validate.h).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import helpers as h
import mhc_ops

T, N_HC, H = 4, 4, 64
GK = 64 * 7 + 5


def _base(op: str, device: str) -> dict:
    if op == "mhc_pre":
        return h.pre_inputs(T, N_HC, H, seed=0, norm=True, device=device)
    if op == "mhc_post":
        return h.post_inputs(T, N_HC, H, seed=0, device=device)
    if op == "mhc_fused_post_pre":
        return h.fused_inputs(T, N_HC, H, seed=0, norm=True, device=device)
    if op == "hc_head":
        return h.head_inputs(T, N_HC, H, seed=0, device=device)
    if op == "hc_prenorm_gemm":
        return {**h.prenorm_inputs(T, 24, GK, seed=0, device=device), "num_splits": 3}
    if op == "tf32_hc_prenorm_gemm":
        return {**h.prenorm_inputs(T, 24, GK, seed=0, device=device),
                "out": torch.empty(T, 24, device=device), "sqrsum": torch.empty(T, device=device),
                "num_splits": None}
    if op == "linear_bf16_fp32":
        return h.linear_inputs(T, 24, GK, seed=0, device=device)
    raise ValueError(op)


f32, bf16, f64 = torch.float32, torch.bfloat16, torch.float64
nan, inf = float("nan"), float("inf")


def _sharing(args: dict, **views) -> dict:
    """Arguments of tf32_hc_prenorm_gemm remade as contiguous views of one zeroed byte buffer:
    name=(offset in elements of that argument's dtype, shape)."""
    end = max((o + torch.Size(shape).numel()) * args[k].dtype.itemsize
              for k, (o, shape) in views.items())
    buf = torch.zeros(-(-end // 16) * 16, dtype=torch.uint8, device=args["fn"].device)
    return {k: buf.view(args[k].dtype)[o:o + torch.Size(shape).numel()].view(shape)
            for k, (o, shape) in views.items()}


# Changes shared by the three ops that take residual [T, n, H] first.
RESIDUAL_CASES = [
    ("residual-dtype", lambda a: {"residual": a["residual"].float()},
     r"residual must be bfloat16 \[T, n, H\]; got float32 \[4, 4, 64\]$"),
    ("residual-rank2", lambda a: {"residual": a["residual"][:, 0]},
     r"residual must be bfloat16 \[T, n, H\]; got bfloat16 \[4, 64\]$"),
    ("residual-rank4", lambda a: {"residual": a["residual"][None]},
     r"residual must be bfloat16 \[T, n, H\]; got bfloat16 \[1, 4, 4, 64\]$"),
    ("n>8", lambda a: {"residual": torch.zeros(T, 9, H, dtype=bf16, device=a["residual"].device)},
     r"residual must be bfloat16 \[T, n, H\] with 1 <= n <= 8; got bfloat16 \[4, 9, 64\]$"),
    ("n=0", lambda a: {"residual": torch.zeros(T, 0, H, dtype=bf16, device=a["residual"].device)},
     r"residual must be bfloat16 \[T, n, H\] with 1 <= n <= 8; got bfloat16 \[4, 0, 64\]$"),
    ("H%8", lambda a: {"residual": a["residual"][..., :60]},
     r"residual must be bfloat16 \[T, n, H\] with H a positive multiple of 8; got "
     r"bfloat16 \[4, 4, 60\]$"),
]

PRE_PARAM_CASES = [
    ("fn-dtype", lambda a: {"fn": a["fn"].to(bf16)},
     r"fn must be float32 \[M3=24, K=256\]; got bfloat16 \[24, 256\]$"),
    ("fn-rank", lambda a: {"fn": a["fn"][None]},
     r"fn must be float32 \[M3=24, K=256\]; got float32 \[1, 24, 256\]$"),
    ("fn-K", lambda a: {"fn": a["fn"][:, :248]},
     r"fn must be float32 \[M3=24, K=256\]; got float32 \[24, 248\]$"),
    ("fn-M3", lambda a: {"fn": a["fn"][:20]},
     r"fn must be float32 \[M3=24, K=256\]; got float32 \[20, 256\]$"),
    ("hc_scale-len", lambda a: {"hc_scale": a["hc_scale"][:2]},
     r"hc_scale must be float32 \[3\]; got float32 \[2\]$"),
    ("hc_scale-dtype", lambda a: {"hc_scale": a["hc_scale"].double()},
     r"hc_scale must be float32 \[3\]; got float64 \[3\]$"),
    ("hc_base-len", lambda a: {"hc_base": a["hc_base"][:23]},
     r"hc_base must be float32 \[M3=24\]; got float32 \[23\]$"),
    ("hc_base-rank", lambda a: {"hc_base": a["hc_base"].reshape(4, 6)},
     r"hc_base must be float32 \[M3=24\]; got float32 \[4, 6\]$"),
    ("norm_weight-size", lambda a: {"norm_weight": torch.ones(72, dtype=bf16,
                                                             device=a["fn"].device)},
     r"norm_weight must be bfloat16 or float32 \[H=64\]; got bfloat16 \[72\]$"),
    ("norm_weight-dtype", lambda a: {"norm_weight": a["norm_weight"].half()},
     r"norm_weight must be bfloat16 or float32 \[H=64\]; got float16 \[64\]$"),
    ("sinkhorn_repeat<0", lambda a: {"sinkhorn_repeat": -1},
     r"sinkhorn_repeat must be in \[0, 1000\]; got -1$"),
    # an unbounded count would run for ever instead of failing
    ("sinkhorn_repeat>1000", lambda a: {"sinkhorn_repeat": 1001},
     r"sinkhorn_repeat must be in \[0, 1000\]; got 1001$"),
    ("sinkhorn_repeat-int64-max", lambda a: {"sinkhorn_repeat": 2**63 - 1},
     r"sinkhorn_repeat must be in \[0, 1000\]; got 9223372036854775807$"),
    ("rms_eps<0", lambda a: {"rms_eps": -1e-6}, r"rms_eps must be finite and >= 0; got -1e-06$"),
    ("rms_eps-nan", lambda a: {"rms_eps": nan}, r"rms_eps must be finite and >= 0; got nan$"),
    ("hc_pre_eps-inf", lambda a: {"hc_pre_eps": inf},
     r"hc_pre_eps must be finite and >= 0; got inf$"),
    ("hc_sinkhorn_eps<0", lambda a: {"hc_sinkhorn_eps": -0.5},
     r"hc_sinkhorn_eps must be finite and >= 0; got -0.5$"),
    ("norm_eps-nan", lambda a: {"norm_eps": nan}, r"norm_eps must be finite and >= 0; got nan$"),
    ("post_mult-inf", lambda a: {"hc_post_mult_value": -inf},
     r"hc_post_mult_value must be finite; got -inf$"),
]

POST_CASES = [
    ("x-dtype", lambda a: {"x": a["x"].float()},
     r"x must be bfloat16 \[T=4, H=64\]; got float32 \[4, 64\]$"),
    ("x-rank", lambda a: {"x": a["x"][None]},
     r"x must be bfloat16 \[T=4, H=64\]; got bfloat16 \[1, 4, 64\]$"),
    ("x-T", lambda a: {"x": a["x"][:3]},
     r"x must be bfloat16 \[T=4, H=64\]; got bfloat16 \[3, 64\]$"),
    ("x-H", lambda a: {"x": a["x"][:, :56]},
     r"x must be bfloat16 \[T=4, H=64\]; got bfloat16 \[4, 56\]$"),
    ("post_mix-dtype", lambda a: {"post_mix": a["post_mix"].to(bf16)},
     r"post_mix must be float32 \[T=4, n=4, 1\] or \[T=4, n=4\]; got bfloat16 \[4, 4, 1\]$"),
    ("post_mix-last", lambda a: {"post_mix": a["post_mix"].expand(T, N_HC, 2)},
     r"post_mix must be float32 .*; got float32 \[4, 4, 2\]$"),
    ("post_mix-T", lambda a: {"post_mix": a["post_mix"][:3]},
     r"post_mix must be float32 .*; got float32 \[3, 4, 1\]$"),
    ("post_mix-n", lambda a: {"post_mix": a["post_mix"][:, :2]},
     r"post_mix must be float32 .*; got float32 \[4, 2, 1\]$"),
    ("post_mix-rank1", lambda a: {"post_mix": a["post_mix"].reshape(-1)},
     r"post_mix must be float32 .*; got float32 \[16\]$"),
    ("comb_mix-dtype", lambda a: {"comb_mix": a["comb_mix"].double()},
     r"comb_mix must be float32 \[T=4, n=4, n=4\]; got float64 \[4, 4, 4\]$"),
    ("comb_mix-shape", lambda a: {"comb_mix": a["comb_mix"][:, :, :3]},
     r"comb_mix must be float32 \[T=4, n=4, n=4\]; got float32 \[4, 4, 3\]$"),
    ("comb_mix-T", lambda a: {"comb_mix": a["comb_mix"][:2]},
     r"comb_mix must be float32 \[T=4, n=4, n=4\]; got float32 \[2, 4, 4\]$"),
    ("comb_mix-rank", lambda a: {"comb_mix": a["comb_mix"].reshape(T, 16)},
     r"comb_mix must be float32 \[T=4, n=4, n=4\]; got float32 \[4, 16\]$"),
]

HEAD_CASES = [
    ("fn-rows", lambda a: {"fn": torch.zeros(5, 256, device=a["fn"].device)},
     r"fn must be float32 \[n=4, K=256\]; got float32 \[5, 256\]$"),
    ("fn-K", lambda a: {"fn": a["fn"][:, :128]},
     r"fn must be float32 \[n=4, K=256\]; got float32 \[4, 128\]$"),
    ("fn-dtype", lambda a: {"fn": a["fn"].double()},
     r"fn must be float32 \[n=4, K=256\]; got float64 \[4, 256\]$"),
    ("hc_scale-len", lambda a: {"hc_scale": torch.ones(3, device=a["fn"].device)},
     r"hc_scale must be float32 \[1\]; got float32 \[3\]$"),
    ("hc_base-len", lambda a: {"hc_base": torch.ones(24, device=a["fn"].device)},
     r"hc_base must be float32 \[n=4\]; got float32 \[24\]$"),
    ("hc_base-dtype", lambda a: {"hc_base": a["hc_base"].to(bf16)},
     r"hc_base must be float32 \[n=4\]; got bfloat16 \[4\]$"),
    ("rms_eps<0", lambda a: {"rms_eps": -1.0}, r"rms_eps must be finite and >= 0; got -1$"),
    ("hc_eps-nan", lambda a: {"hc_eps": nan}, r"hc_eps must be finite and >= 0; got nan$"),
]

PRENORM_CASES = [
    ("x-dtype", lambda a: {"x": a["x"].float()},
     r"x must be bfloat16 \[M, K\]; got float32 \[4, 453\]$"),
    ("x-rank", lambda a: {"x": a["x"][None]},
     r"x must be bfloat16 \[M, K\]; got bfloat16 \[1, 4, 453\]$"),
    ("K=0", lambda a: {"x": a["x"][:, :0]},
     r"x must be bfloat16 \[M, K\] with K > 0; got bfloat16 \[4, 0\]$"),
    ("N>32", lambda a: {"fn": torch.zeros(33, GK, device=a["fn"].device)},
     r"fn must be float32 \[N <= 32, K=453\]; got float32 \[33, 453\]$"),
    ("N=0", lambda a: {"fn": a["fn"][:0]},
     r"fn must be float32 \[N <= 32, K=453\]; got float32 \[0, 453\]$"),
    ("fn-K", lambda a: {"fn": a["fn"][:, :448]},
     r"fn must be float32 \[N <= 32, K=453\]; got float32 \[24, 448\]$"),
    ("fn-dtype", lambda a: {"fn": a["fn"].to(bf16)},
     r"fn must be float32 \[N <= 32, K=453\]; got bfloat16 \[24, 453\]$"),
    ("num_splits=0", lambda a: {"num_splits": 0},
     r"num_splits must be in \[1, ceil\(K/64\) = 8\]; got 0$"),
    ("num_splits<0", lambda a: {"num_splits": -2},
     r"num_splits must be in \[1, ceil\(K/64\) = 8\]; got -2$"),
    ("num_splits>ceil(K/64)", lambda a: {"num_splits": 9},
     r"num_splits must be in \[1, ceil\(K/64\) = 8\]; got 9$"),
]

DG_CASES = PRENORM_CASES + [
    ("out-split-shape-when-None", lambda a: {"out": torch.empty(1, T, 24, device=a["fn"].device)},
     r"out must be float32 \[M=4, N=24\]; got float32 \[1, 4, 24\]$"),
    ("out-dtype", lambda a: {"out": a["out"].to(bf16)},
     r"out must be float32 \[M=4, N=24\]; got bfloat16 \[4, 24\]$"),
    ("out-N", lambda a: {"out": torch.empty(T, 23, device=a["fn"].device)},
     r"out must be float32 \[M=4, N=24\]; got float32 \[4, 23\]$"),
    ("sqrsum-shape", lambda a: {"sqrsum": torch.empty(T + 1, device=a["fn"].device)},
     r"sqrsum must be float32 \[M=4\]; got float32 \[5\]$"),
    ("sqrsum-dtype", lambda a: {"sqrsum": a["sqrsum"].double()},
     r"sqrsum must be float32 \[M=4\]; got float64 \[4\]$"),
    ("out-unsplit-shape-with-S", lambda a: {"num_splits": 3},
     r"out must be float32 \[S=3, M=4, N=24\]; got float32 \[4, 24\]$"),
    ("sqrsum-wrong-S", lambda a: {"num_splits": 3,
                                  "out": torch.empty(3, T, 24, device=a["fn"].device),
                                  "sqrsum": torch.empty(2, T, device=a["fn"].device)},
     r"sqrsum must be float32 \[S=3, M=4\]; got float32 \[2, 4\]$"),
] + [
    # Outputs that share memory (PyTorch's out= rule): the kernels write from many threads, so
    # such a call would give write-order-dependent or silently wrong results.
    ("sqrsum-is-a-column-of-out", lambda a: {"sqrsum": a["out"][:, 0]},
     r"sqrsum must not overlap out in memory; got sqrsum float32 \[4\] with strides \[24\] at "
     r"storage offset 0 and out float32 \[4, 24\] with strides \[24, 1\] at storage offset 0 "
     r"in one storage$"),
    ("out-overlaps-fn", lambda a: _sharing(a, fn=(0, (24, GK)), out=(24 * GK - 40, (T, 24))),
     r"out must not overlap fn in memory; got out float32 \[4, 24\] with strides \[24, 1\] at "
     rf"storage offset {24 * GK - 40} and fn float32 \[24, 453\] with strides \[453, 1\] at "
     r"storage offset 0 in one storage$"),
    ("sqrsum-overlaps-fn", lambda a: _sharing(a, fn=(2, (24, GK)), sqrsum=(0, (T,))),
     r"sqrsum must not overlap fn in memory; got sqrsum float32 \[4\] .* and fn float32 "
     r"\[24, 453\] with strides \[453, 1\] at storage offset 2 in one storage$"),
    ("out-overlaps-x", lambda a: _sharing(a, x=(0, (T, GK)), out=(T * GK // 2 - 8, (T, 24))),
     r"out must not overlap x in memory; got out float32 \[4, 24\] .* and x bfloat16 "
     r"\[4, 453\] with strides \[453, 1\] at storage offset 0 in one storage$"),
    ("sqrsum-overlaps-x", lambda a: _sharing(a, x=(4, (T, GK)), sqrsum=(0, (T,))),
     r"sqrsum must not overlap x in memory; got sqrsum float32 \[4\] .* and x bfloat16 "
     r"\[4, 453\] .* in one storage$"),
    ("out-expanded", lambda a: {"out": torch.zeros(1, 24, device=a["fn"].device).expand(T, 24)},
     r"out must not overlap itself \(no two elements at one address, as for an out= argument\); "
     r"got float32 \[4, 24\] with strides \[0, 1\] at storage offset 0$"),
    ("sqrsum-expanded", lambda a: {"sqrsum": torch.zeros(1, device=a["fn"].device).expand(T)},
     r"sqrsum must not overlap itself .*; got float32 \[4\] with strides \[0\] at storage "
     r"offset 0$"),
    ("out-interleaved-rows", lambda a: {"out": torch.zeros(64, device=a["fn"].device)
                                        .as_strided((T, 24), (8, 1))},
     r"out must not overlap itself .*; got float32 \[4, 24\] with strides \[8, 1\] at storage "
     r"offset 0$"),
    ("split-sqrsum-inside-out", lambda a: {
        "num_splits": 2, "out": (o := torch.empty(2, T, 24, device=a["fn"].device)),
        "sqrsum": o[1, 1, 2:2 + 2 * T].view(2, T)},
     r"sqrsum must not overlap out in memory; got sqrsum float32 \[2, 4\] .* at storage offset "
     r"122 and out float32 \[2, 4, 24\] .* in one storage$"),
]

LINEAR_CASES = [
    ("x-dtype", lambda a: {"x": a["x"].float()},
     r"x must be bfloat16 \[M, K\]; got float32 \[4, 453\]$"),
    ("x-rank", lambda a: {"x": a["x"][0]}, r"x must be bfloat16 \[M, K\]; got bfloat16 \[453\]$"),
    ("weight-dtype", lambda a: {"weight": a["weight"].float()},
     r"weight must be bfloat16 \[N, K=453\]; got float32 \[24, 453\]$"),
    ("weight-K", lambda a: {"weight": a["weight"][:, :452]},
     r"weight must be bfloat16 \[N, K=453\]; got bfloat16 \[24, 452\]$"),
    ("weight-rank", lambda a: {"weight": a["weight"][None]},
     r"weight must be bfloat16 \[N, K=453\]; got bfloat16 \[1, 24, 453\]$"),
]

FUSED_CASES = (RESIDUAL_CASES + POST_CASES + PRE_PARAM_CASES)

TABLE = (
    [("mhc_pre",) + c for c in RESIDUAL_CASES + PRE_PARAM_CASES]
    + [("mhc_post",) + c for c in RESIDUAL_CASES + POST_CASES]
    + [("mhc_fused_post_pre",) + c for c in FUSED_CASES]
    + [("hc_head",) + c for c in RESIDUAL_CASES + HEAD_CASES]
    + [("hc_prenorm_gemm",) + c for c in PRENORM_CASES]
    + [("tf32_hc_prenorm_gemm",) + c for c in DG_CASES]
    + [("linear_bf16_fp32",) + c for c in LINEAR_CASES]
)


def _raises(op: str, args: dict, regex: str):
    with pytest.raises(RuntimeError, match=rf"^{op}: {regex}") as e:
        getattr(torch.ops.mhc, op)(**args)
    # the dispatcher surfaces TORCH_CHECK as a plain RuntimeError, not a subclass
    assert e.type is RuntimeError
    return e


@pytest.mark.parametrize("op,case,change,regex", TABLE,
                         ids=[f"{r[0]}-{r[1]}" for r in TABLE])
def test_bad_input(device, op, case, change, regex):
    args = _base(op, device)
    getattr(torch.ops.mhc, op)(**args)  # the unchanged call is valid
    _raises(op, {**args, **change(args)}, regex)


def _to_meta(args: dict) -> dict:
    return {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in args.items()}


@pytest.mark.parametrize("op,case,change,regex", TABLE,
                         ids=[f"{r[0]}-{r[1]}" for r in TABLE])
def test_bad_input_meta(op, case, change, regex):
    # On the meta device the dispatcher runs the fake, which runs the kernels' checks
    # (csrc/core/validate.h): the same refusal, the same message. The change is applied to the
    # meta arguments so that views (the overlap cases) alias on the meta device too.
    args = _to_meta(_base(op, "cpu"))
    getattr(torch.ops.mhc, op)(**args)
    _raises(op, {**args, **change(args)}, regex)


@pytest.mark.parametrize("op,case,change,regex", TABLE,
                         ids=[f"{r[0]}-{r[1]}" for r in TABLE])
def test_bad_input_fake_tensor_mode(op, case, change, regex):
    # What torch.compile's tracing sees: fake tensors (static shapes here; symbolic ones in
    # tests/test_fake_checks.py).
    base = _base(op, "cpu")
    mode = FakeTensorMode()
    args = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in base.items()}
    with mode:
        getattr(torch.ops.mhc, op)(**args)
        _raises(op, {**args, **change(args)}, regex)


# Tensor arguments that must share the first argument's device, per op.
DEVICE_ARGS = {
    "mhc_pre": ("residual", ["fn", "hc_scale", "hc_base", "norm_weight"]),
    "mhc_post": ("residual", ["x", "post_mix", "comb_mix"]),
    "mhc_fused_post_pre": ("residual", ["x", "post_mix", "comb_mix", "fn", "hc_scale", "hc_base",
                                        "norm_weight"]),
    "hc_head": ("residual", ["fn", "hc_scale", "hc_base"]),
    "hc_prenorm_gemm": ("x", ["fn"]),
    "tf32_hc_prenorm_gemm": ("x", ["fn", "out", "sqrsum"]),
    "linear_bf16_fp32": ("x", ["weight"]),
}
DEVICE_TABLE = [(op, arg) for op, (_, args) in DEVICE_ARGS.items() for arg in args]


@pytest.mark.parametrize("op,arg", DEVICE_TABLE, ids=[f"{o}-{a}" for o, a in DEVICE_TABLE])
def test_mixed_devices(device, op, arg):
    # On a GPU machine: one argument on the CPU while the rest are on CUDA (the CUDA kernel's
    # checks). Everywhere: one argument on "meta", which the dispatcher routes to the fake
    # implementation; it must reject the mix with the same message.
    ref, _ = DEVICE_ARGS[op]
    args = _base(op, device)
    others = ["meta"] + (["cpu"] if device != "cpu" else [])
    for other in others:
        bad = {**args, arg: args[arg].to(other)}
        _raises(op, bad, rf"{arg} must be on the same device as {ref} \({device}(:\d+)?\); "
                         rf"got {other}")
    # and the first argument away from all the others
    bad = {**args, ref: args[ref].to("meta")}
    with pytest.raises(RuntimeError, match=rf"^{op}: \w+ must be on the same device as {ref} "
                                           rf"\(meta\); got {device}"):
        getattr(torch.ops.mhc, op)(**bad)


def test_bad_input_leaves_outputs_untouched(device):
    # Checks run before any work: a rejected tf32_hc_prenorm_gemm call writes nothing.
    args = _base("tf32_hc_prenorm_gemm", device)
    out = torch.full((3, T, 24), nan, device=device)
    sq = torch.full((3, T), nan, device=device)
    for bad in ({"num_splits": 9}, {"sqrsum": torch.full((3, T + 1), nan, device=device)},
                {"x": args["x"].float()}, {"sqrsum": out[:, :, 5]},
                {"out": out[:1].expand(3, T, 24)}):
        call = {**args, "out": out, "sqrsum": sq, "num_splits": 3, **bad}
        with pytest.raises(RuntimeError, match=r"^tf32_hc_prenorm_gemm: "):
            torch.ops.mhc.tf32_hc_prenorm_gemm(**call)
        assert out.isnan().all() and sq.isnan().all()


def test_output_overlapping_fn_leaves_fn_untouched(device):
    # out inside fn's memory: computing would overwrite fn while it is read (results off by
    # ~1e7); refused before anything is written.
    buf = torch.randn(2048, generator=h.gen(5)).to(device)
    before = buf.clone()
    x = torch.randn(64, 256, generator=h.gen(6)).to(device, torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"^tf32_hc_prenorm_gemm: out must not overlap fn"):
        torch.ops.mhc.tf32_hc_prenorm_gemm(x, buf.view(8, 256), buf[:512].view(64, 8),
                                           torch.empty(64, device=device), None)
    assert torch.equal(buf, before)


@pytest.mark.parametrize("S", [None, 3])
def test_disjoint_views_of_one_buffer_are_accepted(device, S):
    # The overlap test is exact, not "same storage": outputs that interleave with each other or
    # with fn without sharing an element are valid out= arguments and get the right values.
    args = _base("tf32_hc_prenorm_gemm", device)
    x, fn, lead = args["x"], args["fn"], () if S is None else (S,)
    want_o, want_q = torch.ops.mhc.hc_prenorm_gemm(x, fn, S or 1)
    if S is None:
        want_o, want_q = want_o[0], want_q[0]
    # out = buf[..., :24] and sqrsum = buf[..., 24]: one row of 25 per token
    buf = torch.full((*lead, T, 25), nan, device=device)
    torch.ops.mhc.tf32_hc_prenorm_gemm(x, fn, buf[..., :24], buf[..., 24], S)
    assert torch.equal(buf[..., :24], want_o) and torch.equal(buf[..., 24], want_q)
    # fn, out and sqrsum back to back in one storage
    n_fn, n_out, n_sq = fn.numel(), want_o.numel(), want_q.numel()
    store = torch.full((n_fn + n_out + n_sq,), nan, device=device)
    f = store[:n_fn].view(fn.shape).copy_(fn)
    o = store[n_fn:n_fn + n_out].view(want_o.shape)
    q = store[n_fn + n_out:].view(want_q.shape)
    torch.ops.mhc.tf32_hc_prenorm_gemm(x, f, o, q, S)
    assert torch.equal(o, want_o) and torch.equal(q, want_q) and torch.equal(f, fn)


def test_wrappers_report_op_errors(device):
    # The Python wrappers flatten leading dims but leave validation to the op: the same
    # op-named messages come through.
    pre = _base("mhc_pre", device)
    p = {k: pre[k] for k in ("fn", "hc_scale", "hc_base")}
    with pytest.raises(RuntimeError, match=r"^mhc_pre: residual must be bfloat16 \[T, n, H\]; "
                                           r"got bfloat16 \[64\]$"):
        mhc_ops.mhc_pre(pre["residual"][0, 0], **p)
    with pytest.raises(RuntimeError, match=r"^mhc_pre: residual must be bfloat16 \[T, n, H\]; "
                                           r"got float32 \[4, 4, 64\]$"):
        mhc_ops.mhc_pre(pre["residual"].float().reshape(2, 2, N_HC, H), **p)
    post = _base("mhc_post", device)
    with pytest.raises(RuntimeError, match=r"^mhc_post: x must be bfloat16 \[T=4, H=64\]; "
                                           r"got bfloat16 \[4, 56\]$"):
        mhc_ops.mhc_post(torch.zeros(2, 2, 56, dtype=bf16, device=device),
                         post["residual"].reshape(2, 2, N_HC, H),
                         post["post_mix"].reshape(2, 2, N_HC, 1),
                         post["comb_mix"].reshape(2, 2, N_HC, N_HC))
    head = _base("hc_head", device)
    with pytest.raises(RuntimeError, match=r"^hc_head: hc_scale must be float32 \[1\]"):
        mhc_ops.hc_head(head["residual"].reshape(2, 2, N_HC, H), head["fn"],
                        torch.ones(2, device=device), head["hc_base"])
    with pytest.raises(RuntimeError, match=r"^hc_prenorm_gemm: num_splits must be in"):
        mhc_ops.hc_prenorm_gemm(*[_base("hc_prenorm_gemm", device)[k] for k in ("x", "fn")], 0)


# The wrappers' companions of residual [..., n, H].
LEAD_ARGS = ("x", "post_mix", "comb_mix")
LEAD_TABLE = [(op, arg) for op in ("mhc_post", "mhc_fused_post_pre") for arg in LEAD_ARGS]


@pytest.mark.parametrize("op,arg", LEAD_TABLE, ids=[f"{o}-{a}" for o, a in LEAD_TABLE])
def test_wrappers_require_equal_leading_dims(device, op, arg):
    # residual [2, 3, n, H]: each companion must have leading dims [2, 3]. The same 6 tokens
    # arranged [3, 2] would flatten to a valid shape and pair every token with another token's
    # x or gates, so it is refused by name, as are missing or extra leading dims.
    flat = (h.post_inputs(6, N_HC, H, seed=0, device=device) if op == "mhc_post"
            else h.fused_inputs(6, N_HC, H, seed=0, norm=True, device=device))
    args = {k: v.reshape(2, 3, *v.shape[1:]) if k in LEAD_ARGS + ("residual",) else v
            for k, v in flat.items()}
    out = getattr(mhc_ops, op)(**args)  # the matching call is valid
    assert (out[0] if isinstance(out, tuple) else out).shape == (2, 3, N_HC, H)
    v = args[arg]
    tail = tuple(v.shape[2:])
    for bad in (v.reshape(3, 2, *tail), v.reshape(6, *tail), v.reshape(1, 2, 3, *tail)):
        got = re.escape(f"{str(bad.dtype)[6:]} {list(bad.shape)}")
        with pytest.raises(RuntimeError, match=rf"^{op}: {arg} must have the leading dims "
                                               rf"\[2, 3\] of residual bfloat16 "
                                               rf"\[2, 3, 4, 64\]; got {got}$"):
            getattr(mhc_ops, op)(**{**args, arg: bad})


def test_wrappers_leading_dims_under_compile():
    # Traced by dynamo (symbolic sizes, which it cannot format): the refusal still names the op
    # and the argument, as the cause of the compile error.
    torch._dynamo.reset()
    args = {k: v.reshape(2, 3, *v.shape[1:]) for k, v in h.post_inputs(6, N_HC, H, seed=0).items()}
    args["x"] = args["x"].reshape(3, 2, H)
    f = torch.compile(mhc_ops.mhc_post, fullgraph=True, backend="eager", dynamic=True)
    with pytest.raises(RuntimeError) as e:
        f(**args)
    chain, c = [], e.value
    while c is not None:
        chain.append(str(c))
        c = c.__cause__ or c.__context__
    assert any("mhc_post: x must have the leading dims of residual" in m for m in chain), chain
