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
