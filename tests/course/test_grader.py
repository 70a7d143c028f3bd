"""The autograder: full marks for the solutions, zero for the untouched exercises, exactly the
right tests lost for typical bugs, and no crash whatever the notebook holds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from refimpl.course import grade as grade_module
from refimpl.course.grade import GRADING, grade, grade_notebook, main

from .conftest import EXERCISES, REPO, SOLUTIONS, code_cell, edit, failed, load, write

# --- the solutions and the exercises ---------------------------------------------------------


@pytest.fixture
def busy_machine():
    """Two processes spinning beside the test (the machine has 2 cores here): limits are CPU
    time, calibrated against the solutions, so correct work keeps its points under load."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


@pytest.mark.usefixtures("busy_machine")
def test_solutions_score_full_marks():
    results = [r for r in grade([SOLUTIONS]) if r.exercise]
    graded = [
        p.stem for p in SOLUTIONS.glob("*.ipynb") if (GRADING / f"test_{p.stem}.py").is_file()
    ]
    assert [r.exercise for r in results] == sorted(graded)
    for r in results:
        assert r.tests, r.exercise
        assert not r.notes, r.notes
        lost = {t.name: t.output for t in r.tests if t.score < t.max_score}
        assert not lost, (r.exercise, lost)


def test_untouched_exercises_score_zero():
    results = grade([EXERCISES])
    assert len(results) == len(list(SOLUTIONS.glob("*.ipynb")))
    for r in results:
        assert r.tests and r.max_score > 0
        assert r.score == 0, (r.exercise, [t.name for t in r.tests if t.score])
        assert not r.notes, r.notes  # the stubs raise only when called: every cell runs
        for t in r.tests:
            assert "not implemented yet" in t.output, (t.name, t.output)


# --- typical bugs lose exactly the tests that catch them -------------------------------------

# exercise 11's sampler: one randperm of the positives, then one of the negatives
_DRAW_POS = "        pos = positive[torch.randperm(positive.numel(), generator=generator)"
_DRAW_POS += "[:num_pos]]\n"
_DRAW_NEG = "        neg = negative[torch.randperm(negative.numel(), generator=generator)"
_DRAW_NEG += "[:num_neg]]\n"

