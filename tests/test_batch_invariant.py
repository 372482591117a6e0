"""MHC_BATCH_INVARIANT (SPEC §5): a token's outputs do not depend on the batch it came in."""

import pytest
import torch

import cuda_helpers as ch
import mhc_ops

H = 64
BATCHES = (1, 7, 64, 4096)


@pytest.fixture
def invariant(monkeypatch):
    monkeypatch.setenv("MHC_BATCH_INVARIANT", "1")


def _stream_inputs(T, device, seed):
    g = torch.Generator().manual_seed(seed)
    n, K = 4, 4 * H
    return dict(
        x=torch.randn(T, H, generator=g).bfloat16().to(device),
        residual=torch.randn(T, n, H, generator=g).bfloat16().to(device),
        post_mix=(2 * torch.rand(T, n, 1, generator=g)).to(device),
        comb_mix=torch.softmax(torch.randn(T, n, n, generator=g), -2).to(device),
        fn=(torch.randn(24, K, generator=g) / K ** 0.5).to(device),
        hc_scale=(0.5 + torch.rand(3, generator=g)).to(device),
        hc_base=(0.5 * torch.randn(24, generator=g)).to(device),
        norm_weight=(1 + 0.1 * torch.randn(H, generator=g)).bfloat16().to(device),
    )


def _run(a, rows):
    """Every output of pre, fused and head for the token rows `rows` of the inputs."""
    sel = {k: (v[rows] if k in ("x", "residual", "post_mix", "comb_mix") else v)
           for k, v in a.items()}
    pre = mhc_ops.mhc_pre(sel["residual"], sel["fn"], sel["hc_scale"], sel["hc_base"],
                          norm_weight=sel["norm_weight"])
    fused = mhc_ops.mhc_fused_post_pre(sel["x"], sel["residual"], sel["post_mix"],
                                       sel["comb_mix"], sel["fn"], sel["hc_scale"],
                                       sel["hc_base"])
    head = mhc_ops.hc_head(sel["residual"], sel["fn"][:4], sel["hc_scale"][:1],
                           sel["hc_base"][:4])
    return (*pre, *fused, head)


