"""Helpers for the course tests: solution notebooks, edited copies of them, grading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"
LESSONS = REPO / "lessons"
EXERCISE_NAMES = sorted(p.stem for p in SOLUTIONS.glob("*.ipynb"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def source(cell: dict[str, Any]) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def cell_by_grade_id(nb: dict[str, Any], grade_id: str) -> dict[str, Any]:
    found = [
        c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id
    ]
    assert len(found) == 1, grade_id
    return found[0]


def edit(nb: dict[str, Any], grade_id: str, replacements: list[tuple[str, str]]) -> None:
    """Replace text in one cell; each old text must occur exactly once (a stale mutation fails)."""
    cell = cell_by_grade_id(nb, grade_id)
    src = source(cell)
    for old, new in replacements:
        assert src.count(old) == 1, f"{grade_id}: {old!r} occurs {src.count(old)} times"
        src = src.replace(old, new)
    cell["source"] = src


def code_cell(text: str, **metadata: Any) -> dict[str, Any]:
    return {"cell_type": "code", "execution_count": None, "metadata": metadata, "outputs": [],
            "source": text}  # fmt: skip


def write(nb: dict[str, Any], folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    return path


def failed(result) -> set[str]:
    return {t.name for t in result.tests if t.score < t.max_score}


@pytest.fixture
def solution():
    """``solution("02_roi_pool")``: a fresh dict of that solution notebook, to edit."""
    return lambda name: load(SOLUTIONS / f"{name}.ipynb")
