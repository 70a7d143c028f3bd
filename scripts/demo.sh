#!/usr/bin/env bash
# The main job: generate the synthetic shapes (COCO format), train the small Mask R-CNN
# from scratch on the CPU, evaluate COCO box and mask AP, and write runs/demo/ (metrics
# JSON, checkpoint, a predictions figure). Extra arguments go to `python -m refimpl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# idle OpenMP threads of torch and numba must not spin against each other on few cores
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
.venv/bin/python -m refimpl demo "$@"
