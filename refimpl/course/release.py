"""``python -m refimpl.course.release [--check]``: ``exercises/`` from ``solutions/``.

``solutions/`` is the single source. Each solution notebook goes through nbgrader's own
preprocessors, in the order ``nbgrader generate_assignment`` runs them, so an instructor
using nbgrader gets the same notebooks:

- ``LockCells``: check cells become read-only, solution cells undeletable;
- ``ClearSolutions``: each ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region becomes
  ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` (it refuses regions in cells without
  nbgrader solution metadata); the hint is the comment just above the region;
- ``ClearOutput``: no outputs, no execution counts;
- ``ClearHiddenTests``: ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` removed
  (only in nbgrader grade cells);
- ``CheckCellMetadata``: valid nbgrader metadata, unique ``grade_id`` s.

Then a few checks of our own: no marker survives, every solution cell has a region, and
every notebook's cells are valid nbformat. ``--check`` writes nothing and exits 1 when the
committed ``exercises/`` differ from what would be generated (CI runs it through
``tests/course``), listing the stale files.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
SOLUTIONS = REPO / "solutions"
EXERCISES = REPO / "exercises"
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


class ReleaseError(Exception):
    pass


def _check_source(nb: nbformat.NotebookNode, name: str) -> None:
    """What nbgrader does not check: each solution cell holds a region, ids are unique."""
    ids = set()
    for i, cell in enumerate(nb.cells, start=1):
        meta = cell.metadata.get("nbgrader")
        if not meta:
            continue
        grade_id = meta.get("grade_id")
        if grade_id in ids:
            raise ReleaseError(f"{name}: cell {i}: duplicate grade_id {grade_id!r}")
        ids.add(grade_id)
        if meta.get("solution") and cell.cell_type == "code":
            if "### BEGIN SOLUTION" not in cell.source:
                raise ReleaseError(f"{name}: cell {i} ({grade_id}) has no solution region")


def release_notebook(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The exercise made from one solution notebook (which is left as it was)."""
    from nbgrader.preprocessors import (
        CheckCellMetadata,
        ClearHiddenTests,
        ClearOutput,
        ClearSolutions,
        LockCells,
    )

    _check_source(nb, name)
    nb = copy.deepcopy(nb)
    resources: dict = {}
    for pre in (LockCells(), ClearSolutions(), ClearOutput(), ClearHiddenTests()):
        try:
            nb, resources = pre.preprocess(nb, resources)
        except RuntimeError as e:  # nbgrader's complaint about a region or its cell
            raise ReleaseError(f"{name}: {type(pre).__name__}: {e}") from None
    nb, resources = CheckCellMetadata().preprocess(nb, resources)
    for i, cell in enumerate(nb.cells, start=1):
        for marker in MARKERS:
            if marker in cell.source:
                raise ReleaseError(f"{name}: cell {i} still contains {marker!r}")
    nbformat.validate(nb)
    return nb


def render(nb: nbformat.NotebookNode) -> str:
    """The file's text, as Jupyter writes it (indent 1, a final newline)."""
    return nbformat.writes(nb) + "\n"


def plan(solutions: Path = SOLUTIONS, exercises: Path = EXERCISES) -> dict[Path, str | None]:
    """Every exercise file and what it should contain (None: a stale file to remove)."""
    out: dict[Path, str | None] = {}
    for src in sorted(solutions.glob("*.ipynb")):
        nb = nbformat.read(src, as_version=4)
        out[exercises / src.name] = render(release_notebook(nb, src.name))
    for old in sorted(exercises.glob("*.ipynb")):
        if old not in out:
            out[old] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl.course.release",
        description="Generate exercises/ from solutions/ (nbgrader's ClearSolutions & co.).",
    )
    parser.add_argument("--check", action="store_true", help="fail if exercises/ is stale")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS)
    parser.add_argument("--exercises", type=Path, default=EXERCISES)
    args = parser.parse_args(argv)
    try:
        wanted = plan(args.solutions, args.exercises)
    except ReleaseError as e:
        print(f"release: {e}", file=sys.stderr)
        return 1
    stale = []
    for path, text in wanted.items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if args.check:
            continue
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check:
        if stale:
            names = ", ".join(str(p.relative_to(args.exercises.parent)) for p in stale)
            print(
                f"release: stale exercises: {names}\n"
                "  run `python -m refimpl.course.release` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"release: exercises/ is up to date ({len(wanted)} notebooks)")
        return 0
    print(f"release: {len(stale)} of {len(wanted)} exercise notebooks written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
