"""Host cost of enqueueing one call: this pack's ops against torch's own, with the GPU idle and
with it busy (a spin kernel queued ahead, as in cold_start.py's second pass), and the CUDA
runtime calls inside one call (torch.profiler's CPU events).

    python benchmarks/host_overhead.py                      # H 4096 / 7168, T 64 / 4096
    python benchmarks/host_overhead.py --widths 7168 --tokens 4096 --repeats 20

Prints, per (H, T), the median enqueue time of each call in us, GPU idle / busy, then for
mhc_post (GPU busy) the profiler's CPU events by total time; --out writes the medians as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from torch.profiler import ProfilerActivity, profile

from cold_start import OPS, SPIN_CYCLES, _call, _inputs, _timed_split


def _enqueue_idle(fn) -> float:
    """Seconds the host takes to enqueue fn() with the GPU idle (busy: cold_start's
    _timed_split, a spin kernel queued ahead)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    torch.cuda.synchronize()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="4096,7168")
    ap.add_argument("--tokens", default="64,4096")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import mhc_ops

    device = torch.device("cuda", torch.cuda.current_device())
    rows = []
    for H in map(int, args.widths.split(",")):
        for T in map(int, args.tokens.split(",")):
            a = _inputs(T, H, device)
            x, res, post, comb = a["x"], a["residual"], a["post_mix"], a["comb_mix"]
            calls = {op: (lambda op=op: _call(mhc_ops, op, a, T)) for op in OPS}
            calls["mhc_post (torch.ops direct)"] = lambda: torch.ops.mhc.mhc_post.default(
                x, res, post, comb)
            calls["torch add (x + x)"] = lambda: torch.add(x, x)
            calls["torch add (residual + residual)"] = lambda: torch.add(res, res)
            for fn in calls.values():  # warm: plans, allocator blocks, lazy module loading
                for _ in range(3):
                    fn()
            torch.cuda.synchronize()
            print(f"H = {H}, T = {T}: median host enqueue, us (GPU idle / busy)")
            for name, fn in calls.items():
                idle = statistics.median(_enqueue_idle(fn) for _ in range(args.repeats))
                busy = statistics.median(_timed_split(fn)[0] for _ in range(args.repeats))
                rows.append({"H": H, "T": T, "call": name, "idle_us": round(idle * 1e6, 2),
                             "busy_us": round(busy * 1e6, 2)})
                print(f"  {name:<34} {idle * 1e6:8.1f} / {busy * 1e6:8.1f}")
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(10):
                    torch.cuda._sleep(SPIN_CYCLES)
                    calls["mhc_post"]()
                    torch.cuda.synchronize()
            print(f"  profiler, 10 mhc_post calls with the GPU busy (H = {H}, T = {T}):")
            table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=14)
            print("\n".join("    " + line for line in table.splitlines()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "rows": rows}, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
