"""mhc_ops: ahead-of-time compiled PyTorch ops for mHC (manifold-constrained hyper-connections).

The ops live under ``torch.ops.mhc.*`` (CPU kernels always, CUDA kernels when built with CUDA);
this package holds typed wrappers over them, the plain-PyTorch reference
(:mod:`mhc_ops.reference`), the planner (:mod:`mhc_ops.plan`), the flag registry
(:mod:`mhc_ops.envs`) and the warmup (:mod:`mhc_ops.warmup`). Importing it creates no CUDA
context.
"""

from __future__ import annotations

import warnings

import torch

# `python -m mhc_ops.envs` imports this package (and so envs) before running envs as __main__;
# runpy warns about that, harmlessly: envs keeps no state that the second copy could split.
warnings.filterwarnings("ignore", message=r"'mhc_ops\.envs' found in sys\.modules",
                        category=RuntimeWarning)

from . import envs  # noqa: E402
from ._lib import _C  # noqa: E402
from . import _fake  # noqa: F401,E402  (registers the fake implementations)
from . import reference  # noqa: E402
from .ops import (  # noqa: E402
    hc_head,
    hc_prenorm_gemm,
    linear_bf16_fp32,
    mhc_combine,
    mhc_fused_post_pre,
    mhc_post,
    mhc_post_combine,
    mhc_post_pre,
    mhc_pre,
    mhc_shifted_post_pre,
    mhc_stats,
    tf32_hc_prenorm_gemm,
)

__version__ = "0.1.0"

__all__ = [
    "mhc_pre",
    "mhc_post",
    "mhc_fused_post_pre",
    "mhc_post_pre",
    "mhc_stats",
    "mhc_combine",
    "mhc_post_combine",
    "mhc_shifted_post_pre",
    "hc_head",
    "hc_prenorm_gemm",
    "tf32_hc_prenorm_gemm",
    "linear_bf16_fp32",
    "reference",
    "envs",
    "cuda_available",
]


def cuda_available() -> bool:
    """Whether the CUDA kernels were built and registered (says nothing about a GPU)."""
    return bool(_C.with_cuda) and torch._C._dispatch_has_kernel_for_dispatch_key(
        "mhc::mhc_pre", "CUDA")


envs.configure_logging()
envs.check_unknown()
