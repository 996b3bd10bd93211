#!/usr/bin/env bash
# The CUDA paths of vcache on one GPU, one PASS/FAIL line each with clips/s (benchmarks/gpu_check.py).
# Usage: bash benchmarks/gpu_check.sh [WORKDIR]   (from the repository root; about 5-8 minutes)
# A bare machine: uses .venv when it was carried, else installs the CUDA wheel of torch (needs network).
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-${OUT:-/tmp}/vcache_gpu_check}
PY=.venv/bin/python
if ! "$PY" -c "import torch, vcache; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "installing a CUDA torch into .venv (no usable venv was carried)"
  python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip &&
    .venv/bin/pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu126 &&
    .venv/bin/pip install -q faiss-cpu -e ".[test]" || { echo "FAIL install"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
timeout 480 "$PY" benchmarks/gpu_check.py "$WORK"
rc=$?
[ $rc -eq 124 ] && echo "FAIL timeout (8 minutes)"
exit $rc
