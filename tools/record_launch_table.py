"""Records tests/data/launch_table.json from this build's launch description
(mhc_ops._C.launches_of): which kernels each CUDA call launches, with its grid rule, block,
dynamic shared memory and cluster size, for every T in 1..max_tokens, run-length encoded.
tests/test_launch_table.py holds the planner against that table, so a change of any launch is
seen; when such a change is meant, re-record the table with this script and say so in the
commit.

  python tools/record_launch_table.py [--max-tokens 16384] [--out tests/data/launch_table.json]

Grid sizes are kept as rules so that runs of T compress:
  ["blocks", bt, mult]      grid.x = ceil(T / bt) * mult
  ["tokens", mult]          grid.x = T * mult
  ["persist", bt, cs]       grid.x = min(ceil(T / bt), resident clusters) * cs
  ["fixed", x]              grid.x = x
"""
import argparse
import json

from mhc_ops import _C

KINDS = {"PRE": 1, "POST": 2, "FUSED": 3, "HEAD": 4, "PRENORM": 0, "STATS": 6, "COMBINE": 7,
         "POST_COMBINE": 8, "SHIFTED": 9}


def rule(kernel, gx, t, block_tokens, cluster):
    role = kernel.split("<")[0]
    if role in ("main", "prenorm"):
        return ["blocks", block_tokens, 1]
    if role == "cluster":
        return ["blocks", block_tokens, cluster]
    if role == "head_persist":
        return ["persist", block_tokens, cluster]
    if role in ("epilogue", "post", "post_row", "combine"):
        return ["tokens", gx // t]
    return ["fixed", gx]


def launches(op, t, n, h, sms, norm, bi):
    kind = KINDS[op]
    prenorm = op == "PRENORM"
    p = _C.plan_of(kind, t, 1 if prenorm else n, n * h if prenorm else h, sms, norm, bi, False,
                   True)
    rows = _C.launches_of(kind, t, n, h, sms, norm, bi, False, True, 1)
    return [[k, rule(k, gx, t, p[3], cl), gy, block, smem, cl]
            for k, gx, gy, block, smem, cl in rows]


def configs():
    for sms in (78, 132, 148):
        for h in (4096, 5120, 7168):
            for op in ("PRE", "FUSED", "HEAD", "POST", "PRENORM"):
                for norm in (False, True) if op in ("PRE", "FUSED") else (False,):
                    for bi in (False, True) if op in ("PRE", "FUSED", "HEAD") else (False,):
                        yield op, 4, h, sms, norm, bi
    for n in (1, 2, 3, 8):
        for op in ("PRE", "FUSED", "HEAD"):
            yield op, n, 4096, 132, False, False
    # DeepSeek-V4.1 (n = 4, H = 5120)
    for sms in (78, 132, 148):
        for op in ("STATS", "COMBINE", "POST_COMBINE", "SHIFTED"):
            for norm in (False, True) if op != "STATS" else (False,):
                for bi in (False, True) if op in ("STATS", "SHIFTED") else (False,):
                    yield op, 4, 5120, sms, norm, bi


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--out", default="tests/data/launch_table.json")
    a = ap.parse_args()
    table = []
    for op, n, h, sms, norm, bi in configs():
        runs = []
        for t in range(1, a.max_tokens + 1):
            row = launches(op, t, n, h, sms, norm, bi)
            if runs and runs[-1][2] == row:
                runs[-1][1] = t
            else:
                runs.append([t, t, row])
        table.append({"op": op, "kind": KINDS[op], "hc_mult": n, "hidden": h, "num_sms": sms,
                      "norm": norm, "batch_invariant": bi, "runs": runs})
    with open(a.out, "w") as f:
        json.dump({"max_tokens": a.max_tokens, "table": table}, f, separators=(",", ":"))
    print(a.out, sum(len(c["runs"]) for c in table), "runs")


if __name__ == "__main__":
    main()
