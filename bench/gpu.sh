#!/usr/bin/env bash
# On a GPU machine: texts/s and GPU utilisation of the embedding backend at 3 batch sizes,
# in under 5 minutes. Needs a Python whose torch sees CUDA (the repo's .venv pins the CPU
# wheel; GPU nodes bring their own torch, see cluster.yaml): PYTHON=/path/to/python bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench/gpu.sh: torch in $PYTHON sees no CUDA device; set PYTHON to an interpreter with a CUDA torch" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 290 "$PYTHON" -m bench.embed_gpu --device cuda --batch-sizes 32,128,512 --texts "${TEXTS:-16384}"
