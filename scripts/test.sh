#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, the CPU tests, then the CUDA kernels in their
# own process under numba's CUDA simulator (the variable must be set before numba loads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# idle OpenMP threads of torch and numba must not spin against each other on few cores
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -m "not cudasim" --ignore=tests/cuda "$@"
NUMBA_ENABLE_CUDASIM=1 .venv/bin/python -m pytest -m cudasim tests/cuda refimpl/course/grading/test_07_cuda.py "$@"
