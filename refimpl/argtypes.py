"""Numeric ranges for the command line and the Python API, defined once.

A :class:`Range` is both an ``argparse`` ``type=`` (``--iters 0`` fails at parse time with
"argument --iters: must be an integer >= 1, got '0'") and the check of a configuration
field (``Range.check("iters", 0)`` raises ``ValueError`` naming the field), so that the two
entry points accept exactly the same values. Used by the data generator and the engine.
"""

from __future__ import annotations

import argparse
import math
from numbers import Integral, Real


class Range:
    """Integers or finite floats in ``[lo, hi]`` (``lo_open``: ``lo`` itself excluded)."""

    def __init__(self, kind: type, lo=None, hi=None, *, lo_open: bool = False):
        if kind not in (int, float):
            raise TypeError(f"kind must be int or float, got {kind!r}")
        self.kind, self.lo, self.hi, self.lo_open = kind, lo, hi, lo_open

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.lo is not None and self.hi is not None and not self.lo_open:
            return f"{what} in [{self.lo}, {self.hi}]"
        bounds = []
        if self.lo is not None:
            bounds.append(f"{'>' if self.lo_open else '>='} {self.lo}")
        if self.hi is not None:
            bounds.append(f"<= {self.hi}")
        return " ".join([what, " and ".join(bounds)]).strip()

    def contains(self, value) -> bool:
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return self.hi is None or value <= self.hi

    def __call__(self, text: str):
        """argparse: the option's text -> a value in range, or an ArgumentTypeError."""
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        if (self.kind is float and not math.isfinite(value)) or not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value

    def check(self, name: str, value, optional: bool = False):
        """The Python API: ``TypeError``/``ValueError`` naming ``name``; returns ``value``."""
        if value is None and optional:
            return value
        is_int = isinstance(value, Integral) and not isinstance(value, bool)
        is_real = isinstance(value, Real) and not isinstance(value, bool)
        if not (is_int if self.kind is int else is_real):
            none = " or None" if optional else ""
            raise TypeError(f"{name} must be {self.describe()}{none}, got {value!r}")
        if (self.kind is float and not math.isfinite(value)) or not self.contains(value):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        return value

    def __repr__(self) -> str:  # argparse names the type in some messages
        return f"Range({self.describe()})"


POSITIVE_INT = Range(int, 1)
NONNEGATIVE_INT = Range(int, 0)
SEED = Range(int, 0, 2**63 - 1)  # torch.manual_seed and numpy's SeedSequence both take it
POSITIVE_FLOAT = Range(float, 0, lo_open=True)
NONNEGATIVE_FLOAT = Range(float, 0)
FRACTION = Range(float, 0, 1)  # probabilities, factors of a learning rate
