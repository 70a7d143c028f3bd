"""Thread pools: torch's intra-op threads and numba's, one count for both.

torch and numba share one OpenMP runtime, and numba starts its pool with
``omp_set_num_threads(NUMBA_NUM_THREADS)`` (all the cores) the first time one of our kernels
runs: a process that had asked torch for 1 thread then ran its first iteration on 1 thread and
every later one on all of them (``torch.get_num_threads()`` changes under it). torch picks
some algorithms by the thread count (a 1x1 convolution of a small batch is a matrix product
on one thread, oneDNN on several), so a resumed run, whose first iteration in the process
comes later, differed from an uninterrupted one in the 8th digit, and then more and more.
:func:`set_threads` starts numba's pool first and then sets both counts, so the count holds
for the whole process.
"""

from __future__ import annotations

import os

import numba
import torch


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: ``taskset`` counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(threads: int | None = None, processes: int = 1) -> int:
    """Intra-op threads for torch and numba: all the cores for one process, an equal share for
    each of several (more threads than cores makes every process wait on the others)."""
    n = threads or max(1, available_cores() // processes)
    # numba.set_num_threads starts the pool (which resets OpenMP's count) before it sets its
    # own; numba cannot go above the pool it was started with (NUMBA_NUM_THREADS).
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(n)
    return n
