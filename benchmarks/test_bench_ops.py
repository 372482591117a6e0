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
