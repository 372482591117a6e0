"""Proves the drop-ins against the serving stacks' own kernels, on a GPU (SPEC §3, §7.1).

For each stack that imports (sglang 0.5.23, vLLM 0.33, DeepGEMM): every DeepSeek-V4 mHC function
is called as the stack's model code calls it, looked up on the stack's module, first unpatched
(the stack's own kernels), then after ``mhc_ops.compat.<stack>.install()`` (mhc_ops), on fresh
random inputs at each H and T with DeepSeek-V4's eps and parameters (n = 4). Both results are
compared with the float64 reference (mhc_ops.reference): the patched ones must meet the SPEC §3
bounds and equal mhc_ops' own op bit for bit; the unpatched ones' errors are reported. Then
``uninstall()``. A stack that does not import is reported and skipped.

  source .peers/setup.sh /tmp/peers
  python tools/check_peers.py --out benchmarks/results/check_peers_h100.json
  python tools/check_peers.py --quick --out /tmp/check.json     # H = 7168, T in {1, 64}

Prints one row per case and a summary, writes JSON after every case (a run cut short keeps its
rows). --budget-s bounds the time spent on the stacks' own kernels (their JIT compiles are
seconds each); past it their calls are skipped and reported, mhc_ops' are still all checked.
Exit status: 0 all patched results within bounds; 1 a bound, an install or a bit-identity
failed; 2 no GPU / no CUDA kernels.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the SPEC §3 checkers of the test suite

import mhc_ops  # noqa: E402
from mhc_ops import reference  # noqa: E402

DEVICE = "cuda"  # --device cpu: a dry run of this harness on stand-in stacks
N = 4
WIDTHS = (4096, 7168)
TOKENS = (1, 7, 64, 512)
F64 = torch.float64
# DeepSeek-V4: rms, pre and Sinkhorn eps 1e-6, post mult 2, 20 Sinkhorn rounds, norm eps 1e-6
RMS_EPS = PRE_EPS = SK_EPS = NORM_EPS = HC_EPS = 1e-6
POST_MULT, REPEAT = 2.0, 20
DSV4 = (RMS_EPS, PRE_EPS, SK_EPS, POST_MULT, REPEAT)

STACK_MODULES = {
    "sglang": ("sglang.kernels.ops.layernorm.mhc", "sglang.kernels.ops.layernorm.mhc_head"),
    "vllm": ("vllm.model_executor.kernels.mhc.tilelang",),
    "deep_gemm": ("deep_gemm", "vllm.third_party.deep_gemm"),
}


# ---------------------------------------------------------------------------------------------
# Error measures (reported for both implementations; the pass / fail of the patched ones is
# the test suite's SPEC §3 checkers)

def gate_err(got, ref) -> float:
    return float((got.detach().cpu().to(F64) - ref.cpu().to(F64)).abs().max()) if got.numel() \
        else 0.0


def ulp_err(got, ref) -> dict:
    """Max error in bf16 ulps of bf16(reference), and the share within 1 ulp."""
    import helpers as h

    g, w = got.detach().cpu().to(F64), ref.cpu().to(F64)
    if g.numel() == 0:
        return {"max_ulp": 0.0, "within_1ulp": 1.0}
    e = (g - w).abs() / h.bf16_ulp(w)
    return {"max_ulp": round(float(e.max()), 3), "within_1ulp": round(float((e <= 1).double()
                                                                           .mean()), 6)}


def spec_check(fn) -> str | None:
    try:
        fn()
        return None
    except AssertionError as e:
        return str(e).splitlines()[0][:300]


# ---------------------------------------------------------------------------------------------
# Cases: each builds inputs, calls the stack's function the stack's way, and measures the result

def _inputs(kind, T, H, seed, norm=False):
    import helpers as h

    if kind == "pre":
        return h.pre_inputs(T, N, H, seed=seed, norm=norm, device=DEVICE)
    if kind == "post":
        return h.post_inputs(T, N, H, seed=seed, device=DEVICE)
    if kind == "fused":
        return h.fused_inputs(T, N, H, seed=seed, norm=norm, device=DEVICE)
    if kind == "head":
        return h.head_inputs(T, N, H, seed=seed, device=DEVICE)
    return h.prenorm_inputs(T, 24, N * H, seed=seed, device=DEVICE)


def _pre_measure(outs, residual, p):
    import helpers as h

    post, comb, li = outs
    T = residual.shape[0]
    post, comb = post.reshape(T, N, 1), comb.reshape(T, N, N)
    pc = {k: (v.cpu() if v is not None else None) for k, v in p.items()}
    r_post, r_comb, r_li = reference.mhc_pre(residual.cpu(), pc["fn"], pc["hc_scale"],
                                             pc["hc_base"], *DSV4, pc["norm_weight"], NORM_EPS,
                                             dtype=F64)
    errs = {"post_mix": gate_err(post, r_post), "comb_mix": gate_err(comb, r_comb),
            "layer_input": ulp_err(li, r_li)}
    fail = spec_check(lambda: h.check_pre_outputs((post, comb, li), residual, p))
    return errs, fail


def _post_measure(out, inp):
    import helpers as h

    c = {k: v.cpu() for k, v in inp.items()}
    ref = reference.mhc_post(c["x"], c["residual"], c["post_mix"], c["comb_mix"], dtype=F64)
    return {"residual": ulp_err(out.reshape(ref.shape), ref)}, \
        spec_check(lambda: h.check_post_output(out.reshape(ref.shape), inp))


PRE_KEYS = ("fn", "hc_scale", "hc_base", "norm_weight")
POST_KEYS = ("x", "residual", "post_mix", "comb_mix")


def cases_for(stack, H, T, seed):
    """(label, module, name, make_inputs, call(fn, a), native(a), measure(out, a)) per case."""
    out = []
    if stack == "sglang":
        mhc, head = STACK_MODULES["sglang"]
        for norm in (False, True):
            out.append((f"mhc_pre{' +norm' if norm else ''}", mhc, "mhc_pre",
                        lambda norm=norm: _inputs("pre", T, H, seed, norm),
                        lambda f, a: f(a["residual"], a["fn"], a["hc_scale"], a["hc_base"],
                                       *DSV4, 1, 32, norm_weight=a["norm_weight"],
                                       norm_eps=NORM_EPS),
                        lambda a: mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"],
                                                  a["hc_base"], *DSV4, a["norm_weight"],
                                                  NORM_EPS),
                        lambda o, a: _pre_measure(o, a["residual"],
                                                  {k: a[k] for k in PRE_KEYS})))
        out.append(("mhc_post", mhc, "mhc_post", lambda: _inputs("post", T, H, seed),
                    lambda f, a: f(a["x"], a["residual"], a["post_mix"], a["comb_mix"]),
                    lambda a: mhc_ops.mhc_post(**a), lambda o, a: _post_measure(o, a)))
        out.append(("mhc_fused_post_pre +norm", mhc, "mhc_fused_post_pre",
                    lambda: _inputs("fused", T, H, seed, True),
                    lambda f, a: f(a["x"], a["residual"], a["post_mix"], a["comb_mix"],
                                   a["fn"], a["hc_scale"], a["hc_base"], *DSV4, 1, 1,
                                   norm_weight=a["norm_weight"], norm_eps=NORM_EPS),
                    lambda a: mhc_ops.mhc_post_pre(a["x"], a["residual"], a["post_mix"],
                                                   a["comb_mix"], a["fn"], a["hc_scale"],
                                                   a["hc_base"], *DSV4, a["norm_weight"],
                                                   NORM_EPS),
                    _fused_measure))
        out.append(("hc_pre (flat)", mhc, "hc_pre", lambda: _inputs("pre", T, H, seed),
                    lambda f, a: _hc_pre_as_pre(f(a["residual"].reshape(T, N * H), a["fn"],
                                                  a["hc_scale"], a["hc_base"], N, RMS_EPS,
                                                  HC_EPS, REPEAT)),
                    lambda a: mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"],
                                              a["hc_base"], *DSV4),
                    lambda o, a: _pre_measure(o, a["residual"], {k: a[k] for k in PRE_KEYS})))
        out.append(("hc_post (flat)", mhc, "hc_post", lambda: _inputs("post", T, H, seed),
                    lambda f, a: f(a["x"], a["residual"].reshape(T, N * H),
                                   a["post_mix"].reshape(T, N), a["comb_mix"].reshape(T, N * N),
                                   N).reshape(T, N, H),
                    lambda a: mhc_ops.mhc_post(**a), lambda o, a: _post_measure(o, a)))
        out.append(("fused_hc_head", head, "fused_hc_head", lambda: _inputs("head", T, H, seed),
                    lambda f, a: f(a["residual"], a["fn"], a["hc_scale"], a["hc_base"],
                                   RMS_EPS, HC_EPS),
                    lambda a: mhc_ops.hc_head(a["residual"], a["fn"], a["hc_scale"],
                                              a["hc_base"], RMS_EPS, HC_EPS),
                    _head_measure))
    elif stack == "vllm":
        (tl,) = STACK_MODULES["vllm"]
        for norm in (False, True):
            out.append((f"mhc_pre_tilelang{' +norm' if norm else ''}", tl, "mhc_pre_tilelang",
                        lambda norm=norm: _inputs("pre", T, H, seed, norm),
                        lambda f, a: f(a["residual"], a["fn"], a["hc_scale"], a["hc_base"],
                                       *DSV4, 1, a["norm_weight"], NORM_EPS),
                        lambda a: mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"],
                                                  a["hc_base"], *DSV4, a["norm_weight"],
                                                  NORM_EPS),
                        lambda o, a: _pre_measure(o, a["residual"],
                                                  {k: a[k] for k in PRE_KEYS})))
        out.append(("mhc_post_tilelang", tl, "mhc_post_tilelang",
                    lambda: _inputs("post", T, H, seed),
                    lambda f, a: f(a["x"], a["residual"], a["post_mix"], a["comb_mix"]),
                    lambda a: mhc_ops.mhc_post(**a), lambda o, a: _post_measure(o, a)))
        out.append(("mhc_fused_post_pre_tilelang +norm", tl, "mhc_fused_post_pre_tilelang",
                    lambda: _inputs("fused", T, H, seed, True),
                    lambda f, a: f(a["x"], a["residual"], a["post_mix"], a["comb_mix"],
                                   a["fn"], a["hc_scale"], a["hc_base"], *DSV4, 1, 1,
                                   a["norm_weight"], NORM_EPS),
                    lambda a: mhc_ops.mhc_post_pre(a["x"], a["residual"], a["post_mix"],
                                                   a["comb_mix"], a["fn"], a["hc_scale"],
                                                   a["hc_base"], *DSV4, a["norm_weight"],
                                                   NORM_EPS),
                    _fused_measure))
        out.append(("mhc_pre_broadcast_tilelang +norm", tl, "mhc_pre_broadcast_tilelang",
                    lambda: _broadcast_inputs(T, H, seed),
                    lambda f, a: f(a["residual"][:, 0].contiguous(), a["fn"], a["hc_scale"],
                                   a["hc_base"], *DSV4, 1, a["norm_weight"], NORM_EPS,
                                   a["fn"].reshape(-1, N, H).sum(1).contiguous())[1:],
                    lambda a: mhc_ops.mhc_pre(a["residual"], a["fn"], a["hc_scale"],
                                              a["hc_base"], *DSV4, a["norm_weight"], NORM_EPS),
                    lambda o, a: _pre_measure(o, a["residual"], {k: a[k] for k in PRE_KEYS})))
        out.append(("hc_head_fused_kernel_tilelang", tl, "hc_head_fused_kernel_tilelang",
                    lambda: _inputs("head", T, H, seed),
                    lambda f, a: f(a["residual"], a["fn"], a["hc_scale"], a["hc_base"],
                                   RMS_EPS, HC_EPS),
                    lambda a: mhc_ops.hc_head(a["residual"], a["fn"], a["hc_scale"],
                                              a["hc_base"], RMS_EPS, HC_EPS),
                    _head_measure))
    elif stack == "deep_gemm":
        mod = _deep_gemm_module()
        sms = torch.cuda.get_device_properties(0).multi_processor_count if DEVICE == "cuda" \
            else 132
        for splits in (None, mhc_ops.plan.num_splits(T, N * H, sms)):
            out.append((f"tf32_hc_prenorm_gemm S={splits}", mod, "tf32_hc_prenorm_gemm",
                        lambda: _inputs("prenorm", T, H, seed),
                        lambda f, a, s=splits: _prenorm_call(f, a, s),
                        lambda a, s=splits: _prenorm_call(mhc_ops.tf32_hc_prenorm_gemm, a, s),
                        lambda o, a, s=splits: _prenorm_measure(o, a, s)))
    return out


def _hc_pre_as_pre(res):
    """sglang's (layer_input, comb [s, n*n], post [s, n], norm_fused) in mhc_pre's form."""
    layer_input, comb, post, _norm_fused = res
    return post.reshape(-1, N, 1), comb.reshape(-1, N, N), layer_input


def _broadcast_inputs(T, H, seed):
    a = _inputs("pre", T, H, seed, True)
    a["residual"] = a["residual"][:, :1].expand(T, N, H).contiguous()  # the broadcast streams
    return a


def _fused_measure(outs, a):
    r, post, comb, li = outs
    e1, f1 = _post_measure(r, {k: a[k] for k in POST_KEYS})
    e2, f2 = _pre_measure((post, comb, li), r.reshape(a["residual"].shape),
                          {k: a[k] for k in PRE_KEYS})
    return {**e1, **e2}, f1 or f2


def _head_measure(out, a):
    import helpers as h

    c = {k: v.cpu() for k, v in a.items()}
    ref = reference.hc_head(c["residual"], c["fn"], c["hc_scale"], c["hc_base"], RMS_EPS,
                            HC_EPS, dtype=F64)
    return {"out": ulp_err(out, ref)}, spec_check(lambda: h.check_head_output(out, a))


def _deep_gemm_module() -> str:
    try:
        from vllm.utils.deep_gemm import deep_gemm_module

        m = deep_gemm_module()
        if m is not None:
            return m.__name__
    except Exception:  # noqa: BLE001 - no vLLM wrapper: look for DeepGEMM itself
        pass
    for name in STACK_MODULES["deep_gemm"]:
        try:
            importlib.import_module(name)
            return name
        except Exception:  # noqa: BLE001
            continue
    raise ImportError("no DeepGEMM imports (deep_gemm, vllm.third_party.deep_gemm)")


def _prenorm_call(f, a, splits):
    M, K = a["x"].shape
    lead = () if splits is None else (splits,)
    d = torch.empty(*lead, M, 24, dtype=torch.float32, device=DEVICE)
    sq = torch.empty(*lead, M, dtype=torch.float32, device=DEVICE)
    f(a["x"], a["fn"], d, sq, splits)
    return d, sq


def _prenorm_measure(o, a, splits):
    import helpers as h

    d, sq = o
    S = splits or 1
    M = a["x"].shape[0]
    d, sq = d.reshape(S, M, 24), sq.reshape(S, M)
    r_out, r_sq = reference.hc_prenorm_gemm(a["x"].cpu(), a["fn"].cpu(), S, dtype=F64)
    mis = h.prenorm_mismatch(d, r_out)
    rel = ((sq.cpu().to(F64) - r_sq) / r_sq).abs()
    errs = {"mismatch": float(mis.max()), "sqrsum_rel": float(rel.max())}
    return errs, spec_check(lambda: h.check_prenorm_outputs(d, sq, a["x"], a["fn"], S))


# ---------------------------------------------------------------------------------------------

def _identical(a, b) -> bool:
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype
                                    and torch.equal(x, y) for x, y in zip(a, b))


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:240] if str(e) else ''}"


def stack_importable(stack) -> str | None:
    """None when the stack's modules import; otherwise why not."""
    errors = []
    for m in STACK_MODULES[stack]:
        try:
            importlib.import_module(m)
            return None
        except Exception as e:  # noqa: BLE001 - any failure: the stack is not here
            errors.append(f"{m}: {_short(e)}")
    return "; ".join(errors)


