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


# ---------------------------------------------------------------------------------------------
# DeepSeek-V4.1 (SPEC §2.9): --model v4.1, its byte floors, its peers' call paths and the rows
# run_point assembles, on the CPU (stand-ins for the peers; no GPU, no timing).

V41 = ("mhc_stats", "mhc_combine", "mhc_post_combine", "mhc_shifted_post_pre")


def test_v41_arguments():
    a = bench_ops.parse_args(["--model", "v4.1"])
    assert a.ops == list(V41) == list(bench_ops.V41_OPS)
    assert a.widths == [5120] and a.tokens == [1, 8, 32, 64, 512, 4096, 16384]
    assert a.impls == ["mhc_ops", "eager", "compile"] and not a.dry_run
    a = bench_ops.parse_args(["--model", "v4.1", "--quick", "--ops", "stats,shifted_post_pre",
                              "--impls", "mhc_ops,eager,sglang,vllm"])
    assert a.ops == ["mhc_stats", "mhc_shifted_post_pre"]
    assert a.tokens == [64] and a.widths == [5120]
    assert a.impls == ["mhc_ops", "eager", "sglang", "vllm"]
    # the V4 defaults are as before; V4.1 ops may be asked for at other widths
    a = bench_ops.parse_args([])
    assert a.ops == list(bench_ops.OPS) and a.widths == [4096, 7168]
    assert bench_ops.parse_args(["--quick"]).widths == [7168]
    a = bench_ops.parse_args(["--ops", "mhc_combine,mhc_post", "--widths", "4096"])
    assert a.ops == ["mhc_combine", "mhc_post"] and a.widths == [4096]
    for bad in (["--ops", "stat"], ["--impls", "mhc_ops,sglng"], ["--model", "v5"]):
        with pytest.raises(SystemExit):
            bench_ops.parse_args(bad)


def test_v41_byte_floors():
    """SPEC §8's formulas, and the same count from the tensors: every per-token input and
    output once, fn once, the norm weight, hc_scale and hc_base not counted."""
    for T, H in ((1, 5120), (4096, 5120), (7, 64)):
        assert bench_ops.floor_bytes("mhc_stats", T, H, 132) == T * (8 * H + 96) + 384 * H
        assert bench_ops.floor_bytes("mhc_combine", T, H, 132) == T * (10 * H + 16)
        assert bench_ops.floor_bytes("mhc_post_combine", T, H, 132) == T * (20 * H + 96)
        assert (bench_ops.floor_bytes("mhc_shifted_post_pre", T, H, 132)
                == T * (20 * H + 192) + 384 * H)
    assert bench_ops.floor_bytes("mhc_stats", 1, 5120, 0) == 2007136


@pytest.mark.parametrize("op", V41)
def test_v41_byte_floor_counts_the_tensors(monkeypatch, op):
    monkeypatch.setattr(bench_ops, "DEVICE", "cpu")
    T, H = 3, 64
    a = bench_ops.make_set(op, T, H, torch.Generator().manual_seed(1))
    outs = getattr(mhc_ops.reference, op)(**a)
    outs = outs if isinstance(outs, tuple) else (outs,)
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    moved = (sum(nbytes(v) for k, v in a.items() if k not in ("norm_weight", "hc_scale",
                                                              "hc_base"))
             + sum(nbytes(o) for o in outs))
    assert moved == bench_ops.floor_bytes(op, T, H, 132)
    assert ("norm_weight" in a) == (op != "mhc_stats")
    assert a.get("pre_mix", torch.empty(T, 4)).shape == (T, 4)


