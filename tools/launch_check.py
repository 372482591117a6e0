"""The kernels a CUDA call really launches, read from the profiler, against the launch
description of the planner (mhc_ops._C.launches_of) or, for a build that has none, against a
recorded table (tests/data/launch_table.json): kernel, grid and block of every launch, for pre,
fused (plain and with the folded norm), head, post and the prenorm GEMM at the representative
token counts of every plan and a few more, at both DeepSeek-V4 widths and this GPU's SM count,
and DeepSeek-V4.1's stats, combine, post + combine and shifted boundary at H = 5120.

  python tools/launch_check.py [--table tests/data/launch_table.json] [--out r.json]

Exits 1 on a mismatch. Kernel names are read from their template arguments, so that builds
whose kernels are organised differently compare by what runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile

import torch

import mhc_ops
from mhc_ops import plan

MODES = {"0": "PRE", "1": "FUSED", "2": "HEAD"}


def canonical(name: str) -> str | None:
    """'main<4,PRE,0,0,4096,0,0,1>' and the like from a demangled kernel name."""
    m = re.search(r"(\w+)<(.*)>\(", name)
    if not m:
        return None
    fn, args = m.group(1), [a.strip() for a in m.group(2).split(",")]

    def val(a):
        a = re.sub(r"\(mhc::(?:cuda::)?Mode\)", "", a)
        return {"true": "1", "false": "0"}.get(a, a)

    v = [val(a) for a in args]
    if fn == "hc_main_kernel":  # N, MODE, FULLK, NORM, HS, HALF, RING, SMALL (defaults 0)
        v += ["0"] * (8 - len(v))
        return "main<%s,%s,%s>" % (v[0], MODES[v[1]], ",".join(v[2:8]))
    if fn == "hc_prehead_main_kernel":  # N, MODE, FULLK, NORM, HS, RING, SMALL
        return "main<%s,%s,%s,%s,%s,0,%s,%s>" % (v[0], MODES[v[1]], *v[2:7])
    if fn == "hc_fused_main_kernel":  # N, FULLK, NORM, HS, HALF, RING
        return "main<%s,FUSED,%s,0>" % (v[0], ",".join(v[1:6]))
    if fn == "hc_epilogue_kernel":  # N, MODE, NORM, HS, CARRY (the fused shifted boundary)
        mode = "CARRY" if len(v) > 4 and v[4] == "1" else MODES[v[1]]
        return "epilogue<%s,%s,%s,%s>" % (v[0], mode, v[2], v[3])
    if fn == "hc_stage_fn_kernel":
        return "stage_fn<%s,%s>" % (v[0], MODES[v[1]])
    if fn == "hc_cluster_kernel":
        return "cluster<%s,%s>" % (v[0], MODES[v[1]] if len(v) > 1 else "HEAD")
    if fn == "hc_head_persist_kernel":
        v += ["0"] * (4 - len(v))
        return "head_persist<%s>" % ",".join(v[:4])
    if fn == "mhc_post_kernel":
        return "post<%s,%s>" % (v[0], v[1])
    if fn == "mhc_post_row_kernel":
        return "post_row<%s,%s>" % (v[0], v[1])
    if fn == "hc_combine_kernel":  # N, POST, NORM, SPLIT
        return "combine<%s,%s,%s,%s>" % (v[0], v[1], v[2], v[3])
    if fn == "prenorm_kernel":
        return "prenorm<%s,%s>" % (v[0], v[1])
    return None


def traced(call) -> list:
    """(kernel, grid_x, grid_y, block) of this pack's kernels that call() launches."""
    call()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    path = tempfile.mktemp(suffix=".json")
    prof.export_chrome_trace(path)
    events = json.load(open(path))["traceEvents"]
    os.unlink(path)
    out = []
    for e in sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"]):
        k = canonical(e["name"])
        if k is not None:
            a = e.get("args", {})
            out.append((k, a["grid"][0], a["grid"][1], a["block"][0]))
    return out


