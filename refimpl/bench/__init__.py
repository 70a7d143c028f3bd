"""Benchmarks (``python -m refimpl bench ...``): see :mod:`refimpl.bench.__main__`."""
