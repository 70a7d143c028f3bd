#!/usr/bin/env bash
# The main job. For now: the RoI operator benchmark (op x backend x forward/backward);
# the Mask R-CNN training demo replaces it once the model lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m refimpl.bench ops "$@"