@pytest.mark.usefixtures("invariant")
def test_token_outputs_do_not_depend_on_the_batch(device):
    a = _stream_inputs(max(BATCHES), device, seed=3)
    probe = 0  # the token followed through every batch (first row: in every batch)
    expected = [o[probe] for o in _run(a, slice(0, 1))]
    for T in BATCHES[1:]:
        # the probe sits at row T // 2 of a batch of T tokens drawn from the pool
        rows = torch.arange(1, T, device=device)
        rows = torch.cat([rows[: T // 2], torch.tensor([probe], device=device), rows[T // 2:]])
        got = _run(a, rows)
        for e, o in zip(expected, got):
            assert torch.equal(o[T // 2], e), f"batch of {T}: token outputs changed"


def _run_v41(a, pre_mix, rows):
    """Every output of the DeepSeek-V4.1 ops for the token rows `rows`, through torch.ops.mhc."""
    ops = torch.ops.mhc
    sel = {k: (v[rows] if k in ("x", "residual", "post_mix", "comb_mix") else v)
           for k, v in a.items()}
    pre = pre_mix[rows]
    p = (sel["fn"], sel["hc_scale"], sel["hc_base"])
    post = (sel["x"], sel["residual"], sel["post_mix"], sel["comb_mix"], pre)
    return (*ops.mhc_stats(sel["residual"], *p),
            ops.mhc_combine(sel["residual"], pre, sel["norm_weight"]),
            *ops.mhc_post_combine(*post, sel["norm_weight"]),
            *ops.mhc_shifted_post_pre(*post, *p, norm_weight=sel["norm_weight"]))


def _pre_mix(T, device, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.sigmoid(torch.randn(T, 4, generator=g)) + 1e-6).to(device)


@pytest.mark.usefixtures("invariant")
def test_v41_token_outputs_do_not_depend_on_the_batch(device):
    a = _stream_inputs(max(BATCHES), device, seed=4)
    pre_mix = _pre_mix(max(BATCHES), device, seed=5)
    probe = 0
    expected = [o[probe] for o in _run_v41(a, pre_mix, slice(0, 1))]
    for T in BATCHES[1:]:
        rows = torch.arange(1, T, device=device)
        rows = torch.cat([rows[: T // 2], torch.tensor([probe], device=device), rows[T // 2:]])
        for e, o in zip(expected, _run_v41(a, pre_mix, rows)):
            assert torch.equal(o[T // 2], e), f"batch of {T}: token outputs changed"


@pytest.mark.usefixtures("invariant")
def test_v41_shifted_stats_equal_unfused(device):
    # SPEC §2.9: under MHC_BATCH_INVARIANT the gates of mhc_shifted_post_pre are mhc_stats' of
    # its residual_out bit for bit (so the whole fused V4.1 stack equals the unfused one)
    a = _stream_inputs(max(BATCHES), device, seed=6)
    pre_mix = _pre_mix(max(BATCHES), device, seed=7)
    for T in BATCHES:
        out = _run_v41(a, pre_mix, slice(0, T))
        r, shifted_gates = out[6], out[8:]
        want = torch.ops.mhc.mhc_stats(r, a["fn"], a["hc_scale"], a["hc_base"])
        for g, w in zip(shifted_gates, want):
            assert torch.equal(g, w), f"T={T}: shifted gates != mhc_stats(residual_out)"


def test_linear_rows_do_not_depend_on_the_batch():
    # linear_bf16_fp32 on the CPU sums every output in an order fixed by K alone (SPEC §2.7),
    # with or without MHC_BATCH_INVARIANT: a row's bits depend neither on the rows batched with
    # it nor on the thread count. K = 1000 ends in a partial group of 16 and spans two K chunks;
    # N = 38 leaves single weight rows after the register tiles.
    g = torch.Generator().manual_seed(11)
    N, K, batches = 38, 1000, (1, 7, 64, 300)
    pool = torch.randn(max(batches), K, generator=g).bfloat16()
    weight = (torch.randn(N, K, generator=g) / K ** 0.5).bfloat16()
    alone = torch.cat([mhc_ops.linear_bf16_fp32(pool[i:i + 1], weight) for i in range(len(pool))])
    for T in batches:
        rows = torch.randperm(len(pool), generator=g)[:T]
        assert torch.equal(mhc_ops.linear_bf16_fp32(pool[rows], weight), alone[rows]), \
            f"batch of {T}: token outputs changed"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(mhc_ops.linear_bf16_fp32(pool, weight), alone), "thread count"
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# CUDA, at real widths: a token's bits do not depend on its batch.

@ch.cuda_test
@pytest.mark.parametrize("H", ch.WIDTHS)
def test_batch_invariant_real_widths(H, monkeypatch):
    monkeypatch.setenv("MHC_BATCH_INVARIANT", "1")
    g = ch.gen(7)
    pool = 4096
    x = ch.randn(g, pool, H, dtype=torch.bfloat16)
    res = ch.randn(g, pool, ch.N_HC, H, dtype=torch.bfloat16)
    post, comb = ch.post_gates(g, pool, ch.N_HC)
    p = ch.pre_params(g, ch.N_HC, H, norm=True)
    hp = {"fn": p["fn"][:ch.N_HC], "hc_scale": p["hc_scale"][:1], "hc_base": p["hc_base"][:ch.N_HC]}

    def run(rows):
        a = mhc_ops.mhc_pre(res[rows], **p)
        b = mhc_ops.mhc_pre(res[rows], **ch.sub(p, norm_weight=None))
        c = mhc_ops.mhc_fused_post_pre(x[rows], res[rows], post[rows], comb[rows], **p)
        d = mhc_ops.hc_head(res[rows], **hp)
        return (*a, *b, *c, d)

    probe = 0
    want = [o[0] for o in run(torch.tensor([probe], device="cuda"))]
    for T in (7, 64, 4096):
        rows = torch.arange(1, T, device="cuda")
        rows = torch.cat([rows[: T // 2], torch.tensor([probe], device="cuda"), rows[T // 2:]])
        for w, o in zip(want, run(rows)):
            assert torch.equal(o[T // 2], w), f"batch of {T}"


@ch.cuda_test
@pytest.mark.parametrize("H", (5120,) + ch.WIDTHS)
def test_v41_batch_invariant_real_widths(H, monkeypatch):
    # The DeepSeek-V4.1 ops at the V4.1 / V4 widths: a token's bits do not depend on its batch,
    # and the fused stats are mhc_stats' bits.
    monkeypatch.setenv("MHC_BATCH_INVARIANT", "1")
    g = ch.gen(9)
    pool = 4096
    a = {"x": ch.randn(g, pool, H, dtype=torch.bfloat16),
         "residual": ch.randn(g, pool, ch.N_HC, H, dtype=torch.bfloat16)}
    a["post_mix"], a["comb_mix"] = ch.post_gates(g, pool, ch.N_HC)
    pre_mix = torch.sigmoid(ch.randn(g, pool, ch.N_HC)) + 1e-6
    a.update(ch.pre_params(g, ch.N_HC, H, norm=True))
    probe = 0
    want = [o[0] for o in _run_v41(a, pre_mix, torch.tensor([probe], device="cuda"))]
    for T in (7, 64, 4096):
        rows = torch.arange(1, T, device="cuda")
        rows = torch.cat([rows[: T // 2], torch.tensor([probe], device="cuda"), rows[T // 2:]])
        out = _run_v41(a, pre_mix, rows)
        for w, o in zip(want, out):
            assert torch.equal(o[T // 2], w), f"batch of {T}"
        stats = torch.ops.mhc.mhc_stats(out[6], a["fn"], a["hc_scale"], a["hc_base"])
        for g_, w in zip(out[8:], stats):
            assert torch.equal(g_, w), f"batch of {T}: shifted gates != mhc_stats"


# ----------------------------------------------------------------------------------------------
# T·n·H > 2^31 at the Pro width: the last tokens start past 2^31 elements.

BIG_T, BIG_H = 74_900, 7168
