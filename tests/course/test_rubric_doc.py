"""The rubric in docs/instructors.md quotes each exercise's points: they are the grading
tests' ``@points`` (computed here from refimpl/course/grading), so the prose cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from refimpl.course.checks import collect_tests
from refimpl.course.grade import load_module

ROOT = Path(__file__).resolve().parents[2]
GRADING = ROOT / "refimpl" / "course" / "grading"
TEXT = " ".join((ROOT / "docs" / "instructors.md").read_text().split())


def totals() -> tuple[dict[str, float], dict[str, float]]:
    """Per exercise number ('02', '05b', '14'): points without and with the long tier."""
    short, long = {}, {}
    for path in sorted(GRADING.glob("test_*.py")):
        number = path.stem.split("_")[1]
        tests = collect_tests(load_module(path, f"rubric_{path.stem}"))
        short[number] = sum(t.points for t in tests if not t.long)
        long[number] = sum(t.points for t in tests if t.long)
    return short, long


def test_the_rubric_quotes_each_exercises_points():
    short, long = totals()
    rubric = TEXT[TEXT.index("## The rubric") :]
    quoted = dict(
        re.findall(r"\b(\d\db?) [A-Za-z][\w ]*? (\d+)\b", rubric[: rubric.index("Within")])
    )
    assert quoted == {k: str(int(v)) for k, v in short.items()}
    first = sum(v for k, v in short.items() if k != "14")
    assert f"({first:.0f} in all)" in rubric
    assert f"plus {long['14']:.0f} for its training target" in rubric
    assert f"({sum(short.values()) + sum(long.values()):.0f} in all with it)" in rubric


def test_the_nbgrader_comparison_quotes_the_same_totals():
    short, long = totals()
    first = sum(v for k, v in short.items() if k != "14")
    everything = sum(short.values())
    assert (
        f"{first:.0f} points for 02-12, {everything:.0f} with the capstone, "
        f"{everything + sum(long.values()):.0f} with its `--long` tier" in TEXT
    )
