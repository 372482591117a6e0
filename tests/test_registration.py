"""Registration (SPEC §2, §7): schemas exactly as in the contract, a CPU kernel (and a CUDA one
when built), working fakes, opcheck, wrapper defaults equal to schema defaults, and an import
that creates no CUDA context."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import helpers as h
import mhc_ops
from mhc_ops import reference

# The schemas as SPEC §2 writes them.
SPEC_SCHEMAS = {
    "mhc_pre": (
        "mhc_pre(Tensor residual, Tensor fn, Tensor hc_scale, Tensor hc_base, "
        "float rms_eps=1e-6, float hc_pre_eps=1e-6, float hc_sinkhorn_eps=1e-6, "
        "float hc_post_mult_value=2.0, int sinkhorn_repeat=20, "
        "Tensor? norm_weight=None, float norm_eps=1e-6) "
        "-> (Tensor post_mix, Tensor comb_mix, Tensor layer_input)"),
    "mhc_post": "mhc_post(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix) -> Tensor",
    "mhc_fused_post_pre": (
        "mhc_fused_post_pre(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix, "
        "Tensor fn, Tensor hc_scale, Tensor hc_base, "
        "float rms_eps=1e-6, float hc_pre_eps=1e-6, float hc_sinkhorn_eps=1e-6, "
        "float hc_post_mult_value=2.0, int sinkhorn_repeat=20, "
        "Tensor? norm_weight=None, float norm_eps=1e-6) "
        "-> (Tensor residual_out, Tensor post_mix_out, Tensor comb_mix_out, Tensor layer_input)"),
    "hc_head": (
        "hc_head(Tensor residual, Tensor fn, Tensor hc_scale, Tensor hc_base, "
        "float rms_eps=1e-6, float hc_eps=1e-6) -> Tensor"),
    "hc_prenorm_gemm": (
        "hc_prenorm_gemm(Tensor x, Tensor fn, int num_splits=1) -> (Tensor out, Tensor sqrsum)"),
    "tf32_hc_prenorm_gemm": (
        "tf32_hc_prenorm_gemm(Tensor x, Tensor fn, Tensor(a!) out, Tensor(b!) sqrsum, "
        "int? num_splits=None) -> ()"),
    "linear_bf16_fp32": "linear_bf16_fp32(Tensor x, Tensor weight) -> Tensor",
    "mhc_stats": (
        "mhc_stats(Tensor residual, Tensor fn, Tensor hc_scale, Tensor hc_base, "
        "float rms_eps=1e-6, float hc_pre_eps=1e-6, float hc_sinkhorn_eps=1e-6, "
        "float hc_post_mult_value=2.0, int sinkhorn_repeat=20) "
        "-> (Tensor pre_mix, Tensor post_mix, Tensor comb_mix)"),
    "mhc_combine": (
        "mhc_combine(Tensor residual, Tensor pre_mix, Tensor? norm_weight=None, "
        "float norm_eps=1e-6) -> Tensor layer_input"),
    "mhc_post_combine": (
        "mhc_post_combine(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix, "
        "Tensor pre_mix, Tensor? norm_weight=None, float norm_eps=1e-6) "
        "-> (Tensor residual_out, Tensor layer_input)"),
    "mhc_shifted_post_pre": (
        "mhc_shifted_post_pre(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix, "
        "Tensor pre_mix, Tensor fn, Tensor hc_scale, Tensor hc_base, "
        "float rms_eps=1e-6, float hc_pre_eps=1e-6, float hc_sinkhorn_eps=1e-6, "
        "float hc_post_mult_value=2.0, int sinkhorn_repeat=20, "
        "Tensor? norm_weight=None, float norm_eps=1e-6) "
        "-> (Tensor residual_out, Tensor layer_input, Tensor next_pre_mix, Tensor next_post_mix, "
        "Tensor next_comb_mix)"),
}
OPS = list(SPEC_SCHEMAS)

# What torch prints for the schemas without float defaults, verbatim (torch prints 1e-6 as
# 9.9999999999999995e-07, hence the parse-and-print comparison for the others).
PRINTED = {
    "mhc_post": "mhc::mhc_post(Tensor x, Tensor residual, Tensor post_mix, Tensor comb_mix) "
                "-> Tensor",
    "hc_prenorm_gemm": "mhc::hc_prenorm_gemm(Tensor x, Tensor fn, int num_splits=1) "
                       "-> (Tensor out, Tensor sqrsum)",
    "tf32_hc_prenorm_gemm": "mhc::tf32_hc_prenorm_gemm(Tensor x, Tensor fn, Tensor(a!) out, "
                            "Tensor(b!) sqrsum, int? num_splits=None) -> ()",
    "linear_bf16_fp32": "mhc::linear_bf16_fp32(Tensor x, Tensor weight) -> Tensor",
}


def _schema(op: str):
    return getattr(torch.ops.mhc, op).default._schema


def test_namespace_holds_exactly_the_spec_ops():
    names = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("mhc::")}
    assert names == {f"mhc::{op}" for op in OPS}


@pytest.mark.parametrize("op", OPS)
def test_schema_matches_spec(op):
    spec = torch._C.parse_schema("mhc::" + SPEC_SCHEMAS[op])
    got = _schema(op)
    assert str(got) == str(spec)
    assert got == spec
    if op in PRINTED:
        assert str(got) == PRINTED[op]


@pytest.mark.parametrize("op", OPS)
def test_kernels_registered(op):
    name = f"mhc::{op}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "Meta")  # the fake
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA") == mhc_ops.cuda_available()


def test_cuda_available_means_cuda_kernels():
    assert mhc_ops.cuda_available() == bool(mhc_ops._C.with_cuda)
    if mhc_ops.cuda_available():
        assert all(torch._C._dispatch_has_kernel_for_dispatch_key(f"mhc::{op}", "CUDA")
                   for op in OPS)


# Small valid positional arguments (required ones only) of every op, CPU tensors.
def _required_args(op: str, T: int = 5) -> tuple:
    n, H = 4, 64
    if op == "mhc_pre":
        p = h.pre_inputs(T, n, H, seed=1)
        return p["residual"], p["fn"], p["hc_scale"], p["hc_base"]
    if op == "mhc_post":
        p = h.post_inputs(T, n, H, seed=1)
        return p["x"], p["residual"], p["post_mix"], p["comb_mix"]
    if op == "mhc_fused_post_pre":
        p = h.fused_inputs(T, n, H, seed=1)
        return (p["x"], p["residual"], p["post_mix"], p["comb_mix"], p["fn"], p["hc_scale"],
                p["hc_base"])
    if op == "hc_head":
        p = h.head_inputs(T, n, H, seed=1)
        return p["residual"], p["fn"], p["hc_scale"], p["hc_base"]
    if op == "hc_prenorm_gemm":
        p = h.prenorm_inputs(T, 24, 200, seed=1)
        return p["x"], p["fn"]
    if op == "tf32_hc_prenorm_gemm":
        p = h.prenorm_inputs(T, 24, 200, seed=1)
        return p["x"], p["fn"], torch.empty(T, 24), torch.empty(T)
    if op == "linear_bf16_fp32":
        p = h.linear_inputs(T, 24, 200, seed=1)
        return p["x"], p["weight"]
    if op in ("mhc_stats", "mhc_combine", "mhc_post_combine", "mhc_shifted_post_pre"):
        p = h.v41_inputs(T, n, H, seed=1)
        names = {"mhc_stats": ("residual", "fn", "hc_scale", "hc_base"),
                 "mhc_combine": ("residual", "pre_mix"),
                 "mhc_post_combine": ("x", "residual", "post_mix", "comb_mix", "pre_mix"),
                 "mhc_shifted_post_pre": ("x", "residual", "post_mix", "comb_mix", "pre_mix",
                                          "fn", "hc_scale", "hc_base")}[op]
        return tuple(p[k] for k in names)
    raise ValueError(op)


def _as_list(r):
    return [] if r is None else list(r) if isinstance(r, (tuple, list)) else [r]


@pytest.mark.parametrize("T", [0, 5])
@pytest.mark.parametrize("op", OPS)
def test_fake_matches_real(op, T):
    # Under FakeTensorMode the op runs its fake with only the required arguments (the
    # dispatcher does not fill defaults for Python kernels, so the fake must carry them) and
    # reports the real kernel's shapes, dtypes and devices.
    args = _required_args(op, T)
    real = _as_list(getattr(torch.ops.mhc, op)(*args))
    mode = FakeTensorMode()
    fake_args = tuple(mode.from_tensor(a) for a in args)
    with mode:
        fake = _as_list(getattr(torch.ops.mhc, op)(*fake_args))
    assert len(fake) == len(real)
    for f, r in zip(fake, real):
        assert (f.shape, f.dtype, f.device) == (r.shape, r.dtype, r.device)
    # and on the meta device
    meta = _as_list(getattr(torch.ops.mhc, op)(*(a.to("meta") for a in args)))
    for m, r in zip(meta, real):
        assert (m.shape, m.dtype, m.device.type) == (r.shape, r.dtype, "meta")


# opcheck cases: (op, args, kwargs); small inputs, every optional form once.
def _opcheck_cases():
    pre = h.pre_inputs(5, 4, 64, seed=2, norm=True)
    fused = h.fused_inputs(5, 4, 64, seed=2, norm=True)
    pn = h.prenorm_inputs(5, 24, 200, seed=2)
    return [
        ("mhc_pre", _required_args("mhc_pre"), {}),
        ("mhc_pre-norm", (pre["residual"], pre["fn"], pre["hc_scale"], pre["hc_base"]),
         {"norm_weight": pre["norm_weight"], "sinkhorn_repeat": 3}),
        ("mhc_post", _required_args("mhc_post"), {}),
        ("mhc_fused_post_pre", _required_args("mhc_fused_post_pre"), {}),
        ("mhc_fused_post_pre-norm",
         tuple(fused[k] for k in ("x", "residual", "post_mix", "comb_mix", "fn", "hc_scale",
                                  "hc_base")), {"norm_weight": fused["norm_weight"]}),
        ("hc_head", _required_args("hc_head"), {}),
        ("hc_prenorm_gemm", (pn["x"], pn["fn"], 3), {}),
        ("tf32_hc_prenorm_gemm", _required_args("tf32_hc_prenorm_gemm"), {}),
        ("tf32_hc_prenorm_gemm-split",
         (pn["x"], pn["fn"], torch.empty(2, 5, 24), torch.empty(2, 5)), {"num_splits": 2}),
        ("linear_bf16_fp32", _required_args("linear_bf16_fp32"), {}),
        ("mhc_pre-T0", _required_args("mhc_pre", T=0), {}),
    ]


OPCHECK = _opcheck_cases()


@pytest.mark.parametrize("case", OPCHECK, ids=[c[0] for c in OPCHECK])
def test_opcheck(case):
    name, args, kwargs = case
    op = getattr(torch.ops.mhc, name.split("-")[0]).default
    # all four default checks: test_schema, test_autograd_registration, test_faketensor,
    # test_aot_dispatch_dynamic
    torch.library.opcheck(op, args, kwargs)


WRAPPERS = {op: getattr(mhc_ops, op) for op in OPS}


@pytest.mark.parametrize("op", OPS)
def test_wrapper_defaults_equal_schema(op):
    # SPEC §2: defaults in the schema and in the Python wrapper are identical; the reference
    # (the benchmarks' eager baseline) takes the same arguments with the same defaults.
    schema = _schema(op)
    for fn in (WRAPPERS[op], getattr(reference, op)):
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind is not inspect.Parameter.KEYWORD_ONLY]  # reference's dtype=
        assert [p.name for p in params] == [a.name for a in schema.arguments], fn
        for p, a in zip(params, schema.arguments):
            if a.has_default_value():
                assert p.default is not inspect.Parameter.empty, (fn, a.name)
                assert p.default == a.default_value and type(p.default) is type(a.default_value), \
                    (fn, a.name, p.default, a.default_value)
            else:
                assert p.default is inspect.Parameter.empty, (fn, a.name)


def test_post_pre_wrapper_signature():
    # mhc_post_pre (flag-gated, no schema of its own) takes the fused op's arguments.
    schema = _schema("mhc_fused_post_pre")
    params = list(inspect.signature(mhc_ops.mhc_post_pre).parameters.values())
    assert [p.name for p in params] == [a.name for a in schema.arguments]
    assert all(p.default == a.default_value for p, a in zip(params, schema.arguments)
               if a.has_default_value())


def test_public_surface():
    for name in OPS + ["mhc_post_pre", "reference", "envs", "cuda_available"]:
        assert name in mhc_ops.__all__ and hasattr(mhc_ops, name)
    for op in OPS:
        assert WRAPPERS[op].__doc__, op


def test_import_creates_no_cuda_context():
    code = ("import mhc_ops, torch; mhc_ops.cuda_available(); "
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
