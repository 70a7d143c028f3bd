"""Feedback a learner can act on (issue 14, item 5), for exercises 09-12: a planted bug's
failing test prints the one line that rebuilds its inputs, the call as the learner types it
in the notebook, and the likely cause.

(Exercises 02 and 04: tests/course/test_grader.py's
test_feedback_reproduces_and_names_the_likely_cause.)
"""

from __future__ import annotations

import numpy as np

from refimpl.course.grade import grade_notebook

from .conftest import edit, failed, write


def reproduce(output: str) -> tuple[list[str], str]:
    """The setup lines and the call of a message's "to reproduce:" block."""
    lines = [line.strip() for line in output.split("to reproduce:\n")[1].splitlines()]
    return lines[:-1], lines[-1]


def outputs(tmp_path, nb, name) -> tuple[dict[str, str], set[str]]:
    result = grade_notebook(write(nb, tmp_path, name))
    assert not result.notes, result.notes
    return {t.name: t.output for t in result.tests}, failed(result)


def test_anchors_in_x_y_order(tmp_path, solution):
    nb = solution("09_anchors")
    edit(nb, "grid_anchors", [('        indexing="ij",\n', '        indexing="xy",\n')])
    out, lost = outputs(tmp_path, nb, "09_anchors")
    assert lost == {
        "test_grid_anchors_known",
        "test_grid_anchors_order",
        "test_grid_anchors_dtype",
        "test_anchors_for_image",
        "test_anchors_for_image_per_level_sizes",
    }
    for name in lost:
        assert "likely cause: anchors in (x, y, anchor) order" in out[name], out[name]
    setup, call = reproduce(out["test_grid_anchors_known"])
    assert call == "grid_anchors(base, (2, 3), (16, 16))"
    assert setup == ["base = torch.tensor([[-16.0, -16.0, 16.0, 16.0]], dtype=torch.float32)"]
    _, call = reproduce(out["test_anchors_for_image_per_level_sizes"])
    assert (
        call
        == "anchors_for_image((64, 64), [(16, 16), (8, 8)], ((8, 12), (24,)), ((1.0,), (0.5, 2.0)))"
    )


def test_nms_suppressing_at_equal_iou(tmp_path, solution):
    nb = solution("10_box_coding_nms")
    edit(
        nb,
        "nms",
        [
            (
                "return box_iou(boxes[a], boxes[b]) > iou_threshold",
                "return box_iou(boxes[a], boxes[b]) >= iou_threshold",
            )
        ],
    )
    out, lost = outputs(tmp_path, nb, "10_box_coding_nms")
    assert lost == {"test_nms_ties_and_edges"}
    message = out["test_nms_ties_and_edges"]
    assert "likely cause: IoU >= threshold suppresses" in message, message
    setup, call = reproduce(message)
    assert call == "nms(boxes, scores, 0.5)"
    scope: dict = {"np": np}
    exec("\n".join(setup), scope)
    assert scope["scores"].tolist() == [0.5, 0.5, 0.9, 0.5]


