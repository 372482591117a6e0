"""Calls every op once per (T, H) point, for a kernel profiler to time kernel by kernel:

  ncu --clock-control none --kernel-name regex:"hc_|prenorm|mhc_post" \\
      --metrics gpu__time_duration.sum --csv \\
      python benchmarks/profile_ops.py --tokens 1,64,4096 --widths 7168 > ncu.csv

(ncu serialises kernels and, by default, flushes the caches before each, so every kernel is
timed cold and without the programmatic-dependent-launch overlap of a CUDA graph.)
``--summarize ncu.csv`` prints that CSV as one line per kernel.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_ops  # noqa: E402
import mhc_ops  # noqa: E402


def summarize(path: str) -> None:
    rows = list(csv.reader(line for line in open(path) if line.startswith('"')))
    col = {k: i for i, k in enumerate(rows[0])}
    for r in rows[1:]:
        name = r[col["Kernel Name"]]
        m = re.search(r"(hc_main_kernel|hc_epilogue_kernel|hc_cluster_kernel|mhc_post_kernel|prenorm_kernel)<([^>]*)>",
                      name)
        short = f"{m.group(1)}<{m.group(2)}>" if m else name[:60]
        print(f"{short:64s} grid {r[col['Grid Size']]:>14s} block {r[col['Block Size']]:>12s} "
              f"{r[col['Metric Value']]:>10s} {r[col['Metric Unit']]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--summarize", metavar="NCU_CSV")
    ap.add_argument("--ops", default=",".join(bench_ops.OPS))
    ap.add_argument("--tokens", default="1,64,4096")
    ap.add_argument("--widths", default="7168")
    bench_ops.add_knob_args(ap)
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize)
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
