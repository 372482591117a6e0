"""Where the time of one op call goes, kernel by kernel, inside the CUDA graph the benchmark
replays (programmatic dependent launch overlap included): torch.profiler around one replay of
`calls` back-to-back calls (cold input sets as in bench_ops), then per kernel the mean
duration, and the period per call.

  python tools/trace_ops.py --ops mhc_pre,hc_head --tokens 1,64 --widths 7168
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))  # bench_ops
import bench_ops  # noqa: E402


def trace_point(op: str, T: int, H: int, sms: int, l2: int, timeline: int = 0) -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    first = bench_ops.make_set(op, T, H, g)
    nsets = max(bench_ops.MIN_SETS, math.ceil(2.5 * l2 / bench_ops.set_bytes(first)))
    sets = [first] + [bench_ops.make_set(op, T, H, g) for _ in range(nsets - 1)]
    calls = max(10, nsets)
    fn = bench_ops.op_fn(op, "mhc_ops", T, H, sms)
    for a in sets[:calls]:
        fn(a)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(sets[i % len(sets)])
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list] = {}
    for e in kernels:
        name = e.name.split("(")[0].replace("void ", "").replace("mhc::cuda::", "")[:60]
        by_name.setdefault(name, []).append(e)
    t0 = min(e.time_range.start for e in kernels)
    t1 = max(e.time_range.end for e in kernels)
    print(f"{op} T={T} H={H}: {calls} calls in {t1 - t0:.1f} us -> {(t1 - t0) / calls:.2f} us/call")
    for name, evs in by_name.items():
        d = statistics.mean(e.time_range.elapsed_us() for e in evs)
        print(f"    {len(evs):3d} x {d:8.2f} us  {name}")
    # the first `timeline` kernels of the replay: start and end from the first kernel's start
    for e in sorted(kernels, key=lambda e: e.time_range.start)[:timeline]:
        name = e.name.split("(")[0].replace("void ", "").replace("mhc::cuda::", "")[:40]
        print(f"    {e.time_range.start - t0:9.2f} {e.time_range.end - t0:9.2f}  {name}")
    del graph, sets
    torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", default=",".join(bench_ops.OPS))
    ap.add_argument("--tokens", default="1,64,4096")
    ap.add_argument("--widths", default="7168")
    ap.add_argument("--timeline", type=int, default=0, metavar="K",
                    help="also print start / end of the replay's first K kernels")
    ap.add_argument("--chain-chunk-bytes", type=int, default=None,
                    help="residual bytes per CHAINED chunk, 0 for none")
    args = ap.parse_args()
    if args.chain_chunk_bytes is not None:
        from mhc_ops._lib import _C

        _C.set_chain_chunk_bytes(args.chain_chunk_bytes)
    props = torch.cuda.get_device_properties(0)
    for op in args.ops.split(","):
        for H in map(int, args.widths.split(",")):
            for T in map(int, args.tokens.split(",")):
                trace_point(op, T, H, props.multi_processor_count, props.L2_cache_size,
                            args.timeline)


if __name__ == "__main__":
    main()
