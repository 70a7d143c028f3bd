"""Under pytest, the grading tests grade the solution notebooks (which must pass them all).

``python -m refimpl.grade`` does not use this file: it loads each grading module by path and
hands its tests the learner's namespace, built in a separate process. Here the ``sub``
fixture is the namespace of ``solutions/<exercise>.ipynb``'s code cells, run in-process once
per exercise.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from refimpl.course.checks import Submission
from refimpl.course.grade import grading_cells
from refimpl.course.runner import run_cells

SOLUTIONS = Path(__file__).resolve().parents[3] / "solutions"
LONG_ENV = "REFIMPL_GRADE_LONG"  # as the grader's --long: @points(..., long=True) tests run
_cache: dict[str, Submission] = {}


def load_solution(exercise: str) -> Submission:
    if exercise not in _cache:
        nb = json.loads((SOLUTIONS / f"{exercise}.ipynb").read_text())
        cells, _ = grading_cells(nb)
        with contextlib.chdir(SOLUTIONS):  # as Jupyter and the sandbox: the notebook's folder
            namespace, reports = run_cells(cells, timeout=60)
        errors = [r["error"] for r in reports if r["error"]]
        assert not errors, errors
        _cache[exercise] = Submission(namespace, errors)
    return _cache[exercise]


@pytest.fixture
def sub(request) -> Submission:
    """The solution notebook of this module's exercise (test_02_roi_pool.py -> 02_roi_pool)."""
    exercise = Path(request.module.__file__).stem.removeprefix("test_")
    if getattr(request.function, "long", False) and os.environ.get(LONG_ENV) != "1":
        pytest.skip(
            f"the long tier (minutes of training): {LONG_ENV}=1 runs it here, or grade with "
            f"python -m refimpl.grade solutions/{exercise}.ipynb --long"
        )
    if getattr(request.module, "SIMULATED", False) and not _cuda_simulator():
        pytest.skip(
            "needs numba's CUDA simulator, set before numba is imported: tests/course grades "
            "this solution in a worker of its own (or run NUMBA_ENABLE_CUDASIM=1 pytest "
            f"refimpl/course/grading/test_{exercise}.py)"
        )
    return load_solution(exercise)


def _cuda_simulator() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)
