"""Every lesson and every solution runs top to bottom (nbclient, the project's own kernel);
the exercises run too, failing only where a learner's code is still missing. Notebooks are
committed without outputs."""

from __future__ import annotations

import os
import sys
import time

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .conftest import EXERCISES, LESSONS, SOLUTIONS

LESSON_BUDGET_S = 60  # "runs in well under a minute on a 2-core CPU"
# The training lessons (12, 13) train for seconds instead of minutes; kernels inherit this.
os.environ.setdefault("REFIMPL_LESSON_FAST", "1")
ALL_NOTEBOOKS = sorted(
    [*LESSONS.glob("*.ipynb"), *SOLUTIONS.glob("*.ipynb"), *EXERCISES.glob("*.ipynb")]
)


def execute(path, allow_errors=False):
    """Run a notebook in its own folder with the ``python3`` kernel of this interpreter."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=120,
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.monotonic()
    client.execute()
    return nb, time.monotonic() - start


def test_the_kernel_is_this_interpreter():
    """``python3`` resolves to the project's venv (jupyter_client runs ``sys.executable``)."""
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable), spec.argv


@pytest.mark.parametrize("path", sorted(LESSONS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_lesson_runs(path):
    try:
        nb, seconds = execute(path)
    except CellExecutionError as e:
        pytest.fail(f"{path.name}: {e}")
    assert seconds < LESSON_BUDGET_S, f"{path.name} took {seconds:.0f} s"
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and ("exercises/" in last.source or "Next" in last.source)


@pytest.mark.parametrize("path", sorted(SOLUTIONS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_solution_runs_and_passes_its_checks(path):
    try:
        execute(path)
    except CellExecutionError as e:
        pytest.fail(f"{path.name}: {e}")


@pytest.mark.parametrize("path", sorted(EXERCISES.glob("*.ipynb")), ids=lambda p: p.stem)
def test_exercise_runs_until_the_missing_code(path):
    """Only the stubs fail (NotImplementedError): the given code, imports and checks are fine."""
    nb, _ = execute(path, allow_errors=True)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                assert out.ename == "NotImplementedError", (path.name, out.ename, out.evalue)


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.id)
