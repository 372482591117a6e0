"""Replacing a serving stack's functions with mhc_ops' drop-ins, reversibly (SPEC §7.1).

A :class:`Patcher` holds, for one stack, the functions it replaces: where the stack defines each
one and the drop-in that takes its place. The drop-in's own signature is the recorded one (it
copies the stack's names, order, kinds and defaults), so install() compares the stack's
installed function against it and refuses, naming both, when they differ: a stack whose calls
changed shape must not be handed a function written for the old ones.

install() replaces the attribute in the defining module and in every other loaded module that
holds the same function object (model code that did ``from ... import name`` binds the function
in its own namespace); modules imported later import the replacement. Where the stack also
registers the function as a torch.ops operator (vLLM's ``torch.ops.vllm.*``), the drop-in is
registered over that operator's kernels too, and the operator's schema is checked like a
signature. uninstall() puts back each attribute it replaced that still holds the drop-in and
removes the kernel registrations, which brings the stack's kernels back.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

logger = logging.getLogger("mhc_ops.compat")

# Library.impl refuses, in some torch releases (2.11), to replace a kernel that Python code
# registered (as vLLM registers its ops) unless asked to; later releases replace by default.
_OVERRIDE = ({"allow_override": True}
             if "allow_override" in inspect.signature(torch.library.Library.impl).parameters
             else {})

__all__ = ["SignatureMismatch", "Target", "Patcher", "signature_of"]


class SignatureMismatch(RuntimeError):
    """The stack's installed function does not have the signature the drop-in was written for."""


@dataclass(frozen=True)
class Target:
    module: str  # where the stack defines the function, e.g. sglang.kernels.ops.layernorm.mhc
    name: str
    replacement: Callable

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


def _strip(sig: inspect.Signature) -> inspect.Signature:
    """Names, order, kinds and defaults only: annotations differ between a stack's releases
    (and its stub files) without changing a single call."""
    return sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty)
                                   for p in sig.parameters.values()],
                       return_annotation=inspect.Signature.empty)


def _schema_signature(schema) -> inspect.Signature:
    params = []
    for a in schema.arguments:
        kind = (inspect.Parameter.KEYWORD_ONLY if a.kwarg_only
                else inspect.Parameter.POSITIONAL_OR_KEYWORD)
        default = a.default_value if a.has_default_value() else inspect.Parameter.empty
        params.append(inspect.Parameter(a.name, kind, default=default))
    return inspect.Signature(params)


def signature_of(fn) -> inspect.Signature | None:
    """The call signature of a Python function or of a torch.ops operator (from its schema,
    as DeepGEMM exposes its kernels); None when it has none that can be read."""
    try:
        if isinstance(fn, torch._ops.OpOverloadPacket):
            return _schema_signature(fn.default._schema)
        if isinstance(fn, torch._ops.OpOverload):
            return _schema_signature(fn._schema)
    except (AttributeError, RuntimeError):
        return None
    try:
        return _strip(inspect.signature(fn))
    except (TypeError, ValueError):
        return None


def _same_default(a, b) -> bool:
    """1 and 1.0 are the same call; None, "no default" and a number are not."""
    if a is None or b is None or a is inspect.Parameter.empty or b is inspect.Parameter.empty:
        return a is b
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an incomparable default is a different default
        return False


def _same(a: inspect.Signature | None, b: inspect.Signature | None) -> bool:
    if a is None or b is None:
        return False
    pa, pb = list(a.parameters.values()), list(b.parameters.values())
    return ([(p.name, p.kind) for p in pa] == [(p.name, p.kind) for p in pb]
            and all(_same_default(p.default, q.default) for p, q in zip(pa, pb)))


