"""Records, from the build in this checkout, which kernels each CUDA call launches and with
which launch shapes, for every T in 1..max_tokens, as run-length-encoded rows.

It mirrors the launchers of csrc/cuda/hc_main.cuh, hc_cluster.cuh, mhc_post.cu and
hc_prenorm_gemm.cu line by line on top of the build's own planner (mhc_ops._C.plan_of), with
every study knob at its default. The table it writes (tests/data/launch_table.json) is what
tests/test_launch_table.py holds the launch description of the planner against.

Grid sizes are kept as rules so that runs of T compress:
  ["blocks", bt, mult]      grid.x = ceil(T / bt) * mult
  ["tokens", mult]          grid.x = T * mult
  ["persist", bt, cs]       grid.x = min(ceil(T / bt), resident clusters) * cs
"""
import argparse
import json

from mhc_ops import _C

KINDS = {"PRE": 1, "POST": 2, "FUSED": 3, "HEAD": 4, "PRENORM": 0}
# Hopper's shared memory per SM / reserved per block / opt-in per block (H100, H200; B200 the same)
SMEM_SM, SMEM_RESERVED, SMEM_OPTIN = 233472, 1024, 232448


def cdiv(a, b):
    return (a + b - 1) // b


def shape(n, mode):
    m = n if mode == "HEAD" else n * (n + 2)
    return m, cdiv(m, 8), cdiv(m + 1, 4) * 4, cdiv(n + n * n, 4) * 4


def tiles(n, mode, fullk, small=False):
    return 1 if n > 4 else (2 if (fullk or mode == "FUSED" or small) else 4)


def cluster_shape(mode, n, h):
    groups = cdiv(h, 32)
    per_cta = cdiv(groups, min(groups, 16))
    size = cdiv(groups, per_cta)
    bt = 16
    vecs = 4 * per_cta
    row = n * vecs + (4 if (n * per_cta) % 2 == 0 else 0)
    m = n if mode == "HEAD" else n * (n + 2)
    mp = cdiv(m + 1, 4) * 4
    nc = cdiv(n + n * n, 4) * 4
    fused = mode == "FUSED"
    b = (16 * bt * row + (16 * bt * vecs + 4 * bt * nc if fused else 0) + 4 * 8 * bt * mp
         + 4 * bt * mp + 4 * bt * n)
    return size, per_cta, bt, b


def persist_bytes(n, hs, nb, slots):
    g = hs // 32
    gpc = cdiv(g, 16)
    cs = cdiv(g, gpc)
    rs = n * 4 * gpc + (4 if (n * gpc) % 2 == 0 else 0)
    mp = shape(n, "HEAD")[2]
    return 16 * nb * 16 * rs + 4 * (slots * cs * 16 * mp + 8 * 16 * mp + 2 * 16 * n), cs


