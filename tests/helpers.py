"""Input factories and SPEC §3 bound checks shared by the op tests.

Inputs are drawn on the CPU from a seeded generator and then moved, so the "cpu" and "cuda"
runs of a test see the same numbers. Scales are those of a trained model, chosen so that no
gate saturates: residual ~ N(0, 1) bf16, fn ~ N(0, 1/K) (then every GEMM output d ~ N(0, 1)
and the RMS factor ~ 1), hc_scale ~ U(0.5, 1.5), hc_base ~ N(0, 0.5²), norm_weight ~ 1 +
N(0, 0.1²).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from mhc_ops import reference

BF16 = torch.bfloat16
F32 = torch.float32
F64 = torch.float64


def seed_of(*key) -> int:
    """A stable per-test seed from the test's parameters (not hash(): str hashes vary per run)."""
    return zlib.crc32(repr(key).encode())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g: torch.Generator, *shape: int, dtype=F32, std: float = 1.0, mean: float = 0.0):
    return (torch.randn(*shape, generator=g, dtype=F32) * std + mean).to(dtype)


def uniform(g: torch.Generator, *shape: int, lo: float, hi: float) -> Tensor:
    return torch.rand(*shape, generator=g, dtype=F32) * (hi - lo) + lo


# ----------------------------------------------------------------------------------------------
# Input factories. Each returns a dict of keyword arguments of the op (tensors on `device`).


def pre_params(g: torch.Generator, n: int, H: int, *, norm: bool, device="cpu") -> dict:
    """fn, hc_scale, hc_base (and norm_weight) of mhc_pre / the pre half of fused."""
    K, m3 = n * H, n * (n + 2)
    p = {
        "fn": randn(g, m3, K, std=1.0 / math.sqrt(K)),
        "hc_scale": uniform(g, 3, lo=0.5, hi=1.5),
        "hc_base": randn(g, m3, std=0.5),
        "norm_weight": randn(g, H, std=0.1, mean=1.0, dtype=BF16) if norm else None,
    }
    return {k: (v.to(device) if v is not None else None) for k, v in p.items()}


def pre_inputs(T: int, n: int, H: int, *, seed: int, norm: bool = False, device="cpu") -> dict:
    g = gen(seed)
    residual = randn(g, T, n, H, dtype=BF16).to(device)
    return {"residual": residual, **pre_params(g, n, H, norm=norm, device=device)}


def post_inputs(T: int, n: int, H: int, *, seed: int, post_2d: bool = False,
                device="cpu") -> dict:
    """x, residual, and the gates a real mhc_pre would hand over: post = 2·sigmoid, comb a
    Sinkhorn matrix of random logits (positive, column sums 1)."""
    g = gen(seed)
    x = randn(g, T, H, dtype=BF16)
    residual = randn(g, T, n, H, dtype=BF16)
    post = 2.0 * torch.sigmoid(randn(g, T, n, 1))
    comb = reference.sinkhorn(randn(g, T, n, n), 1e-6, 20).to(F32)
    if post_2d:
        post = post.reshape(T, n)
    return {k: v.to(device) for k, v in
            {"x": x, "residual": residual, "post_mix": post, "comb_mix": comb}.items()}


def fused_inputs(T: int, n: int, H: int, *, seed: int, norm: bool = False,
                 device="cpu") -> dict:
    p = post_inputs(T, n, H, seed=seed, device=device)
    return {**p, **pre_params(gen(seed + 1), n, H, norm=norm, device=device)}


def head_inputs(T: int, n: int, H: int, *, seed: int, device="cpu") -> dict:
    g = gen(seed)
    K = n * H
    p = {
        "residual": randn(g, T, n, H, dtype=BF16),
        "fn": randn(g, n, K, std=1.0 / math.sqrt(K)),
        "hc_scale": uniform(g, 1, lo=0.5, hi=1.5),
        "hc_base": randn(g, n, std=0.5),
    }
    return {k: v.to(device) for k, v in p.items()}


