#!/usr/bin/env bash
# Compiles and links the CUDA sources on a machine with no GPU, so that a CUDA compile error
# fails CI. torch 2.14.1 (a CUDA 13 build; on local disk on the dev machines) goes into its own
# venv, .cuvenv; the build is out of tree (build/cuda-*) and leaves the CPU build alone. The
# CUDA toolkit on these machines has no cuBLAS/cuSPARSE headers or libraries, which torch's CUDA
# headers include and the library links: they come from the torch wheel's nvidia/cu13 package,
# whose libraries are versioned only (libcublas.so.13), so build/cuda-link holds the
# unversioned names the linker looks for. With TORCH_CUDA_ARCH_LIST unset, setup.py's default
# for a machine with no GPU is built and checked: sm_90 and sm_100 code, compute_100 PTX.
#
#   MHC_CUDA_TORCH_SPEC=torch==2.14.1  TORCH_CUDA_ARCH_LIST=<setup.py's>  CUDA_HOME=/usr/local/cuda
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cuvenv"
cd "$ROOT"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch, ninja, setuptools, numpy" 2>/dev/null; then
  # The CUDA build of torch takes 5.5 GB in the venv, the build and CI's package step about 1 GB
  # more: say so before pip runs out of disk.
  free_gb=$(( $(df -Pk "$ROOT" | awk 'NR == 2 {print $4}') / 1048576 ))
  [ "$free_gb" -ge 7 ] || {
    echo "[cuda-compile] FAILED: $free_gb GB free on $(df -P "$ROOT" | awk 'NR == 2 {print $6}');" \
         "the CUDA build of torch in $VENV and the build need about 7 GB" >&2
    exit 1
  }
  echo "[cuda-compile] pip install ${MHC_CUDA_TORCH_SPEC:-torch==2.14.1} numpy ninja setuptools wheel" >&2
  # No cache: the wheels are on local disk, and a cached copy would double the space taken.
  "$VENV/bin/pip" install -q --no-cache-dir "${MHC_CUDA_TORCH_SPEC:-torch==2.14.1}" numpy ninja \
    setuptools wheel 2>&1 | { grep -v -E "^WARNING: Location '.*' is ignored" || true; }
  "$VENV/bin/python" -c "import torch, ninja, setuptools, numpy"
fi
cu13="$("$VENV/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
mkdir -p build/cuda-link
for lib in cublas cublasLt; do ln -sf "$cu13/lib/lib$lib.so.13" "build/cuda-link/lib$lib.so"; done
start=$SECONDS
PATH="$VENV/bin:$PATH" CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" CPATH="$cu13/include${CPATH:+:$CPATH}" \
  LIBRARY_PATH="$ROOT/build/cuda-link${LIBRARY_PATH:+:$LIBRARY_PATH}" \
  MHC_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}" \
  "$VENV/bin/python" setup.py build_ext --build-temp build/cuda-temp --build-lib build/cuda-lib \
  > build/cuda-compile.log 2>&1 || {
    grep -E -m 20 'error' build/cuda-compile.log >&2 || true
    tail -n 20 build/cuda-compile.log >&2
    echo "[cuda-compile] FAILED; full output in build/cuda-compile.log" >&2
    exit 1
  }
so="$(ls build/cuda-lib/mhc_ops/_C*.so)"
nm -DC "$so" | grep "mhc::mhc_pre_cuda" >/dev/null || { echo "[cuda-compile] no CUDA entry points in $so" >&2; exit 1; }
# Every mhc:: symbol the library uses is defined in it: a kernel instance declared extern but
# compiled nowhere (csrc/cuda/hc_fused_instances.h) would otherwise fail only at import.
undef="$(nm -DC --undefined-only "$so" | grep "mhc::" || true)"
[ -z "$undef" ] || { echo "[cuda-compile] undefined in $so:" >&2; echo "$undef" >&2; exit 1; }
archs="$(sed -n "s/^CUDA_ARCH_LIST = '\(.*\)'$/\1/p" build/cuda-lib/mhc_ops/_build_info.py)"
# Every architecture must have been compiled: torch's ninja file holds the -gencode flags, and
# cuobjdump, where the toolkit has it, lists what the library carries.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  [ "$archs" = "9.0;10.0+PTX" ] || { echo "[cuda-compile] default architectures are '$archs'" >&2; exit 1; }
  for code in sm_90 sm_100 compute_100; do
    grep -q -- "-gencode=arch=compute_${code#*_},code=$code" build/cuda-temp/build.ninja ||
      { echo "[cuda-compile] not compiled for $code" >&2; exit 1; }
  done
  if command -v cuobjdump >/dev/null; then
    { cuobjdump --list-elf "$so" | grep -q "sm_90\." && cuobjdump --list-elf "$so" | grep -q "sm_100\." &&
      cuobjdump --list-ptx "$so" | grep -q -E "(sm|compute)_100"; } ||
      { echo "[cuda-compile] cuobjdump: $so lacks sm_90 or sm_100 code or the PTX" >&2; exit 1; }
  fi
fi
echo "[cuda-compile] OK: $(basename "$so") ($(du -m "$so" | cut -f1) MB) with CUDA kernels for $archs in $((SECONDS - start)) s" >&2
