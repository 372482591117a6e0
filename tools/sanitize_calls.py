"""The calls tools/sanitize.sh runs under compute-sanitizer: every CUDA op through each of
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
    # DeepSeek-V4.1: stats, combine with a carried pre, post + combine, the shifted boundary
    pre = (torch.sigmoid(torch.randn(T, n, generator=g)) + 1e-6).cuda()
    mhc = torch.ops.mhc
    mhc.mhc_stats(a["residual"], a["fn"], a["hc_scale"], a["hc_base"])
    mhc.mhc_combine(a["residual"], pre, a["norm_weight"])
    mhc.mhc_post_combine(a["x"], a["residual"], a["post_mix"], a["comb_mix"], pre,
                         a["norm_weight"])
    mhc.mhc_shifted_post_pre(a["x"], a["residual"], a["post_mix"], a["comb_mix"], pre, a["fn"],
                             a["hc_scale"], a["hc_base"], norm_weight=a["norm_weight"])


# (T, n, H, norm): split-K with a multi-chunk epilogue, its norm form, split-K at mid T,
# FULL_K (K = 256 never splits) with and without norm, n = 3 and n = 8, a partial K group,
# the stats kernels specialised for H = 5120
cases = [(1, 4, 2048, False), (1, 4, 2048, True), (70, 4, 520, False), (40, 4, 64, True),
         (5, 3, 200, True), (9, 8, 128, False), (3, 4, 4104, False), (3, 4, 5120, True)]
for case in cases:
    run_stream_ops(*case)

# hc_head's CLUSTER plans (sm_90+): the persistent kernel (n = 4, H = 4096 / 7168, from T = 256)
# with more blocks than resident clusters, so that its buffers rotate, and a partial last block;
# the one-block kernel (other widths above 4096, T = 2048 .. 8191) with a partial K group
# (SANITIZE_NO_CLUSTER=1 leaves them out)
if torch.cuda.get_device_capability()[0] >= 9 and not os.environ.get("SANITIZE_NO_CLUSTER"):
    for T, H in ((16 * 20 + 5, 7168), (16 * 20 + 5, 4096), (2048 + 5, 4104)):
        a = stream_args(T, 4, H, False)
        mhc_ops.hc_head(a["residual"], a["fn"][:4].cpu().cuda(), a["hc_scale"][:1],
                        a["hc_base"][:4])
    del a

# Prefill plans: staged fn (pre / fused) and the main kernels' cp.async ring (fn for pre / head,
# raw for head; x and the input streams for the fused op), both from T = 512: SPLIT_K with a
# partial K group, FULL_K (K = 256 never splits) with the norm, n = 8 (a ring of two slots), n = 3
for case in ((600, 4, 520, False), (600, 4, 64, True), (600, 8, 128, False),
             (600, 3, 200, True), (600, 4, 5120, False)):
    run_stream_ops(*case)

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
