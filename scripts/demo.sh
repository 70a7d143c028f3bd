#!/usr/bin/env bash
# The main job. For now: the RoI operator benchmark (op x backend x forward/backward);
# the Mask R-CNN training demo replaces it once the model lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# idle OpenMP threads of torch and numba must not spin against each other on few cores
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
.venv/bin/python -m refimpl.bench ops "$@"