class Patcher:
    """install() / uninstall() of one stack's drop-ins."""

    # dispatch keys whose kernels of a stack's operator are replaced
    OP_KEYS = ("CUDA", "CPU")

    def __init__(self, stack: str, targets: list[Target], op_namespace: str | None = None):
        self.stack = stack  # e.g. "sglang 0.5.23", for messages
        self.targets = list(targets)
        self.op_namespace = op_namespace  # torch.ops namespace the stack registers them in
        self._lock = threading.Lock()
        # (module object, attribute, original) of every attribute replaced, in order
        self._replaced: list[tuple[object, str, object, Callable]] = []
        # (library holding the drop-in kernels, "torch.ops.ns.name (KEY)") per operator
        self._op_impls: list[tuple[object, str]] = []

    @property
    def installed(self) -> bool:
        return bool(self._replaced or self._op_impls)

    def _find_ops(self) -> list[tuple[Target, object, list[str]]]:
        """(target, operator, dispatch keys with a kernel) for each target the stack also
        registered as torch.ops.<op_namespace>.<name>."""
        if not self.op_namespace:
            return []
        out = []
        for t in {t.name: t for t in self.targets}.values():
            try:
                packet = getattr(getattr(torch.ops, self.op_namespace), t.name)
            except (AttributeError, RuntimeError):
                continue
            qual = f"{self.op_namespace}::{t.name}"
            keys = [k for k in self.OP_KEYS
                    if torch._C._dispatch_has_kernel_for_dispatch_key(qual, k)]
            if keys:
                out.append((t, packet, keys))
        return out

    def _register_ops(self, ops) -> None:
        for t, _packet, keys in ops:
            lib = torch.library.Library(self.op_namespace, "IMPL")
            with warnings.catch_warnings():
                # "Overriding a previously registered kernel": that is the point, and it is
                # logged below with the rest of what install() replaced.
                warnings.simplefilter("ignore", UserWarning)
                for k in keys:
                    lib.impl(t.name, t.replacement, k, **_OVERRIDE)
            self._op_impls.append((lib, f"torch.ops.{self.op_namespace}.{t.name} "
                                        f"({', '.join(keys)})"))

    def recorded_signature(self, target: Target) -> inspect.Signature:
        return signature_of(target.replacement)

    def _import(self, module: str):
        try:
            return importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any failure means "this stack is not here"
            logger.info("mhc_ops.compat: %s does not import (%s: %s)", module,
                        type(e).__name__, e)
            return None

    def install(self) -> list[str]:
        """Replace every function of the stack that imports; returns the names replaced
        ("module.attribute", aliases included). Raises ImportError when none of the stack's
        modules import and SignatureMismatch (patching nothing) when an installed function's
        signature differs from the recorded one. Installing twice changes nothing."""
        with self._lock:
            if self.installed:
                return []
            found = []
            for t in self.targets:
                mod = self._import(t.module)
                if mod is None:
                    continue
                if not hasattr(mod, t.name):
                    logger.warning("mhc_ops.compat: %s has no %s; not replaced", t.module,
                                   t.name)
                    continue
                found.append((t, mod, getattr(mod, t.name)))
            ops = self._find_ops()
            if not found and not ops:
                modules = sorted({t.module for t in self.targets})
                raise ImportError(f"mhc_ops.compat: {self.stack} is not importable here "
                                  f"(none of {', '.join(modules)} imports); nothing installed")
            bad = []
            for t, _mod, orig in found:
                have, want = signature_of(orig), self.recorded_signature(t)
                if not _same(have, want):
                    bad.append(f"{t.qualname}: installed {have if have is not None else '?'} "
                               f"but the drop-in is written for {want} ({self.stack})")
            for t, packet, _keys in ops:
                have, want = signature_of(packet), self.recorded_signature(t)
                if not _same(have, want):
                    bad.append(f"torch.ops.{self.op_namespace}.{t.name}: installed {have} but "
                               f"the drop-in is written for {want} ({self.stack})")
            if bad:
                raise SignatureMismatch(
                    "mhc_ops.compat: refusing to install, the stack's signatures differ from the "
                    "recorded ones:\n  " + "\n  ".join(bad))
            originals = {id(orig): (orig, t) for t, _mod, orig in found}
            for t, mod, orig in found:
                setattr(mod, t.name, t.replacement)
                self._replaced.append((mod, t.name, orig, t.replacement))
            self._replace_aliases(originals)
            self._register_ops(ops)
            names = [f"{getattr(m, '__name__', '?')}.{a}" for m, a, _, _ in self._replaced]
            names += [name for _, name in self._op_impls]
            logger.warning("mhc_ops.compat: installed mhc_ops over %s: %s", self.stack,
                           ", ".join(names))
            return names

    def _replace_aliases(self, originals: dict[int, tuple[object, Target]]) -> None:
        done = {(id(m), a) for m, a, _, _ in self._replaced}
        for name, mod in list(sys.modules.items()):
            if mod is None or name.split(".")[0] in ("torch", "mhc_ops"):
                continue
            try:
                items = list(vars(mod).items())
            except TypeError:
                continue
            for attr, value in items:
                hit = originals.get(id(value))
                if hit is None or hit[0] is not value or (id(mod), attr) in done:
                    continue
                setattr(mod, attr, hit[1].replacement)
                self._replaced.append((mod, attr, value, hit[1].replacement))
                done.add((id(mod), attr))

    def uninstall(self) -> list[str]:
        """Put back every attribute install() replaced that still holds the drop-in; returns
        the names restored. A no-op when nothing is installed."""
        with self._lock:
            restored = []
            for mod, attr, orig, repl in reversed(self._replaced):
                name = f"{getattr(mod, '__name__', '?')}.{attr}"
                if getattr(mod, attr, None) is repl:
                    setattr(mod, attr, orig)
                    restored.append(name)
                else:
                    logger.warning("mhc_ops.compat: %s was replaced again after install(); "
                                   "left as it is", name)
            self._replaced.clear()
            for lib, name in reversed(self._op_impls):
                lib._destroy()  # the stack's own kernel is the registered one again
                restored.append(name)
            self._op_impls.clear()
            if restored:
                logger.warning("mhc_ops.compat: uninstalled mhc_ops from %s: %s", self.stack,
                               ", ".join(reversed(restored)))
            return list(reversed(restored))