def prenorm_inputs(M: int, N: int, K: int, *, seed: int, device="cpu") -> dict:
    g = gen(seed)
    return {"x": randn(g, M, K, dtype=BF16).to(device),
            "fn": randn(g, N, K, std=1.0 / math.sqrt(K)).to(device)}


def linear_inputs(M: int, N: int, K: int, *, seed: int, device="cpu") -> dict:
    g = gen(seed)
    return {"x": randn(g, M, K, dtype=BF16).to(device),
            "weight": randn(g, N, K, std=1.0 / math.sqrt(K), dtype=BF16).to(device)}


# ----------------------------------------------------------------------------------------------
# Views with odd strides / offsets holding the same values (SPEC §2.8: any strides, any offset).

VIEW_MODES = ("offset", "step", "transposed")


def odd_view(t: Tensor | None, mode: str) -> Tensor | None:
    """A view equal to t whose layout is not the contiguous one:
    offset: contiguous but starting one element into a larger buffer (misaligned for vectors);
    step: every other element of a buffer twice as long in the last dim;
    transposed: strides reversed (column-major); 1-D tensors get the step layout."""
    if t is None:
        return None
    if mode == "offset":
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        v = buf[1:].view(t.shape)
    elif mode == "step" or (mode == "transposed" and t.dim() < 2):
        buf = torch.empty(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype, device=t.device)
        v = buf[..., 1::2]
    elif mode == "transposed":
        dims = list(range(t.dim()))[::-1]
        v = torch.empty([t.shape[d] for d in dims], dtype=t.dtype, device=t.device).permute(dims)
    else:
        raise ValueError(mode)
    v.copy_(t)
    return v


# ----------------------------------------------------------------------------------------------
# float64 gate math for the bound terms (SPEC §2.1 steps 1-5, §2.4).


def pre_weights64(residual: Tensor, fn_rows: Tensor, scale0: Tensor, base_rows: Tensor,
                  rms_eps: float, eps: float) -> Tensor:
    """pre[t, i] = sigmoid(((x·fn_rows[i]) · rsqrt(Σx²/K + rms_eps)) · scale0 + base_rows[i])
    + eps in float64, [T, n]. fn_rows / base_rows are the n pre rows (all rows for hc_head)."""
    T, n, H = residual.shape
    x = residual.cpu().to(F64).reshape(T, n * H)
    r = torch.rsqrt(x.square().sum(-1, keepdim=True) / (n * H) + rms_eps)
    m = (x @ fn_rows.cpu().to(F64).t()) * r
    return torch.sigmoid(m * scale0.cpu().to(F64) + base_rows.cpu().to(F64)) + eps


def stream_sum_term(residual: Tensor, pre: Tensor) -> Tensor:
    """SPEC §3: 5e-4 · Σ_i pre[i]·|residual[i]|, [T, H] float64 — the error that gates
    accurate only to TF32 level leave where the stream sum cancels."""
    return 5e-4 * (pre.unsqueeze(-1) * residual.cpu().to(F64).abs()).sum(1)


def norm_factor64(layer_input_ref64_unrounded: Tensor, norm_weight: Tensor, norm_eps: float):
    """rsqrt(mean(z²) + eps)·|w| with z = bf16(y): how the folded RMSNorm scales an error of
    y into layer_input, [T, H] float64."""
    z = layer_input_ref64_unrounded.to(BF16).to(F64)
    rs = torch.rsqrt(z.square().mean(-1, keepdim=True) + norm_eps)
    return rs * norm_weight.cpu().to(F64).abs()


def stream_sum64(residual: Tensor, pre: Tensor) -> Tensor:
    """y[t, h] = Σ_i pre[t, i]·residual[t, i, h] in float64, not rounded."""
    return (pre.unsqueeze(-1) * residual.cpu().to(F64)).sum(1)


# ----------------------------------------------------------------------------------------------
# Bound checks (SPEC §3). All raise AssertionError with the worst offender in the message.


