#!/usr/bin/env bash
# Creates (or reuses) the virtual environment .venv at the repository root and builds mhc_ops
# into it, editable, so that the in-tree package carries its compiled _C. Idempotent: a second
# run reuses .venv, installs nothing that is importable already and rebuilds only when a file
# under csrc/ or setup.py is newer than the built library.
#
#   PYTHON=python3                interpreter to create .venv from
#   MHC_TORCH_SPEC=torch==2.13.0  what to pip install when no torch is importable
#   MHC_BUILD_CUDA, TORCH_CUDA_ARCH_LIST   passed on to setup.py (see README)
#
# Where $PYTHON already imports torch (a CUDA machine with torch preinstalled, maybe itself in a
# venv), .venv sees that interpreter's packages and nothing is downloaded: such machines may
# have no network at all.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
TORCH_SPEC="${MHC_TORCH_SPEC:-torch==2.13.0}"
log() { echo "[setup] $*" >&2; }
# Runs "$@" in $ROOT with its output in build/setup.log; shows the log's tail if it fails.
logged() {
  mkdir -p "$ROOT/build"
  local start=$SECONDS
  if ! (cd "$ROOT" && "$@") >"$ROOT/build/setup.log" 2>&1; then
    grep -E -m 20 'error:|Error:|FAILED:' "$ROOT/build/setup.log" >&2 || true
    tail -n 15 "$ROOT/build/setup.log" >&2
    log "FAILED after $((SECONDS - start)) s: $*; full output in build/setup.log"
    exit 1
  fi
  log "done in $((SECONDS - start)) s"
}

if ! "$VENV/bin/python" -c "" 2>/dev/null; then
  if "$PY" -c "import torch" 2>/dev/null; then
    log "creating $VENV on top of $("$PY" -c 'import sys; print(sys.executable)') (torch" \
        "$("$PY" -c 'import torch; print(torch.__version__)'))"
    # --system-site-packages only reaches the base interpreter (sys.base_prefix), not a venv
    # that $PY may itself live in: a .pth file adds that venv's site-packages (and their .pth).
    "$PY" -m venv --clear --system-site-packages "$VENV" 2>/dev/null ||
      "$PY" -m venv --clear --system-site-packages --without-pip "$VENV"
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PY" -c 'import site
for p in site.getsitepackages(): print(f"import site; site.addsitedir({p!r})")' \
      > "$site/_mhc_parent_site_packages.pth"
  else
    log "creating $VENV from $PY (no torch there: it will be installed)"
    "$PY" -m venv --clear "$VENV"
  fi
fi
VPY="$VENV/bin/python"

# Install only what is missing: torch first, then the build and test tools.
missing=()
"$VPY" -c "import torch" 2>/dev/null || missing+=("$TORCH_SPEC")
for mod in wheel numpy pytest; do
  "$VPY" -c "import $mod" 2>/dev/null || missing+=("$mod")
done
# pyproject's licence expression needs setuptools 77; a fresh venv seeds an older one.
"$VPY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" \
  2>/dev/null || missing+=("setuptools>=77")
"$VPY" -c "import ninja" 2>/dev/null || command -v ninja >/dev/null || missing+=(ninja)
if [ ${#missing[@]} -gt 0 ]; then
  log "pip install ${missing[*]}"
  logged "$VPY" -m pip install "${missing[@]}"
fi

# torch's extension builder runs `ninja` from PATH: put the venv's (or the pip package's) first.
export PATH="$VENV/bin:$PATH"
ninja_dir="$("$VPY" -c 'import ninja; print(ninja.BIN_DIR)' 2>/dev/null || true)"
[ -n "$ninja_dir" ] && export PATH="$ninja_dir:$PATH"

# The library must link the shared libstdc++ that torch loads (setup.py stops otherwise). Some
# images put compiler wrappers in CC / CXX whose library path finds libstdc++.a first (the GPU
# machine's /opt/gcc); for this repository's own builds, use the system g++ there, and say so.
# A user's `pip install` gets setup.py's message instead and picks a compiler itself.
links_shared_libstdcxx() {
  local dir rc=1
  dir="$(mktemp -d)"
  printf '#include <string>\nstd::string mhc_probe(int v) { return std::to_string(v); }\n' \
    > "$dir/p.cpp"
  if "$1" -shared -fPIC -o "$dir/p.so" "$dir/p.cpp" 2>/dev/null &&
     readelf -d "$dir/p.so" 2>/dev/null | grep -q 'libstdc++\.so'; then
    rc=0
  fi
  rm -rf "$dir"
  return $rc
}
if [ -n "${CXX:-}" ] && command -v readelf >/dev/null && [ -x /usr/bin/g++ ] &&
   ! links_shared_libstdcxx "$CXX" && links_shared_libstdcxx /usr/bin/g++; then
  log "CXX=$CXX links libstdc++ statically; building with CC=/usr/bin/gcc CXX=/usr/bin/g++"
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
fi

# Build. pip's editable build compiles in a throw-away directory, so once the editable install
# is in place, rebuilds go through setup.py build_ext --inplace, whose objects under build/ let
# ninja recompile only what changed.
origin="$(cd / && "$VPY" -c 'import importlib.util as u; s = u.find_spec("mhc_ops")
print(s.origin if s else "")' 2>/dev/null || true)"
so="$ROOT/mhc_ops/_C$("$VPY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
newer="$(find "$ROOT/csrc" "$ROOT/setup.py" -newer "$so" -type f -print -quit 2>/dev/null || true)"
if [ "$origin" != "$ROOT/mhc_ops/__init__.py" ]; then
  log "building mhc_ops: pip install --no-build-isolation --no-deps -e ."
  logged "$VPY" -m pip install --no-build-isolation --no-deps -e .
elif [ ! -f "$so" ] || [ -n "$newer" ] || ! (cd / && "$VPY" -c "import mhc_ops") 2>/dev/null; then
  log "rebuilding mhc_ops: python setup.py build_ext --inplace"
  logged "$VPY" setup.py build_ext --inplace
else
  log "mhc_ops is built and up to date ($(basename "$so"))"
fi
(cd / && "$VPY" -c "import mhc_ops, torch
print('[setup] ready: mhc_ops', mhc_ops.__version__, '| torch', torch.__version__,
      '| CUDA kernels built:', mhc_ops.cuda_available(), '| GPU visible:',
      torch.cuda.is_available())") >&2
