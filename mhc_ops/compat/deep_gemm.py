"""DeepGEMM's hyper-connection prenorm GEMM over mhc_ops (SPEC §2.5, §7.1).

:func:`tf32_hc_prenorm_gemm` has DeepGEMM's names and forms,
``tf32_hc_prenorm_gemm(a, b, d, sqr_sum, num_splits=None)``: it writes ``d`` ([M, N], or
[S, M, N] with splits) and ``sqr_sum`` ([M] or [S, M]) in place and returns None; M = 0 is a
no-op. Its products are accurate to fp32 where DeepGEMM truncates ``b`` to TF32.

``install()`` replaces ``tf32_hc_prenorm_gemm`` in the DeepGEMM packages that import
(``deep_gemm`` and the copy vLLM ships, ``vllm.third_party.deep_gemm``) and wherever a loaded
module holds it by name; callers that look it up on the module at each call (vLLM's
``vllm.utils.deep_gemm`` wrapper, sglang's ``deep_gemm`` calls) then run mhc_ops. Callers of
``torch.ops.deep_gemm`` directly are not affected.
"""

from __future__ import annotations

from torch import Tensor

from .. import ops as _ops
from ._install import Patcher, SignatureMismatch, Target

__all__ = ["tf32_hc_prenorm_gemm", "install", "uninstall", "SignatureMismatch"]


def tf32_hc_prenorm_gemm(a: Tensor, b: Tensor, d: Tensor, sqr_sum: Tensor,
                         num_splits: int | None = None) -> None:
    """a [M, K] bf16, b [N, K] fp32 (N <= 32): d = a @ b^T and sqr_sum = sum(a^2) per row,
    per split of K when num_splits is given (SPEC §2.5), written in place."""
    _ops.tf32_hc_prenorm_gemm(a, b, d, sqr_sum, num_splits)


_PATCHER = Patcher("DeepGEMM 2.8", [
    Target("deep_gemm", "tf32_hc_prenorm_gemm", tf32_hc_prenorm_gemm),
    Target("vllm.third_party.deep_gemm", "tf32_hc_prenorm_gemm", tf32_hc_prenorm_gemm),
])


def install() -> list[str]:
    """Replace DeepGEMM's ``tf32_hc_prenorm_gemm`` with mhc_ops'. Returns the names replaced;
    raises ImportError without DeepGEMM and SignatureMismatch, replacing nothing, when the
    installed signature differs from ``(a, b, d, sqr_sum, num_splits=None)``."""
    return _PATCHER.install()


def uninstall() -> list[str]:
    """Put DeepGEMM's own function back; returns the names restored."""
    return _PATCHER.uninstall()


def installed() -> bool:
    return _PATCHER.installed
