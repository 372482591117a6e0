"""python -m mhc_ops: run a small DeepSeek-V4- or V4.1-shaped mHC stack and check it.

Random weights: token embedding repeated into n = 4 streams, then L layers of two sub-layers
(attention, FFN), each with its own fn [24, 4H], hc_scale [3], hc_base [24] and its RMSNorm
folded into its input; hc_head ends it. The sub-layers are cheap bf16 stand-ins (causal
running mean, SwiGLU MLP, rank 64).
  * --model v4 (default): post of one sub-layer and pre of the next go through
    mhc_ops.mhc_post_pre.
  * --model v4.1 (SPEC §2.9, lagged pre): each hyper-connection's stats run on the residual it
    receives, its sub-layer's input is the combine of that residual with the PREVIOUS
    hyper-connection's pre (the first one takes stream 0, as the stacks do at model entry),
    and its post uses its own post and comb; the boundaries go through
    mhc_ops.mhc_shifted_post_pre.

PASS (exit 0; FAIL exits 1) needs all of:
  * per call, each op of the fused run against mhc_ops.reference (float32) on the very same
    inputs: gates within 1e-3 abs (SPEC §3), bf16 outputs within 2^-8 (one bf16 ulp) relative
    norm, every residual_out of the boundary op bit-identical to mhc_post (SPEC §2.3, §2.9),
    and (V4.1) every layer_input of it bit-identical to mhc_combine of that residual_out;
  * end to end, the fused (MHC_FUSE_POST_PRE=1) and unfused (=0) runs within --tol relative
    norm of the reference run. One ulp flip in a layer's input changes every later layer, so
    this gap grows with depth (V4, CPU, H=1024: 4.7e-3 at 4 layers, 1.3e-2 at 43, 1.55e-2 at
    61; H100: 5.8e-3 at 4 and 1.4e-2 at 43 layers with H=4096, 1.5e-2 at 61 with H=7168;
    V4.1, CPU, H=1280: 5.0e-3 at 4 layers, 1.3e-2 at 43, 1.5e-2 at 61); 2e-2 leaves room for
    that at DeepSeek-V4 depths, while the per-call checks catch wrong formulas;
  * with mhc_ops.warmup present: no plan launched by the run was missed by the warmup.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import platform
import sys
import time
from collections import defaultdict
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import mhc_ops
from mhc_ops import envs, reference

N = 4  # hc_mult
RANK = 64  # width of the stand-in sub-layers
bf16 = torch.bfloat16


def make_model(H: int, layers: int, vocab: int, seed: int, device: torch.device):
    """Random weights, drawn on the CPU so that every device sees the same model."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0, dtype=torch.float32):
        return (torch.randn(*shape, generator=g) * std + mean).to(device, dtype)

    def hc(m3: int, scales: list[float], norm: bool):
        # fn ~ N(0, 1/K) keeps the RMS-scaled logits ~ N(0, 1) and the scales keep gates
        # unsaturated; comb logits of O(1) make comb far from symmetric, so that a transposed
        # or mis-normalised comb shows.
        return SimpleNamespace(fn=randn(m3, N * H, std=(N * H) ** -0.5),
                               hc_scale=torch.tensor(scales, device=device),
                               hc_base=randn(m3, std=0.5) + comb_base[:m3],
                               norm_weight=randn(H, mean=1.0, std=0.1, dtype=bf16) if norm
                               else None)

    def w(rows, cols):
        return randn(rows, cols, std=rows ** -0.5, dtype=bf16)

    comb_base = torch.cat([torch.zeros(2 * N), torch.randn(N * N, generator=g)]).to(device)
    subs = []
    for _ in range(layers):
        subs.append((attention, dict(wv=w(H, RANK), wo=w(RANK, H)),
                     hc(N * (N + 2), [.5, .5, 1.], True)))
        subs.append((ffn, dict(w1=w(H, RANK), w3=w(H, RANK), w2=w(RANK, H)),
                     hc(N * (N + 2), [.5, .5, 1.], True)))
    return SimpleNamespace(embed=randn(vocab, H, dtype=bf16), subs=subs, head=hc(N, [.5], False))


def attention(x, w):
    """Stand-in for attention: a causal running mean over tokens of a low-rank projection."""
    v = (x @ w["wv"]).float().cumsum(0)
    v = v / torch.arange(1, x.shape[0] + 1, device=x.device).unsqueeze(1)
    return v.to(bf16) @ w["wo"]


def ffn(x, w):
    """Stand-in for the MoE: one small SwiGLU MLP."""
    return (F.silu(x @ w["w1"]) * (x @ w["w3"])) @ w["w2"]