def run_stack(stack, widths, tokens, seed, deadline, rows, save, first_calls):
    compat = importlib.import_module(f"mhc_ops.compat.{stack}")
    why = stack_importable(stack)
    if why:
        print(f"[{stack}] SKIPPED: does not import ({why})", flush=True)
        rows.append({"stack": stack, "skipped": why})
        save()
        return 0, 0
    failures = skipped = 0
    points = [(H, T) for H in widths for T in tokens]
    # unpatched first, for every point (the stack's own JIT compiles on first calls), then the
    # same inputs again after install(): results are kept per case until both are measured
    pending = []
    for H, T in points:
        case_seed = seed + 7919 * H + T
        for label, module, name, make, call, native, measure in cases_for(stack, H, T,
                                                                           case_seed):
            pending.append({"label": label, "module": module, "name": name, "H": H, "T": T,
                            "make": make, "call": call, "native": native, "measure": measure})
    for c in pending:
        try:
            c["inputs"] = c["make"]()
        except Exception as e:  # noqa: BLE001 - reported on the row; the patched call fails too
            c["unpatched"] = {"error": _short(e)}
            continue
        if time.monotonic() > deadline:
            # The stack's calls (and their JIT compiles) are what the budget bounds; the
            # patched calls below run whatever the time.
            c["unpatched"] = {"error": "not run: time budget"}
            skipped += 1
            continue
        try:
            fn = getattr(importlib.import_module(c["module"]), c["name"])
            t0 = time.perf_counter()
            out = c["call"](fn, c["inputs"])
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            first_calls.setdefault(f"{stack}:{c['name']}", round(dt, 3))
            errs, fail = c["measure"](out, c["inputs"])
            c["unpatched"] = {"errors": errs, "spec": fail or "within"}
            del out
        except Exception as e:  # noqa: BLE001 - the stack's own kernel failing is reported
            c["unpatched"] = {"error": _short(e)}
    try:
        replaced = compat.install()
        print(f"[{stack}] install(): {len(replaced)} names replaced", flush=True)
    except Exception as e:  # noqa: BLE001 - a refused install is a failure of the drop-in
        print(f"[{stack}] INSTALL FAILED: {e}", flush=True)
        rows.append({"stack": stack, "install_error": str(e)})
        save()
        return 1, skipped
    try:
        for c in pending:
            row = {"stack": stack, "function": c["label"], "H": c["H"], "T": c["T"],
                   "unpatched": c["unpatched"]}
            try:
                if "inputs" not in c:
                    raise RuntimeError("no inputs: " + c["unpatched"]["error"])
                mod = importlib.import_module(c["module"])
                fn = getattr(mod, c["name"])
                if fn is not getattr(compat, c["name"]):
                    raise RuntimeError(f"{c['module']}.{c['name']} is not the drop-in after "
                                       "install()")
                out = c["call"](fn, c["inputs"])
                errs, fail = c["measure"](out, c["inputs"])
                same = _identical(out, c["native"](c["inputs"]))
                row["patched"] = {"errors": errs, "spec": fail or "within",
                                  "identical_to_mhc_ops": same}
                if fail or not same:
                    failures += 1
            except Exception as e:  # noqa: BLE001
                row["patched"] = {"error": _short(e), "trace": traceback.format_exc()[-800:]}
                failures += 1
            c.pop("inputs", None)
            rows.append(row)
            print(format_row(row), flush=True)
            save()
    finally:
        compat.uninstall()
        print(f"[{stack}] uninstall(): done", flush=True)
    return failures, skipped


