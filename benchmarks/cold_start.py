"""Cold start: what a serving process pays the first time it meets each token count.

For each hidden size, in a fresh process:
  1. time ``mhc_ops.warmup.warmup(H, max_tokens)``;
  2. run random token counts in 1..max_tokens through mhc_pre, mhc_fused_post_pre, mhc_post
     and hc_head; time each first call at its T (host wall clock around a synchronised call)
     and compare with the steady-state median at the same T (5 calls); count plans launched
     that warmup did not cover (``unwarmed_plans``); as a control, the same ratio for each of
     the 5 steady calls, which shows how far one call's timing strays with nothing cold;
     then a second pass over as many token counts not met before, each first call split into
     the host's enqueue time and the GPU's time (a spin kernel ahead of the call hides the
     enqueue from the GPU events), each against its own steady median; and, as the host's
     control, four of torch's own ops (add, sum, mm, softmax) in the same pattern at as many
     other new token counts (``torch_control_*`` keys);
and, in another fresh process that never warms up, capture a CUDA graph of each op at a few
decode sizes and check its replay against eager.

    python benchmarks/cold_start.py                  # H in {4096, 7168}, 500 token counts
    python benchmarks/cold_start.py --quick          # one hidden size, 50 token counts

Writes benchmarks/results/cold_start_<gpu>.json (or --out):
{"device", "command", "runs": [{"hidden_size", "warmup_seconds", "unwarmed_plans",
 "worst_first_call_ratio", "cold_capture"}]} and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time

import torch

OPS = ("mhc_pre", "mhc_fused_post_pre", "mhc_post", "hc_head")
DECODE_SIZES = (1, 8, 32, 64)


def _inputs(T: int, H: int, device, seed: int = 0, n: int = 4) -> dict:
    g = torch.Generator(device=device).manual_seed(seed)
    K, m3 = n * H, n * (n + 2)

    def randn(*shape, dtype=torch.float32, scale=1.0):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype).mul_(scale)

    return dict(
        residual=randn(T, n, H, dtype=torch.bfloat16),
        x=randn(T, H, dtype=torch.bfloat16),
        post_mix=torch.rand(T, n, 1, generator=g, device=device) * 2,
        comb_mix=torch.softmax(randn(T, n, n), -2),
        fn=randn(m3, K, scale=K ** -0.5),
        hc_scale=torch.rand(3, generator=g, device=device) + 0.5,
        hc_base=randn(m3, scale=0.5),
        head_fn=randn(n, K, scale=K ** -0.5),
        head_scale=torch.rand(1, generator=g, device=device) + 0.5,
        head_base=randn(n, scale=0.5),
    )


def _call(mhc_ops, op: str, a: dict, t: int):
    r, x, p, c = a["residual"][:t], a["x"][:t], a["post_mix"][:t], a["comb_mix"][:t]
    if op == "mhc_pre":
        return mhc_ops.mhc_pre(r, a["fn"], a["hc_scale"], a["hc_base"])
    if op == "mhc_fused_post_pre":
        return mhc_ops.mhc_fused_post_pre(x, r, p, c, a["fn"], a["hc_scale"], a["hc_base"])
    if op == "mhc_post":
        return mhc_ops.mhc_post(x, r, p, c)
    return mhc_ops.hc_head(r, a["head_fn"], a["head_scale"], a["head_base"])


def _timed_both(fn) -> tuple[float, float]:
    """(host seconds around a synchronised call, GPU seconds between events around it)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, start.elapsed_time(end) * 1e-3


SPIN_CYCLES = 2_000_000  # ~1 ms of GPU spin, longer than the host's enqueue of one op call