def expected_from_table(table, op, n, h, sms, norm, t, resident):
    for case in table["table"]:
        if (case["op"], case["hc_mult"], case["hidden"], case["num_sms"], case["norm"],
                case["batch_invariant"]) == (op, n, h, sms, norm, False):
            for lo, hi, rows in case["runs"]:
                if lo <= t <= hi:
                    out = []
                    for k, rule, gy, block, _smem, _cl in rows:
                        gx = {"blocks": lambda: -(-t // rule[1]) * rule[2],
                              "tokens": lambda: t * rule[1],
                              "persist": lambda: min(-(-t // rule[1]), resident) * rule[2],
                              "fixed": lambda: rule[1]}[rule[0]]()
                        out.append((k, gx, gy, block))
                    return out
    raise KeyError((op, n, h, sms, norm, t))


def inputs(T, H, n, g):
    K, m3 = n * H, n * (n + 2)

    def rn(*s, std=1.0, dtype=torch.float32):
        return (torch.randn(*s, generator=g, device="cuda") * std).to(dtype)

    return dict(x=rn(T, H, dtype=torch.bfloat16), res=rn(T, n, H, dtype=torch.bfloat16),
                post=2 * torch.sigmoid(rn(T, n, 1)), comb=torch.softmax(rn(T, n, n), -2),
                fn=rn(m3, K, std=1 / math.sqrt(K)), scale=0.5 + torch.rand(3, device="cuda"),
                base=rn(m3, std=0.5), w=rn(H, std=0.1, dtype=torch.bfloat16) + 1,
                pre=torch.sigmoid(rn(T, n)) + 1e-6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-tokens", type=int, default=16384)
    a = ap.parse_args()
    table = json.load(open(a.table)) if a.table else None
    if table is None and not hasattr(mhc_ops._C, "launches_of"):
        sys.exit("launch_check: this build has no launches_of; pass --table")
    sms = plan.device_num_sms("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    n, rows, bad = 4, [], 0
    v4 = [("PRE", False), ("PRE", True), ("FUSED", False), ("FUSED", True), ("HEAD", False),
          ("POST", False), ("PRENORM", False)]
    # DeepSeek-V4.1's ops at its width
    v41 = [
        ("STATS", False), ("COMBINE", False), ("COMBINE", True), ("POST_COMBINE", False),
        ("POST_COMBINE", True), ("SHIFTED", False), ("SHIFTED", True)]
    cases = [(H, op, norm) for H in (4096, 7168) for op, norm in v4]
    cases += [(5120, op, norm) for op, norm in v41]
    mhc = torch.ops.mhc
    for H, op, norm in cases:
        kind = {"PRE": "MHC_PRE", "FUSED": "MHC_FUSED_POST_PRE", "HEAD": "HC_HEAD",
                "POST": "MHC_POST", "PRENORM": "PRENORM_GEMM", "STATS": "MHC_STATS",
                "COMBINE": "MHC_COMBINE", "POST_COMBINE": "MHC_POST_COMBINE",
                "SHIFTED": "MHC_SHIFTED_POST_PRE"}[op]
        reps = plan.token_count_representatives(kind, a.max_tokens, hidden_size=H,
                                                num_sms=sms, norm=norm,
                                                batch_invariant=False)
        for T in sorted(set(reps) | {1, 7, 33, 300, 4097}):
            d = inputs(T, H, n, g)
            nw = d["w"] if norm else None
            call = {
                "PRE": lambda: mhc_ops.mhc_pre(d["res"], d["fn"], d["scale"], d["base"],
                                               norm_weight=nw),
                "FUSED": lambda: mhc_ops.mhc_fused_post_pre(
                    d["x"], d["res"], d["post"], d["comb"], d["fn"], d["scale"], d["base"],
                    norm_weight=nw),
                "HEAD": lambda: mhc_ops.hc_head(d["res"], d["fn"][:n].contiguous(),
                                                d["scale"][:1], d["base"][:n]),
                "POST": lambda: mhc_ops.mhc_post(d["x"], d["res"], d["post"], d["comb"]),
                "PRENORM": lambda: mhc_ops.hc_prenorm_gemm(
                    d["res"].view(T, n * H), d["fn"],
                    plan.num_splits(T, n * H, sms)),
                "STATS": lambda: mhc.mhc_stats(d["res"], d["fn"], d["scale"], d["base"]),
                "COMBINE": lambda: mhc.mhc_combine(d["res"], d["pre"], nw),
                "POST_COMBINE": lambda: mhc.mhc_post_combine(
                    d["x"], d["res"], d["post"], d["comb"], d["pre"], nw),
                "SHIFTED": lambda: mhc.mhc_shifted_post_pre(
                    d["x"], d["res"], d["post"], d["comb"], d["pre"], d["fn"], d["scale"],
                    d["base"], norm_weight=nw),
            }[op]
            got = traced(call)
            persist = [x for x in got if x[0].startswith("head_persist")]
            resident = persist[0][1] // 16 if persist else 1  # grid / cluster size (16)
            if table is not None:
                want = expected_from_table(table, op, n, H, sms, norm, T, resident)
            else:
                want = [(k, gx, gy, b) for k, gx, gy, b, _s, _c in mhc_ops._C.launches_of(
                    int(plan.KernelType[kind]), T, n, H, sms, norm, False, False, True,
                    resident)]
            ok = got == want
            bad += not ok
            rows.append({"op": op, "norm": norm, "H": H, "T": T, "ok": ok,
                         "got": got, "want": want})
            if not ok:
                print(f"MISMATCH {op} norm={norm} H={H} T={T}\n  got  {got}\n  want {want}")
            del d
    print(f"launch_check: {len(rows)} calls on {torch.cuda.get_device_name()} ({sms} SMs), "
          f"{bad} mismatches")
    if a.out:
        json.dump(rows, open(a.out, "w"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