def launches(mode, t, n, h, sms, norm, bi):
    if mode == "POST":
        return [["post<%d,1>" % n, ["tokens", 1], cdiv(h // 8, 128), 128, 0, 0]]
    if mode == "PRENORM":
        p = _C.plan_of(0, t, 1, n * h, sms, False, False, False, True)
        nrows = n * (n + 2)
        nt = min(4, cdiv(nrows, 8))
        return [["prenorm<%d,1>" % nt, ["blocks", 64, 1], p[2], 256,
                 8 * 64 * (8 + 4 * 8 * cdiv(nrows, 8)), 0]]
    p = _C.plan_of(KINDS[mode], t, n, h, sms, norm, bi, False, True)
    _, variant, S, bt, _, HS, pnorm, staged, half, ring, evict = p
    norm = pnorm
    M, NT, MP, NC = shape(n, mode)
    G = cdiv(h, 32)
    if variant == "cluster":
        if mode == "HEAD" and n == 4 and h in (4096, 7168):
            nb, rot = (2, 0) if h == 4096 else (3, 1)
            smem, cs = persist_bytes(n, h, nb, 3 if rot else 2)
            return [["head_persist<%d,%d,%d,%d>" % (n, h, nb, rot), ["persist", 16, cs], 1, 256,
                     smem, cs]]
        size, _, cbt, smem = cluster_shape(mode, n, h)
        return [["cluster<%d,%s>" % (n, mode), ["blocks", cbt, size], 1, 256, smem, size]]
    full = variant == "full_k"
    out = []
    if staged and mode != "HEAD":
        out.append(["stage_fn<%d,%s>" % (n, mode), ["fixed", cdiv(G * n * NT, 8)], 1, 256, 0, 0])
    gpc = cdiv(G, S)
    if full:
        warps = 8
    else:
        units = gpc * ((2 if half else 1) if mode == "FUSED" else n)
        warps = min(8, units)
    nm = 1 if (full and norm and mode != "HEAD") else 0
    hs = HS if full else 0
    TT = tiles(n, mode, full)
    small = False
    if mode == "FUSED" and not full and n % 2 == 0 and half:
        inst = (1, 0, 0)
    elif ring:
        inst = (0, 1, 0)
    elif mode != "FUSED" and not full and n <= 4 and bt == 16 * tiles(n, mode, False, True):
        inst = (0, 0, 1)
        small = True
    else:
        inst = (0, 0, 0)
    tt = tiles(n, mode, full, small)
    assert bt == 16 * tt, (mode, t, p)
    b16 = 16 * tt
    smem = 4 * b16 * (warps * MP + NC)
    if mode == "FUSED":
        if ring:
            smem += 16 * warps * 2 * (2 * tiles(n, mode, full) * (n + 1) * 32)
    else:
        if ring:
            rtt = tiles(n, mode, full)
            slot = (2 * rtt + NT * 2) * 32
            fit = (224 * 1024) // (8 * slot * 16)
            stages = min(4, fit)
            smem = max(16 * warps * stages * slot, 4 * warps * 16 * rtt * MP)
        else:
            smem = 4 * b16 * warps * MP + 16 * warps * 4 * 2 * tt * 32
    out.append(["main<%d,%s,%d,%d,%d,%d,%d,%d>" % ((n, mode, int(full), nm, hs) + inst),
                ["blocks", bt, 1], S, 32 * warps, smem, 0])
    if full:
        return out
    em = "HEAD" if mode == "HEAD" else "PRE"
    h8 = h // 8
    max_chunks = max(1, h8 // 128)
    per_chunk = (1 if mode == "HEAD" else 2) * 128
    want = max(cdiv(h8, per_chunk), (2 * sms + t // 2) // t)
    hc = 1 if norm else min(max_chunks, want)
    esmem = 4 * (S + 4) * MP
    if half:
        share = SMEM_SM // 3
        reserve = SMEM_RESERVED + 1024
        if share > reserve:
            esmem = max(esmem, min(share - reserve, SMEM_OPTIN))
    enorm = 1 if (em != "HEAD" and norm) else 0
    out.append(["epilogue<%d,%s,%d,%d>" % (n, em, enorm, HS), ["tokens", hc], 1,
                128 + (0 if em == "HEAD" else 32), esmem, 0])
    return out


def configs():
    for sms in (78, 132, 148):
        for h in (4096, 5120, 7168):
            for mode in ("PRE", "FUSED", "HEAD", "POST", "PRENORM"):
                norms = (False, True) if mode in ("PRE", "FUSED") else (False,)
                bis = (False, True) if mode in ("PRE", "FUSED", "HEAD") else (False,)
                for norm in norms:
                    for bi in bis:
                        yield mode, 4, h, sms, norm, bi
    for n in (1, 2, 3, 8):
        for mode in ("PRE", "FUSED", "HEAD"):
            yield mode, n, 4096, 132, False, False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--out", default="tests/data/launch_table.json")
    a = ap.parse_args()
    table = []
    for mode, n, h, sms, norm, bi in configs():
        runs = []
        for t in range(1, a.max_tokens + 1):
            row = launches(mode, t, n, h, sms, norm, bi)
            if runs and runs[-1][2] == row:
                runs[-1][1] = t
            else:
                runs.append([t, t, row])
        table.append({"op": mode, "hc_mult": n, "hidden": h, "num_sms": sms, "norm": norm,
                      "batch_invariant": bi, "runs": runs})
    with open(a.out, "w") as f:
        json.dump({"max_tokens": a.max_tokens, "table": table}, f, separators=(",", ":"))
    print(a.out, sum(len(c["runs"]) for c in table), "runs")


if __name__ == "__main__":
    main()