# (exercise, the bug, grade_id of the cell, [(solution text, buggy text)], the tests that fail)
MUTATIONS = [
    (
        "02_roi_pool",
        "Python's round (half to even) instead of C rounding",
        "roi_pool_forward_argmax",
        [("(c_round(v * spatial_scale) for v", "(round(v * spatial_scale) for v")],
        {"test_forward_halfway_coordinates"},
    ),
    (
        "02_roi_pool",
        "exclusive box end (no +1)",
        "roi_pool_forward_argmax",
        [("max(y2 - y1 + 1, 1)", "max(y2 - y1, 1)"), ("max(x2 - x1 + 1, 1)", "max(x2 - x1, 1)")],
        {
            "test_forward_known_answer",
            "test_forward_halfway_coordinates",
            "test_forward_random",
            "test_forward_argmax",
            "test_argmax_ties",
            "test_forward_off_the_map",
            "test_forward_float32",
            "test_backward_known_answer",
            "test_backward_accumulates",
            "test_backward_random",
        },
    ),
    (
        "02_roi_pool",
        "a[idx] += v, which adds once per repeated index, instead of np.add.at",
        "roi_pool_backward",
        [
            (
                "np.add.at(flat, (batch[r], c, argmax[r, c, i, j]), grad_output[r, c, i, j])",
                "flat[batch[r], c, argmax[r, c, i, j]] += grad_output[r, c, i, j]",
            )
        ],
        {
            "test_backward_accumulates",
            "test_backward_random",
            "test_backward_matches_finite_differences",
        },
    ),
    (
        "02_roi_pool",
        "the last maximum wins ties",
        "roi_pool_forward_argmax",
        [
            (
                "best = window.argmax(axis=1)",
                "best = window.shape[1] - 1 - window[:, ::-1].argmax(axis=1)",
            )
        ],
        {"test_argmax_ties"},
    ),
    (
        "02_roi_pool",
        "bins not clipped to the map",
        "bin_ranges",
        [
            (
                "ranges.append((min(max(lo, 0), size), min(max(hi, 0), size)))",
                "ranges.append((lo, hi))",
            )
        ],
        {
            "test_bin_ranges",
            "test_forward_halfway_coordinates",
            "test_forward_random",
            "test_forward_argmax",
            "test_forward_off_the_map",
            "test_backward_random",
        },
    ),
    (
        "03_roi_warp",
        "np.round (half to even) instead of C rounding",
        "quantize_rois",
        [("r = r + (a - r >= 0.5)", "r = np.round(a)")],
        {"test_quantize_rois", "test_forward_halfway"},
    ),
    (
        "03_roi_warp",
        "avg without division by the sample count",
        "roi_warp_forward",
        [("np.sum(samples, axis=0) / (grid_h * grid_w)", "np.sum(samples, axis=0)")],
        {
            "test_forward_known_answer",
            "test_forward_halfway",
            "test_forward_random_avg",
            "test_forward_sampling_ratio",
            "test_forward_outside_samples",
            "test_forward_small_boxes",
            "test_forward_float32",
        },
    ),
    (
        "03_roi_warp",
        "no clamp to 0 within a pixel before the map (int() truncates -0.5 to 0)",
        "bilinear_interpolate",
        [("    y, x = max(y, 0.0), max(x, 0.0)\n", "")],
        {
            "test_bilinear_borders",
            "test_bilinear_random",
            "test_forward_halfway",
            "test_forward_random_max",
            "test_forward_random_avg",
            "test_forward_sampling_ratio",
            "test_forward_outside_samples",
            "test_forward_float32",
        },
    ),
    (
        "04_roi_align_forward",
        "no half-pixel offset for aligned=True",
        "roi_box",
        [("offset = 0.5 if aligned else 0.0", "offset = 0.0")],
        {
            "test_roi_box",
            "test_forward_known_answer",
            "test_forward_random_aligned",
            "test_forward_sampling_ratio",
            "test_forward_max",
            "test_forward_max_outside",
            "test_forward_malformed_boxes",
            "test_forward_float32",
        },
    ),
    (
        "04_roi_align_forward",
        "avg without division by the sample count",
        "roi_align_forward",
        [("np.sum(samples, axis=0) / count", "np.sum(samples, axis=0)")],
        {
            "test_forward_known_answer",
            "test_forward_random",
            "test_forward_random_aligned",
            "test_forward_sampling_ratio",
            "test_forward_malformed_boxes",
            "test_forward_float32",
        },
    ),
    (
        "04_roi_align_forward",
        "adaptive grid with floor instead of ceil",
        "sample_coords",
        [("np.ceil(roi_size / pooled)", "np.floor(roi_size / pooled)")],
        {
            "test_sample_coords_adaptive",
            "test_forward_random",
            "test_forward_random_aligned",
            "test_forward_max",
            "test_forward_malformed_boxes",
            "test_forward_float32",
        },
    ),
    (
        "04_roi_align_forward",
        "boxes stretched to 1x1 also when aligned",
        "roi_box",
        [("    if not aligned:\n", "    if True:\n")],
        {"test_roi_box", "test_forward_malformed_boxes"},
    ),
    (
        "05_roi_align_backward",
        "avg backward without division by the sample count",
        "roi_align_backward",
        [("g * cw[k] / count", "g * cw[k]")],
        {
            "test_backward_known_answer",
            "test_backward_random",
            "test_backward_random_aligned",
            "test_backward_sampling_ratio",
            "test_backward_accumulates",
            "test_backward_off_the_map",
            "test_backward_no_rois_and_float32",
        },
    ),
    (
        "05_roi_align_backward",
        "samples beyond one pixel off the map still scatter to the border",
        "bilinear_corners",
        [
            (
                "    if y < -1.0 or y > height or x < -1.0 or x > width:\n"
                "        return np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4)\n",
                "",
            )
        ],
        {
            "test_bilinear_corners_outside",
            "test_backward_random",
            "test_backward_random_aligned",
            "test_backward_sampling_ratio",
            "test_backward_max",
            "test_backward_off_the_map",
            "test_backward_no_rois_and_float32",
        },
    ),
    (
        "05_roi_align_backward",
        "one-sided differences in numerical_gradient",
        "numerical_gradient",
        [
            ("x[idx] = old - eps", "x[idx] = old"),
            ("(plus - minus) / (2 * eps)", "(plus - minus) / eps"),
        ],
        {"test_numerical_gradient_is_central"},
    ),
    (
        "05_roi_align_backward",
        "numerical_gradient does not put x back",
        "numerical_gradient",
        [("        x[idx] = old\n        grad[idx]", "        grad[idx]")],
        {"test_numerical_gradient_restores_x"},
    ),
    (
        "06_numba",
        "a backward prange over RoIs (two threads add into one pixel)",
        "roi_align_backward_kernel",
        [
            (
                "    for c in prange(channels):\n        for k in range(n_rois):",
                "    for c in range(channels):\n        for k in prange(n_rois):",
            )
        ],
        {"test_backward_race_free"},
    ),
    (
        "06_numba",
        "forward without division by the sample count",
        "roi_align_forward_kernel",
        [("out[k, c, i, j] += v / count", "out[k, c, i, j] += v")],
        {"test_forward_known_answer", "test_forward_random", "test_forward_off_the_map"},
    ),
    (
        "07_cuda",
        "one output per thread, no grid-stride loop",
        "roi_align_forward_kernel",
        [
            (
                "    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):\n        k, c",
                "    for idx in range(cuda.grid(1), min(cuda.grid(1) + 1, total)):\n        k, c",
            )
        ],
        {"test_forward_grid_stride"},
    ),
    (
        "07_cuda",
        "plain += instead of atomic adds in the backward",
        "roi_align_backward_kernel",
        [
            (
                f"{' ' * 20}cuda.atomic.add(grad_x, (b, c, {y}, {x}), g * w{y} * w{x})\n",
                f"{' ' * 20}grad_x[b, c, {y}, {x}] += g * w{y} * w{x}\n",
            )
            for y in ("y0", "y1")
            for x in ("x0", "x1")
        ],
        {"test_backward_atomic"},
    ),
    (
        "08_torch_op",
        "fake kernel with pooled height and width swapped",
        "forward_fake",
        [
            (
                "(rois.shape[0], input.shape[1], pooled_height, pooled_width)",
                "(rois.shape[0], input.shape[1], pooled_width, pooled_height)",
            )
        ],
        {"test_fake_kernel", "test_opcheck"},
    ),
    (
        "08_torch_op",
        "no autograd formula registered",
        "autograd",
        [("roi_align.register_autograd(backward, setup_context=setup_context)", "pass")],
        {"test_autograd", "test_gradcheck", "test_opcheck", "test_torch_compile"},
    ),
    (
        "09_anchors",
        "anchor-major order (a, y, x) instead of (y, x, a)",
        "grid_anchors",
        [("(shifts[:, None, :] + base[None, :, :])", "(shifts[None, :, :] + base[:, None, :])")],
        {
            "test_grid_anchors_order",
            "test_grid_anchors_dtype",
            "test_anchors_for_image",
            "test_anchors_for_image_per_level_sizes",
        },
    ),
    (
        "09_anchors",
        "base anchors not rounded",
        "base_anchors",
        [("/ 2).round()", "/ 2)")],
        {
            "test_base_anchors_known",
            "test_base_anchors_order",
            "test_base_anchors_rounding",
            "test_anchors_for_image",
            "test_anchors_for_image_per_level_sizes",
        },
    ),
    (
        "10_box_coding_nms",
        "decode without the clamp on dw, dh",
        "decode",
        [
            ("torch.clamp(deltas[:, 2::4] / ww, max=BBOX_XFORM_CLIP)", "deltas[:, 2::4] / ww"),
            ("torch.clamp(deltas[:, 3::4] / wh, max=BBOX_XFORM_CLIP)", "deltas[:, 3::4] / wh"),
        ],
        {"test_decode_clamps"},
    ),
    (
        "10_box_coding_nms",
        "nms suppresses at an IoU equal to the threshold",
        "nms",
        [
            (
                "return box_iou(boxes[a], boxes[b]) > iou_threshold",
                "return box_iou(boxes[a], boxes[b]) >= iou_threshold",
            )
        ],
        {"test_nms_ties_and_edges"},
    ),
    (
        "10_box_coding_nms",
        "blocked nms whose kept boxes do not drop the boxes of later blocks",
        "nms",
        [("        dropped[later[suppresses(block[kept], later).any(axis=0)]] = True\n", "")],
        {"test_nms_random"},
    ),
    (
        "11_matcher_sampler",
        "low-quality matches without ties (one argmax per GT)",
        "match",
        [
            (
                "_, pred = (iou == best_per_gt[:, None]).nonzero(as_tuple=True)",
                "pred = iou.argmax(dim=1)",
            )
        ],
        {"test_match_low_quality"},
    ),
    (
        "11_matcher_sampler",
        "negatives drawn before positives (another random draw)",
        "sample",
        [
            (
                _DRAW_POS + _DRAW_NEG,
                _DRAW_NEG + _DRAW_POS,
            )
        ],
        {"test_sample_same_draw"},
    ),
    (
        "12_masks",
        "paste without the ring of zeros",
        "paste_mask",
        [
            (
                "    scale = (m + 2 * padding) / m\n"
                "    padded = F.pad(mask[None, None], (padding,) * 4)\n",
                "    scale = 1.0\n    padded = mask[None, None]\n",
            )
        ],
        {"test_paste_mask", "test_paste_mask_edges"},
    ),
    (
        "12_masks",
        "mask loss on every class's channel (classes compete)",
        "mask_loss",
        [
            (
                "F.binary_cross_entropy_with_logits(mask_logits[rois, labels], targets)",
                "F.binary_cross_entropy_with_logits(\n"
                "        mask_logits, targets[:, None].expand_as(mask_logits)\n    )",
            )
        ],
        {"test_mask_loss", "test_mask_loss_gradient", "test_losses_match_refimpl"},
    ),
]


