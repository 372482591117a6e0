"""The DeepSeek-V4.1 ops on one device in a minute: a smoke check, then warm timings.

  python tools/v41_probe.py [cuda|cpu]

Checks (every op at H = 5120, 4096, 7168 and small widths, n = 3, 4, 8, T = 0 .. 4100, with and
without the norm): gates within 1e-3 of the float64 reference, layer_input within the SPEC §3
stream-sum bound, residual_out and layer_input of the fused forms bit-identical to mhc_post /
mhc_combine, the shifted boundary's gates bit-identical to mhc_stats of its residual_out, CUDA
against the CPU kernels. Then, on CUDA, each op at H = 5120 and SPEC §8's T: the median of 10
replays of a CUDA graph of 20 calls, warm inputs (the benchmark's cold-fn protocol and the peers
are benchmarks/bench_ops.py --model v4.1), against the byte floor of a device copy measured in
the same run. Exits 1 if a check fails. The full test suite is tests/test_v41_ops*.py.
"""
import math, sys, json, torch, mhc_ops
from mhc_ops import reference as R
mhc = torch.ops.mhc
dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
g = torch.Generator().manual_seed(1)
def rn(*s, std=1.0, dtype=torch.float32):
    return (torch.randn(*s, generator=g) * std).to(dtype).to(dev)
def args(T, n, H):
    K, m3 = n * H, n * (n + 2)
    return dict(x=rn(T, H, dtype=torch.bfloat16), residual=rn(T, n, H, dtype=torch.bfloat16),
                post=(2 * torch.sigmoid(torch.randn(T, n, 1, generator=g))).to(dev),
                comb=torch.softmax(torch.randn(T, n, n, generator=g), -2).to(dev),
                pre=(torch.sigmoid(torch.randn(T, n, generator=g)) + 1e-6).to(dev),
                fn=rn(m3, K, std=1 / math.sqrt(K)), sc=(0.5 + torch.rand(3, generator=g)).to(dev),
                base=rn(m3, std=0.5), w=(1 + 0.1 * torch.randn(H, generator=g)).bfloat16().to(dev))
def ulps(a, ref):  # |a - bf16(ref)| in units of bf16 ulp of ref
    r = ref.to(torch.bfloat16).double()
    ulp = torch.where(r == 0, torch.full_like(r, 2.0 ** -133), 2.0 ** (torch.floor(torch.log2(r.abs())) - 7))
    return ((a.double() - r).abs() / ulp).max().item()
fails = []
def check(name, ok, detail=""):
    if not ok:
        fails.append(f"{name} {detail}")
        print("FAIL", name, detail, flush=True)
for (T, n, H) in [(1, 4, 5120), (7, 4, 5120), (64, 4, 5120), (600, 4, 5120), (4100, 4, 5120),
                  (3, 4, 4096), (600, 4, 7168), (5, 3, 520), (9, 8, 128), (33, 4, 520), (0, 4, 5120)]:
    a = args(T, n, H)
    for norm in (False, True):
        w = a["w"] if norm else None
        tag = f"T={T} n={n} H={H} norm={norm}"
        st = mhc.mhc_stats(a["residual"], a["fn"], a["sc"], a["base"])
        rs = R.mhc_stats(a["residual"], a["fn"], a["sc"], a["base"], dtype=torch.float64)
        for nm, u, v in zip(("pre", "post", "comb"), st, rs):
            check(f"stats {nm} {tag}", u.shape == v.shape and (T == 0 or (u.double() - v).abs().max().item() <= 1e-3),
                  f"{(u.double()-v).abs().max().item() if T else ''}")
        c = mhc.mhc_combine(a["residual"], a["pre"], w)
        cr = R.mhc_combine(a["residual"], a["pre"], w, dtype=torch.float64)
        if T:
            r = cr.double(); ulp = 2.0 ** (torch.floor(torch.log2(r.abs().clamp_min(1e-30))) - 7)
            term = 5e-4 * (a["pre"].double().unsqueeze(-1) * a["residual"].double().abs()).sum(1)
            if norm:  # the norm rescales the cancellation term too
                z = R.mhc_combine(a["residual"], a["pre"], None, dtype=torch.float64).double()
                term = term * (r.abs() / z.abs().clamp_min(1e-30)).clamp_max(1e3)
            bound = (4 if norm else 2) * ulp + term + 1e-5
            check(f"combine {tag}", bool(((c.double() - r).abs() <= bound).all()), f"ulps={ulps(c, cr)}")
        ro, li = mhc.mhc_post_combine(a["x"], a["residual"], a["post"], a["comb"], a["pre"], w)
        check(f"post_combine res_out==post {tag}", torch.equal(ro, mhc.mhc_post(a["x"], a["residual"], a["post"], a["comb"])))
        check(f"post_combine li==combine {tag}", torch.equal(li, mhc.mhc_combine(ro, a["pre"], w)))
        rr, rl = R.mhc_post_combine(a["x"], a["residual"], a["post"], a["comb"], a["pre"], w, dtype=torch.float64)
        s5 = mhc.mhc_shifted_post_pre(a["x"], a["residual"], a["post"], a["comb"], a["pre"], a["fn"], a["sc"], a["base"], norm_weight=w)
        check(f"shifted parts {tag}", torch.equal(s5[0], ro) and torch.equal(s5[1], li))
        st2 = mhc.mhc_stats(ro, a["fn"], a["sc"], a["base"])
        check(f"shifted stats==stats(ro) {tag}", all(torch.equal(u, v) for u, v in zip(s5[2:], st2)))
        # CPU agreement
        cpu = mhc.mhc_shifted_post_pre(*(t.cpu() for t in (a["x"], a["residual"], a["post"], a["comb"], a["pre"], a["fn"], a["sc"], a["base"])), norm_weight=None if w is None else w.cpu())
        if T:
            check(f"cpu res_out {tag}", torch.equal(cpu[0], s5[0].cpu()))
            check(f"cpu gates {tag}", max((u - v.cpu()).abs().max().item() for u, v in zip(cpu[2:], s5[2:])) <= 2e-3)
