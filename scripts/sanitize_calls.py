"""The calls scripts/sanitize.sh runs under compute-sanitizer: every CUDA op through each of
its kernel variants (SPLIT_K, FULL_K, CLUSTER, batch-invariant, scalar fallbacks) at small
sizes (the sanitizer slows kernels down 10-100x)."""

from __future__ import annotations

import math
import os

import torch

import mhc_ops

# Inputs are made on the CPU and copied to the GPU: initcheck runs with a kernel filter (this
# pack's kernels only, the others are slow under it) and then tracks only those kernels' writes
# and memory copies, so a tensor written by one of torch's kernels would read as uninitialised.
g = torch.Generator().manual_seed(0)


def rn(*s, std=1.0, dtype=torch.float32):
    return (torch.randn(*s, generator=g) * std).to(dtype).cuda()


def stream_args(T, n, H, norm):
    K, m3 = n * H, n * (n + 2)
    return dict(x=rn(T, H, dtype=torch.bfloat16), residual=rn(T, n, H, dtype=torch.bfloat16),
                post_mix=(2 * torch.sigmoid(torch.randn(T, n, 1, generator=g))).cuda(),
                comb_mix=torch.softmax(torch.randn(T, n, n, generator=g), -2).cuda(),
                fn=rn(m3, K, std=1 / math.sqrt(K)),
                hc_scale=(0.5 + torch.rand(3, generator=g)).cuda(), hc_base=rn(m3, std=0.5),
                norm_weight=(1 + 0.1 * torch.randn(H, generator=g)).bfloat16().cuda()
                if norm else None)


def run_stream_ops(T, n, H, norm):
    a = stream_args(T, n, H, norm)
    mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"], a["hc_base"],
                    norm_weight=a["norm_weight"])
    mhc_ops.mhc_fused_post_pre(a["x"], a["residual"], a["post_mix"], a["comb_mix"], a["fn"],
                               a["hc_scale"], a["hc_base"], norm_weight=a["norm_weight"])
    mhc_ops.mhc_post(a["x"], a["residual"], a["post_mix"], a["comb_mix"])
    mhc_ops.hc_head(a["residual"], a["fn"][:n].cpu().cuda(), a["hc_scale"][:1],
                    a["hc_base"][:n])


# (T, n, H, norm): split-K with a multi-chunk epilogue, its norm form, split-K at mid T,
# FULL_K (K = 256 never splits) with and without norm, n = 3 and n = 8, a partial K group
cases = [(1, 4, 2048, False), (1, 4, 2048, True), (70, 4, 520, False), (40, 4, 64, True),
         (5, 3, 200, True), (9, 8, 128, False), (3, 4, 4104, False)]
for case in cases:
    run_stream_ops(*case)

# CLUSTER plans (sm_90+): a cluster of 16 CTAs with a partial K group, and n = 2
# (SANITIZE_NO_CLUSTER=1 leaves them out)
if torch.cuda.get_device_capability()[0] >= 9 and not os.environ.get("SANITIZE_NO_CLUSTER"):
    old = mhc_ops._C.set_cluster_min_tokens(1)
    run_stream_ops(20, 4, 520, False)
    run_stream_ops(17, 2, 264, False)
    # the persistent hc_head kernel (n = 4, H = 4096 / 7168) with 2 and 3 buffers: more
    # blocks than resident clusters, so the buffers rotate, and a partial last block
    for H in (7168, 4096):
        a = stream_args(16 * 20 + 5, 4, H, False)
        for nb in (2, 3):
            old_nb = mhc_ops._C.set_cluster_buffers(nb)
            mhc_ops.hc_head(a["residual"], a["fn"][:4].cpu().cuda(), a["hc_scale"][:1],
                            a["hc_base"][:4])
            mhc_ops._C.set_cluster_buffers(old_nb)
    del a
    mhc_ops._C.set_cluster_min_tokens(old)

# Staged fn (Plan.staged_fn; by default pre / fused from T = 512): SPLIT_K with a partial K
# group, FULL_K with the norm, n = 8 (fn blocks loaded one by one). The fused op's half-stream
# units (Plan.split_streams, T <= 32, even n) run in the decode cases above.
old = mhc_ops._C.set_staged_fn_min_tokens(1)
run_stream_ops(70, 4, 520, False)
run_stream_ops(40, 4, 64, True)
run_stream_ops(9, 8, 128, False)
mhc_ops._C.set_staged_fn_min_tokens(old)

# The main kernel's cp.async ring (Plan.fn_ring; by default from T = 512: fn for pre / head,
# x and the input streams for the fused op), raw fn (cross-lane copies) and staged: SPLIT_K
# with a partial K group, FULL_K with the norm, n = 8 (a ring of two slots), n = 3
old_ring = mhc_ops._C.set_fn_ring_min_tokens(1)
for start in (2**63 - 1, 1):
    old = mhc_ops._C.set_staged_fn_min_tokens(start)
    run_stream_ops(70, 4, 520, False)
    run_stream_ops(40, 4, 64, True)
    run_stream_ops(9, 8, 128, False)
    mhc_ops._C.set_staged_fn_min_tokens(old)
run_stream_ops(5, 3, 200, True)
mhc_ops._C.set_fn_ring_min_tokens(old_ring)

os.environ["MHC_BATCH_INVARIANT"] = "1"
run_stream_ops(40, 4, 64, True)
del os.environ["MHC_BATCH_INVARIANT"]

# mhc_post scalar fallback: x two bytes past alignment
a = stream_args(5, 4, 520, False)
buf = torch.cat([torch.zeros(1, dtype=torch.bfloat16), a["x"].cpu().flatten()]).cuda()
xo = buf[1:].view_as(a["x"])
mhc_ops.mhc_post(xo, a["residual"], a["post_mix"], a["comb_mix"])

# prenorm GEMM: vector path, scalar path (K % 8 != 0), DeepGEMM form
x, fn = rn(70, 2080, dtype=torch.bfloat16), rn(24, 2080, std=0.02)
mhc_ops.hc_prenorm_gemm(x, fn, 3)
mhc_ops.hc_prenorm_gemm(rn(5, 100, dtype=torch.bfloat16), rn(7, 100), 2)
out, sq = torch.empty(70, 24, device="cuda"), torch.empty(70, device="cuda")
mhc_ops.tf32_hc_prenorm_gemm(x, fn, out, sq)

# linear_bf16_fp32, both backends
# (SANITIZE_NO_CUBLAS=1, set by sanitize.sh for racecheck: cuBLAS's own Hopper GEMM kernels
# make racecheck fail with "Internal Sanitizer Error: failed to handle a hardware exception"
# even when they are filtered out, while every kernel of this pack reports 0 hazards)
for algo in ("fp32",) if os.environ.get("SANITIZE_NO_CUBLAS") else ("cublas", "fp32"):
    os.environ["MHC_BF16_FP32_GEMM_ALGO"] = algo
    mhc_ops.linear_bf16_fp32(rn(9, 256, dtype=torch.bfloat16), rn(64, 256, dtype=torch.bfloat16))
torch.cuda.synchronize()
print("sanitize_calls: done")
