"""Compile every numba-cuda kernel of ``refimpl.ops.cuda`` to PTX for a real GPU, without one.

The CUDA simulator runs the kernels as Python: it checks what they compute, not that they
compile for a device (a construct the simulator accepts, numba-cuda's compiler may reject).
This script compiles each kernel, both dtypes, both memory layouts, with the argument types
its launch function passes, through NVVM to PTX for compute capability ``--cc`` (default
9.0, an H100), and prints each kernel's PTX size and atomic instruction count.

    python scripts/cuda_ptx_check.py [--cc 9.0]

Needs NVVM and libdevice (a CUDA toolkit; ``CUDA_HOME`` or /usr/local/cuda*), not a GPU.
Exit status: 0 all compiled, 1 a kernel failed, 77 no NVVM/libdevice here (nothing checked).
Run it without ``NUMBA_ENABLE_CUDASIM`` (the simulator has no compiler).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import types

SKIP = 77


def _libdevice() -> str | None:
    roots = [os.environ.get("CUDA_HOME", ""), *sorted(glob.glob("/usr/local/cuda*"), reverse=True)]
    for root in filter(None, roots):
        path = os.path.join(root, "nvvm", "libdevice", "libdevice.10.bc")
        if os.path.exists(path):
            return path
    return None


def _compile_offline(cc: tuple[int, int], libdevice: str) -> None:
    """numba-cuda asks the driver for the current device and NVRTC for the supported
    architectures; without a GPU (or NVRTC) answer for them. Internal hooks: checked with
    numba-cuda 0.30."""
    import numba.cuda.cudadrv.libs as libs
    import numba.cuda.cudadrv.nvrtc as nvrtc
    import numba.cuda.cudadrv.nvvm as nvvm
    import numba.cuda.dispatcher as dispatcher

    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    nvvm.get_libdevice = libs.get_libdevice = lambda: libdevice
    nvrtc.get_supported_ccs = lambda: [cc]


def _kernels(nb_types, F):
    """``(op module, kernel, signature, layouts)`` for every kernel, with the argument types
    its launch function passes (``layouts``: the factory's layout argument, or None for a
    factory that takes only the dtype)."""
    A = lambda ndim, dtype=F: nb_types.Array(dtype, ndim, "A")  # noqa: E731  any strides
    C = lambda ndim, dtype=F: nb_types.Array(dtype, ndim, "C")  # noqa: E731  C-contiguous
    i64, f64, b = nb_types.int64, nb_types.float64, nb_types.boolean
    roi = (A(4), A(2))
    both = ("nchw", "channels_last")
    return [
        ("roi_align", "forward", (*roi, C(4), f64, i64, b, b, b), both),
        ("roi_align", "backward", (*roi, A(4), C(4), f64, i64, b, b, b), both),
        ("roi_pool", "forward", (*roi, C(4), C(4), f64), both),
        ("roi_pool", "forward_argmax", (*roi, C(4), C(4, i64), f64), both),
        ("roi_pool", "backward", (*roi, A(4), C(4), f64), both),
        ("roi_pool", "backward_argmax", (A(2), A(4, i64), A(4), C(4)), both),
        ("prroi_pool", "forward", (*roi, C(4), f64, b), None),
        ("prroi_pool", "backward", (*roi, A(4), C(4), C(2), f64, b), None),
        ("boxes", "box_iou", (A(2), A(2), C(2)), None),
        ("boxes", "nms_mask", (C(2), C(2, nb_types.uint64), f64), None),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 8.0 or 9.0")
    args = parser.parse_args(argv)
    cc = tuple(int(v) for v in args.cc.split("."))
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("unset NUMBA_ENABLE_CUDASIM: the simulator has no compiler", file=sys.stderr)
        return 2
    libdevice = _libdevice()
    if libdevice is None:
        print("no libdevice (CUDA toolkit) found: nothing checked", file=sys.stderr)
        return SKIP
    try:
        from numba import cuda
        from numba import types as nb_types

        _compile_offline(cc, libdevice)

        def canary(a):
            a[0] = 1.0

        cuda.compile_ptx(canary, (nb_types.float32[:],), cc=cc)
    except Exception as e:  # no numba-cuda, no NVVM, or numba-cuda's internals moved
        print(f"cannot compile offline here: {type(e).__name__}: {e}", file=sys.stderr)
        return SKIP

    import importlib

    import numpy as np

    failed = 0
    for dtype, F in ((np.float32, nb_types.float32), (np.float64, nb_types.float64)):
        for op, name, sig, layouts in _kernels(nb_types, F):
            module = importlib.import_module(f"refimpl.ops.cuda.{op}")
            for layout in layouts or (None,):
                factory_args = (np.dtype(dtype),) if layout is None else (np.dtype(dtype), layout)
                kernel = getattr(module._kernels(*factory_args), name)
                label = f"{op}.{name} {np.dtype(dtype).name} {layout or 'nchw'}"
                try:
                    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
                except Exception as e:  # the canary compiled: this is the kernel's fault
                    failed += 1
                    print(f"FAILED {label}: {type(e).__name__}: {str(e)[:500]}")
                    continue
                atomics = ptx.count("atom.global") + ptx.count("red.global")
                print(f"ok     {label:45s} {len(ptx):7d} chars of PTX, {atomics} atomics")
    print(f"sm_{cc[0]}{cc[1]}: {'all kernels compiled' if not failed else f'{failed} failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