def test_random_inputs_rebuild_exactly(tmp_path, solution):
    """A draw from a generator already used (exercise 10's nms test, seed 104) prints as one
    line per input that rebuilds it exactly; the decode clamp's likely cause is named."""
    nb = solution("10_box_coding_nms")
    edit(
        nb,
        "nms",
        [
            (
                '    order = np.argsort(-scores, kind="stable")\n',
                '    order = np.argsort(scores, kind="stable")\n',
            )
        ],
    )
    edit(
        nb,
        "decode",
        [
            ("torch.clamp(deltas[:, 2::4] / ww, max=BBOX_XFORM_CLIP)", "deltas[:, 2::4] / ww"),
            ("torch.clamp(deltas[:, 3::4] / wh, max=BBOX_XFORM_CLIP)", "deltas[:, 3::4] / wh"),
        ],
    )
    out, lost = outputs(tmp_path, nb, "10_box_coding_nms")
    assert {"test_nms_random", "test_decode_clamps"} <= lost
    assert "likely cause: the clamp missing" in out["test_decode_clamps"]
    message = out["test_nms_random"]
    assert "likely cause: the lower score kept" in message, message
    setup, call = reproduce(message)
    assert setup[0] == "from refimpl.course import checks"
    assert call == "nms(boxes, scores, 0.3)"
    scope: dict = {"np": np}
    exec("\n".join(setup), scope)
    rng = np.random.default_rng(104)  # as test_nms_random draws them
    centres = rng.uniform(0, 200, (6, 2))
    boxes = np.concatenate(
        [np.concatenate([c - 20, c + 20]) + rng.normal(0, 4, (15, 4)) for c in centres]
    )
    np.testing.assert_array_equal(scope["boxes"], boxes)
    np.testing.assert_array_equal(scope["scores"], rng.uniform(0, 1, len(boxes)))


def test_sampler_and_paste(tmp_path, solution):
    nb = solution("11_matcher_sampler")
    pos = (
        "        pos = positive[torch.randperm(positive.numel(), generator=generator)[:num_pos]]\n"
    )
    neg = (
        "        neg = negative[torch.randperm(negative.numel(), generator=generator)[:num_neg]]\n"
    )
    edit(nb, "sample", [(pos + neg, neg + pos)])
    out, lost = outputs(tmp_path, nb, "11_matcher_sampler")
    assert lost == {"test_sample_same_draw"}
    message = out["test_sample_same_draw"]
    assert "likely cause: negatives drawn before positives" in message, message
    setup, call = reproduce(message)
    assert call == "sample(labels, 16, 0.25, torch.Generator().manual_seed(7))"
    assert "labels = [torch.from_numpy(rng.choice(" in setup[-1]

    nb = solution("12_masks")
    edit(
        nb,
        "paste_mask",
        [
            (
                "    scale = (m + 2 * padding) / m\n"
                "    padded = F.pad(mask[None, None], (padding,) * 4)\n",
                "    scale = 1.0\n    padded = mask[None, None]\n",
            )
        ],
    )
    out, lost = outputs(tmp_path, nb, "12_masks")
    assert lost == {"test_paste_mask", "test_paste_mask_edges"}
    for name in lost:
        assert "likely cause: paste without the zero-padding" in out[name], out[name]
        assert reproduce(out[name])[1] == "paste_mask(mask, box, 64, 80)"


def test_numba_sum_and_race(tmp_path, monkeypatch, solution):
    """Exercise 06: the sample count's likely cause, and the race detector's call to rerun."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")  # only the race detector finds the race
    nb = solution("06_numba")
    edit(nb, "roi_align_forward_kernel", [("out[k, c, i, j] += v / count", "out[k, c, i, j] += v")])
    race = (
        "    for c in prange(channels):\n        for k in range(n_rois):",
        "    for c in range(channels):\n        for k in prange(n_rois):",
    )
    edit(nb, "roi_align_backward_kernel", [race])
    out, lost = outputs(tmp_path, nb, "06_numba")
    assert lost == {
        "test_forward_known_answer",
        "test_forward_random",
        "test_forward_off_the_map",
        "test_backward_race_free",
    }
    message = out["test_forward_random"]
    assert "likely cause: avg: divide the sum of a bin's samples by their count" in message
    assert reproduce(message)[1] == "roi_align_forward(x, rois, (3, 2), 0.5, -1, False)"
    setup, call = reproduce(out["test_backward_race_free"])
    assert call.startswith("find_races(roi_align_backward_kernel, (grad_output, rois, 0.5, -1,")
    scope: dict = {"np": np}
    exec("\n".join(setup), scope)
    assert scope["grad_output"].shape == (4, 2, 2, 2) and scope["rois"].shape == (4, 5)
