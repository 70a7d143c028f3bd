#!/usr/bin/env bash
# Remake the committed measurements in docs/results/ and the README blocks rendered from them
# (refimpl/engine/results.py). Run on a quiet machine, one step at a time if you like:
#
#   bash scripts/measure_results.sh [STEP ...]     # steps: demo bench capstone ablation readme
#
# `bench` needs an environment with torchvision (the oracle: the CUDA build of torch, which runs
# on the CPU; see README "Two commands"): ORACLE=/path/to/venv/bin/python. The ablation is
# hours of CPU (18 runs of about 8 minutes on a free core): it runs two processes, one per
# core, and continues where an interrupted run stopped (runs/ablation).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ORACLE=${ORACLE:-}
OUT=docs/results
mkdir -p "$OUT"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(demo bench capstone readme)

for step in "${steps[@]}"; do
  case "$step" in
    demo)
      "$PY" -m refimpl demo --out runs/demo --no-progress
      cp runs/demo/demo.json "$OUT/demo.json"
      cp runs/demo/predictions.png docs/demo_predictions.png
      ;;
    bench)
      [ -n "$ORACLE" ] || { echo "bench: set ORACLE to a python with torchvision" >&2; exit 2; }
      "$ORACLE" -m refimpl bench ops --repeats 7 --threads 2 --json "$OUT/bench_ops.json"
      "$ORACLE" -m refimpl bench overhead --json "$OUT/bench_overhead.json"
      "$ORACLE" -m refimpl bench model --repeats 3 --json "$OUT/bench_model.json"
      ;;
    capstone)
      "$PY" scripts/capstone_long.py
      "$PY" scripts/capstone_speed.py
      ;;
    ablation)
      "$PY" - <<'EOF'
from refimpl.data.shapes import SHAPES_HARD, dataset_matches, write_shapes_dataset
from refimpl.engine.ablate import SIZES
n, m = SIZES["cpu"]["train"], SIZES["cpu"]["val"]
data = "runs/ablation/data"
if not (dataset_matches(data, "train", n, 0, SHAPES_HARD) and dataset_matches(data, "val", m, 0, SHAPES_HARD)):
    write_shapes_dataset(data, n, m, 0, SHAPES_HARD)  # once, before the two processes share it
EOF
      run() { "$PY" -m refimpl ablate --size cpu --seeds 0 1 2 --threads 1 --no-progress \
                --out runs/ablation --variants "$@"; }
      run roipool roiwarp-max roiwarp-avg & a=$!
      run roialign-max roialign-avg softmax & b=$!
      wait $a $b
      "$PY" -m refimpl ablate --size cpu --seeds 0 1 2 --out runs/ablation --collect
      cp runs/ablation/ablation.json runs/ablation/ablation.md "$OUT/"
      ;;
    readme)
      "$PY" -m refimpl.engine.results --write
      ;;
    *) echo "unknown step $step (demo bench capstone ablation readme)" >&2; exit 2 ;;
  esac
done
