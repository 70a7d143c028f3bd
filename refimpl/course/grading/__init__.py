"""The grading tests: one module per exercise, ``test_<exercise>.py``, shipped with the package.

``python -m refimpl.grade`` loads them by path (never as a package import), runs them here in
the trusted grader and hands each test the learner's namespace as ``sub`` (see
:mod:`refimpl.course.checks` and :mod:`refimpl.course.remote`). ``calibration.json``, when
present, holds the CPU seconds each test and cell takes with the reference solution; it is
NOT YET shipped (nor its generator), so every limit is the CPU-time floor for now.
"""
