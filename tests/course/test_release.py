"""exercises/ is generated from solutions/ by nbgrader's preprocessors, and is up to date."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nbformat
import pytest

from refimpl.course.release import ReleaseError, main, release_notebook

from .conftest import EXERCISES, REPO, SOLUTIONS, source


def test_exercises_are_up_to_date():
    """CI fails when someone edits solutions/ (or exercises/ by hand) without a release."""
    proc = subprocess.run(
        [sys.executable, "-m", "refimpl.course.release", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr + "\n(run `python -m refimpl.course.release`)"


def test_check_reports_stale_and_leftover_exercises(tmp_path, capsys):
    solutions, exercises = tmp_path / "solutions", tmp_path / "exercises"
    shutil.copytree(SOLUTIONS, solutions)
    shutil.copytree(EXERCISES, exercises)
    args = ["--solutions", str(solutions), "--exercises", str(exercises)]
    assert main(["--check", *args]) == 0
    (exercises / "02_roi_pool.ipynb").write_text("{}")
    (exercises / "99_old.ipynb").write_text("{}")
    assert main(["--check", *args]) == 1
    err = capsys.readouterr().err
    assert "exercises/02_roi_pool.ipynb" in err and "exercises/99_old.ipynb" in err
    assert main(args) == 0  # regenerate: rewrites the one, removes the other
    assert not (exercises / "99_old.ipynb").exists()
    assert main(["--check", *args]) == 0


@pytest.mark.parametrize("name", sorted(p.name for p in SOLUTIONS.glob("*.ipynb")))
def test_every_solution_region_becomes_a_stub(name):
    solution = nbformat.read(SOLUTIONS / name, as_version=4)
    exercise = nbformat.read(EXERCISES / name, as_version=4)
    assert [c.id for c in solution.cells] == [c.id for c in exercise.cells]
    n_solutions = 0
    for s, e in zip(solution.cells, exercise.cells, strict=True):
        assert "outputs" not in e or e.outputs == []
        meta = s.metadata.get("nbgrader", {})
        if meta.get("solution"):
            n_solutions += 1
            assert "### BEGIN SOLUTION" in s.source
            assert "# YOUR CODE HERE\n" in e.source and "raise NotImplementedError()" in e.source
            hint = [line for line in s.source.splitlines() if line.strip().startswith("# Hint")]
            assert hint and hint[0] in e.source  # the hint survives
            assert e.metadata["deletable"] is False
        elif meta.get("grade"):
            assert e.metadata["editable"] is False  # the checks are read-only
            assert "HIDDEN TESTS" not in e.source
        else:
            assert e.source == s.source
    assert n_solutions >= 3


def nb_with(*cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    return nb


def solution_cell(text, grade_id="answer"):
    cell = nbformat.v4.new_code_cell(text)
    cell.metadata["nbgrader"] = dict(
        solution=True, grade=False, locked=False, grade_id=grade_id, schema_version=3, task=False
    )
    return cell


def test_release_of_a_small_notebook():
    answer = solution_cell(
        "def f(x):\n    # Hint: double it\n"
        "    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"
    )
    answer.outputs = [nbformat.v4.new_output("stream", text="old output")]
    answer.execution_count = 3
    check = nbformat.v4.new_code_cell(
        "assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(5) == 10\n### END HIDDEN TESTS"
    )
    check.metadata["nbgrader"] = dict(
        solution=False,
        grade=True,
        locked=True,
        points=1,
        grade_id="check",
        schema_version=3,
        task=False,
    )
    out = release_notebook(nb_with(answer, check))
    assert source(out.cells[0]) == (
        "def f(x):\n    # Hint: double it\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    )
    assert out.cells[0].outputs == [] and out.cells[0].execution_count is None
    assert source(out.cells[1]) == "assert f(1) == 2"
    assert "BEGIN SOLUTION" in answer.source  # the source notebook is left alone


@pytest.mark.parametrize(
    "cells",
    [
        [nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")],  # no metadata
        [solution_cell("### BEGIN SOLUTION\nx = 1")],  # no end
        [solution_cell("x = 1")],  # a solution cell without a region
        [
            solution_cell("### BEGIN SOLUTION\n### END SOLUTION"),
            solution_cell("### BEGIN SOLUTION\n### END SOLUTION"),
        ],
        [nbformat.v4.new_code_cell("### BEGIN HIDDEN TESTS\nx = 1\n### END HIDDEN TESTS")],
    ],
    ids=[
        "region-outside-solution-cell",
        "unterminated",
        "no-region",
        "duplicate-id",
        "hidden-outside-grade-cell",
    ],
)
def test_malformed_solutions_are_refused(cells):
    with pytest.raises(ReleaseError):
        release_notebook(nb_with(*cells))