@pytest.mark.parametrize(
    ("exercise", "bug", "grade_id", "replacements", "expected"),
    MUTATIONS,
    ids=[f"{m[0][:2]}-{m[1][:40]}" for m in MUTATIONS],
)
def test_a_typical_bug_loses_exactly_its_tests(
    tmp_path, monkeypatch, solution, exercise, bug, grade_id, replacements, expected
):
    # One numba thread: a racy kernel then gives right sums, and only the race detector
    # (not a lucky or unlucky interleaving) decides which tests fail.
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    nb = solution(exercise)
    edit(nb, grade_id, replacements)
    result = grade_notebook(write(nb, tmp_path, exercise))
    assert not result.notes, result.notes
    assert failed(result) == expected, bug
    for t in result.tests:  # every failure explains itself
        if t.name in expected:
            assert t.output and t.status in ("failed", "error"), t


# --- feedback a learner can act on ------------------------------------------------------------


def test_feedback_reproduces_and_names_the_likely_cause(tmp_path, solution):
    nb = solution("02_roi_pool")
    edit(nb, "roi_pool_forward_argmax", MUTATIONS[1][3])  # exclusive box ends
    boom = "    if v == 3.49:  # one of test_c_round's cases\n        raise ValueError('boom')\n"
    edit(nb, "c_round", [("    a = abs(float(v))\n", boom + "    a = abs(float(v))\n")])
    result = grade_notebook(write(nb, tmp_path, "02_roi_pool"))
    out = {t.name: t.output for t in result.tests}
    random = out["test_forward_random"]
    assert "likely cause: exclusive box ends" in random, random
    setup, call = random.split("to reproduce:\n")[1].splitlines()[:-1], random.splitlines()[-1]
    assert "checks.case(seed=20, n=2, c=3, h=9, w=11, k=8, spatial_scale=0.5)" in random
    assert call.strip() == "roi_pool_forward_argmax(x, rois, (3, 2), 0.5)"
    scope: dict = {}
    exec("\n".join(line.strip() for line in setup), scope)  # the recipe runs as printed
    assert scope["x"].shape == (2, 3, 9, 11) and scope["rois"].shape == (8, 5)
    # an error in the learner's code names the cell as JupyterLab shows it
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    number = next(i for i, c in enumerate(code, 1) if "def c_round" in "".join(c["source"]))
    assert f'code cell {number} ("' in out["test_c_round"], out["test_c_round"]
    assert "ValueError: boom" in out["test_c_round"]

    nb = solution("04_roi_align_forward")
    edit(nb, "roi_box", [("offset = 0.5 if aligned else 0.0", "offset = 0.0")])
    result = grade_notebook(write(nb, tmp_path, "04_roi_align_forward"))
    out = {t.name: t.output for t in result.tests}
    assert "likely cause: the half-pixel offset" in out["test_forward_random_aligned"]


