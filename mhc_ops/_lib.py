"""Loads the native library mhc_ops._C, which registers torch.ops.mhc.*."""

from __future__ import annotations

import torch


def _load():
    try:
        from . import _C  # noqa: F401  (registers the ops as a side effect)
    except ImportError as e:
        try:
            from . import _build_info as info

            built = (
                f"torch {info.TORCH_VERSION}, CUDA {info.CUDA_VERSION}, "
                f"arch {info.CUDA_ARCH_LIST or '-'}, git {info.GIT_SHA[:12]}"
            )
        except ImportError:
            built = "unknown (mhc_ops/_build_info.py is missing: the package was never built)"
        raise ImportError(
            f"mhc_ops: failed to load the native library mhc_ops._C ({e}). It was built against "
            f"{built}; installed is torch {torch.__version__}, CUDA {torch.version.cuda}. "
            "Rebuild with `pip install --no-build-isolation -e .` in this environment."
        ) from e
    return _C


_C = _load()
