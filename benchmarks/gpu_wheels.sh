#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored through .git/info/exclude) the wheels benchmarks/gpu_check.sh installs on the GPU
# machine, which has CPython 3.12 with PyTorch, numpy, huggingface-hub, safetensors, regex, requests, filelock,
# Pillow, PyYAML and tqdm but neither diffusers nor omegaconf: those two, at this venv's versions. diffusers'
# other requirement, importlib_metadata, is imported only below Python 3.8. Needs .venv (make install).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf .whl
.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "diffusers==$(version diffusers)" "omegaconf==$(version omegaconf)"
ls -l .whl
