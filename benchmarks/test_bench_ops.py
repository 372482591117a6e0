"""benchmarks/bench_ops.py's batch-invariant implementation (the cost of MHC_BATCH_INVARIANT):
the flag is set around each call, graph capture included, and restored; its rows get their own
table columns and stay out of the SPEC §8 results file."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import mhc_ops

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.join(os.path.dirname(_HERE), "tests")]  # bench_ops, helpers
bench_ops = pytest.importorskip("bench_ops")

import helpers as h  # noqa: E402


@pytest.mark.parametrize("before", [None, "0"])
def test_invariant_impl_sets_the_flag_around_each_call(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("MHC_BATCH_INVARIANT", raising=False)
    else:
        monkeypatch.setenv("MHC_BATCH_INVARIANT", before)
    seen = []
    monkeypatch.setattr(mhc_ops, "mhc_pre",
                        lambda **a: seen.append(os.environ.get("MHC_BATCH_INVARIANT")) or 7)
    fn = bench_ops.op_fn("mhc_pre", bench_ops.INVARIANT, 5, 64, 132)
    assert fn({}) == 7 and fn({}) == 7
    assert seen == ["1", "1"]
    assert os.environ.get("MHC_BATCH_INVARIANT") == before
    plain = bench_ops.op_fn("mhc_pre", "mhc_ops", 5, 64, 132)
    plain({})
    assert seen[-1] == before


def test_invariant_impl_runs_the_op():
    # On the CPU every T has one plan, so the batch-invariant call gives the default's bits.
    a = h.pre_inputs(9, 4, 64, seed=h.seed_of("bench_invariant"))
    got = bench_ops.op_fn("mhc_pre", bench_ops.INVARIANT, 9, 64, 0)(a)
    want = mhc_ops.mhc_pre(**a)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert torch.isfinite(g).all() and torch.equal(g, w)


def test_table_shows_the_invariant_cost():
    rows = [{"op": "mhc_pre", "T": 64, "H": 4096, "l2": "cold", "impl": impl, "us": us,
             "floor_us": 1.0} for impl, us in (("mhc_ops", 10.0), (bench_ops.INVARIANT, 12.5))]
    lines = bench_ops.table(rows).splitlines()
    assert "invariant" in lines[0] and "x mhc" in lines[0]
    assert lines[1].split()[-2:] == ["12.50", "1.25"]
    assert "invariant" not in bench_ops.table(rows[:1]).splitlines()[0]


@pytest.mark.parametrize("name", ["h100.json", "h200.json"])
def test_invariant_rows_stay_out_of_the_results_file(monkeypatch, capsys, tmp_path, name):
    out = tmp_path / name
    monkeypatch.setattr(sys, "argv", ["bench_ops.py", "--impls", "mhc_ops,mhc_ops_invariant",
                                      "--out", str(out)])
    assert bench_ops.main() == 2
    assert "batch_invariant_h100.json" in capsys.readouterr().err
    assert not out.exists()


def test_study_knobs_need_a_study_build(monkeypatch, capsys):
    """On a library without the study setters, a knob option stops the run with a message
    naming the option and the build; without knob options nothing is asked of the library."""
    monkeypatch.delattr(mhc_ops._C, "set_split_target_ctas", raising=False)
    monkeypatch.setattr(sys, "argv", ["bench_ops.py", "--split-target-ctas", "132"])
    monkeypatch.setattr(mhc_ops, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench_ops.main() == 2
    err = capsys.readouterr().err
    assert "--split-target-ctas" in err and "MHC_STUDY=1" in err
    ap = __import__("argparse").ArgumentParser()
    bench_ops.add_knob_args(ap)
    assert bench_ops.apply_knobs(ap.parse_args([])) is None


def test_missing_peer_is_reported_and_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "sglang.kernels.ops.layernorm.mhc", None)
    why = bench_ops.peer_missing("sglang")
    assert why and "sglang.kernels.ops.layernorm.mhc" in why


def test_peer_functions_are_called_the_stacks_way(monkeypatch):
    """The peer callables pass the DeepSeek-V4 model's arguments; here the mhc_ops drop-ins
    stand in for the peers' modules, so the results are mhc_ops' own."""
    import types

    from mhc_ops.compat import sglang as sg, vllm as vl

    for impl, compat in (("sglang", sg), ("vllm", vl)):
        for op, (module, name) in bench_ops.PEER_FUNCTIONS[impl].items():
            if op == "hc_prenorm_gemm":
                continue
            mod = sys.modules.get(module) or types.ModuleType(module)
            setattr(mod, name, getattr(compat, name))
            monkeypatch.setitem(sys.modules, module, mod)
    a = h.pre_inputs(5, 4, 64, seed=3)
    a.pop("norm_weight")
    for impl in ("sglang", "vllm"):
        got = bench_ops.op_fn("mhc_pre", impl, 5, 64, 0)(a)
        for g, w in zip(got, mhc_ops.mhc_pre(**a)):
            assert torch.equal(g, w)
    assert bench_ops.op_fn("hc_prenorm_gemm", "sglang", 5, 64, 132) is None


def test_table_shows_the_peers():
    rows = [{"op": "mhc_pre", "T": 64, "H": 7168, "l2": "cold", "impl": impl, "us": us,
             "floor_us": 1.0} for impl, us in (("mhc_ops", 8.0), ("vllm", 12.0))]
    lines = bench_ops.table(rows).splitlines()
    assert "vllm" in lines[0] and "sglang" not in lines[0]
    assert lines[1].split()[-2:] == ["12.00", "1.50"]
    cold = [{"op": "mhc_pre", "T": 64, "H": 7168, "impl": "vllm", "first_call_s": 4.5},
            {"op": "hc_head", "T": 1, "H": 7168, "impl": "vllm", "first_call_s": 1.5}]
    assert bench_ops.cold_start_table(cold) == ("vllm: 2 first calls, 6.0 s in all, worst "
                                                "4.5 s (mhc_pre T=64 H=7168)")