def bf16_ulp(v: Tensor) -> Tensor:
    """ulp of bf16 values v (float64): 2^(floor(log2|v|) - 7); 0 gets the smallest subnormal."""
    a = v.to(F64).abs()
    _, e = torch.frexp(a)  # a = m·2^e with m in [0.5, 1): floor(log2 a) = e - 1
    u = torch.ldexp(torch.ones_like(a), (e - 8).to(torch.int64))
    return torch.where(a > 0, u, torch.full_like(a, 2.0 ** -133))


@dataclass
class Worst:
    index: tuple
    got: float
    want: float
    err: float
    allowed: float


def _worst(err: Tensor, allowed: Tensor, got: Tensor, want: Tensor) -> Worst:
    ratio = torch.where(allowed > 0, err / allowed, err)
    i = int(ratio.flatten().argmax())
    idx = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), err.shape))
    return Worst(idx, float(got.flatten()[i]), float(want.flatten()[i]),
                 float(err.flatten()[i]), float(allowed.flatten()[i]))


def assert_bf16_stream_sum(out: Tensor, ref: Tensor, term: Tensor, *, ulps: float = 2,
                           ulps_99: float = 1, floor: float = 1e-5, what: str = "") -> None:
    """SPEC §3 bound of the bf16 stream sums (layer_input, hc_head):
    every element |out − bf16(ref)| ≤ max(ulps·ulp(bf16(ref)) + term, floor), and ≥ 99% of
    elements within max(ulps_99·ulp + term, floor). ref is the bf16 reference output, term the
    5e-4·Σ pre·|residual| tensor (already scaled through the norm when there is one)."""
    assert out.dtype == BF16 and ref.dtype == BF16, (out.dtype, ref.dtype)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    got, want = out.cpu().to(F64), ref.cpu().to(F64)
    assert torch.isfinite(want).all(), f"{what}: reference not finite"
    assert torch.isfinite(got).all(), f"{what}: non-finite output"
    if got.numel() == 0:
        return
    err, u = (got - want).abs(), bf16_ulp(want)
    allowed = torch.clamp(ulps * u + term, min=floor)
    bad = err > allowed
    assert not bad.any(), (f"{what}: {int(bad.sum())}/{bad.numel()} elements beyond {ulps} ulp "
                           f"+ 5e-4·Σpre|res|; worst {_worst(err, allowed, got, want)}")
    within = err <= torch.clamp(ulps_99 * u + term, min=floor)
    frac = float(within.to(F64).mean())
    assert frac >= 0.99, f"{what}: only {frac:.4%} of elements within {ulps_99} ulp + term"


def assert_bf16_within_ulp(out: Tensor, ref: Tensor, *, acc_abs: Tensor | None = None,
                           n_terms: int = 0, what: str = "") -> None:
    """SPEC §3 bound of mhc_post / residual_out: within 1 bf16 ulp of bf16(reference).

    The op is specified to accumulate its n + 1 products in fp32 (SPEC §2.2), so where the sum
    cancels to almost nothing the fp32 rounding of the terms, n_terms·2⁻²⁴·Σ|terms|
    (acc_abs), can exceed an ulp of the tiny result; that much is allowed on top. It is below
    1e-6 of the terms, far from any real error."""
    assert out.dtype == BF16 and ref.dtype == BF16, (out.dtype, ref.dtype)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    got, want = out.cpu().to(F64), ref.cpu().to(F64)
    assert torch.isfinite(got).all(), f"{what}: non-finite output"
    if got.numel() == 0:
        return
    err = (got - want).abs()
    allowed = bf16_ulp(want)
    if acc_abs is not None:
        allowed = allowed + n_terms * 2.0 ** -24 * acc_abs.cpu().to(F64)
    bad = err > allowed
    assert not bad.any(), (f"{what}: {int(bad.sum())}/{bad.numel()} elements beyond 1 ulp; "
                           f"worst {_worst(err, allowed, got, want)}")


