"""Calls every op once per (T, H) point, for a kernel profiler to time kernel by kernel:

  ncu --clock-control none --kernel-name regex:"hc_|prenorm|mhc_post" \\
      --metrics gpu__time_duration.sum --csv \\
      python tools/profile_ops.py --tokens 1,64,4096 --widths 7168 > ncu.csv

(ncu serialises kernels and, by default, flushes the caches before each, so every kernel is
timed cold and without the programmatic-dependent-launch overlap of a CUDA graph.)
``--summarize ncu.csv`` prints that CSV as one line per kernel.

Where a kernel stalls, per SASS instruction (how fn's wait one unit ahead and the persistent
hc_head kernel's barrier stalls were found; docs/performance.md, "The fn ring" and "Cluster
plans and the persistent hc_head"):

  ncu --section WarpStateStats --section SourceCounters -k regex:hc_head_persist -c 1 -o rep \
      python tools/profile_ops.py --ops hc_head --tokens 4096 --widths 7168
  ncu -i rep.ncu-rep --page source --csv --print-source sass > src.csv
  python tools/profile_ops.py --stalls src.csv

prints the instructions with the most warp-stall samples, their share and two largest reasons.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))  # bench_ops
import bench_ops  # noqa: E402
import mhc_ops  # noqa: E402


def summarize(path: str) -> None:
    rows = list(csv.reader(line for line in open(path) if line.startswith('"')))
    col = {k: i for i, k in enumerate(rows[0])}
    for r in rows[1:]:
        name = r[col["Kernel Name"]]
        m = re.search(r"(\w+_kernel)<([^>]*)>", name)  # this pack's kernels by their names
        short = f"{m.group(1)}<{m.group(2)}>" if m else name[:60]
        print(f"{short:64s} grid {r[col['Grid Size']]:>14s} block {r[col['Block Size']]:>12s} "
              f"{r[col['Metric Value']]:>10s} {r[col['Metric Unit']]}")


def stalls(path: str, top: int = 30) -> list[tuple[float, str, str]]:
    """(share of all stall samples, SASS, top reasons) of the `top` instructions with the most."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = next(i for i, r in enumerate(rows) if "Warp Stall Sampling (All Samples)" in r)
    col = {k: i for i, k in enumerate(rows[head])}
    reasons = [k for k in rows[head] if k.startswith("stall_") and "Not Issued" not in k]

    def num(r, k):
        try:
            return float(r[col[k]].replace(",", ""))
        except (ValueError, IndexError):
            return 0.0

    data = [r for r in rows[head + 1:] if len(r) == len(rows[head])]
    total = sum(num(r, "Warp Stall Sampling (All Samples)") for r in data) or 1.0
    out = []
    for r in sorted(data, key=lambda r: -num(r, "Warp Stall Sampling (All Samples)"))[:top]:
        why = sorted(((num(r, k), k[len("stall_"):]) for k in reasons), reverse=True)[:2]
        out.append((num(r, "Warp Stall Sampling (All Samples)") / total, r[col["Source"]],
                    " ".join(f"{k}={v:.0f}" for v, k in why if v > 0)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--summarize", metavar="NCU_CSV")
    ap.add_argument("--stalls", metavar="NCU_SOURCE_CSV",
                    help="top SASS lines by warp-stall samples (ncu --page source --csv)")
    ap.add_argument("--ops", default=",".join(bench_ops.OPS))
    ap.add_argument("--tokens", default="1,64,4096")
    ap.add_argument("--widths", default="7168")
    bench_ops.add_knob_args(ap)
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize)
    if args.stalls:
        for share, sass, why in stalls(args.stalls):
            print(f"{100 * share:5.1f}%  {sass[:80]:80s}  {why}")
        return None
    bench_ops.apply_knobs(args)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    g = torch.Generator(device="cuda").manual_seed(0)
    for op in args.ops.split(","):
        for H in map(int, args.widths.split(",")):
            for T in map(int, args.tokens.split(",")):
                a = bench_ops.make_set(op, T, H, g)
                fn = bench_ops.op_fn(op, "mhc_ops", T, H, sms)
                torch.cuda.nvtx.range_push(f"{op} T={T} H={H}")
                fn(a)
                torch.cuda.synchronize()
                torch.cuda.nvtx.range_pop()
                print(f"{op} T={T} H={H} plan "
                      f"{mhc_ops.plan.plan_of(op if op != 'hc_prenorm_gemm' else 'PRENORM_GEMM', T, hidden_size=H, num_sms=sms)}",
                      flush=True)


if __name__ == "__main__":
    main()
