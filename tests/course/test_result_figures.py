"""The result figures put one quantity on each axis and start every axis at zero (a cut axis
makes a 1-point gap look like a 10-fold one); the ablation figure draws the seeds' spread."""

from __future__ import annotations

import pytest

from refimpl.course import model_figures
from refimpl.engine.ablate import VARIANTS


def _report(seeds=(0, 1, 2)):
    results = {}
    for i, v in enumerate(VARIANTS):
        stats = {k: {"mean": 20.0 + i, "std": 0.5 + 0.1 * i, "min": 19.0, "max": 22.0 + i,
                     "n": len(seeds)} for k in ("AP", "AP50", "AP75")}  # fmt: skip
        results[v.slug] = {"runs": {}, "segm": stats}
    return {"results": results, "seeds": list(seeds)}


def _no_twin_axes(fig) -> None:
    # a twin axis shares the x axis of another: two quantities on one panel
    for ax in fig.axes:
        assert not ax.get_shared_x_axes().get_siblings(ax)[1:], "a twinned axis"


def test_round_trip_bars_one_quantity_per_axis_from_zero():
    scores = {"RoIPool": 0.61, "RoIAlign avg": 0.83}
    fig = model_figures.round_trip_bars(scores, {"RoIPool": 26.9, "RoIAlign avg": 30.3})
    assert len(fig.axes) == 2
    _no_twin_axes(fig)
    for ax in fig.axes:
        assert ax.get_ylim()[0] == 0
    assert fig.axes[0].get_ylim()[1] == pytest.approx(1.0)
    assert fig.axes[1].get_ylim()[1] >= 30.3  # the paper's panel holds its largest bar


def test_ablation_bars_error_bars_and_zero_based_axes():
    report = _report()
    fig = model_figures.ablation_bars(report)
    assert len(fig.axes) == 3  # AP, AP75, the paper's AP
    _no_twin_axes(fig)
    for ax in fig.axes:
        assert ax.get_ylim()[0] == 0
    ours = fig.axes[0]
    assert len(ours.patches) == len(VARIANTS)
    heights = [p.get_height() for p in ours.patches]
    assert heights == [report["results"][v.slug]["segm"]["AP"]["mean"] for v in VARIANTS]
    assert any(type(c).__name__ == "ErrorbarContainer" for c in ours.containers)  # the spread
    paper = [p.get_height() for p in fig.axes[2].patches]
    assert paper == [v.paper[0] for v in VARIANTS]