def test_v41_dry_run_needs_no_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_ops.main(["--model", "v4.1", "--dry-run",
                           "--impls", "mhc_ops,eager,sglang,vllm"]) == 0
    out = capsys.readouterr().out.splitlines()
    points = [line for line in out if line.startswith("mhc_")]
    assert len(points) == 4 * 7
    first = {line.split()[0] + line.split("T=")[1].split()[0]: line for line in points}
    assert "sglang: hc_mix_stats_sinkhorn;" in first["mhc_stats1"]
    assert "sglang: hc_mix_stats + hc_split_sinkhorn;" in first["mhc_stats8"]
    assert "sglang: hc_mix_stats_sinkhorn_bf16x3;" in first["mhc_stats32"]
    assert "bytes=     2007136" in first["mhc_stats1"]
    assert "torch.ops.mhc.mhc_combine" in first["mhc_combine64"]
    assert "sglang: mhc_post + hc_combine_norm;" in first["mhc_post_combine512"]
    assert "vllm: -" in first["mhc_post_combine512"]
    shifted = first["mhc_shifted_post_pre16384"]
    assert "sglang: mhc_post + hc_combine_norm + hc_mix_stats_sinkhorn_bf16x3" in shifted
    assert "vllm: mhc_fused_post_pre_delayed_tilelang" in shifted
    assert any(line.startswith("peer sglang: ") for line in out)


def test_v41_needs_the_ops_in_the_library(monkeypatch, capsys):
    monkeypatch.setattr(mhc_ops, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench_ops, "registered", lambda op: False)
    assert bench_ops.main(["--model", "v4.1"]) == 2
    assert "torch.ops.mhc.mhc_stats" in capsys.readouterr().err


def _stand_in_v41_peers(monkeypatch, *, wrong_pre=False):
    """sglang's and vLLM's V4.1 functions, by their names and signatures, computed by
    mhc_ops.reference; returns a counter of the bf16 weight splits."""
    import types

    ref = mhc_ops.reference
    splits = []

    def hc_mix_stats_sinkhorn(x_flat, hc_fn, hc_scale, hc_base, hc_mult, sinkhorn_iters,
                              rms_eps, hc_eps):
        T = x_flat.shape[0]
        pre, post, comb = ref.mhc_stats(x_flat.view(T, hc_mult, -1), hc_fn, hc_scale, hc_base,
                                        rms_eps, hc_eps, hc_eps, 2.0, sinkhorn_iters)
        return pre, post.reshape(T, hc_mult), comb

    def hc_mix_stats(x_flat, hc_fn, eps):
        xf = x_flat.float()
        return (xf @ hc_fn.t()) * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)

    def hc_split_sinkhorn(mixes, hc_scale, hc_base, hc_mult=4, sinkhorn_iters=20, eps=1e-6):
        b, s, _ = mixes.shape
        m, n = mixes.reshape(b * s, -1), hc_mult
        pre = torch.sigmoid(m[:, :n] * hc_scale[0] + hc_base[:n]) + eps
        post = 2 * torch.sigmoid(m[:, n:2 * n] * hc_scale[1] + hc_base[n:2 * n])
        logits = (m[:, 2 * n:] * hc_scale[2] + hc_base[2 * n:]).reshape(-1, n, n)
        comb = ref.sinkhorn(logits, eps, sinkhorn_iters)
        return pre.reshape(b, s, n), post.reshape(b, s, n), comb.reshape(b, s, n, n)

    def split_bf16_hc_weight(weight):
        splits.append(weight)
        return ("parts of", weight)

    def hc_mix_stats_sinkhorn_bf16x3(x, weight_parts, scale, base, sinkhorn_iters, rms_eps,
                                     hc_eps, hc_mult=4):
        assert weight_parts[0] == "parts of" and x.is_contiguous()
        return hc_mix_stats_sinkhorn(x, weight_parts[1], scale, base, hc_mult, sinkhorn_iters,
                                     rms_eps, hc_eps)

    def mhc_post(x, residual, post_layer_mix, comb_res_mix):
        return ref.mhc_post(x, residual, post_layer_mix, comb_res_mix)

    def hc_combine_norm(x, pre, weight, eps):
        assert pre.shape == (x.shape[0], 4) and weight.dim() == 1
        pre = pre.flip(-1) if wrong_pre else pre
        return ref.mhc_combine(x.view(x.shape[0], 4, -1), pre, weight, eps)

    def mhc_fused_post_pre_delayed_tilelang(x, residual, post_layer_mix, comb_res_mix, fn,
                                            hc_scale, hc_base, rms_eps, hc_pre_eps,
                                            hc_sinkhorn_eps, hc_post_mult_value,
                                            sinkhorn_repeat, pre_mix=None, norm_weight=None,
                                            norm_eps=1e-6, capture_aux=False):
        r, y, pre, post, comb = ref.mhc_shifted_post_pre(
            x, residual, post_layer_mix, comb_res_mix, pre_mix, fn, hc_scale, hc_base, rms_eps,
            hc_pre_eps, hc_sinkhorn_eps, hc_post_mult_value, sinkhorn_repeat, norm_weight,
            norm_eps)
        return r, post, comb, y, pre, y.new_empty(0, y.shape[-1])

    local = dict(locals())
    for where in bench_ops.V41_PEER_FUNCTIONS.values():
        for module, name in {w for ws in where.values() for w in ws}:
            mod = sys.modules.get(module)
            if not isinstance(mod, types.ModuleType) or not getattr(mod, "_stand_in", False):
                mod = types.ModuleType(module)
                mod._stand_in = True
                monkeypatch.setitem(sys.modules, module, mod)
            setattr(mod, name, local[name])
    return splits


