"""torch.compile refuses bad input as eager does: the fakes run the kernels' checks.

For each op, one bad call: eager raises `<op>: <argument> ...`; torch.compile(fullgraph=True)
of the same call raises the same message while tracing (static shapes: word for word; dynamic
shapes: the message with symbolic sizes) instead of tracing wrong metadata or failing inside
the fake. Overlapping outputs are judged at trace time where the sizes are concrete; under
dynamic shapes the overlap cannot be decided on symbols and the kernel refuses the call when
it runs, still before writing anything.
"""

from __future__ import annotations

import re

import pytest
import torch

import helpers as h

T, N_HC, H = 4, 4, 64


def _cases() -> list:
    pre = h.pre_inputs(T, N_HC, H, seed=0)
    post = h.post_inputs(T, N_HC, H, seed=0)
    head = h.head_inputs(T, N_HC, H, seed=0)
    pn = h.prenorm_inputs(T, 24, 200, seed=0)
    lin = h.linear_inputs(T, 24, 200, seed=0)
    p = (pre["fn"], pre["hc_scale"], pre["hc_base"])
    out = torch.zeros(T, 24)
    return [
        # (op, positional args, the argument named in the message)
        ("mhc_pre", (pre["residual"].float(), *p), "residual"),
        ("mhc_pre", (pre["residual"], *p, 1e-6, 1e-6, 1e-6, 2.0, 2**63 - 1), "sinkhorn_repeat"),
        ("mhc_post", (post["x"][:3], post["residual"], post["post_mix"], post["comb_mix"]), "x"),
        ("mhc_fused_post_pre", (post["x"], post["residual"], post["post_mix"],
                                post["comb_mix"][:, :, :3], *p), "comb_mix"),
        ("hc_head", (head["residual"], head["fn"], torch.ones(3), head["hc_base"]), "hc_scale"),
        ("hc_prenorm_gemm", (pn["x"], pn["fn"], 0), "num_splits"),
        ("tf32_hc_prenorm_gemm", (pn["x"], pn["fn"], out, out[:, 0], None), "sqrsum"),
        ("linear_bf16_fp32", (lin["x"], lin["weight"][:, :199]), "weight"),
    ]


CASES = _cases()
IDS = [f"{c[0]}-{c[2]}" for c in CASES]


def _eager_message(op: str, args: tuple) -> str:
    with pytest.raises(RuntimeError, match=rf"^{op}: ") as e:
        getattr(torch.ops.mhc, op)(*args)
    return str(e.value)


def _compiled(op: str, dynamic: bool):
    torch._dynamo.reset()
    opo = getattr(torch.ops.mhc, op)
    # aot_eager: the mutating tf32_hc_prenorm_gemm goes through functionalisation as well
    return torch.compile(lambda *a: opo(*a), fullgraph=True, backend="aot_eager",
                         dynamic=dynamic)


@pytest.mark.parametrize("op,args,arg", CASES, ids=IDS)
def test_compile_static_refuses_with_eager_message(op, args, arg):
    msg = _eager_message(op, args)
    assert msg.startswith(f"{op}: {arg} ")
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        _compiled(op, dynamic=False)(*args)


@pytest.mark.parametrize("op,args,arg", CASES, ids=IDS)
def test_compile_dynamic_refuses_with_named_error(op, args, arg):
    _eager_message(op, args)
    with pytest.raises(RuntimeError, match=rf"(^|\W){op}: {arg} must "):
        _compiled(op, dynamic=True)(*args)


def test_compile_dynamic_overlap_refused_before_writing():
    # Symbolic sizes: the fake cannot decide overlap, the kernel does, before any write.
    x, fn = h.prenorm_inputs(5, 24, 200, seed=1).values()
    out = torch.full((5, 24), float("nan"))
    f = _compiled("tf32_hc_prenorm_gemm", dynamic=True)
    with pytest.raises(RuntimeError, match=r"^tf32_hc_prenorm_gemm: sqrsum must not overlap out "):
        f(x, fn, out, out[:, 3], None)
    assert out.isnan().all()


def test_compile_valid_calls_still_trace():
    # The checks guard on sizes but do not break the graph: a valid call compiles fullgraph
    # and matches eager (the compile tests of tests/test_compile.py cover whole models).
    args = CASES[0][1]
    good = (args[0].to(torch.bfloat16), *args[1:])
    for dynamic in (False, True):
        want = torch.ops.mhc.mhc_pre(*good)
        got = _compiled("mhc_pre", dynamic)(*good)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
