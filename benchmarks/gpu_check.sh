#!/usr/bin/env bash
# One-GPU check of the in-process sampler (benchmarks/gpu_check.py) where PyTorch is installed but diffusers and
# omegaconf are not: installs the wheels in .whl/ (fetch them first with benchmarks/gpu_wheels.sh) into
# $GPU_CHECK_SITE (default a new temporary folder), then runs the check; with $OUT set, it also writes $OUT/gpu_check.json.
#   bash benchmarks/gpu_check.sh             # full size on the GPU, about 5 minutes on an H100
#   bash benchmarks/gpu_check.sh --tiny      # CPU smoke test; further arguments go to gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
site=${GPU_CHECK_SITE:-$(mktemp -d)}
python=${PYTHON:-python3}
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
exec "$python" benchmarks/gpu_check.py ${OUT:+--json "$OUT/gpu_check.json"} "$@"