def _fake_timer(fn, sets, calls, budget_s=0.25):
    for i in range(max(calls, len(sets))):
        fn(sets[i % len(sets)])
    return 2.0 if len(sets) == 1 else 3.0


@pytest.mark.parametrize("T", [1, 5, 40])
def test_v41_rows_with_stand_in_peers(monkeypatch, capsys, T):
    """run_point on the CPU: the peers' calls give the reference's results (output order and
    shapes mapped), each peer's first call is recorded with what it called, and every
    implementation gets a warm and a cold row over the op's byte floor."""
    monkeypatch.setattr(bench_ops, "DEVICE", "cpu")
    monkeypatch.setattr(bench_ops, "graph_time_us", _fake_timer)
    _stand_in_v41_peers(monkeypatch)
    assert bench_ops.peer_missing("sglang", V41) is None
    assert bench_ops.peer_missing("vllm", V41) is None
    H, bw = 64, 1000.0
    rows, failures, cold = [], [], []
    for op in V41:
        bench_ops.run_point(op, T, H, ["eager", "sglang", "vllm"], 0, 0, bw, rows, failures,
                            cold)
    assert failures == [] and "NOT TIMED" not in capsys.readouterr().out
    got = {(r["op"], r["impl"], r["l2"]): r for r in rows}
    for op in V41:
        impls = ("eager", "sglang") + (("vllm",) if op == "mhc_shifted_post_pre" else ())
        assert {(i, l) for o, i, l in got if o == op} == {(i, l) for i in impls
                                                          for l in ("warm", "cold")}
        for i in impls:
            assert got[(op, i, "warm")]["us"] == 2.0 and got[(op, i, "cold")]["us"] == 3.0
            assert got[(op, i, "cold")]["floor_us"] == round(
                bench_ops.floor_bytes(op, T, H, 0) / (bw * 1e9) * 1e6, 3)
    calls = {(c["op"], c["impl"]): c["calls"] for c in cold}
    assert set(calls) == {(op, "sglang") for op in V41} | {("mhc_shifted_post_pre", "vllm")}
    stats = {1: "hc_mix_stats_sinkhorn", 5: "hc_mix_stats + hc_split_sinkhorn",
             40: "hc_mix_stats_sinkhorn_bf16x3"}[T]
    assert calls[("mhc_stats", "sglang")] == stats
    assert calls[("mhc_shifted_post_pre", "sglang")] == "mhc_post + hc_combine_norm + " + stats
    assert all(c["first_call_s"] >= 0 for c in cold)
    lines = bench_ops.table(rows).splitlines()
    assert [line.split()[0] for line in lines[1:]] == list(V41)
    assert "sglang" in lines[0] and "vllm" in lines[0]