class Timer:
    """Mean time per call of each named op: CUDA events on the current stream, else the host
    clock (CPU ops are synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.samples = defaultdict(list)

    def __call__(self, name, fn, *args, **kwargs):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(*args, **kwargs)
            end.record()
            self.samples[name].append((start, end))
        else:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.samples[name].append(time.perf_counter() - t0)
        return out

    def mean_us(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {k: 1e3 * sum(s.elapsed_time(e) for s, e in v) / len(v)
                    for k, v in self.samples.items()}
        return {k: 1e6 * sum(v) / len(v) for k, v in self.samples.items()}


def forward(ops, model, tokens, timer):
    """The stack; `ops` is mhc_ops, mhc_ops.reference or anything with the same four ops."""
    residual = model.embed[tokens].unsqueeze(1).expand(-1, N, -1).contiguous()  # [T, n, H]
    p = model.subs[0][2]
    post, comb, h = timer("mhc_pre", ops.mhc_pre, residual, p.fn, p.hc_scale, p.hc_base,
                          norm_weight=p.norm_weight)
    for i, (sublayer, weights, _) in enumerate(model.subs):
        y = timer("sub-layer", sublayer, h, weights)
        if i + 1 < len(model.subs):
            p = model.subs[i + 1][2]
            residual, post, comb, h = timer("mhc_post_pre", ops.mhc_post_pre, y, residual, post,
                                            comb, p.fn, p.hc_scale, p.hc_base,
                                            norm_weight=p.norm_weight)
        else:
            residual = timer("mhc_post", ops.mhc_post, y, residual, post, comb)
    p = model.head
    return timer("hc_head", ops.hc_head, residual, p.fn, p.hc_scale, p.hc_base), residual


def forward_v41(ops, model, tokens, timer):
    """The V4.1 stack (lagged pre); `ops` is mhc_ops, mhc_ops.reference or anything with the
    same ops. `pre` always holds the pre of the last stats call: the next combine's weights."""
    residual = model.embed[tokens].unsqueeze(1).expand(-1, N, -1).contiguous()  # [T, n, H]
    # No hyper-connection precedes the first: its input is stream 0 (all streams are equal at
    # entry), i.e. the combine with a one-hot pre.
    entry_pre = torch.zeros(residual.shape[0], N, device=residual.device)
    entry_pre[:, 0] = 1
    p = model.subs[0][2]
    pre, post, comb = timer("mhc_stats", ops.mhc_stats, residual, p.fn, p.hc_scale, p.hc_base)
    h = timer("mhc_combine", ops.mhc_combine, residual, entry_pre, norm_weight=p.norm_weight)
    for i, (sublayer, weights, _) in enumerate(model.subs):
        y = timer("sub-layer", sublayer, h, weights)
        if i + 1 < len(model.subs):
            p = model.subs[i + 1][2]
            residual, h, pre, post, comb = timer(
                "mhc_shifted_post_pre", ops.mhc_shifted_post_pre, y, residual, post, comb, pre,
                p.fn, p.hc_scale, p.hc_base, norm_weight=p.norm_weight)
        else:
            residual = timer("mhc_post", ops.mhc_post, y, residual, post, comb)
    p = model.head
    return timer("hc_head", ops.hc_head, residual, p.fn, p.hc_scale, p.hc_base), residual


