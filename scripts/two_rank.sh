#!/usr/bin/env bash
# Two ranks of torch.distributed (NCCL) on two GPUs, one process each (tools/two_rank.py): each
# warms up mhc_ops and runs the main job's stack on its own GPU; the outputs must equal a
# single-GPU run bit for bit. Arguments go to tools/two_rank.py (--model, --hidden-size,
# --layers, --tokens). Needs the CUDA build (scripts/setup_env.sh) and two visible GPUs.
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0), as the GPU machines require.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export NCCL_NVLS_ENABLE=0 CUDA_DEVICE_ORDER=PCI_BUS_ID PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
gpus="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$gpus" -lt 2 ]; then
  echo "[two_rank] needs two GPUs; $gpus visible" >&2
  exit 2
fi
ref="$(mktemp --suffix=.pt)"
trap 'rm -f "$ref"' EXIT
"$PY" tools/two_rank.py --single "$ref" "$@"
"$PY" -m torch.distributed.run --standalone --nproc-per-node 2 tools/two_rank.py --compare "$ref" "$@"
