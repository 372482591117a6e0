"""Where decode time goes in mhc_pre / mhc_fused_post_pre: the same CUDA-graph timing as
bench_ops (cold fn) with the Sinkhorn cut from 20 rounds to 1, and hc_head (no Sinkhorn, n
gates) beside them. The difference between 20 and 1 rounds is the part of the 20 rounds that
sits on the critical path of the epilogue.

    python benchmarks/decode_probe.py --tokens 1,8,64 --widths 4096,7168
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

import mhc_ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_ops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="1,8,64")
    ap.add_argument("--widths", default="4096,7168")
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    print(f"{torch.cuda.get_device_name()}, cold fn, us per call (CUDA graph of {args.calls})")
    print(f"{'op':<20} {'H':>5} {'T':>5} {'repeat 20':>10} {'repeat 1':>9} {'head':>7}")
    for H in map(int, args.widths.split(",")):
        for T in map(int, args.tokens.split(",")):
            g = torch.Generator(device="cuda").manual_seed(T * 100003 + H)
            head = [bench_ops.make_set("hc_head", T, H, g) for _ in range(2)]
            nh = max(bench_ops.MIN_SETS, math.ceil(2.5 * l2 / bench_ops.set_bytes(head[0])))
            head = [bench_ops.make_set("hc_head", T, H, g) for _ in range(nh)]
            t_head = bench_ops.graph_time_us(lambda a: mhc_ops.hc_head(**a), head, args.calls)
            for op in ("mhc_pre", "mhc_fused_post_pre"):
                first = bench_ops.make_set(op, T, H, g)
                n = max(bench_ops.MIN_SETS, math.ceil(2.5 * l2 / bench_ops.set_bytes(first)))
                sets = [first] + [bench_ops.make_set(op, T, H, g) for _ in range(n - 1)]
                f = getattr(mhc_ops, op)
                us = {r: bench_ops.graph_time_us(lambda a, r=r: f(**a, sinkhorn_repeat=r), sets,
                                                 args.calls) for r in (20, 1)}
                print(f"{op:<20} {H:>5} {T:>5} {us[20]:>10.2f} {us[1]:>9.2f} {t_head:>7.2f}")


if __name__ == "__main__":
    main()