# --- robustness: whatever the notebook holds, the grader reports and goes on -----------------


def test_a_cell_that_raises_does_not_stop_the_others(tmp_path, solution):
    nb = solution("02_roi_pool")
    nb["cells"].insert(2, code_cell("raise RuntimeError('boom')"))
    nb["cells"].insert(5, code_cell("undefined_name + 1"))
    nb["cells"].append(code_cell("1 / 0"))
    result = grade_notebook(write(nb, tmp_path, "02_roi_pool"))
    assert result.score == result.max_score
    notes = "\n".join(result.notes)
    assert "RuntimeError: boom" in notes and "NameError" in notes
    assert "ZeroDivisionError" in notes


def test_a_missing_function_fails_only_its_tests(tmp_path, solution):
    nb = solution("02_roi_pool")
    nb["cells"].remove(
        next(c for c in nb["cells"] if "def roi_pool_backward" in "".join(c["source"]))
    )
    result = grade_notebook(write(nb, tmp_path, "02_roi_pool"))
    backward = {t.name for t in result.tests if "backward" in t.name}
    assert failed(result) == backward | {"test_inputs_unchanged"}
    for t in result.tests:
        if t.name in backward:
            assert "does not define `roi_pool_backward`" in t.output


def test_wrong_shapes_dtypes_and_values_are_explained(tmp_path, solution):
    nb = solution("04_roi_align_forward")
    wrong = (
        "    if y.shape[1] == 3:\n"
        "        return y[:, :1]  # a channel lost\n"
        "    if y.shape[1] == 2:\n"
        "        return y.astype(np.float32)  # a dtype lost\n"
        "    y[0, 0, 0, 0] += 1  # one value off\n"
        "    return y\n"
    )
    edit(nb, "roi_align_forward", [("    return y\n", wrong)])
    result = grade_notebook(write(nb, tmp_path, "04_roi_align_forward"))
    out = {t.name: t.output for t in result.tests}
    assert "expected shape (6, 3, 3, 2), got (6, 1, 3, 2)" in out["test_forward_random"]
    assert "expected dtype float64, got float32" in out["test_forward_sampling_ratio"]
    known = out["test_forward_known_answer"]
    assert "1 of 4 values differ" in known and "the first at index (0, 0, 0, 0)" in known
    assert "expected 2.5, got 3.5" in known, known


