#!/usr/bin/env bash
# The suite on "another machine" without leaving this one: the CPU tests rerun with
#   * torch (its own kernels, oneDNN, MKL), numpy and numba told to take another SIMD path
#     (AVX2 instead of AVX-512, or the baseline), the way a CI runner or a laptop without
#     AVX-512 computes;
#   * one core only (taskset) and one thread;
#   * both cores kept busy by two burner processes (a loaded laptop).
# Each variant's pytest summary lands in runs/variants/<name>.log. Usage:
#   bash scripts/test_variants.sh [variant ...]     (default: all; extra pytest args via PYTEST_ARGS)
# This is a maintainer's tool (a full run takes about an hour on 2 cores); CI runs the suite once.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
out=runs/variants
mkdir -p "$out"
py=.venv/bin/python
read -r -a extra <<<"${PYTEST_ARGS:-}"

run() {  # name, then env assignments and/or a command prefix, then --
    local name=$1
    shift
    local prefix=()
    while [ "$1" != "--" ]; do prefix+=("$1"); shift; done
    shift
    echo "== $name: ${prefix[*]}"
    # Inductor's on-disk cache is keyed without ATEN_CPU_CAPABILITY: a kernel generated for
    # AVX-512 (16 floats a vector) and built for AVX2 (8) computed half of torch.compile's
    # results wrong under the avx2 variant. Each variant gets its own cache.
    env TORCHINDUCTOR_CACHE_DIR="$PWD/$out/$name.inductor" "${prefix[@]}" \
        $py -m pytest -q -p no:cacheprovider -m "not cudasim" --ignore=tests/cuda \
        "${extra[@]}" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 1 "$out/$name.log"
    return $rc
}

burn() { $py -c "while True: pass" & echo $!; }

variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(avx2 baseline one-core one-thread loaded)
status=0
for v in "${variants[@]}"; do
    case $v in
    # ATEN_CPU_CAPABILITY moves only torch's own vectorized kernels: the convolutions
    # (oneDNN) and matrix products (MKL) dispatch on their own, and it is their rounding that
    # differs most between machines (without ONEDNN_MAX_CPU_ISA the model ran as on AVX-512).
    avx2)  # torch's AVX2 kernels, oneDNN and MKL on AVX2, numba for Haswell, numpy without AVX-512
        run avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
            NUMBA_CPU_NAME=haswell NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR" \
            -- || status=1 ;;
    baseline)  # torch's default kernels, oneDNN/MKL on SSE4, numpy's x86-64-v2, numba generic
        run baseline ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 \
            MKL_ENABLE_INSTRUCTIONS=SSE4_2 NUMBA_CPU_NAME=x86-64 \
            NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR" -- || status=1 ;;
    one-core)
        run one-core taskset -c 0 -- || status=1 ;;
    one-thread)
        run one-thread OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 MKL_NUM_THREADS=1 -- || status=1 ;;
    loaded)
        b1=$(burn); b2=$(burn)
        run loaded -- || status=1
        kill "$b1" "$b2" ;;
    *) echo "unknown variant $v" >&2; status=2 ;;
    esac
done
exit $status