def _brief(res: dict) -> str:
    if "error" in res:
        return "ERROR " + res["error"][:60]
    e = res["errors"]
    parts = []
    for k, v in e.items():
        if isinstance(v, dict):
            parts.append(f"{k} {v['max_ulp']:.2g}ulp/{100 * v['within_1ulp']:.1f}%")
        else:
            parts.append(f"{k} {v:.2g}")
    ok = "ok" if res["spec"] == "within" else "OUT"
    return f"{ok:3s} " + ", ".join(parts)


def format_row(row) -> str:
    return (f"{row['stack']:9s} {row['function']:36s} H={row['H']:5d} T={row['T']:4d} | "
            f"mhc_ops {_brief(row['patched'])}"
            + ("" if row["patched"].get("identical_to_mhc_ops", True) else " NOT-IDENTICAL")
            + f" | stack {_brief(row['unpatched'])}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stacks", default="sglang,vllm,deep_gemm")
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--quick", action="store_true", help="H = 7168, T in {1, 64}")
    ap.add_argument("--seed", type=int, default=None, help="default: a fresh one (printed)")
    ap.add_argument("--budget-s", type=float, default=600.0,
                    help="call the stacks' own kernels (and JIT-compile them) only this many "
                         "seconds into the run; mhc_ops' calls are checked whatever the time")
    ap.add_argument("--out", default=None, help="JSON file")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: a dry run of this harness against stand-in stacks (the real "
                         "peers need CUDA)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    stacks = args.stacks.split(",")
    unknown = sorted(set(stacks) - set(STACK_MODULES))
    if unknown:
        ap.error(f"unknown stack(s) {unknown}; known: {sorted(STACK_MODULES)}")
    if DEVICE == "cuda" and not (mhc_ops.cuda_available() and torch.cuda.is_available()):
        print("check_peers: needs the CUDA kernels and a GPU", file=sys.stderr)
        return 2
    widths = [7168] if args.quick else [int(v) for v in args.widths.split(",")]
    tokens = [1, 64] if args.quick else [int(v) for v in args.tokens.split(",")]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    deadline = time.monotonic() + args.budget_s
    name = torch.cuda.get_device_properties(0).name if DEVICE == "cuda" else "cpu"
    head = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "seed": seed, "command": " ".join(["python"] + sys.argv)}
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, seed {seed}",
          flush=True)
    rows, first_calls = [], {}

    def save():
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump({**head, "stack_first_call_s": first_calls, "rows": rows}, f,
                          indent=1)

    failures = skipped = 0
    for stack in stacks:
        try:
            f, i = run_stack(stack, widths, tokens, seed, deadline, rows, save, first_calls)
        except Exception as e:  # noqa: BLE001 - one stack's crash must not hide the others
            print(f"[{stack}] CRASHED: {_short(e)}\n{traceback.format_exc()}", flush=True)
            rows.append({"stack": stack, "crash": _short(e)})
            f, i = 1, 0
        failures += f
        skipped += i
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    save()
    ran = [r for r in rows if "patched" in r and "error" not in r["patched"]]
    print(f"\n{len(ran)} cases checked, {failures} failed"
          + (f"; {skipped} calls of the stacks' own kernels not run (--budget-s)" if skipped
             else "")
          + "; first calls of the stacks' kernels (JIT): "
          + ", ".join(f"{k} {v:.1f}s" for k, v in first_calls.items()))
    if args.out:
        print(f"wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
