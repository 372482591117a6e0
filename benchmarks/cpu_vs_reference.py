"""CPU kernels against the plain-PyTorch reference (eager), per op and token count.

    python benchmarks/cpu_vs_reference.py [--hidden 4096] [--tokens 1 64 512] [--quick]

Verifies each op against the reference first, then prints the median wall time of each
(torch.get_num_threads() threads) and writes benchmarks/results/cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import mhc_ops
from mhc_ops import reference
from mhc_ops.plan import num_splits


def _inputs(T, H, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    K, m3 = n * H, n * (n + 2)
    return dict(
        residual=torch.randn(T, n, H, generator=g).bfloat16(),
        x=torch.randn(T, H, generator=g).bfloat16(),
        post_mix=2 * torch.rand(T, n, 1, generator=g),
        comb_mix=torch.softmax(torch.randn(T, n, n, generator=g), -2),
        fn=torch.randn(m3, K, generator=g) / K ** 0.5,
        hc_scale=0.5 + torch.rand(3, generator=g),
        hc_base=0.5 * torch.randn(m3, generator=g),
        norm_weight=(1 + 0.1 * torch.randn(H, generator=g)).bfloat16(),
        weight=(torch.randn(256, H, generator=g) / H ** 0.5).bfloat16(),
    )


def _calls(lib, a):
    r, x, p, c, fn, s, b = (a[k] for k in ("residual", "x", "post_mix", "comb_mix", "fn",
                                           "hc_scale", "hc_base"))
    n = r.shape[1]
    return {
        "mhc_pre": lambda: lib.mhc_pre(r, fn, s, b, norm_weight=a["norm_weight"]),
        "mhc_post": lambda: lib.mhc_post(x, r, p, c),
        "mhc_fused_post_pre": lambda: lib.mhc_fused_post_pre(x, r, p, c, fn, s, b,
                                                             norm_weight=a["norm_weight"]),
        "hc_head": lambda: lib.hc_head(r, fn[:n], s[:1], b[:n]),
        # the split count DeepGEMM-style callers pass: upstream's rule for a 132-SM GPU
        "hc_prenorm_gemm": lambda: lib.hc_prenorm_gemm(
            r.view(r.shape[0], -1), fn, num_splits(r.shape[0], fn.shape[1], 132)),
        "linear_bf16_fp32": lambda: lib.linear_bf16_fp32(x, a["weight"]),
    }


def _median_seconds(fn, min_time=0.3, max_reps=200):
    fn()
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _close(a, b):
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    for u, v in zip(a, b):
        u, v = u.double(), v.double()
        scale = v.abs().max().clamp_min(1e-6)
        if not ((u - v).abs().max() / scale < 2e-2):
            return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 64, 512])
    ap.add_argument("--quick", action="store_true", help="T=1 only")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "cpu.json"))
    args = ap.parse_args()
    tokens = [1] if args.quick else args.tokens
    rows = []
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, H={args.hidden}")
    print(f"{'op':<20} {'T':>5} {'mhc_ops ms':>11} {'reference ms':>13} {'speedup':>8}")
    for T in tokens:
        a = _inputs(T, args.hidden)
        ours, ref = _calls(mhc_ops, a), _calls(reference, a)
        for op in ours:
            if not _close(ours[op](), ref[op]()):
                sys.exit(f"{op} T={T}: mhc_ops disagrees with the reference")
            t_ours, t_ref = _median_seconds(ours[op]), _median_seconds(ref[op])
            rows.append({"op": op, "T": T, "H": args.hidden, "mhc_ops_ms": t_ours * 1e3,
                         "reference_ms": t_ref * 1e3})
            print(f"{op:<20} {T:>5} {t_ours * 1e3:>11.3f} {t_ref * 1e3:>13.3f} "
                  f"{t_ref / t_ours:>7.2f}x")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "command": "python " + " ".join(sys.argv), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