def post_acc_abs(x: Tensor, residual: Tensor, post_mix: Tensor, comb_mix: Tensor) -> Tensor:
    """|post_j·x| + Σ_i |comb[i, j]·residual[i]|, [T, n, H] float64 (for the fp32 rounding
    allowance of assert_bf16_within_ulp)."""
    T, n, H = residual.shape
    post = post_mix.cpu().to(F64).reshape(T, n, 1).abs()
    comb = comb_mix.cpu().to(F64).abs()
    return (post * x.cpu().to(F64).abs().reshape(T, 1, H)
            + torch.einsum("tij,tih->tjh", comb, residual.cpu().to(F64).abs()))


def assert_gates_close(got: Tensor, ref: Tensor, what: str = "") -> None:
    """SPEC §3: post_mix and comb_mix within 1e-3 max abs of the float64 reference. That
    leaves room for TF32-accurate GEMM products (the gates see them through sigmoid and
    Sinkhorn) but not for a wrong eps, scale or index (a 0.05 shift of hc_base fails it)."""
    assert got.dtype == F32 and got.shape == ref.shape, (got.dtype, got.shape, ref.shape)
    assert torch.isfinite(got).all(), f"{what}: non-finite gate"
    if got.numel():
        e = float((got.cpu().to(F64) - ref.cpu().to(F64)).abs().max())
        assert e <= 1e-3, f"{what}: max abs error {e:.3e} > 1e-3"


# ----------------------------------------------------------------------------------------------
# Whole-op checks against the float64 reference.

PRE_DEFAULTS = dict(rms_eps=1e-6, hc_pre_eps=1e-6, hc_sinkhorn_eps=1e-6, hc_post_mult_value=2.0,
                    sinkhorn_repeat=20, norm_eps=1e-6)


def check_pre_outputs(outs, residual: Tensor, p: dict, what: str = "mhc_pre", **kw) -> None:
    """post_mix, comb_mix, layer_input of mhc_pre(residual, **p, **kw) against SPEC §3."""
    a = {**PRE_DEFAULTS, **kw}
    post, comb, layer_input = outs
    T, n, H = residual.shape
    rc = residual.cpu()
    pc = {k: (v.cpu() if v is not None else None) for k, v in p.items()}
    r_post, r_comb, r_li = reference.mhc_pre(rc, pc["fn"], pc["hc_scale"], pc["hc_base"],
                                             a["rms_eps"], a["hc_pre_eps"], a["hc_sinkhorn_eps"],
                                             a["hc_post_mult_value"], a["sinkhorn_repeat"],
                                             pc["norm_weight"], a["norm_eps"], dtype=F64)
    assert post.shape == (T, n, 1) and comb.shape == (T, n, n) and layer_input.shape == (T, H)
    assert post.device == residual.device and layer_input.device == residual.device
    assert_gates_close(post, r_post, f"{what} post_mix")
    assert_gates_close(comb, r_comb, f"{what} comb_mix")
    pre = pre_weights64(rc, pc["fn"][:n], pc["hc_scale"][0], pc["hc_base"][:n], a["rms_eps"],
                        a["hc_pre_eps"])
    term = stream_sum_term(rc, pre)
    if pc["norm_weight"] is None:
        assert_bf16_stream_sum(layer_input, r_li, term, what=f"{what} layer_input")
    else:
        # SPEC §3: 4 ulps with the folded norm (two roundings: y -> bf16 -> normalised bf16);
        # the cancellation term of y is carried through the norm's scale rs·|w|, and the 99%
        # criterion is scaled alike (2 ulps).
        scale = norm_factor64(stream_sum64(rc, pre), pc["norm_weight"], a["norm_eps"])
        assert_bf16_stream_sum(layer_input, r_li, term * scale, ulps=4, ulps_99=2,
                               what=f"{what} layer_input (norm)")


def check_post_output(out: Tensor, inp: dict, what: str = "mhc_post") -> None:
    c = {k: v.cpu() for k, v in inp.items()}
    ref = reference.mhc_post(c["x"], c["residual"], c["post_mix"], c["comb_mix"], dtype=F64)
    assert out.shape == c["residual"].shape and out.dtype == BF16
    acc = post_acc_abs(c["x"], c["residual"], c["post_mix"], c["comb_mix"])
    assert_bf16_within_ulp(out, ref, acc_abs=acc, n_terms=c["residual"].shape[1] + 1, what=what)