def test_v41_peer_that_computes_wrong_is_not_timed(monkeypatch, capsys):
    monkeypatch.setattr(bench_ops, "DEVICE", "cpu")
    monkeypatch.setattr(bench_ops, "graph_time_us", _fake_timer)
    _stand_in_v41_peers(monkeypatch, wrong_pre=True)
    rows, failures, cold = [], [], []
    bench_ops.run_point("mhc_combine", 6, 64, ["eager", "sglang"], 0, 0, 1000.0, rows,
                        failures, cold)
    assert "PEER NOT TIMED mhc_combine T=6 H=64 sglang: output 0" in capsys.readouterr().out
    assert {r["impl"] for r in rows} == {"eager"} and failures == []
    assert [c["impl"] for c in cold] == ["sglang"]  # its first call still counts


def test_v41_bf16x3_weight_split_once_per_fn(monkeypatch):
    monkeypatch.setattr(bench_ops, "DEVICE", "cpu")
    splits = _stand_in_v41_peers(monkeypatch)
    f = bench_ops.op_fn("mhc_stats", "sglang", 40, 64, 0)
    a = bench_ops.make_set("mhc_stats", 40, 64, torch.Generator().manual_seed(2))
    b = bench_ops.make_set("mhc_stats", 40, 64, torch.Generator().manual_seed(3))
    for s in (a, a, b, a, b):
        pre, post, comb = f(s)
        assert pre.shape == post.shape == (40, 4) and comb.shape == (40, 4, 4)
    assert len(splits) == 2 and splits[0] is a["fn"] and splits[1] is b["fn"]
    # below 32 tokens (and at 1) no split
    bench_ops.op_fn("mhc_stats", "sglang", 31, 64, 0)(
        bench_ops.make_set("mhc_stats", 31, 64, torch.Generator().manual_seed(4)))
    assert len(splits) == 2


def test_v41_missing_peer_pieces(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "sglang.kernels.ops.layernorm.hc_combine_norm", None)
    why = bench_ops.peer_missing("sglang", ["mhc_combine"])
    assert why and "hc_combine_norm" in why
    assert "no function" in bench_ops.peer_missing("vllm", ["mhc_stats", "mhc_combine"])
    assert bench_ops.peer_fn("mhc_stats", "vllm", 1, 5120, 132) is None
    assert bench_ops.peer_calls("mhc_combine", "vllm", 1) is None
    old = types.ModuleType("sglang.kernels.ops.layernorm.mhc")  # a version without V4.1
    old.mhc_post = old.hc_mix_stats = object()
    monkeypatch.setitem(sys.modules, "sglang.kernels.ops.layernorm.mhc", old)
    assert "has no hc_mix_stats_sinkhorn" in bench_ops.peer_missing("sglang", ["mhc_stats"])


@pytest.mark.skipif(not hasattr(torch.ops.mhc, "mhc_stats"),
                    reason="this mhc_ops build has no SPEC §2.9 ops yet")
@pytest.mark.parametrize("T", [1, 7])
def test_v41_mhc_ops_rows_on_cpu(monkeypatch, capsys, T):
    """The mhc_ops implementation calls torch.ops.mhc.<op> with the input set as keyword
    arguments and passes the float64 check (on the CPU kernels)."""
    monkeypatch.setattr(bench_ops, "DEVICE", "cpu")
    monkeypatch.setattr(bench_ops, "graph_time_us", _fake_timer)
    rows, failures, cold = [], [], []
    for op in V41:
        bench_ops.run_point(op, T, 64, ["mhc_ops", "eager"], 0, 0, 1000.0, rows, failures, cold)
    assert failures == [] and "VERIFY FAILED" not in capsys.readouterr().out
    assert len(rows) == 4 * 2 * 2 and cold == []


def test_plot_takes_the_ops_and_widths_of_its_rows(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"op": op, "T": T, "H": 5120, "l2": "cold", "impl": impl, "us": us,
             "floor_us": 1.0} for op in V41 for T in (1, 64) for impl, us in
            (("mhc_ops", 2.0), ("sglang", 3.0))]
    png = tmp_path / "v41.png"
    bench_ops.plot(rows, str(png), "test")
    assert png.stat().st_size > 0
