"""Typed registry of the MHC_* environment flags (SPEC §5).

Each flag is declared once, with its type, default and a one-line doc::

    from mhc_ops import envs
    envs.MHC_FUSE_POST_PRE.get()          # reads the environment now
    with envs.MHC_FUSE_POST_PRE.override(False):
        ...                               # restored afterwards, "unset" included

Flags live in ``os.environ``, so C++ code and child processes see the same values. Invalid
values warn once and fall back to the default; an unknown ``MHC_*`` variable is reported once
(typo guard). Python dispatchers read their flag at every eager call; under ``torch.compile``
the value seen while tracing is baked into the compiled graph, so flip flags before compiling
(or call ``torch.compiler.reset()``). ``python -m mhc_ops.envs`` prints every flag, its value
and the code paths it resolves to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

__all__ = ["Flag", "FLAGS", "check_unknown", "describe"]

T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_warned: set[tuple[str, str]] = set()


def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")


def _parse_int(s: str) -> int:
    return int(s.strip())


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(s: str) -> str:
        v = s.strip().lower()
        if v not in choices:
            raise ValueError(f"expected one of {list(choices)}")
        return v

    return parse


def _level(s: str) -> str:
    v = s.strip().upper()
    if v not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return v


def _fmt(v: Any) -> str:
    return ("1" if v else "0") if isinstance(v, bool) else str(v)


@dataclass(frozen=True)
class Flag(Generic[T]):
    name: str
    default: T
    parse: Callable[[str], T]
    doc: str

    def get(self) -> T:
        """The current value: the environment's, or the default when unset or invalid."""
        raw = os.environ.get(self.name)
        if raw is None:
            return self.default
        try:
            return self.parse(raw)
        except ValueError as e:
            if (self.name, raw) not in _warned:
                _warned.add((self.name, raw))
                warnings.warn(f"mhc_ops: {self.name}={raw!r} is invalid ({e}); using the "
                              f"default {_fmt(self.default)!r}", stacklevel=2)
            return self.default

    def set(self, value: T) -> None:
        """Set the flag for this process (and children) after checking the value."""
        text = _fmt(value)
        self.parse(text)  # raises ValueError on a bad value
        os.environ[self.name] = text

    def is_set(self) -> bool:
        return self.name in os.environ

    def clear(self) -> None:
        os.environ.pop(self.name, None)

    @contextlib.contextmanager
    def override(self, value: T) -> Iterator[None]:
        """Set the flag inside the block; restore the previous value, or unset, afterwards."""
        previous = os.environ.get(self.name)
        self.set(value)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(self.name, None)
            else:
                os.environ[self.name] = previous


MHC_FUSE_POST_PRE = Flag("MHC_FUSE_POST_PRE", True, _parse_bool,
                         "mhc_post_pre / mhc_shifted_post_pre use the fused ops; false: "
                         "mhc_post then mhc_pre / mhc_post_combine then mhc_stats")
MHC_BF16_FP32_GEMM_ALGO = Flag("MHC_BF16_FP32_GEMM_ALGO", "cublas", _choice("cublas", "fp32"),
                               "CUDA backend of linear_bf16_fp32: cublas or fp32 (upcast, fp32 GEMM)")
MHC_BATCH_INVARIANT = Flag("MHC_BATCH_INVARIANT", False, _parse_bool,
                           "plans whose per-token results do not depend on T (bitwise)")
MHC_WARMUP_MAX_TOKENS = Flag("MHC_WARMUP_MAX_TOKENS", 8192, _parse_int,
                             "default max_tokens of mhc_ops.warmup.warmup")
MHC_SKIP_WARMUP = Flag("MHC_SKIP_WARMUP", False, _parse_bool, "make warmup() a logged no-op")
MHC_DISABLE_KERNELS = Flag("MHC_DISABLE_KERNELS", False, _parse_bool,
                           "the Python API routes to mhc_ops.reference (debugging)")
MHC_LOG_LEVEL = Flag("MHC_LOG_LEVEL", "WARNING", _level, "the mhc_ops logger's level")

FLAGS: dict[str, Flag] = {f.name: f for f in (
    MHC_FUSE_POST_PRE, MHC_BF16_FP32_GEMM_ALGO, MHC_BATCH_INVARIANT, MHC_WARMUP_MAX_TOKENS,
    MHC_SKIP_WARMUP, MHC_DISABLE_KERNELS, MHC_LOG_LEVEL)}

_reported_unknown: set[str] = set()


def check_unknown() -> list[str]:
    """Warn once about each MHC_* variable in the environment that is not a known flag."""
    unknown = sorted(k for k in os.environ if k.startswith("MHC_") and k not in FLAGS
                     and k not in _BUILD_VARIABLES)
    for name in unknown:
        if name not in _reported_unknown:
            _reported_unknown.add(name)
            close = [f for f in FLAGS if _similar(f, name)]
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.warn(f"mhc_ops: unknown environment variable {name}{hint}; known flags: "
                          f"{', '.join(FLAGS)}", stacklevel=2)
    return unknown


# Read by setup.py at build time only; setting them at run time changes nothing.
_BUILD_VARIABLES: dict[str, str] = {
    "MHC_BUILD_CUDA": "build time only: compile the CUDA kernels (auto, 1 or 0)",
    "MHC_STUDY": "build time only: 1 defines MHC_STUDY, the study build's knobs (default 0)",
}


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.8


def resolved_paths() -> dict[str, str]:
    """The code paths the current flags select, in words."""
    fused = MHC_FUSE_POST_PRE.get()
    return {
        "mhc_post_pre": "torch.ops.mhc.mhc_fused_post_pre" if fused
        else "torch.ops.mhc.mhc_post + torch.ops.mhc.mhc_pre",
        "mhc_shifted_post_pre": "torch.ops.mhc.mhc_shifted_post_pre" if fused
        else "torch.ops.mhc.mhc_post_combine + torch.ops.mhc.mhc_stats",
        "linear_bf16_fp32 (CUDA)": "cuBLAS bf16 GEMM, fp32 output"
        if MHC_BF16_FP32_GEMM_ALGO.get() == "cublas" else "upcast to fp32, fp32 GEMM",
        "plans": "batch-invariant" if MHC_BATCH_INVARIANT.get() else "fastest per token count",
        "python API": "mhc_ops.reference (kernels disabled)" if MHC_DISABLE_KERNELS.get()
        else "torch.ops.mhc kernels",
        "warmup": "skipped" if MHC_SKIP_WARMUP.get()
        else f"max_tokens={MHC_WARMUP_MAX_TOKENS.get()}",
    }


def describe() -> str:
    lines = ["mhc_ops flags:"]
    for f in FLAGS.values():
        state = f"{os.environ[f.name]!r} -> {_fmt(f.get())}" if f.is_set() else \
            f"unset -> {_fmt(f.get())} (default)"
        lines.append(f"  {f.name:<24} {state:<28} {f.doc}")
    lines.append("resolved paths:")
    for k, v in resolved_paths().items():
        lines.append(f"  {k:<24} {v}")
    return "\n".join(lines)


def configure_logging() -> logging.Logger:
    """The package logger at MHC_LOG_LEVEL."""
    logger = logging.getLogger("mhc_ops")
    logger.setLevel(MHC_LOG_LEVEL.get())
    return logger


if __name__ == "__main__":
    check_unknown()
    print(describe())
