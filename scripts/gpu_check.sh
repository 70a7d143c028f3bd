#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one command (issue: CUDA kernels and the PyTorch ops):
#   1. the op tests on the real device: tests/cuda (the numba-cuda kernels, both layouts),
#      the CUDA tests of tests/ops (torch ops on CUDA tensors against the CPU ops and against
#      torchvision's CUDA ops, opcheck, gradcheck, torch.compile) and tests/model;
#   2. the GPU benchmark against torchvision (python -m refimpl bench gpu).
# Needs a CUDA build of torch, torchvision and numba-cuda in the running Python (PYTHON,
# default python); this checkout is put on PYTHONPATH, nothing is installed. Reports go to
# $OUT (default runs/gpu): pytest's junit XML and log, the benchmark's table and JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu}"
mkdir -p "$out"
py="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset NUMBA_ENABLE_CUDASIM

"$py" - <<'PY' | tee "$out/env.txt"
import numba, torch
from numba import cuda
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("numba", numba.__version__, "cuda available", cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name())
try:
    import torchvision
    print("torchvision", torchvision.__version__)
except ImportError as e:
    print("torchvision missing:", e)
PY

# addopts dropped: --strict-markers would reject the timeout marker where pytest-timeout is
# missing from the GPU image.
"$py" -m pytest -o addopts="" -ra -q -p no:cacheprovider --junitxml="$out/pytest.xml" \
    tests/cuda tests/ops tests/model 2>&1 | tee "$out/pytest.log"
tests_rc=${PIPESTATUS[0]}

"$py" -m refimpl bench gpu --json "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.md"
bench_rc=${PIPESTATUS[0]}

echo "pytest exit $tests_rc, bench exit $bench_rc (reports in $out)"
exit $((tests_rc || bench_rc))