def _timed_split(fn) -> tuple[float, float]:
    """(host seconds to enqueue the call, GPU seconds its kernels ran). A spin kernel queued
    first keeps the GPU busy while the host enqueues the call, so the events around it time
    the GPU work alone (valid while the enqueue takes less than the spin, about 1 ms)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    torch.cuda._sleep(SPIN_CYCLES)
    start.record()
    t0 = time.perf_counter()
    fn()
    enqueue = time.perf_counter() - t0
    end.record()
    torch.cuda.synchronize()
    return enqueue, start.elapsed_time(end) * 1e-3


# The host-side control of the second pass: four of torch's own ops on the same inputs, in the
# same first / revisit / steady pattern. If their enqueue times stray like mhc_ops' do, the
# stray is the host's (Python, the dispatcher, the driver's launch path), not this pack's.
CONTROL_OPS = ("add", "sum", "mm", "softmax")


def _control_call(op: str, a: dict, t: int):
    x = a["x"][:t]
    if op == "add":
        return torch.add(x, x)
    if op == "sum":
        return a["residual"][:t].sum(1)
    if op == "mm":
        return torch.mm(x, a["control_w"])
    return torch.softmax(a["comb_mix"][:t], -1)


def _split_pass(call, token_counts: list[int], ops=OPS) -> dict:
    """First calls at token counts not met before, split into host enqueue and GPU time, each
    against the median of 5 steady calls at the same T: which side a slow first call is on.

    Per T, the four ops' first calls run one after another, then a revisit of each op in the
    same order (T now seen, but again right after another op), then 5 steady calls per op. The
    revisits are the control for the host side: if they stray like the first calls, the cost
    is switching ops (the host's caches), not meeting a new T. call(op, t) makes one call."""
    sides = ("enqueue", "gpu")
    worst = {(kind, side): (0.0, None) for kind in ("first", "revisit") for side in sides}
    over = {key: 0 for key in worst}
    by_op = {op: [0, 0] for op in ops}  # enqueue over 2x: first calls, revisits
    steady_enqueue = {op: [] for op in ops}
    for t in token_counts:
        first = {op: _timed_split(lambda: call(op, t)) for op in ops}
        again = {op: _timed_split(lambda: call(op, t)) for op in ops}
        for op in ops:
            steady = [_timed_split(lambda: call(op, t)) for _ in range(5)]
            for k, side in enumerate(sides):
                med = statistics.median(x[k] for x in steady)
                if side == "enqueue":
                    steady_enqueue[op].append(med)
                for j, (kind, got) in enumerate((("first", first[op]), ("revisit", again[op]))):
                    ratio = got[k] / med
                    over[kind, side] += ratio > 2
                    if side == "enqueue":
                        by_op[op][j] += ratio > 2
                    if ratio > worst[kind, side][0]:
                        worst[kind, side] = (ratio, f"{op} T={t}: {kind} {got[k] * 1e6:.1f} us, "
                                                    f"steady {med * 1e6:.1f} us")
    out = {"split_first_calls": len(token_counts) * len(ops),
           "enqueue_over_2x_by_op": by_op,  # op: [first calls, revisits]
           "median_steady_enqueue_us_by_op": {
               op: round(statistics.median(v) * 1e6, 1) for op, v in steady_enqueue.items() if v}}
    for (kind, side), (ratio, what) in worst.items():
        prefix = "" if kind == "first" else "revisit_"
        out[f"{prefix}worst_{side}_ratio"] = round(ratio, 3)
        out[f"{prefix}worst_{side}_call"] = what
        out[f"{prefix}{side}_calls_over_2x"] = over[kind, side]
    return out


def _new_token_counts(rng: random.Random, seen: set, count: int, max_tokens: int) -> list[int]:
    """Up to `count` token counts in 1..max_tokens not in `seen` (added to it), drawn from rng."""
    out = []
    for _ in range(50 * count):
        if len(out) == count:
            break
        t = rng.randint(1, max_tokens)
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _device_allocs(device) -> int:
    """cudaMalloc calls the caching allocator has made so far on device."""
    return int(torch.cuda.memory_stats(device).get("num_device_alloc", 0))


def child_warm(H: int, max_tokens: int, calls: int, seed: int, inputs_first: bool) -> dict:
    import mhc_ops
    from mhc_ops import warmup

    device = torch.device("cuda", torch.cuda.current_device())
    # A serving process holds its weights and activation buffers before it warms up, so by
    # default the inputs exist first and warmup's blocks stay in the allocator's cache.
    a = _inputs(max_tokens, H, device) if inputs_first else None
    t0 = time.perf_counter()
    warmup.warmup(H, max_tokens=max_tokens, device=device, progress=False)
    torch.cuda.synchronize()
    warmup_seconds = time.perf_counter() - t0
    if a is None:
        a = _inputs(max_tokens, H, device)

    rng = random.Random(seed)
    token_counts = [rng.randint(1, max_tokens) for _ in range(calls)]
    gc.disable()
    worst = (0.0, None)
    worst_gpu = 0.0
    over_2x = 0
    # Control: the same statistic for calls that are not first calls (each of the 5 steady
    # calls against their median). If it shows outliers like the first calls', those are
    # timing noise of one synchronised host-timed call, not a cold-start cost.
    worst_steady, steady_over_2x = 0.0, 0
    ratios = []
    allocs_before = _device_allocs(device)
    first_call_allocs = 0
    for t in token_counts:
        for op in OPS:
            before = _device_allocs(device)
            first, first_gpu = _timed_both(lambda: _call(mhc_ops, op, a, t))
            new_allocs = _device_allocs(device) - before
            first_call_allocs += new_allocs
            steady_runs = [_timed_both(lambda: _call(mhc_ops, op, a, t)) for _ in range(5)]
            steady = statistics.median(h for h, _ in steady_runs)
            steady_gpu = statistics.median(g for _, g in steady_runs)
            ratio = first / steady
            over_2x += ratio > 2
            ratios.append(ratio)
            for h, _ in steady_runs:
                worst_steady = max(worst_steady, h / steady)
                steady_over_2x += h / steady > 2
            worst_gpu = max(worst_gpu, first_gpu / steady_gpu)
            if ratio > worst[0]:
                worst = (ratio, f"{op} T={t}: first {first * 1e6:.1f} us, "
                                f"steady {steady * 1e6:.1f} us (GPU {first_gpu * 1e6:.1f} vs "
                                f"{steady_gpu * 1e6:.1f} us), cudaMalloc calls {new_allocs}")
    # Second pass, over token counts not met in the first: host enqueue and GPU time apart.
    seen = set(token_counts)
    split = _split_pass(lambda op, t: _call(mhc_ops, op, a, t),
                        _new_token_counts(rng, seen, calls, max_tokens))
    # The control: torch's own ops at another set of new token counts, in the same pattern.
    control_counts = _new_token_counts(rng, seen, calls, max_tokens)
    a["control_w"] = torch.randn(H, 24, device=device, dtype=torch.bfloat16)
    control = _split_pass(lambda op, t: _control_call(op, a, t), control_counts, CONTROL_OPS)
    gc.enable()
    unwarmed = warmup.unwarmed_plans(device)
    return {"hidden_size": H, "warmup_seconds": round(warmup_seconds, 4),
            "unwarmed_plans": len(unwarmed), "worst_first_call_ratio": round(worst[0], 3),
            "worst_call": worst[1], "calls_over_2x": over_2x, "first_calls": calls * len(OPS),
            "worst_first_call_gpu_ratio": round(worst_gpu, 3), "inputs_first": inputs_first,
            "median_first_call_ratio": round(statistics.median(ratios), 3),
            "worst_steady_call_ratio": round(worst_steady, 3),
            "steady_calls_over_2x": steady_over_2x, "steady_calls": 5 * len(ratios),
            "cudamalloc_in_first_calls": first_call_allocs,
            "cudamalloc_in_all_calls": _device_allocs(device) - allocs_before,
            "unwarmed": [str(p.plan) for p in unwarmed], **split,
            **{f"torch_control_{k}": v for k, v in control.items()}}


def child_capture(H: int) -> dict:
    import mhc_ops

    device = torch.device("cuda", torch.cuda.current_device())
    try:
        for t in DECODE_SIZES:
            a = _inputs(t, H, device, seed=t)
            for op in OPS:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    captured = _call(mhc_ops, op, a, t)
                graph.replay()
                torch.cuda.synchronize()
                eager = _call(mhc_ops, op, a, t)
                outs = (captured,) if isinstance(captured, torch.Tensor) else captured
                refs = (eager,) if isinstance(eager, torch.Tensor) else eager
                for got, want in zip(outs, refs):
                    if not torch.equal(got, want):
                        return {"cold_capture": f"{op} T={t}: graph replay differs from eager"}
        return {"cold_capture": "ok"}
    except Exception as e:  # the error text is the result
        return {"cold_capture": f"{type(e).__name__}: {e}".splitlines()[0][:500]}


def _run_child(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"child {args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[4096, 7168])
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="H=4096 only, 50 token counts")
    ap.add_argument("--out", default=None)
    ap.add_argument("--inputs-after-warmup", action="store_true",
                    help="allocate the benchmark's inputs after warmup instead of before")
    ap.add_argument("--child", choices=("warm", "capture"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child == "warm":
        print(json.dumps(child_warm(args.hidden[0], args.max_tokens, args.calls, args.seed,
                                    not args.inputs_after_warmup)))
        return
    if args.child == "capture":
        print(json.dumps(child_capture(args.hidden[0])))
        return

    if args.quick:
        args.hidden, args.calls = [4096], 50
    name = torch.cuda.get_device_name()
    runs = []
    for H in args.hidden:
        common = ["--hidden", str(H), "--max-tokens", str(args.max_tokens)]
        order = ["--inputs-after-warmup"] if args.inputs_after_warmup else []
        warm = _run_child(["--child", "warm", "--calls", str(args.calls), "--seed",
                           str(args.seed), *order, *common])
        cap = _run_child(["--child", "capture", *common])
        runs.append({**warm, **cap})
    gpu = "h200" if "H200" in name else "h100" if "H100" in name else name.split()[-1].lower()
    result = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "command": "python " + " ".join(sys.argv), "runs": runs}
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"cold_start_{gpu}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"{'H':>6} {'warmup s':>9} {'unwarmed':>9} {'worst ratio':>12}  cold capture")
    for r in runs:
        print(f"{r['hidden_size']:>6} {r['warmup_seconds']:>9.3f} {r['unwarmed_plans']:>9} "
              f"{r['worst_first_call_ratio']:>12.2f}  {r['cold_capture']}")
        print(f"{'':>6} worst call: {r['worst_call']}")
        print(f"{'':>6} first calls over 2x: {r['calls_over_2x']} of {r['first_calls']}; "
              f"worst GPU-time ratio {r['worst_first_call_gpu_ratio']:.2f}; median ratio "
              f"{r['median_first_call_ratio']:.2f}")
        print(f"{'':>6} control, steady calls against their median: worst "
              f"{r['worst_steady_call_ratio']:.2f}, over 2x: {r['steady_calls_over_2x']} of "
              f"{r['steady_calls']}")
        print(f"{'':>6} cudaMalloc calls during first calls: {r['cudamalloc_in_first_calls']}, "
              f"in all calls: {r['cudamalloc_in_all_calls']}")
        print(f"{'':>6} second pass, {r['split_first_calls']} first calls at new T, host enqueue: "
              f"worst {r['worst_enqueue_ratio']:.2f}x ({r['worst_enqueue_call']}), over 2x "
              f"{r['enqueue_calls_over_2x']}; GPU time: worst {r['worst_gpu_ratio']:.2f}x "
              f"({r['worst_gpu_call']}), over 2x {r['gpu_calls_over_2x']}")
        if "revisit_worst_enqueue_ratio" in r:
            print(f"{'':>6} control, revisits at seen T after another op: host enqueue worst "
                  f"{r['revisit_worst_enqueue_ratio']:.2f}x ({r['revisit_worst_enqueue_call']}), "
                  f"over 2x {r['revisit_enqueue_calls_over_2x']}; GPU time worst "
                  f"{r['revisit_worst_gpu_ratio']:.2f}x, over 2x {r['revisit_gpu_calls_over_2x']}")
        pre = "torch_control_"
        c = {k[len(pre):]: v for k, v in r.items() if k.startswith(pre)}
        if c:
            print(f"{'':>6} host enqueue over 2x by op (first calls, revisits; median steady "
                  f"enqueue): " + ", ".join(
                      f"{op} {v[0]} / {v[1]} ({r['median_steady_enqueue_us_by_op'].get(op)} us)"
                      for op, v in r["enqueue_over_2x_by_op"].items()))
            print(f"{'':>6} the same for torch's ops: " + ", ".join(
                f"{op} {v[0]} / {v[1]} ({c['median_steady_enqueue_us_by_op'].get(op)} us)"
                for op, v in c["enqueue_over_2x_by_op"].items()))
            print(f"{'':>6} control, torch's own ops ({', '.join(CONTROL_OPS)}) in the same "
                  f"pattern, {c['split_first_calls']} first calls: host enqueue over 2x "
                  f"{c['enqueue_calls_over_2x']} first, {c['revisit_enqueue_calls_over_2x']} "
                  f"revisits (worst {c['worst_enqueue_ratio']:.2f}x: {c['worst_enqueue_call']}); "
                  f"GPU time over 2x {c['gpu_calls_over_2x']} first, "
                  f"{c['revisit_gpu_calls_over_2x']} revisits")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