def test_an_infinite_loop_costs_only_its_tests(tmp_path, solution):
    nb = solution("02_roi_pool")
    edit(
        nb,
        "roi_pool_backward",
        [("### BEGIN SOLUTION\n", "### BEGIN SOLUTION\n    while True:\n        pass\n")],
    )
    # a cell that computes forever, swallowing exceptions (and trying to disarm the alarm):
    # its CPU time runs out, it is interrupted and reported (sleeping cells: the wall backstop,
    # test_a_notebook_that_never_ends_is_stopped)
    nb["cells"].insert(
        3,
        code_cell(
            "import signal\n"
            "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
            "signal.alarm(0)\n"
            "while True:\n"
            "    try:\n"
            "        sum(range(1000))\n"
            "    except Exception:\n"
            "        pass"
        ),
    )
    result = grade_notebook(write(nb, tmp_path, "02_roi_pool"), timeout=1.0)
    backward = {t.name for t in result.tests if "backward" in t.name}
    assert failed(result) == backward | {"test_inputs_unchanged"}
    assert all(t.status == "timeout" for t in result.tests if t.name in backward)
    for t in result.tests:  # a message that fits the exercise (its grading module's LIMIT_HINT)
        if t.name in backward:
            assert "ran past its CPU time limit" in t.output and "pixel by pixel" in t.output
    assert any("ran past its CPU time limit of 1 s" in n for n in result.notes), result.notes


