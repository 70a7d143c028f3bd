"""The Gradescope autograder zip, unpacked into a temporary /autograder-like folder and run
the way Gradescope runs it (``run_autograder``), its results.json checked against the schema."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile

import pytest

from refimpl.course.gradescope import BuildError, build, main

from .conftest import EXERCISES, SOLUTIONS, load, write
from .test_grader import HIDDEN_TESTS, check_results_schema


def unpack(zip_path, root):
    """What Gradescope does with the zip: its content in ``root/source`` (modes kept),
    ``run_autograder`` copied to ``root``; an empty submission and results folder."""
    source = root / "source"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(source)
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if mode & stat.S_IXUSR:
                os.chmod(source / info.filename, mode & 0o777)
    shutil.copy2(source / "run_autograder", root / "run_autograder")
    (root / "submission").mkdir()
    (root / "results").mkdir()


def run_autograder(root):
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "AUTOGRADER_PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(root / "run_autograder")],
        env=env,
        cwd=root / "submission",  # whatever the caller's folder, never graded from there
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((root / "results" / "results.json").read_text()), proc


def test_autograder_zip_grades_a_submission(tmp_path):
    hidden = tmp_path / "instructor" / "hidden"
    hidden.mkdir(parents=True)
    (hidden / "test_02_roi_pool.py").write_text(HIDDEN_TESTS)
    zip_path = tmp_path / "autograder.zip"
    names = build(zip_path, hidden)
    assert {"setup.sh", "run_autograder", "hidden/test_02_roi_pool.py"} <= set(names)
    assert "refimpl/course/grading/calibration.json" in names
    assert not [n for n in names if "solutions" in n or n.endswith((".pt", ".ipynb"))]

    root = tmp_path / "autograder"
    unpack(zip_path, root)
    submission = root / "submission"
    shutil.copy(SOLUTIONS / "02_roi_pool.ipynb", submission / "02_roi_pool.ipynb")
    write(load(EXERCISES / "03_roi_warp.ipynb"), submission, "03_roi_warp")
    # an uploaded refimpl/ that would end the grader if it were imported
    (submission / "refimpl").mkdir()
    (submission / "refimpl" / "__init__.py").write_text("import os\nos._exit(42)\n")
    data, proc = run_autograder(root)
    check_results_schema(data)
    tests = {t["name"]: t for t in data["tests"]}
    assert tests["02_roi_pool: a hidden check of c_round"]["visibility"] == "hidden"
    assert tests["02_roi_pool: a hidden test that fails"]["score"] == 0
    assert data["score"] == 27 + 3  # 02 in full and the passing hidden test; 03 untouched
    assert "secret feedback" not in data["output"] + proc.stdout + proc.stderr


def test_autograder_zip_for_one_exercise(tmp_path):
    """One assignment per exercise: a submission without the notebook scores 0 of its points,
    and a crash of the grader still leaves a results.json."""
    zip_path = tmp_path / "autograder.zip"
    build(zip_path, exercise="02_roi_pool")
    root = tmp_path / "autograder"
    unpack(zip_path, root)
    write(load(EXERCISES / "03_roi_warp.ipynb"), root / "submission", "03_roi_warp")
    data, _ = run_autograder(root)
    check_results_schema(data)
    assert data["score"] == 0 and sum(t["max_score"] for t in data["tests"]) == 27
    (root / "source" / "refimpl" / "grade.py").write_text("raise SystemExit(3)\n")
    data, _ = run_autograder(root)
    assert data["score"] == 0 and "autograder failed" in data["output"]


def test_hidden_folder_holds_only_tests(tmp_path, capsys):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "02_roi_pool.ipynb").write_text("{}")  # a solution left there by mistake
    with pytest.raises(BuildError, match=r"only test_<exercise>\.py"):
        build(tmp_path / "a.zip", hidden)
    (hidden / "02_roi_pool.ipynb").unlink()
    (hidden / "test_99_nothing.py").write_text("")
    assert main(["--hidden", str(hidden), "--out", str(tmp_path / "a.zip")]) == 2
    assert "no exercise of that name" in capsys.readouterr().err
