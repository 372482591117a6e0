#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the main job, python -m mhc_ops: a small
# DeepSeek-V4-shaped mHC stack on CUDA when the kernels and a GPU are there, else on the CPU,
# checked against the unfused path and the float32 reference. Arguments go to python -m mhc_ops
# (--help lists them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m mhc_ops "$@"
