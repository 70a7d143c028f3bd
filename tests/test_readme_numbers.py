"""Figures quoted in the README come from committed result files: here, the reference
weights' section against their card (refimpl/weights/maskrcnn_small_shapes.json)."""

from __future__ import annotations

import re
from pathlib import Path

from refimpl.weights import card

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    return README[start : README.index("\n### ", start + 1)]


def test_reference_weights_section_quotes_the_card():
    info = card()
    text = " ".join(_section("### The reference weights").split())
    m, t = info["metrics"], info["training"]
    command = info["provenance"]["command"].removeprefix("python ")
    assert f".venv/bin/python {command}" in text
    assert f"{t['iterations']} iterations of {t['images_per_iteration']} images" in text
    assert f"{info['data']['train']} + {info['data']['val']} shapes images" in text
    assert f"{t['train_wall_s'] / 60:.0f} minutes" in text
    assert f"{info['bytes'] / 1e6:.1f} MB" in text
    assert f"the {m['val_images']} validation images" in text
    for row, iou_type in (("bbox", "bbox"), ("segm (mask)", "segm")):
        cells = re.search(rf"\| {re.escape(row)} \|([^\n]*)\|", _section("### The reference"))
        assert cells, row
        quoted = [float(c.strip(" *")) for c in cells.group(1).split("|")]
        want = [round(100 * m[iou_type][k], 1) for k in ("AP", "AP50", "AP75")]
        assert quoted == want, (row, quoted, want)


def test_every_measured_block_is_rendered_from_its_committed_result():
    """The README's measured figures (demo, speed tables, ablation, capstone) are the blocks
    that ``refimpl.engine.results`` renders from ``docs/results/*.json``: none is stale."""
    from refimpl.engine import results

    assert set(results.blocks(README)) == set(results.RENDER), "a block is missing"
    assert results.stale(README) == [], "stale: refimpl.engine.results --write"


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    """The check can fail: one changed figure in a result file makes its block stale."""
    import json

    from refimpl.engine import results

    demo = results.load("demo")
    demo["segm"]["AP"] = demo["segm"]["AP"] / 2
    (tmp_path / "demo.json").write_text(json.dumps(demo))
    for name in set(results.RENDER) - {"demo"}:
        (tmp_path / f"{name}.json").write_text((results.RESULTS / f"{name}.json").read_text())
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    assert results.stale(README) == ["demo"]
    assert results.stale(README.replace("<!-- results: capstone -->", "")) == ["capstone", "demo"]


def test_the_capstone_prose_says_whether_the_time_target_holds():
    """The README says the capstone's grading runs past its 15 minutes only while the
    committed measurement does (and the AP target is met)."""
    from refimpl.course.grading.test_14_capstone import LONG
    from refimpl.engine import results

    r = results.load("capstone")
    assert r["iterations"] == LONG["iters"] and r["score"] == r["max_score"]
    assert r["segm"]["AP"] >= LONG["ap"] and r["segm"]["AP50"] >= LONG["ap50"]
    prose = " ".join(README.split())  # the phrases may wrap anywhere
    over = r["wall_s"] > 15 * 60
    assert ("the grading takes longer than the 15 minutes set for it" in prose) == over
    assert ("the grading takes less than the 15 minutes set for it" in prose) == (not over)