def test_a_notebook_that_never_ends_is_stopped(tmp_path, solution, monkeypatch):
    """A cell that sleeps and swallows even the time limit uses no CPU: the wall-clock backstop
    stops it (its sandbox is killed), the note says why, and the other cells and the tests
    still run, in a fresh sandbox."""
    monkeypatch.setattr(grade_module, "WALL_FLOOR_S", 3.0)
    nb = solution("02_roi_pool")
    nb["cells"].insert(
        3,
        code_cell(
            "import time\n"
            "while True:\n"
            "    try:\n"
            "        time.sleep(1)\n"
            "    except BaseException:\n"
            "        pass"
        ),
    )
    result = grade_notebook(write(nb, tmp_path, "02_roi_pool"))
    assert any("of wall-clock time" in n and "waiting for something" in n for n in result.notes)
    assert result.tests and result.score == result.max_score, failed(result)


def test_a_crash_and_an_exit_cost_only_their_tests(tmp_path, solution):
    nb = solution("02_roi_pool")
    edit(
        nb,
        "roi_pool_backward",
        [("### BEGIN SOLUTION\n", "### BEGIN SOLUTION\n    import os\n\n    os._exit(3)\n")],
    )
    nb["cells"].insert(3, code_cell("import sys\nsys.exit(1)"))
    result = grade_notebook(write(nb, tmp_path, "02_roi_pool"))
    backward = {t.name for t in result.tests if "backward" in t.name}
    assert failed(result) == backward | {"test_inputs_unchanged"}
    assert all("ended the process" in t.output for t in result.tests if t.name in backward)
    assert any("SystemExit" in n for n in result.notes), result.notes


def test_duplicated_cells_magics_and_a_renamed_notebook(tmp_path, solution):
    nb = solution("03_roi_warp")
    nb["cells"] = [c for cell in nb["cells"] for c in (cell, json.loads(json.dumps(cell)))]
    nb["cells"].insert(0, code_cell("%matplotlib inline\n!ls\nimport numpy as np"))
    nb["cells"].insert(1, code_cell("%%bash\necho hello"))
    nb["cells"].insert(2, code_cell("%%time\nfrom numpy import pi as PI_FROM_A_TIMED_CELL"))
    nb["cells"].insert(3, code_cell("assert PI_FROM_A_TIMED_CELL > 3\ny = (3\n     % 2)\nprint?"))
    result = grade_notebook(write(nb, tmp_path, "03_roi_warp (1)"))  # renamed, still graded
    assert result.exercise == "03_roi_warp" and result.score == result.max_score
    assert result.notes == []


def test_damaged_metadata(tmp_path, solution):
    for name in ("02_roi_pool", "05_roi_align_backward"):
        nb = solution(name)
        nb.pop("metadata")
        for cell in nb["cells"]:
            cell["metadata"] = {}  # no nbgrader metadata: the check cells run too (and pass)
        result = grade_notebook(write(nb, tmp_path, name))
        assert result.score == result.max_score
        # the comparison cells (tagged skip-grading, tags now gone) run: refimpl is refused
        assert all("graded functions must be your own" in n for n in result.notes), result.notes
    nb = load(EXERCISES / "03_roi_warp.ipynb")
    for cell in nb["cells"]:
        cell["metadata"] = {"nbgrader": "garbage"}
        cell.pop("id")
    result = grade_notebook(write(nb, tmp_path, "03_roi_warp"))
    assert result.score == 0 and result.tests
    # the check cells ran (and so did the comparison cell: refimpl is refused)
    assert all("NotImplementedError" in n or "must be your own" in n for n in result.notes)
    assert any("NotImplementedError" in n for n in result.notes)


