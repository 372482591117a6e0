#!/usr/bin/env bash
# Packages mhc_ops as a user gets it and installs it into a fresh environment (SPEC §9), in
# build/pkg (archives) and build/pkg-venv (recreated every run):
#  1. python -m build --sdist, in build's isolated environment: packaging the sources needs no
#     torch. The archive must hold every file of csrc/ that git tracks and LICENSE, and no
#     library or build record.
#  2. A fresh venv with torch (MHC_TORCH_SPEC, default torch==2.13.0, CPU), numpy, setuptools>=77
#     and ninja, as a serving environment. A plain `pip install <sdist>` there must stop at once,
#     saying to add --no-build-isolation, and leave torch as it was.
#  3. pip wheel --no-build-isolation --no-deps <sdist>: the sdist builds. The wheel must require
#     torch==<that torch>, name its licence and carry it, and ship one library without debug
#     information.
#  4. pip install <wheel>, dependencies included (the pin must be met by the installed torch),
#     then, outside the tree, import it (the drop-in modules and the vLLM plugin entry point
#     included) and run python -m mhc_ops on a small stack on the CPU.
# Prints the sizes of the sdist, the wheel and the library, and the time taken.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKG="$ROOT/build/pkg"
VENV="$ROOT/build/pkg-venv"
VPY="$VENV/bin/python"
TORCH_SPEC="${MHC_TORCH_SPEC:-torch==2.13.0}"
start=$SECONDS
log() { echo "[package] $*" >&2; }
fail() { echo "[package] FAILED: $*" >&2; exit 1; }
# pip's notes about the machine's package indexes are noise here.
quiet() { grep -v -E "^WARNING: Location '.*' is ignored" || true; }

rm -rf "$PKG"
mkdir -p "$PKG"
log "fresh venv $VENV: pip install $TORCH_SPEC numpy setuptools>=77 ninja build"
python3 -m venv --clear "$VENV"
"$VPY" -m pip install -q --no-cache-dir "$TORCH_SPEC" numpy "setuptools>=77" ninja build 2>&1 | quiet
torch_before="$("$VPY" -c 'import torch; print(torch.__version__)')"

# 1. The sdist. `python -m build` runs from $PKG: from the repository root, `-m build` would find
#    the build/ folder first.
(cd "$PKG" && "$VPY" -m build --sdist --outdir "$PKG" "$ROOT") > "$PKG/sdist.log" 2>&1 ||
  { tail -n 20 "$PKG/sdist.log" >&2; fail "python -m build --sdist"; }
sdist="$(ls "$PKG"/mhc_ops-*.tar.gz)"
listing="$(tar tzf "$sdist" | sed 's|^[^/]*/||')"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  missing="$(comm -23 <(git -C "$ROOT" ls-files csrc LICENSE setup.py pyproject.toml | sort) \
                      <(echo "$listing" | sort))"
  [ -z "$missing" ] || fail "the sdist lacks: $missing"
fi
! echo "$listing" | grep -E '\.so$|_build_info\.py$' || fail "the sdist carries build outputs"
log "sdist $(basename "$sdist"): $(echo "$listing" | grep -c '^csrc/.') files of csrc/, LICENSE"

# 2. Plain pip install: build isolation hides the installed torch, so setup.py must refuse.
set +e
out="$(cd "$PKG" && "$VPY" -m pip install --no-cache-dir "$sdist" 2>&1)"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "plain pip install <sdist> built something"
echo "$out" | grep -q "Install with --no-build-isolation" || { echo "$out" | quiet | tail -n 20 >&2
  fail "plain pip install <sdist> did not stop with the message to add --no-build-isolation"; }
[ "$("$VPY" -c 'import torch; print(torch.__version__)')" = "$torch_before" ] ||
  fail "plain pip install <sdist> changed torch"
log "plain pip install <sdist> stops: $(echo "$out" | grep -o 'mhc_ops setup: [^.]*' | head -n1)"

