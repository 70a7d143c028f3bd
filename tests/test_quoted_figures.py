"""Measured figures quoted in prose are recomputed here, so that they cannot go stale.

Each test reads the figure from the prose with a regular expression, recomputes it from the
code and the committed fixtures, and fails when they disagree (or when the sentence that
quotes it is gone). Figures that depend on the machine (timings) are not quoted in prose:
they come from committed result files (``tests/test_readme_numbers.py``) or the prose says
which command measures them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = " ".join((ROOT / "README.md").read_text().split())  # one line: prose wraps anywhere


def quoted(pattern: str, text: str | None = None) -> tuple[str, ...]:
    """The groups of the one match of ``pattern`` in ``text`` (the README by default); fails
    when the prose is gone."""
    found = re.findall(pattern, README if text is None else text)
    assert len(found) == 1, f"expected one sentence matching {pattern!r}, found {len(found)}"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def agrees(figure: str, value: float) -> bool:
    """``figure`` is ``value`` written to the figure's own number of decimals."""
    decimals = len(figure.partition(".")[2])
    return round(value, decimals) == float(figure)


def test_agrees_rounds_to_the_quoted_decimals():
    assert agrees("12.7", 12.72) and agrees("27", 27.15) and agrees("4", 4.0)
    assert not agrees("12.7", 12.64) and not agrees("27", 27.6) and not agrees("4", 4.6)


def test_readme_quotes_the_coalescing_replay():
    """Stage 1: the sectors per warp load of RoIAlign's forward, as lesson 7 counts them
    (``refimpl.course.coalescing`` on the GPU benchmark's workloads, 32 warps)."""
    from refimpl.bench.gpu import WORKLOADS
    from refimpl.course.coalescing import compare_layouts

    nchw_standard, nchw_large, channels_last = quoted(
        r"NCHW (\d+(?:\.\d+)?) on the standard workload and (\d+(?:\.\d+)?) on the large one, "
        r"channels-last the ideal (\d+(?:\.\d+)?)"
    )
    counted = {}
    for w in WORKLOADS:
        x, rois, _ = w.make()
        out = (w.output_size, w.output_size)
        counted[w.name] = compare_layouts(x.shape, rois, out, w.spatial_scale, 2, True, n_warps=32)
    assert set(counted) == {"standard", "large"}
    for figure, (name, layout) in (
        (nchw_standard, ("standard", "nchw")),
        (nchw_large, ("large", "nchw")),
        (channels_last, ("standard", "channels_last")),
        (channels_last, ("large", "channels_last")),
    ):
        value = counted[name][layout].sectors_per_load
        assert agrees(figure, value), f"README says {figure}, the replay counts {value:.2f}"


@pytest.fixture(scope="module")
def float64_differences():
    """max |ours - torchvision| over the fixture's two images, float64 evaluation."""
    import torch

    from tests.model import test_fidelity_torchvision as fidelity

    with np.load(fidelity.FIXTURES / "maskrcnn_torchvision.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    weights = fidelity.random_state_dict(
        fidelity.META["state_dict_spec"], fidelity.META["weight_seed"]
    )
    model = fidelity.build(weights).eval()  # float64
    images, _ = fidelity.data(arrays, torch.float64)
    with torch.no_grad():
        out = model(images)
    return {
        key: max(
            fidelity.max_diff(det[key].numpy(), arrays[f"eval_float64/{i}/{key}"])
            for i, det in enumerate(out)
        )
        for key in ("boxes", "masks")
    }


def test_readme_quotes_the_float64_fidelity(float64_differences):
    """Stage 2: our detections against torchvision's fixtures, float64. Boxes: a bound (the
    last digits depend on the CPU's SIMD path and threads). Masks: the figure itself, which
    is the fixtures' float32 storage of the masks (at most half an ulp of 1.0, 2**-25)."""
    boxes, masks = quoted(r"float64: boxes within (\S+?), .*? masks within (\S+?), the fixtures'")
    assert float64_differences["boxes"] <= float(boxes), float64_differences
    assert f"{float64_differences['masks']:.0e}" == f"{float(masks):.0e}", float64_differences
    assert float64_differences["masks"] <= 2.0**-25, "masks differ by more than their storage"


def test_lesson_time_budget_is_the_tests():
    """The lessons' prose quotes the CPU-time budget ``tests/course/test_notebooks.py`` holds
    every lesson to, not a timing."""
    import json

    source = (ROOT / "tests" / "course" / "test_notebooks.py").read_text()
    (budget,) = quoted(r"\nLESSON_BUDGET_CPU_S = (\d+)\n", source)
    lesson_1 = json.loads((ROOT / "lessons" / "01_the_task.ipynb").read_text())
    prose = {
        "lessons/README.md": (ROOT / "lessons" / "README.md").read_text(),
        "lessons/01_the_task.ipynb": "\n".join(
            "".join(c["source"]) for c in lesson_1["cells"] if c["cell_type"] == "markdown"
        ),
    }
    for name, text in prose.items():
        figures = re.findall(r"(\d+) CPU seconds", " ".join(text.split()))
        assert figures, f"{name} no longer quotes the lessons' CPU-time budget"
        assert set(figures) == {budget}, (name, figures, budget)


def test_lesson_12_quotes_the_reference_card():
    """Lesson 12 quotes the reference checkpoint's data sizes; they are its card's."""
    import json

    from refimpl.weights import card

    info = card()
    nb = json.loads((ROOT / "lessons" / "12_training.ipynb").read_text())
    text = " ".join(
        " ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown").split()
    )
    (train,) = quoted(r"trained from scratch on (\d+) shapes images", text)
    (val,) = quoted(r"the card's figure on (\d+) images", text)
    assert int(train) == info["data"]["train"], (train, info["data"])
    assert int(val) == info["metrics"]["val_images"], (val, info["metrics"]["val_images"])