def test_unreadable_notebooks_score_zero_and_the_others_are_graded(tmp_path):
    good = (SOLUTIONS / "02_roi_pool.ipynb").read_text()
    (tmp_path / "02_roi_pool.ipynb").write_text(good)
    (tmp_path / "03_roi_warp.ipynb").write_text(
        (SOLUTIONS / "03_roi_warp.ipynb").read_text()[:5000]
    )
    (tmp_path / "04_roi_align_forward.ipynb").write_text('{"nbformat": 4}')
    (tmp_path / "05_roi_align_backward.ipynb").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "my_notes.ipynb").write_text(good)
    (tmp_path / "02_roi_pool-Copy1.ipynb").write_text(good)
    results = {r.path.name: r for r in grade([tmp_path])}
    assert results["02_roi_pool.ipynb"].score == results["02_roi_pool.ipynb"].max_score == 27
    for name, why in [
        ("03_roi_warp.ipynb", "not valid JSON"),
        ("04_roi_align_forward.ipynb", "not a Jupyter notebook"),
        ("05_roi_align_backward.ipynb", "not a text file"),
    ]:
        r = results[name]
        assert r.tests and r.score == 0 and why in r.notes[0], (name, r.notes)
        assert all(why in t.output for t in r.tests)
    assert "no grading tests" in results["my_notes.ipynb"].notes[0]
    assert "02_roi_pool.ipynb is graded" in results["02_roi_pool-Copy1.ipynb"].notes[0]


def test_functions_imported_from_refimpl_are_refused(tmp_path):
    """refimpl's reference is not importable in the sandbox: a notebook that imports a graded
    function instead of writing it scores 0 on its tests, and the note says why."""
    nb = load(EXERCISES / "02_roi_pool.ipynb")
    nb["cells"].append(code_cell("from refimpl.ops.python import roi_pool_backward  # noqa"))
    result = grade_notebook(write(nb, tmp_path, "02_roi_pool"))
    assert result.score == 0 and result.tests
    assert any("graded functions must be your own" in n for n in result.notes), result.notes


# --- the command line and results.json -------------------------------------------------------

VISIBILITIES = {"visible", "hidden", "after_due_date", "after_published"}

HIDDEN_TESTS = '''
from refimpl.course.checks import fail, points


@points(3)
def test_hidden_c_round(sub):
    """a hidden check of c_round"""
    if sub.c_round(4.5) != 5:
        fail("c_round(4.5) should be 5")


def test_hidden_always_fails(sub):
    """a hidden test that fails"""
    fail("secret feedback")
'''


def check_results_schema(data):
    assert set(data) == {"score", "execution_time", "output", "stdout_visibility", "tests"}
    assert isinstance(data["score"], float) and isinstance(data["execution_time"], int)
    assert isinstance(data["output"], str) and data["stdout_visibility"] == "visible"
    for t in data["tests"]:
        assert set(t) == {"name", "number", "score", "max_score", "output", "visibility"}
        assert isinstance(t["name"], str) and isinstance(t["number"], str)
        assert isinstance(t["score"], float) and isinstance(t["max_score"], float)
        assert isinstance(t["output"], str) and t["visibility"] in VISIBILITIES
        assert 0 <= t["score"] <= t["max_score"]
    assert data["score"] == sum(t["score"] for t in data["tests"])


def test_json_results_and_hidden_tests(tmp_path, capsys):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "test_02_roi_pool.py").write_text(HIDDEN_TESTS)
    out = tmp_path / "results.json"
    argv = [str(SOLUTIONS / "02_roi_pool.ipynb"), str(EXERCISES / "03_roi_warp.ipynb")]
    assert main([*argv, "--json", str(out), "--hidden", str(hidden), "--timeout", "20"]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    check_results_schema(data)
    tests = {t["name"]: t for t in data["tests"]}
    assert tests["02_roi_pool: a hidden check of c_round"]["visibility"] == "hidden"
    assert tests["02_roi_pool: a hidden check of c_round"]["score"] == 3.0
    assert tests["02_roi_pool: a hidden test that fails"]["output"] == "secret feedback"
    assert tests["02_roi_pool: c_round: halves away from zero, an int"]["number"] == "2.1"
    assert data["score"] == 27 + 3
    for text in (printed, data["output"]):  # hidden tests stay out of what learners read
        assert "secret feedback" not in text and "hidden check" not in text
        assert "(+ 2 hidden tests, reported in results.json)" in text
        assert text.rstrip().endswith("score: 27 / 48")


def test_command_line(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "refimpl.grade",
            str(EXERCISES / "02_roi_pool.ipynb"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("score: 0 / 27")
    check_results_schema(json.loads(out.read_text()))
    proc = subprocess.run(
        [sys.executable, "-m", "refimpl.grade", str(tmp_path / "missing.ipynb")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
