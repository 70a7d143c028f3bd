"""How the numba kernels are compiled and run: jit options, the shared geometry compiled for
the CPU, and when a call is worth more than one thread.

Numba caches the compiled kernels on disk (``cache=True``), keyed on each kernel's own file:
after editing ``geometry.py`` or this file, touch the op files (or clear ``__pycache__``) so
that their kernels recompile.
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
from numba import njit

from .. import geometry

# error_model="numpy": float division by zero gives inf/NaN as in C (box_iou's 0 / 0 = NaN)
# instead of raising, and the kernels carry no division checks.
JIT = {"cache": True, "error_model": "numpy"}
PJIT = {**JIT, "parallel": True}

# Every function of geometry.py, compiled (c_round, align_box, sample_coord, bilinear_1d,
# pool_box, pool_bin, warp_box, box_area, box_intersection, tent_antiderivative,
# tent_integral, tent, tent_support, prroi_box, ...), as module globals: a kernel calls
# globals, not attributes. Not cached on their own: each kernel's cache holds them, and
# LLVM inlines them into the kernels.
globals().update(vars(geometry.compile_all(njit(error_model="numpy"))))

# Below this much work (input plus output elements) a call runs on one thread: waking the
# other threads costs more than they save, and far more on a busy machine. Tests set it to 0
# to run small inputs in parallel.
PARALLEL_MIN_WORK = 1 << 16


@contextlib.contextmanager
def threads_for(work: int):
    """Run the enclosed kernels on one thread when ``work`` is small (results do not depend
    on the number of threads; only the speed does)."""
    if work >= PARALLEL_MIN_WORK or numba.get_num_threads() == 1:
        yield
        return
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(saved)


def roi_work(a) -> int:
    """The work of a RoI call for :func:`threads_for`: input plus output elements."""
    return a.x.size + a.rois.shape[0] * a.x.shape[1] * a.pooled_h * a.pooled_w


def thread_scratch(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Scratch for a parallel kernel: one buffer per thread of numba's pool (the kernel takes
    ``scratch[numba.get_thread_id()]``), allocated here, where a failed allocation raises
    MemoryError. Inside a ``prange`` numba loses a failed allocation: the call returned
    stale or uninitialized output with no error (issue 12), so no kernel allocates there."""
    return np.empty((numba.config.NUMBA_NUM_THREADS, *shape), dtype)
