"""Loads the native library mhc_ops._C, which registers torch.ops.mhc.*, after checking that it
was built against the torch that is importing it.

torch's C++ API has no stable ABI between releases: a library built against another torch may
fail to load, or load and then misbehave. setup.py writes mhc_ops/_build_info.py beside the
library in the same build step; it is read and checked before the library is loaded at all.
"""

from __future__ import annotations

import torch

# The rebuild for a serving environment: a regular (not editable) install that replaces
# mhc_ops only, compiled against the torch that is installed.
REBUILD = ("pip install --no-build-isolation --force-reinstall --no-deps <mhc_ops source: the "
           "sdist, a checkout or a git URL>")


def _public(version: str) -> str:
    """The version without its local label: 2.14.1+cu130 -> 2.14.1."""
    return version.split("+", 1)[0]


def torch_mismatch(built_torch: str, built_cuda: str | None, with_cuda: bool,
                   torch_version: str, torch_cuda: str | None) -> str | None:
    """Why a library built against torch `built_torch` (with its CUDA kernels for CUDA
    `built_cuda` when `with_cuda`) cannot be loaded by torch `torch_version` (CUDA `torch_cuda`),
    or None when it can.

    The release must be the same, pre-release and nightly date included; the local label
    (+cpu, +cu130) is not compared, as the same release's CPU and CUDA builds share the ABI of
    libtorch_cpu and c10. The CUDA kernels also need a torch with the same CUDA major version,
    whose runtime libraries (libcudart.so.13, ...) they link.
    """
    if _public(built_torch) != _public(torch_version):
        return f"it was built against torch {built_torch} but torch {torch_version} is installed"
    if with_cuda:
        if torch_cuda is None:
            return (f"it was built with CUDA {built_cuda} kernels against torch {built_torch} but "
                    f"the installed torch {torch_version} has no CUDA")
        if str(built_cuda).split(".")[0] != torch_cuda.split(".")[0]:
            return (f"it was built against torch {built_torch} with CUDA {built_cuda} but the "
                    f"installed torch {torch_version} has CUDA {torch_cuda}")
    return None


def _describe(info) -> str:
    return (f"torch {info.TORCH_VERSION}, CUDA {info.CUDA_VERSION}, arch "
            f"{info.CUDA_ARCH_LIST or '-'}, git {info.GIT_SHA[:12]}")


def _load():
    try:
        from . import _build_info as info
    except ImportError:
        raise ImportError(
            "mhc_ops: mhc_ops/_build_info.py is missing, so the native library was never built "
            f"here (it is written with the library). Build it: {REBUILD}") from None
    why = torch_mismatch(info.TORCH_VERSION, info.CUDA_VERSION, info.WITH_CUDA,
                         torch.__version__, torch.version.cuda)
    if why is not None:
        raise ImportError(f"mhc_ops: the native library mhc_ops._C cannot be loaded: {why}. "
                          f"Rebuild it against the installed torch: {REBUILD}")
    try:
        from . import _C  # noqa: F401  (registers the ops as a side effect)
    except ImportError as e:
        raise ImportError(
            f"mhc_ops: failed to load the native library mhc_ops._C ({e}). It was built against "
            f"{_describe(info)}; installed is torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}. Rebuild it in this environment: {REBUILD}") from e
    return _C


_C = _load()