def check_head_output(out: Tensor, inp: dict, rms_eps=1e-6, hc_eps=1e-6,
                      what: str = "hc_head") -> None:
    c = {k: v.cpu() for k, v in inp.items()}
    T, n, H = c["residual"].shape
    ref = reference.hc_head(c["residual"], c["fn"], c["hc_scale"], c["hc_base"], rms_eps, hc_eps,
                            dtype=F64)
    assert out.shape == (T, H) and out.dtype == BF16
    pre = pre_weights64(c["residual"], c["fn"], c["hc_scale"][0], c["hc_base"], rms_eps, hc_eps)
    assert_bf16_stream_sum(out, ref, stream_sum_term(c["residual"], pre), what=what)


def prenorm_mismatch(out: Tensor, ref: Tensor) -> Tensor:
    """Per split s: 1 − 2Σ(a·b)/Σ(a² + b²) over that split's [M, N] block (SPEC §3)."""
    a, b = out.cpu().to(F64).flatten(1), ref.cpu().to(F64).flatten(1)
    return 1 - 2 * (a * b).sum(-1) / (a.square() + b.square()).sum(-1)


def check_prenorm_outputs(out: Tensor, sqrsum: Tensor, x: Tensor, fn: Tensor, S: int) -> None:
    r_out, r_sq = reference.hc_prenorm_gemm(x.cpu(), fn.cpu(), S, dtype=F64)
    assert out.shape == r_out.shape and sqrsum.shape == r_sq.shape
    assert out.dtype == F32 and sqrsum.dtype == F32
    assert torch.isfinite(out).all() and torch.isfinite(sqrsum).all()
    if out.numel() == 0:
        return
    # 1e-7 per split (SPEC §3): exact fp32 products reach ~1e-14, fn rounded to nearest TF32
    # ~2e-8, fn rounded to bf16 ~1e-6 (rejected). fn truncated to TF32 measures ~8.6e-8 on
    # N(0, 1/K) data: just inside, see test_checker_rejects_low_precision_products.
    mis = prenorm_mismatch(out, r_out)
    assert (mis < 1e-7).all(), f"per-split mismatch {mis.tolist()}"
    # 1e-6 relative (SPEC §3): squares of bf16 values are exact in fp32, so only the fp32
    # summation rounds; blocked or tree sums stay near 1e-7 at K = 28672.
    rel = ((sqrsum.cpu().to(F64) - r_sq) / r_sq).abs()
    assert float(rel.max()) <= 1e-6, f"sqrsum relative error {float(rel.max()):.3e}"


def normwise_rel_err(out: Tensor, ref: Tensor) -> float:
    d = out.cpu().to(F64) - ref.cpu().to(F64)
    return float(d.norm() / ref.cpu().to(F64).norm())


def tokens_except(t: Tensor, bad: list[int]) -> Tensor:
    keep = [i for i in range(t.shape[0]) if i not in bad]
    return t[keep]



# ----------------------------------------------------------------------------------------------
# Inputs past 2^31 elements (SPEC §2.8: token index arithmetic is 64-bit).

# T·n·H = 2^31 + 2·16384: the last two tokens lie wholly past element 2^31
BIG_T, BIG_N, BIG_H = 131074, 4, 4096
BIG_CHECKED = [0, BIG_T - 3, BIG_T - 2, BIG_T - 1]


def require_memory(device: str, nbytes: int) -> None:
    """Skip the calling test unless `device` has nbytes free, with room to spare."""
    import pytest

    if device == "cuda":
        free = torch.cuda.mem_get_info()[0]
    else:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        free = int(info["MemAvailable"].split()[0]) * 1024
    if free < 1.25 * nbytes:
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB free on {device}, "
                    f"{free / 2**30:.1f} GiB available")


def big_residual(device: str, seed: int) -> Tensor:
    """[BIG_T, 4, 4096] bf16: constant 0.5 (cheap to fill) except random tokens BIG_CHECKED."""
    r = torch.full((BIG_T, BIG_N, BIG_H), 0.5, dtype=BF16, device=device)
    g = gen(seed)
    for t in BIG_CHECKED:
        r[t] = randn(g, BIG_N, BIG_H, dtype=BF16).to(device)
    return r


