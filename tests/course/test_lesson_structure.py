"""Every lesson opens with what the learner will be able to do, what it assumes and how long
it takes, and ends (before its pointer to the exercise) with 2-4 questions whose answers are
folded away in a ``<details>`` block."""

from __future__ import annotations

import re

import nbformat
import pytest

from .conftest import LESSONS

LESSON_PATHS = sorted(LESSONS.glob("*.ipynb"))


@pytest.mark.parametrize("path", LESSON_PATHS, ids=lambda p: p.stem)
def test_lesson_opens_with_goals_assumptions_and_time(path):
    nb = nbformat.read(path, as_version=4)
    opening = nb.cells[1]
    assert opening.cell_type == "markdown", f"{path.name}: the second cell must be the opening"
    for part in ("**After this lesson you can**", "**It assumes**", "**Time:**"):
        assert part in opening.source, f"{path.name}: the opening lacks {part}"
    assert re.search(r"\*\*Time:\*\* about \d+ minutes", opening.source), path.name


@pytest.mark.parametrize("path", LESSON_PATHS, ids=lambda p: p.stem)
def test_lesson_ends_with_questions_and_hidden_answers(path):
    nb = nbformat.read(path, as_version=4)
    checks = [c for c in nb.cells if c.source.startswith("## Check yourself")]
    assert len(checks) == 1, f"{path.name}: one 'Check yourself' cell expected"
    source = checks[0].source
    questions = re.findall(r"^\*\*(\d)\.\*\* ", source, flags=re.M)
    assert 2 <= len(questions) <= 4, f"{path.name}: {len(questions)} questions"
    assert questions == [str(i) for i in range(1, len(questions) + 1)], path.name
    answers = source.count("<details><summary>Answer</summary>")
    assert answers == len(questions) == source.count("</details>"), path.name
    # the questions come after the teaching, just before the pointer to what is next
    assert nb.cells.index(checks[0]) == len(nb.cells) - 2, path.name
