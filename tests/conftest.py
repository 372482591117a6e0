"""Shared fixtures: every op test runs once per backend ("cpu", "cuda").

The cuda parameter skips, with the reason, when the CUDA kernels were not built or no GPU is
visible; CUDA is only queried inside the fixture, so collecting the suite creates no context.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # `import helpers` from the test modules

import mhc_ops  # noqa: E402
from cuda_helpers import nan_filled  # noqa: E402,F401  (CUDA tests: NaN-filled outputs)


def _cuda_skip_reason() -> str | None:
    if not mhc_ops.cuda_available():
        return "mhc_ops was built without CUDA kernels (torch.ops.mhc has no CUDA kernel)"
    if not torch.cuda.is_available():
        return "CUDA kernels are built but no CUDA device is visible"
    return None


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> str:
    if request.param == "cuda":
        reason = _cuda_skip_reason()
        if reason:
            pytest.skip(reason)
    return request.param