if dev == 'cuda': torch.cuda.synchronize()
print("checks:", "FAIL %d" % len(fails) if fails else "all passed", flush=True)
if dev == "cpu":
    sys.exit(1 if fails else 0)

# timings: CUDA graph of 20 calls, median of 10 replays, warm inputs; byte floor from a copy
def bw():
    a = torch.empty(256 << 20, dtype=torch.uint8, device=dev); b = torch.empty_like(a)
    for _ in range(3): b.copy_(a)
    e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
    e0.record(); [b.copy_(a) for _ in range(10)]; e1.record(); torch.cuda.synchronize()
    return 2 * a.numel() * 10 / (e0.elapsed_time(e1) / 1e3)
BW = bw()
def timeit(fn):
    fn(); torch.cuda.synchronize()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2): fn()
    torch.cuda.current_stream().wait_stream(s)
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        for _ in range(20): fn()
    ts = []
    for _ in range(10):
        e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
        e0.record(); gr.replay(); e1.record(); torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e3 / 20)
    return sorted(ts)[5]
H = 5120
rows = []
for T in (1, 8, 32, 64, 512, 4096, 16384):
    a = args(T, 4, H)
    fl = {"stats": T * (8 * H + 96) + 384 * H, "combine": T * (10 * H + 16),
          "post_combine": T * (20 * H + 96), "shifted": T * (20 * H + 192) + 384 * H}
    ops = {"stats": lambda: mhc.mhc_stats(a["residual"], a["fn"], a["sc"], a["base"]),
           "combine": lambda: mhc.mhc_combine(a["residual"], a["pre"], a["w"]),
           "post_combine": lambda: mhc.mhc_post_combine(a["x"], a["residual"], a["post"], a["comb"], a["pre"], a["w"]),
           "shifted": lambda: mhc.mhc_shifted_post_pre(a["x"], a["residual"], a["post"], a["comb"], a["pre"], a["fn"], a["sc"], a["base"], norm_weight=a["w"]),
           "post": lambda: mhc.mhc_post(a["x"], a["residual"], a["post"], a["comb"]),
           "pre_norm": lambda: mhc.mhc_pre(a["residual"], a["fn"], a["sc"], a["base"], norm_weight=a["w"])}
    r = {"T": T}
    for k, f in ops.items():
        us = timeit(f)
        r[k] = round(us, 2)
        if k in fl: r[k + "_x_floor"] = round(us / (fl[k] / BW * 1e6), 2)
    rows.append(r); print(json.dumps(r), flush=True)
print(json.dumps({"device": torch.cuda.get_device_name(), "copy_GBps": round(BW / 1e9, 1), "rows": rows}))
sys.exit(1 if fails else 0)