# ----------------------------------------------------------------------------------------------
# DeepSeek-V4.1 ops (SPEC §2.9): mhc_stats, mhc_combine, mhc_post_combine, mhc_shifted_post_pre.


def v41_inputs(T: int, n: int, H: int, *, seed: int, norm: bool = False, device="cpu") -> dict:
    """Every tensor argument of mhc_shifted_post_pre: x, residual, post_mix [T, n, 1] and
    comb_mix as post_inputs draws them, pre_mix [T, n] the carried pre of an earlier stats call
    (sigmoid + 1e-6: positive, in (0, 1)), then fn, hc_scale, hc_base (and norm_weight)."""
    p = post_inputs(T, n, H, seed=seed, device=device)
    g = gen(seed + 1)
    pre = torch.sigmoid(randn(g, T, n)) + 1e-6
    return {**p, "pre_mix": pre.to(device), **pre_params(g, n, H, norm=norm, device=device)}


def check_stats_outputs(outs, residual: Tensor, p: dict, what: str = "mhc_stats", **kw) -> None:
    """pre_mix [T, n], post_mix [T, n, 1], comb_mix [T, n, n] of mhc_stats(residual, **p, **kw)
    within 1e-3 max abs of the float64 reference (SPEC §3)."""
    a = {**PRE_DEFAULTS, **kw}
    pre, post, comb = outs
    T, n, H = residual.shape
    ref = reference.mhc_stats(residual.cpu(), p["fn"].cpu(), p["hc_scale"].cpu(),
                              p["hc_base"].cpu(), a["rms_eps"], a["hc_pre_eps"],
                              a["hc_sinkhorn_eps"], a["hc_post_mult_value"], a["sinkhorn_repeat"],
                              dtype=F64)
    assert pre.shape == (T, n) and post.shape == (T, n, 1) and comb.shape == (T, n, n), \
        (pre.shape, post.shape, comb.shape)
    assert all(o.device == residual.device for o in outs)
    for o, r, name in zip(outs, ref, ("pre_mix", "post_mix", "comb_mix")):
        assert_gates_close(o, r, f"{what} {name}")


def check_combine_output(layer_input: Tensor, residual: Tensor, pre_mix: Tensor,
                         norm_weight: Tensor | None = None, norm_eps: float = 1e-6,
                         what: str = "mhc_combine") -> None:
    """layer_input = bf16(Σ_i pre_mix[i]·residual[i]) (RMS-normed with norm_weight) against the
    float64 reference with the SPEC §3 stream-sum bound (4 ulps with the norm). A float32
    norm_weight is rounded to bf16 first, as the ops do (SPEC §2.8)."""
    rc = residual.cpu()
    T, n, H = rc.shape
    pre = pre_mix.cpu().to(F64).reshape(T, n)
    w = None if norm_weight is None else norm_weight.cpu().to(BF16)
    ref = reference.mhc_combine(rc, pre, w, norm_eps, dtype=F64)
    assert layer_input.shape == (T, H) and layer_input.dtype == BF16, \
        (layer_input.shape, layer_input.dtype)
    assert layer_input.device == residual.device
    term = stream_sum_term(rc, pre)
    if w is None:
        assert_bf16_stream_sum(layer_input, ref, term, what=f"{what} layer_input")
    else:
        scale = norm_factor64(stream_sum64(rc, pre), w, norm_eps)
        assert_bf16_stream_sum(layer_input, ref, term * scale, ulps=4, ulps_99=2,
                               what=f"{what} layer_input (norm)")


