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


# ----------------------------------------------------------------------------------------------
# T·n·H > 2^31 at the Pro width: the last tokens start past 2^31 elements.

BIG_T, BIG_H = 74_900, 7168
