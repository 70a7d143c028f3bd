"""The old name of the ``"numba"`` backend, :mod:`refimpl.ops.numba` (one file per op)."""

# TEMPORARY shim for the torch layer; removed when it imports refimpl.ops.numba
from refimpl.ops.numba import *  # noqa: F403
from refimpl.ops.numba import __all__  # noqa: F401
from refimpl.ops.numba._compile import PARALLEL_MIN_WORK, threads_for  # noqa: F401
