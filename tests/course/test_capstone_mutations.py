"""Planted bugs in a learner's notebooks fail the capstone's parity and name the part.

Each mutation edits a copy of the solutions 08-12 and 14 (as the grader's mutation tests in
test_grader.py do) in the way a learner typically gets it wrong; the capstone assembled from
the copy must fail parity with refimpl's model, and both the per-part check and the report
must name the part.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from refimpl.course import capstone
from refimpl.course.grade import grade_notebook

from .conftest import REPO, SOLUTIONS, edit, failed, write
from .conftest import load as load_json

NOTEBOOKS = ("08_torch_op", "09_anchors", "10_box_coding_nms", "11_matcher_sampler", "12_masks",
             "14_capstone")  # fmt: skip

# (part, notebook, grade_id of the cell, [(old, new)])
MUTATIONS = [
    (  # RoIAlign without the aligned half-pixel offset: the op ignores `aligned`
        "roi_align",
        "08_torch_op",
        "forward_op",
        [
            (
                "spatial_scale, sampling_ratio, aligned\n    )",
                "spatial_scale, sampling_ratio, False\n    )",
            )
        ],
    ),
    (  # NMS that keeps the lower score of two overlapping boxes
        "nms",
        "10_box_coding_nms",
        "nms",
        [("    order = np.argsort(-scores, kind=", "    order = np.argsort(scores, kind=")],
    ),
    (  # a matcher that drops the low-quality matches (Faster R-CNN's condition (i))
        "matcher",
        "11_matcher_sampler",
        "match",
        [("    if allow_low_quality_matches:\n", "    if False:\n")],
    ),
    (  # softmax over classes wired in instead of the per-class sigmoid mask loss
        "mask_loss",
        "14_capstone",
        "mask_branch",
        [("return ex12.mask_loss(", "return ex12.softmax_mask_loss(")],
    ),
]


def _mutated_copy(folder, notebook, grade_id, replacements) -> None:
    """The solutions 08-12 and 14 in ``folder``, one cell of ``notebook`` edited."""
    for name in NOTEBOOKS:
        shutil.copy(SOLUTIONS / f"{name}.ipynb", folder)
    nb = load_json(folder / f"{notebook}.ipynb")
    edit(nb, grade_id, replacements)
    write(nb, folder, notebook)


def in_subprocess(function, *args: str) -> None:
    """``function(*args)`` of this module in a fresh interpreter. A copy of exercise 8
    registers mycourse::roi_align anew, and torch ops live in one registry per process, by
    name: a re-registration breaks the operator objects of notebooks loaded before (those of
    solutions/ that other tests in this process use)."""
    module, name = function.__module__, function.__name__
    code = f"import sys\nfrom {module} import {name}\n{name}(*sys.argv[1:])\nprint('ok')"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stderr[-3000:]


def check_parity_names_the_part(folder: str, part: str) -> None:
    assembly = capstone.parts_from_notebooks(folder)
    assert assembly.fallbacks == {}, assembly.fallbacks  # the bug keeps the contract
    report = capstone.parity(assembly.parts)
    assert not report.ok
    assert report.first_part == part, str(report)
    result = next(r for r in report.part_results if r.name == part)
    assert not result.ok and str(result).startswith(f"{part}: differs from refimpl's on ")
    assert f"NO PARITY: the first part that differs is {part}" in str(report)
    assert report.differences  # the model shows it too: losses or detections


@pytest.mark.parametrize(("part", "notebook", "grade_id", "replacements"), MUTATIONS,
                         ids=[m[0] for m in MUTATIONS])  # fmt: skip
def test_a_planted_bug_fails_parity_and_names_the_part(
    tmp_path, part, notebook, grade_id, replacements
):
    _mutated_copy(tmp_path, notebook, grade_id, replacements)
    in_subprocess(check_parity_names_the_part, str(tmp_path), part)


# What each planted bug costs in the autograder (refimpl/course/grading/test_14_capstone.py):
# the part's own test and the model's parity; exercise 10's batched_nms calls its nms.
LOST = {
    "roi_align": {"test_part_roi_align", "test_model_parity"},
    "nms": {"test_part_nms", "test_part_batched_nms", "test_model_parity"},
    "matcher": {"test_part_matcher", "test_model_parity"},
    "mask_loss": {"test_part_mask_loss", "test_model_parity"},
}


@pytest.mark.slow  # ~1 minute per notebook: the sandbox loads notebooks 08-12, then grades
@pytest.mark.parametrize(("part", "notebook", "grade_id", "replacements"), MUTATIONS,
                         ids=[m[0] for m in MUTATIONS])  # fmt: skip
def test_a_planted_bug_loses_exactly_its_tests_in_the_grader(
    tmp_path, part, notebook, grade_id, replacements
):
    _mutated_copy(tmp_path, notebook, grade_id, replacements)
    result = grade_notebook(tmp_path / "14_capstone.ipynb")
    assert result.tests and not result.notes, result.notes
    assert failed(result) == LOST[part]
    parity = next(t for t in result.tests if t.name == "test_model_parity")
    assert f"the first part that differs is {part}" in parity.output
