"""tools/two_rank.py on the CPU: the stack it compares is deterministic and the same on every
path; without a GPU it stops with exit 2 (the two-rank run itself needs two GPUs:
scripts/two_rank.sh)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
two_rank = pytest.importorskip("two_rank")


@pytest.mark.parametrize("model", ["v4", "v4.1"])
def test_stack_is_deterministic_and_fused_equals_unfused(model):
    a = two_rank.run_stack(model, 256, 2, 9, 3, torch.device("cpu"))
    b = two_rank.run_stack(model, 256, 2, 9, 3, torch.device("cpu"))
    assert a.keys() == b.keys() == {"fused_head", "fused_residual", "unfused_head",
                                    "unfused_residual"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["fused_residual"], a["unfused_residual"])
    assert a["fused_residual"].shape == (9, 4, 256)


def test_context_check_needs_pci_order(monkeypatch):
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert two_rank.gpus_with_my_context() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_without_a_gpu_it_says_so(tmp_path, capsys):
    assert two_rank.main(["--single", str(tmp_path / "ref.pt")]) == 2
    assert "needs the CUDA kernels" in capsys.readouterr().err
