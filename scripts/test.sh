#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, the CPU tests, then the CUDA kernels in their
# own process under numba's CUDA simulator (the variable must be set before numba loads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -m "not cudasim" --ignore=tests/cuda "$@"
NUMBA_ENABLE_CUDASIM=1 .venv/bin/python -m pytest -m cudasim tests/cuda "$@"
