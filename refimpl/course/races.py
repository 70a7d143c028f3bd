"""A race detector for ``prange`` kernels, for the Numba lesson and exercise.

A ``numba.njit(parallel=True)`` kernel runs the iterations of its outer ``prange`` loop on
several threads at once. Two iterations that write the same element of an array race: a
``+=`` is a read, an add and a write, and two threads interleaving them lose one update. On
a busy or single-core machine the race may never show, so testing the results is not
enough. This module runs the kernel's Python source (``kernel.py_func``) once, in plain
Python, with ``prange`` replaced by a range that records the current iteration and the
output arrays wrapped so that every element remembers which outer iteration wrote it: two
different iterations writing one element is a race, whatever the machine.

    conflicts = find_races(kernel, args, outputs=(5,))   # argument 5 is written
    assert not conflicts, conflicts[0]

The kernel must write its outputs through indexing (``out[i, j] = v``, ``out[i] += v``, or
views such as ``out[b][c, y, x] += v``), which is what Numba kernels do anyway.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _State:
    depth: int = 0
    iteration: int = -1  # the outer prange iteration now running (-1: outside any prange)
    conflicts: list[str] = field(default_factory=list)


class Tracked:
    """An array whose elements remember which outer ``prange`` iteration wrote them."""

    def __init__(self, array: np.ndarray, owner: np.ndarray, state: _State, name: str):
        self._array, self._owner, self._state, self._name = array, owner, state, name

    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    ndim = property(lambda self: self._array.ndim)
    size = property(lambda self: self._array.size)

    def __len__(self) -> int:
        return len(self._array)

    def __array__(self, dtype=None, copy=None):
        return self._array if dtype is None else self._array.astype(dtype)

    def __getitem__(self, index):
        value = self._array[index]
        if isinstance(value, np.ndarray) and np.shares_memory(value, self._array):
            return Tracked(value, self._owner[index], self._state, self._name)
        return value

    def __setitem__(self, index, value) -> None:
        state = self._state
        if state.iteration >= 0:
            before = np.asarray(self._owner[index])
            clash = (before >= 0) & (before != state.iteration)
            if clash.any() and len(state.conflicts) < 20:
                other = int(before[clash].flat[0]) if before.ndim else int(before)
                state.conflicts.append(
                    f"`{self._name}[{_show(index)}]` is written by prange iterations {other} "
                    f"and {state.iteration}"
                )
            self._owner[index] = state.iteration
        self._array[index] = value


def _show(index) -> str:
    if not isinstance(index, tuple):
        index = (index,)
    return ", ".join(str(int(i)) if isinstance(i, (int, np.integer)) else ":" for i in index)


def find_races(
    kernel: Any, args: Sequence[Any], outputs: Sequence[int], names: Sequence[str] | None = None
) -> list[str]:
    """Run ``kernel.py_func(*args)`` in Python, ``prange`` tracked; the conflicts found.

    ``outputs``: the positions in ``args`` of the arrays the kernel writes (they are written
    for real, as the compiled kernel would). Returns descriptions of the first conflicts (at
    most 20); an empty list means no two outer iterations wrote the same element.
    """
    fn = getattr(kernel, "py_func", kernel)
    state = _State()

    def prange(*bounds) -> Iterator[int]:
        outer = state.depth == 0
        state.depth += 1
        try:
            for i in range(*bounds):
                if outer:
                    state.iteration = i
                yield i
        finally:
            state.depth -= 1
            if outer:
                state.iteration = -1

    glb = dict(fn.__globals__, prange=prange)
    if "numba" in glb and isinstance(glb["numba"], types.ModuleType):
        glb["numba"] = types.SimpleNamespace(**{**vars(glb["numba"]), "prange": prange})
    plain = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
    wrapped = list(args)
    for n, pos in enumerate(outputs):
        a = wrapped[pos]
        name = names[n] if names else f"argument {pos}"
        wrapped[pos] = Tracked(a, np.full(a.shape, -1, np.int64), state, name)
    plain(*wrapped)
    return state.conflicts
