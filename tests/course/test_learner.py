"""refimpl.course.learner: a notebook as a module, by the grader's rule of which cells run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from refimpl.course.learner import LearnerError, load, module_name

from .conftest import EXERCISES, SOLUTIONS, code_cell, write


def _markdown(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _notebook(*cells: dict) -> dict:
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


SOLUTION = {"solution": True, "grade": False, "locked": False, "grade_id": "f", "schema_version": 3,
            "task": False}  # fmt: skip
CHECK = {"solution": False, "grade": True, "locked": True, "grade_id": "check_f", "points": 1,
         "schema_version": 3, "task": False}  # fmt: skip


def test_the_solutions_load_with_their_functions():
    mine = load(SOLUTIONS / "10_box_coding_nms.ipynb")
    assert (
        mine.__name__
        == "learner_10_box_coding_nms"
        == module_name(SOLUTIONS / "10_box_coding_nms.ipynb")
    )
    assert sys.modules[mine.__name__] is mine
    assert mine.nms.__module__ == mine.__name__
    assert "BoxCoder" not in vars(mine)  # the skip-grading comparison cell did not run
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float64)
    keep = mine.nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
    assert load(SOLUTIONS / "10_box_coding_nms.ipynb") is mine  # cached
    assert load(str(SOLUTIONS / "10_box_coding_nms.ipynb"), reload=True) is not mine


def test_an_untouched_exercise_loads_and_its_stubs_raise_when_called():
    mine = load(EXERCISES / "11_matcher_sampler.ipynb")
    with pytest.raises(NotImplementedError):
        mine.match(torch.rand(2, 3), 0.7, 0.3)


def test_which_cells_run(tmp_path):
    nb = _notebook(
        _markdown("# a title: not a code cell"),
        code_cell("import math\n%matplotlib inline\nran = ['plain']"),
        code_cell(
            "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
            nbgrader=SOLUTION,
        ),
        code_cell("raise AssertionError('a check cell must not run')", nbgrader=CHECK),
        code_cell("raise AssertionError('skip-grading')", tags=["skip-grading"]),
        code_cell("raise AssertionError('skip-execution')", tags=["skip-execution"]),
        code_cell("%%time\nran.append('timed body')"),
        code_cell("display(f(21))\nran.append(get_ipython().system('ls'))"),
    )
    mine = load(write(nb, tmp_path, "01_demo"))
    assert mine.f(21) == 42
    assert mine.ran == ["plain", "timed body", None]
    assert mine.__file__ == str((tmp_path / "01_demo.ipynb").resolve())


def test_a_cell_that_raises_is_named_as_jupyterlab_numbers_it(tmp_path):
    nb = _notebook(
        _markdown("markdown is not counted"),
        code_cell("x = 1"),
        code_cell("y = 2", tags=["skip-grading"]),  # skipped, but counted
        code_cell("def g():\n    return 1 / 0\n\nz = g()"),
    )
    with pytest.raises(LearnerError) as info:
        load(write(nb, tmp_path, "03_broken"))
    message = str(info.value)
    assert message == (
        '03_broken.ipynb: code cell 3 ("def g():") raised ZeroDivisionError: division by zero'
    )
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert "learner_03_broken" not in sys.modules  # nothing half-loaded stays behind
    tb = info.value.__cause__.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    assert tb.tb_frame.f_code.co_filename == "<03_broken.ipynb, code cell 3>"


def test_a_syntax_error_is_named(tmp_path):
    nb = _notebook(code_cell("def f(:\n    pass"))
    with pytest.raises(
        LearnerError, match=r'^04_bad\.ipynb: code cell 1 \("def f\(:"\) has a syntax'
    ):
        load(write(nb, tmp_path, "04_bad"))


def test_a_notebook_loads_another_beside_it(tmp_path):
    write(_notebook(code_cell("def helper():\n    return 'beside'")), tmp_path, "05_helper")
    outer = _notebook(
        code_cell("from refimpl.course.learner import load\nh = load('05_helper.ipynb')")
    )
    mine = load(write(outer, tmp_path, "06_outer"))
    assert mine.h.helper() == "beside"
    broken = _notebook(code_cell("1 / 0"))
    write(broken, tmp_path, "07_broken")
    outer = _notebook(code_cell("from refimpl.course.learner import load\nload('07_broken.ipynb')"))
    with pytest.raises(LearnerError, match=r"08_outer\.ipynb: code cell 1 .* loads another "
                       r"notebook: 07_broken\.ipynb: code cell 1"):  # fmt: skip
        load(write(outer, tmp_path, "08_outer"))


def test_bad_paths(tmp_path):
    with pytest.raises(TypeError, match="path must be a str or a Path"):
        load(3)
    with pytest.raises(ValueError, match=r"path must be a notebook \(\.ipynb\)"):
        load(tmp_path / "10_box_coding_nms.py")
    with pytest.raises(FileNotFoundError, match=r"no notebook .*missing\.ipynb"):
        load(tmp_path / "missing.ipynb")
    (tmp_path / "cut.ipynb").write_text('{"cells": [')
    with pytest.raises(LearnerError, match=r"cut\.ipynb: not valid JSON"):
        load(tmp_path / "cut.ipynb")


def test_choose_kernels_rewrites_exercise_8s_line(tmp_path):
    import shutil

    from refimpl.course.learner import choose_kernels

    nb = Path(shutil.copy(SOLUTIONS / "08_torch_op.ipynb", tmp_path))
    before = (SOLUTIONS / "08_torch_op.ipynb").read_text()
    assert before.count('KERNELS = \\"refimpl\\"') == 1
    choose_kernels(nb, "numba")
    after = nb.read_text()
    assert 'KERNELS = \\"refimpl\\"' not in after and after.count('KERNELS = \\"numba\\"') == 1
    # only that line changed
    assert after.replace('KERNELS = \\"numba\\"', 'KERNELS = \\"refimpl\\"') == before
    with pytest.raises(ValueError, match=r"kernels must be one of .*'cuda'"):
        choose_kernels(nb, "cuda")
    other = shutil.copy(SOLUTIONS / "10_box_coding_nms.ipynb", tmp_path)
    with pytest.raises(ValueError, match=r"10_box_coding_nms\.ipynb: .*no single KERNELS"):
        choose_kernels(other, "numpy")
