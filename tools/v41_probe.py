"""Warm timings of the DeepSeek-V4.1 ops on one GPU in a minute, against their byte floors.

  python tools/v41_probe.py [--hidden-size 5120] [--tokens 1,8,32,64,512,4096,16384]

Each op (with the norm where it has one; mhc_post and mhc_pre with the norm for comparison) at
n = 4: the median of 10 replays of a CUDA graph of 20 back-to-back calls on the same, warm
inputs, µs, and the ratio to SPEC §8's bytes moved once over the device-to-device copy rate
measured in the same run (below 1 where warm inputs stay in L2). The cold-fn protocol and the
peers are benchmarks/bench_ops.py --model v4.1; correctness is tests/test_v41_ops*.py. Prints
one JSON line per T, then the whole run as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

import mhc_ops

N = 4


def inputs(T: int, H: int, g: torch.Generator) -> dict:
    K, m3 = N * H, N * (N + 2)

    def rn(*s, std=1.0, dtype=torch.float32):
        return (torch.randn(*s, generator=g) * std).to(dtype).cuda()

    return dict(x=rn(T, H, dtype=torch.bfloat16), residual=rn(T, N, H, dtype=torch.bfloat16),
                post=(2 * torch.sigmoid(torch.randn(T, N, 1, generator=g))).cuda(),
                comb=torch.softmax(torch.randn(T, N, N, generator=g), -2).cuda(),
                pre=(torch.sigmoid(torch.randn(T, N, generator=g)) + 1e-6).cuda(),
                fn=rn(m3, K, std=1 / math.sqrt(K)), sc=(0.5 + torch.rand(3, generator=g)).cuda(),
                base=rn(m3, std=0.5),
                w=(1 + 0.1 * torch.randn(H, generator=g)).bfloat16().cuda())


def copy_rate() -> float:
    """Bytes per second of a 256 MiB device-to-device copy (read + write)."""
    a = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        b.copy_(a)
    e1.record()
    torch.cuda.synchronize()
    return 2 * a.numel() * 10 / (e0.elapsed_time(e1) / 1e3)


def graph_us(fn, calls: int = 20, replays: int = 10) -> float:
    """Median µs per call of `replays` replays of a graph of `calls` calls of fn."""
    fn()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        graph.replay()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) * 1e3 / calls)
    return sorted(times)[replays // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden-size", type=int, default=5120)
    p.add_argument("--tokens", default="1,8,32,64,512,4096,16384")
    args = p.parse_args(argv)
    if not (mhc_ops.cuda_available() and torch.cuda.is_available()):
        print("v41_probe: needs the CUDA kernels and a GPU", file=sys.stderr)
        return 2
    H, mhc, g = args.hidden_size, torch.ops.mhc, torch.Generator().manual_seed(1)
    rate = copy_rate()
    rows = []
    for T in (int(t) for t in args.tokens.split(",")):
        a = inputs(T, H, g)
        floor = {"stats": T * (8 * H + 96) + 384 * H, "combine": T * (10 * H + 16),
                 "post_combine": T * (20 * H + 96), "shifted": T * (20 * H + 192) + 384 * H}
        post = (a["x"], a["residual"], a["post"], a["comb"])
        ops = {
            "stats": lambda: mhc.mhc_stats(a["residual"], a["fn"], a["sc"], a["base"]),
            "combine": lambda: mhc.mhc_combine(a["residual"], a["pre"], a["w"]),
            "post_combine": lambda: mhc.mhc_post_combine(*post, a["pre"], a["w"]),
            "shifted": lambda: mhc.mhc_shifted_post_pre(*post, a["pre"], a["fn"], a["sc"],
                                                        a["base"], norm_weight=a["w"]),
            "post": lambda: mhc.mhc_post(*post),
            "pre_norm": lambda: mhc.mhc_pre(a["residual"], a["fn"], a["sc"], a["base"],
                                            norm_weight=a["w"]),
        }
        row = {"T": T}
        for name, fn in ops.items():
            us = graph_us(fn)
            row[name] = round(us, 2)
            if name in floor:
                row[name + "_x_floor"] = round(us / (floor[name] / rate * 1e6), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "hidden_size": H, "copy_GBps": round(rate / 1e9, 1), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