V41_OPS = ("mhc_stats", "mhc_combine", "mhc_post_combine", "mhc_shifted_post_pre")
# Tensor arguments of each V4.1 op, in schema order (v41_call passes them by name).
V41_ARGS = {
    "mhc_stats": ("residual", "fn", "hc_scale", "hc_base"),
    "mhc_combine": ("residual", "pre_mix", "norm_weight"),
    "mhc_post_combine": ("x", "residual", "post_mix", "comb_mix", "pre_mix", "norm_weight"),
    "mhc_shifted_post_pre": ("x", "residual", "post_mix", "comb_mix", "pre_mix", "fn",
                             "hc_scale", "hc_base", "norm_weight"),
}
POST_KEYS = ("x", "residual", "post_mix", "comb_mix")
V41_PER_TOKEN = POST_KEYS + ("pre_mix",)  # the arguments with a leading T
GATE_KW = ("rms_eps", "hc_pre_eps", "hc_sinkhorn_eps", "hc_post_mult_value", "sinkhorn_repeat")


def v41_call(op: str, a: dict, **kw):
    """torch.ops.mhc.<op> on the tensors of a (a v41_inputs dict) that the op takes."""
    return getattr(torch.ops.mhc, op)(**{k: a[k] for k in V41_ARGS[op]}, **kw)


def outs_of(r) -> tuple:
    return tuple(r) if isinstance(r, (tuple, list)) else (r,)


def check_v41_outputs(op: str, outs, a: dict, **kw) -> None:
    """Every output of v41_call(op, a, **kw) against SPEC §3, and the same-device bit identities
    of SPEC §2.9: residual_out is mhc_post's bits, layer_input mhc_combine's of that
    residual_out, shifted's first two outputs mhc_post_combine's; shifted's gates are
    mhc_stats' of residual_out bit for bit on the CPU and under MHC_BATCH_INVARIANT."""
    from mhc_ops import envs

    gate_kw = {k: v for k, v in kw.items() if k in GATE_KW}
    norm_eps = kw.get("norm_eps", 1e-6)
    outs = outs_of(outs)
    if op == "mhc_stats":
        check_stats_outputs(outs, a["residual"], a, **gate_kw)
        return
    if op == "mhc_combine":
        (li,) = outs
        check_combine_output(li, a["residual"], a["pre_mix"], a["norm_weight"], norm_eps)
        return
    ops = torch.ops.mhc
    r, li = outs[:2]
    post = [a[k] for k in POST_KEYS]
    check_post_output(r, dict(zip(POST_KEYS, post)), what=f"{op} residual_out")
    check_combine_output(li, r, a["pre_mix"], a["norm_weight"], norm_eps, what=op)
    assert torch.equal(r, ops.mhc_post(*post)), f"{op}: residual_out != mhc_post"
    assert torch.equal(li, ops.mhc_combine(r, a["pre_mix"], a["norm_weight"], norm_eps)), \
        f"{op}: layer_input != mhc_combine(residual_out)"
    if op == "mhc_post_combine":
        return
    pc = ops.mhc_post_combine(*post, a["pre_mix"], a["norm_weight"], norm_eps)
    assert torch.equal(r, pc[0]) and torch.equal(li, pc[1]), f"{op} != mhc_post_combine"
    check_stats_outputs(outs[2:], r, a, what=f"{op} next", **gate_kw)
    if r.device.type == "cpu" or envs.MHC_BATCH_INVARIANT.get():
        want = ops.mhc_stats(r, a["fn"], a["hc_scale"], a["hc_base"], **gate_kw)
        for g, w in zip(outs[2:], want):
            assert torch.equal(g, w), f"{op}: next gates != mhc_stats(residual_out)"


def assert_same(got, want):
    """The same outputs (a tensor or a tuple of them): shapes, dtypes and bits."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype and torch.equal(g, w)


class OpLog(TorchDispatchMode):
    """The torch.ops.mhc ops that a call dispatches, in order (their names in .ops)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "mhc":
            self.ops.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def compiled_recording_mhc_ops(fn):
    """torch.compile(fn, fullgraph=True) (dynamo reset first) with a backend that records, per
    compiled graph, the set of mhc ops it calls ("mhc.<op>.default"): (compiled fn, the list)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"
                       and str(n.target).startswith("mhc.")})
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(fn, backend=backend, fullgraph=True), graphs