def agreement(a: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max abs diff; max diff in bf16 ulps of the reference value (NaN for fp32 tensors);
    relative Frobenius norm of the difference."""
    is_bf16 = a.dtype == bf16
    a, ref = a.double(), ref.double()
    diff = (a - ref).abs()
    _, exp = torch.frexp(ref)
    ulp = torch.where(ref == 0, 2.0 ** -133, torch.ldexp(torch.ones_like(ref), exp - 8))
    return dict(max_abs=diff.max().item(),
                max_ulp=(diff / ulp).max().item() if is_bf16 else float("nan"),
                rel=(diff.norm() / ref.norm().clamp_min(1e-30)).item())


class Checked:
    """The stack's ops, each also run on mhc_ops.reference with the very same inputs (so no
    error is carried over from earlier layers); keeps the worst gap per output."""

    OUTPUTS = {
        "v4": {"mhc_pre": ("post_mix", "comb_mix", "layer_input"),
               "mhc_post_pre": ("residual", "post_mix", "comb_mix", "layer_input"),
               "mhc_post": ("residual",), "hc_head": ("head output",)},
        "v4.1": {"mhc_stats": ("pre_mix", "post_mix", "comb_mix"),
                 "mhc_combine": ("layer_input",),
                 "mhc_shifted_post_pre": ("residual", "layer_input", "pre_mix", "post_mix",
                                          "comb_mix"),
                 "mhc_post": ("residual",), "hc_head": ("head output",)},
    }

    def __init__(self, model: str = "v4"):
        self.outputs = self.OUTPUTS[model]
        self.worst: dict[str, dict[str, float]] = {}
        self.bitwise: list[bool] = []  # residual_out of the boundary op == mhc_post, per call
        self.combine_bitwise: list[bool] = []  # V4.1: its layer_input == mhc_combine, per call
        self.calls = 0
        for op in self.outputs:
            setattr(self, op, functools.partial(self._call, op))

    def _call(self, op, *args, **kwargs):
        self.calls += 1
        got = getattr(mhc_ops, op)(*args, **kwargs)
        want = getattr(reference, op)(*args, **kwargs)
        if op in ("mhc_post_pre", "mhc_shifted_post_pre"):
            self.bitwise.append(torch.equal(got[0], mhc_ops.mhc_post(*args[:4])))
        if op == "mhc_shifted_post_pre":
            self.combine_bitwise.append(torch.equal(
                got[1], mhc_ops.mhc_combine(got[0], args[4], kwargs.get("norm_weight"))))
        pairs = zip(got, want) if isinstance(got, tuple) else [(got, want)]
        for name, (a, b) in zip(self.outputs[op], pairs):
            w = self.worst.setdefault(name, agreement(a, b))
            for k, v in agreement(a, b).items():  # a max that keeps NaN, so that NaN fails
                w[k] = v if v != v or v > w[k] else w[k]
        return got


def row(name: str, m: dict[str, float], good: bool) -> str:
    ulps = "-" if m["max_ulp"] != m["max_ulp"] else f"{m['max_ulp']:.3g}"
    return f"    {name:<20}{m['max_abs']:>10.3g} |{ulps:>14} |{m['rel']:>10.2e}  " + \
        ("ok" if good else "FAIL")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        name = f"{device} {p.name} ({p.multi_processor_count} SMs)"
    else:
        name = f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"
    return f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def run_warmup(H: int, tokens: int, device: torch.device, kinds: tuple[str, ...] | None):
    """mhc_ops.warmup of `kinds` (None: all) up to the run's token count; returns the module,
    or None if not built."""
    if importlib.util.find_spec("mhc_ops.warmup") is None:
        print("warmup     skipped: mhc_ops.warmup is not in this build")
        return None
    from mhc_ops import warmup

    report = warmup.warmup(H, max_tokens=tokens, kinds=kinds, hc_mult=N, device=device)
    print("warmup     " + str(report).replace("\n", "\n           "))
    return warmup


# What differs between the two stacks: the forward, the boundary op, the default H (CUDA, CPU),
# the ops each pass calls (per L layers) and the kinds warmed up.
MODELS = {
    "v4": SimpleNamespace(
        title="DeepSeek-V4", forward=forward, boundary="mhc_post_pre", hidden=(4096, 1024),
        calls=lambda L: {"mhc_pre": 1, "mhc_post_pre": 2 * L - 1, "mhc_post": 1, "hc_head": 1,
                         "sub-layer": 2 * L},
        warmup_kinds=("PRENORM_GEMM", "MHC_PRE", "MHC_POST", "MHC_FUSED_POST_PRE", "HC_HEAD",
                      "LINEAR_BF16_FP32")),
    "v4.1": SimpleNamespace(
        title="DeepSeek-V4.1 (lagged pre)", forward=forward_v41,
        boundary="mhc_shifted_post_pre", hidden=(5120, 1280),
        calls=lambda L: {"mhc_stats": 1, "mhc_combine": 1, "mhc_shifted_post_pre": 2 * L - 1,
                         "mhc_post": 1, "hc_head": 1, "sub-layer": 2 * L},
        warmup_kinds=None),
}


def main(argv: list[str] | None = None) -> int:
    use_cuda = mhc_ops.cuda_available() and torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m mhc_ops", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=tuple(MODELS), default="v4",
                   help="v4: pre, then fused post+pre at each boundary; v4.1: lagged pre "
                        "(stats, combine, shifted post+pre at each boundary, SPEC §2.9)")
    p.add_argument("--device", default="cuda" if use_cuda else "cpu")
    p.add_argument("--hidden-size", type=int,
                   help="H (default 4096 on CUDA and 1024 on the CPU for v4; 5120 and 1280 for "
                        "v4.1)")
    p.add_argument("--layers", type=int, default=4, help="layers of two sub-layers each")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--iters", type=int, help="timed passes (default 20 on CUDA, 3 on the CPU)")
    p.add_argument("--tol", type=float, default=2e-2,
                   help="end-to-end bound on the relative norm against the reference")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.tokens < 1 or args.layers < 1:
        p.error("--tokens and --layers must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: torch {torch.__version__} sees no GPU")
        if not mhc_ops.cuda_available():
            p.error(f"--device {args.device}: mhc_ops was built without its CUDA kernels")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    spec = MODELS[args.model]
    H = args.hidden_size or spec.hidden[0 if device.type == "cuda" else 1]
    iters = args.iters or (20 if device.type == "cuda" else 3)
    T, L = args.tokens, args.layers

    print(f"mhc_ops {mhc_ops.__version__}: {spec.title}-shaped mHC stack, random weights")
    print(f"device     {describe_device(device)}; mhc kernels built: "
          f"{'CPU + CUDA' if mhc_ops.cuda_available() else 'CPU only'}")
    print(f"shapes     T={T} tokens, n={N} streams, H={H}, L={L} layers ({2 * L} sub-layers); "
          f"residual [{T}, {N}, {H}] bf16, fn [{N * (N + 2)}, {N * H}] fp32")
    set_flags = [f"{f.name}={f.get()}" for f in envs.FLAGS.values() if f.is_set()]
    print(f"flags      {', '.join(set_flags) or 'all default'}")
    warmup = run_warmup(H, T, device, spec.warmup_kinds)

    model = make_model(H, L, args.vocab, args.seed, device)
    tokens = torch.randint(args.vocab, (T,), generator=torch.Generator().manual_seed(args.seed))
    tokens = tokens.to(device)
    checked, results, times = Checked(args.model), {}, {}
    with torch.inference_mode():
        with envs.MHC_FUSE_POST_PRE.override(True):
            spec.forward(checked, model, tokens, Timer(device))
        for name, ops, fuse in (("fused", mhc_ops, True), ("unfused", mhc_ops, False),
                                ("reference fp32", reference, True)):
            with envs.MHC_FUSE_POST_PRE.override(fuse):
                # untimed first pass
                results[name] = spec.forward(ops, model, tokens, Timer(device))
                timer = Timer(device)
                for _ in range(iters):
                    spec.forward(ops, model, tokens, timer)
                times[name] = timer.mean_us()

    clock = "CUDA events around each eager call" if device.type == "cuda" else "host clock"
    print(f"\nmean time per call, µs ({iters} passes, {clock})")
    width = max(14, max(map(len, spec.calls(L))) + 2)
    print(f"  {'op':<{width}}{'calls/pass':>11}" + "".join(f"{k:>16}" for k in times))
    for op, n in spec.calls(L).items():
        print(f"  {op:<{width}}{n:>11}" + "".join(f"{t[op]:>16.1f}" for t in times.values()))

    print("\nagreement with the float32 reference   max abs | max bf16 ulps | rel. norm")
    print("  (ulps are of the reference value, huge where a stream sum cancels to ~0: the bounds\n"
          "   are on the gates' abs error and on the relative norm)")
    print(f"  per call, same inputs ({checked.calls} calls, fused path):")
    ok = all(checked.bitwise)
    for name, m in checked.worst.items():
        good = m["max_abs"] <= 1e-3 if name in ("pre_mix", "post_mix", "comb_mix") \
            else m["rel"] <= 2 ** -8
        ok &= good
        print(row(name, m, good))
    print(f"    residual_out of {spec.boundary} bit-identical to mhc_post: "
          f"{sum(checked.bitwise)}/{len(checked.bitwise)}  "
          f"{'ok' if all(checked.bitwise) else 'FAIL'}")
    if args.model == "v4.1":
        ok &= all(checked.combine_bitwise)
        print(f"    layer_input of {spec.boundary} bit-identical to mhc_combine: "
              f"{sum(checked.combine_bitwise)}/{len(checked.combine_bitwise)}  "
              f"{'ok' if all(checked.combine_bitwise) else 'FAIL'}")
    print(f"  end to end, each path through the whole stack (bound {args.tol:g} rel. norm):")
    ref_out, ref_res = results["reference fp32"]
    for name in ("fused", "unfused"):
        out, res = results[name]
        for what, a, b in (("output", out, ref_out), ("residual", res, ref_res)):
            m = agreement(a, b)
            good = m["rel"] <= args.tol  # NaN and Inf fail too
            ok &= good
            print(row(f"{name} {what}", m, good))
    same = torch.equal(results["fused"][1], results["unfused"][1])
    print(f"  fused vs unfused: final residual {'bit-identical' if same else 'differs'}")
    if warmup is not None:
        late = warmup.unwarmed_plans(device)
        ok &= not late
        print(f"  plans first launched after warmup: {len(late)}  {'FAIL' if late else 'ok'}")
        for plan in late:
            print(f"    {plan}")
    print(f"\n{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
