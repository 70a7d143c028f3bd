"""Exercise 05b (Precise RoI Pooling) under the autograder: typical bugs lose exactly the tests
meant to catch them, and the exercise is told apart from exercise 05 by its number."""

from __future__ import annotations

import pytest

from refimpl.course.grade import exercise_number, exercise_of, grade_notebook

from .conftest import REPO, edit, failed, write

FORWARD_RANDOM = {
    "test_forward_known_answers",
    "test_forward_random",
    "test_forward_random_aligned",
    "test_forward_small_boxes",
    "test_forward_no_rois_and_float32",
}

# (the bug, grade_id of the cell, [(solution text, buggy text)], the tests that fail)
MUTATIONS = [
    (
        "T(u) on [0, 1] without the '1 -'",
        "tent_antiderivative",
        [("return 1.0 - (1.0 - u) * (1.0 - u) / 2.0", "return (1.0 - u) * (1.0 - u) / 2.0")],
        FORWARD_RANDOM
        | {"test_tent_antiderivative", "test_tent_integral", "test_axis_weights"}
        | {"test_forward_off_the_map"},
    ),
    (
        "the tent integral not shifted to pixel i",
        "tent_integral",
        [
            (
                "tent_antiderivative(b - i) - tent_antiderivative(a - i)",
                "tent_antiderivative(b) - tent_antiderivative(a)",
            )
        ],
        FORWARD_RANDOM | {"test_tent_integral", "test_axis_weights", "test_forward_off_the_map"},
    ),
    (
        "no half-pixel offset for aligned=True",
        "prroi_pool_forward",
        [("offset = 0.5 if aligned else 0.0", "offset = 0.0")],
        {
            "test_forward_known_answers",
            "test_forward_random_aligned",
            "test_forward_small_boxes",
            "test_forward_off_the_map",
        },
    ),
    (
        "RoIAlign's minimum box size of one pixel",
        "prroi_pool_forward",
        [
            (
                "roi_w = max((x2 * spatial_scale - offset) - start_x, 0.0)",
                "roi_w = max((x2 * spatial_scale - offset) - start_x, 1.0)",
            ),
            (
                "roi_h = max((y2 * spatial_scale - offset) - start_y, 0.0)",
                "roi_h = max((y2 * spatial_scale - offset) - start_y, 1.0)",
            ),
        ],
        FORWARD_RANDOM | {"test_forward_zero_area"},
    ),
    (
        "the integral not divided by the bin's area",
        "prroi_pool_forward",
        [("@ wx.T / area", "@ wx.T")],
        FORWARD_RANDOM | {"test_forward_off_the_map"},
    ),
]


@pytest.mark.parametrize(
    ("bug", "grade_id", "replacements", "expected"), MUTATIONS, ids=[m[0][:40] for m in MUTATIONS]
)
def test_a_typical_bug_loses_exactly_its_tests(
    tmp_path, solution, bug, grade_id, replacements, expected
):
    nb = solution("05b_prroi_pool")
    edit(nb, grade_id, replacements)
    result = grade_notebook(write(nb, tmp_path, "05b_prroi_pool"))
    assert not result.notes, result.notes
    assert failed(result) == expected, bug
    for t in result.tests:
        if t.name in expected:
            assert t.output and t.status in ("failed", "error"), t


def test_05b_is_not_05(tmp_path):
    """A renamed copy of 05b is graded as 05b, and 05's copies still as 05; labels say 5b."""
    dirs = [REPO / "refimpl" / "course" / "grading"]
    for stem, exercise in [
        ("05b_prroi_pool (1)", "05b_prroi_pool"),
        ("05b-copy", "05b_prroi_pool"),
        ("05_roi_align_backward (1)", "05_roi_align_backward"),
        ("05-copy", "05_roi_align_backward"),
    ]:
        assert exercise_of(tmp_path / f"{stem}.ipynb", dirs) == exercise, stem
    assert exercise_number("05b_prroi_pool") == "5b"
    assert exercise_number("02_roi_pool") == "2"