# 3. The wheel, built from the sdist in the serving environment.
t0=$SECONDS
(cd "$PKG" && PATH="$VENV/bin:$PATH" MAX_JOBS="${MAX_JOBS:-2}" "$VPY" -m pip wheel \
  --no-build-isolation --no-deps --no-cache-dir -w "$PKG" "$sdist") > "$PKG/wheel.log" 2>&1 ||
  { grep -E -m 20 'error' "$PKG/wheel.log" >&2; tail -n 20 "$PKG/wheel.log" >&2
    fail "pip wheel --no-build-isolation <sdist>; full output in $PKG/wheel.log"; }
wheel="$(ls "$PKG"/mhc_ops-*.whl)"
log "wheel $(basename "$wheel") built from the sdist in $((SECONDS - t0)) s"
"$VPY" - "$wheel" "${torch_before%%+*}" <<'EOF' || fail "the wheel's contents"
import os, subprocess, sys, tempfile, zipfile

wheel, torch_version = sys.argv[1:]
z = zipfile.ZipFile(wheel)
names = z.namelist()
meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
headers = meta.split("\n\n", 1)[0].splitlines()
for line in (f"Requires-Dist: torch=={torch_version}", "License-Expression: Apache-2.0"):
    assert line in headers, f"METADATA lacks {line!r}: {headers}"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE"
assert "mhc_ops/_build_info.py" in names, "no build record"
libs = [n for n in names if n.endswith(".so")]
assert len(libs) == 1, libs
with tempfile.TemporaryDirectory() as d:
    lib = z.extract(libs[0], d)
    sections = subprocess.run(["readelf", "-S", "-W", lib], capture_output=True, text=True,
                              check=True).stdout
    assert ".debug_info" not in sections, "the library carries debug information"
    size = os.path.getsize(lib)
print(f"[package] wheel: {os.path.getsize(wheel) / 2**20:.2f} MiB, {libs[0]} "
      f"{size / 2**20:.2f} MiB, no debug information; requires torch=={torch_version}",
      file=sys.stderr)
EOF

# 4. Install the wheel with its dependencies, then import it from outside the tree.
out="$("$VPY" -m pip install --no-cache-dir "$wheel" 2>&1)" ||
  { echo "$out" | quiet | tail -n 20 >&2; fail "pip install <wheel>"; }
echo "$out" | grep -E "^(Requirement already satisfied: torch|Successfully installed)" >&2 || true
[ "$("$VPY" -c 'import torch; print(torch.__version__)')" = "$torch_before" ] ||
  fail "installing the wheel changed torch"
(cd "$PKG" && "$VPY" -c "
import os, sys, torch, mhc_ops
import mhc_ops.compat.sglang, mhc_ops.compat.vllm, mhc_ops.compat.deep_gemm
from importlib.metadata import entry_points
from mhc_ops import _build_info as info
plugins = [e.value for e in entry_points(group='vllm.general_plugins') if e.name == 'mhc_ops']
assert plugins == ['mhc_ops.compat.vllm:register'], plugins
assert os.path.realpath(mhc_ops.__file__).startswith(os.path.realpath(sys.prefix)), mhc_ops.__file__
assert info.TORCH_VERSION == torch.__version__, (info.TORCH_VERSION, torch.__version__)
print('[package] installed', mhc_ops.__file__, 'built against torch', info.TORCH_VERSION,
      file=sys.stderr)" &&
  "$VPY" -m mhc_ops --hidden-size 256 --layers 2 --tokens 16 --iters 1 > "$PKG/smoke.log" 2>&1) ||
  { tail -n 30 "$PKG/smoke.log" >&2 2>/dev/null; fail "the installed wheel"; }
log "python -m mhc_ops with the installed wheel: $(tail -n 1 "$PKG/smoke.log")"
log "OK in $((SECONDS - start)) s: sdist $(du -k "$sdist" | cut -f1) KiB"
