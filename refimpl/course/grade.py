"""The autograder: ``python -m refimpl.grade PATH... [--json results.json] [--hidden DIR]
[--timeout S]``.

``PATH`` is an exercise notebook or a folder of them (searched recursively). Each notebook is
matched to its grading module by name: ``02_roi_pool.ipynb`` (or a renamed copy that still
starts with ``02``) is graded by ``tests/grading/test_02_roi_pool.py``, plus
``DIR/test_02_roi_pool.py`` from ``--hidden DIR`` (an instructor's hidden tests: visibility
``"hidden"`` in results.json, and left out of the printed report unless ``--show-hidden``).

What is graded: the notebook's code cells in order, except the notebook's own check cells
(nbgrader grade cells that are not solution cells) and cells tagged ``skip-grading`` or
``skip-execution``. IPython magics and shell escapes (``%...``, ``!...``, ``%%...``) do
nothing, except that the body of a ``%%time``, ``%%timeit`` or ``%%capture`` cell runs. The
cells and the tests run in a separate process (:mod:`refimpl.course.runner`), every cell
and every test limited to ``--timeout`` seconds; a cell that raises is reported and the
rest still runs; a notebook that cannot be read scores 0 on its tests with the reason, and
the other notebooks are graded as usual. The exit status is 0 whenever grading ran (whatever the
score), 2 for a usage error.

A grading module may set ``ENVIRONMENT = {"NAME": "value"}``: variables its worker process
starts with, e.g. numba's fork-safe ``workqueue`` threading layer (every test runs in a
forked process) or ``NUMBA_ENABLE_CUDASIM`` (read when numba is first imported).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import GradingTest, collect_tests

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TESTS = REPO / "tests" / "grading"
DEFAULT_TIMEOUT = 10.0
SKIP_TAGS = {"skip-grading", "skip-execution"}
WORKER_SLACK_S = 60.0  # the worker's budget beyond its cells' and tests' limits (startup, ...)


class NotebookError(Exception):
    """A notebook that cannot be read (invalid JSON, not a notebook)."""


@dataclass
class TestResult:
    number: str
    name: str
    title: str
    max_score: float
    score: float = 0.0
    status: str = "not run"
    output: str = ""
    visibility: str = "visible"


@dataclass
class NotebookResult:
    path: Path
    exercise: str | None
    tests: list[TestResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(t.score for t in self.tests)

    @property
    def max_score(self) -> float:
        return sum(t.max_score for t in self.tests)


# --- which notebooks, which tests ------------------------------------------------------------


def find_notebooks(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = [p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts]
    return sorted(found)


# An exercise's number: digits and an optional letter (``05b_prroi_pool`` is not ``05_...``).
_NUMBER = re.compile(r"\d+(?:[a-z](?![a-z]))?")


def exercise_of(notebook: Path, dirs: list[Path]) -> str | None:
    """``02_roi_pool`` for ``02_roi_pool.ipynb`` (or ``02_roi_pool (1).ipynb``, ``02-copy``...)."""
    stem = notebook.stem
    known = sorted({p.stem[len("test_") :] for d in dirs for p in d.glob("test_*.py")})
    if stem in known:
        return stem
    number = _NUMBER.match(stem)
    if number:
        same = [k for k in known if k.split("_")[0] == number.group()]
        if len(same) == 1:
            return same[0]
    return None


def exercise_number(exercise: str) -> str:
    """The number in test labels: ``2`` for ``02_roi_pool``, ``5b`` for ``05b_prroi_pool``."""
    m = _NUMBER.match(exercise)
    return (m.group().lstrip("0") or "0") if m else "0"


def read_notebook(path: Path) -> dict[str, Any]:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise NotebookError(f"not a text file ({e})") from None
    except json.JSONDecodeError as e:
        raise NotebookError(
            f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); was the file "
            "edited outside Jupyter or cut short? Re-download it or restore a checkpoint"
        ) from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError("not a Jupyter notebook (no list of cells)")
    return nb


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _python_source(source: str) -> str:
    """IPython syntax (``%magic``, ``!shell``, ``%%cell`` magics, ``x?``) as plain Python calls
    to ``get_ipython()``, which the grading worker stubs out; plain Python is unchanged."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # no IPython: blank the obvious line magics and shell escapes
        lines = source.split("\n")
        for i, line in enumerate(lines):
            stripped = line.lstrip()
            if stripped.startswith(("%", "!")) and line == stripped:
                lines[i] = "pass"
        return "\n".join(lines)
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # let the worker report the syntax error
        return source


def grading_cells(nb: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The cells to run, as ``{"index": 1-based position in the notebook, "source"}``."""
    cells, notes = [], []
    for position, cell in enumerate(nb["cells"], start=1):
        if not isinstance(cell, dict):
            notes.append(f"cell {position} is damaged (not a JSON object); skipped")
            continue
        if cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        tags = meta.get("tags")
        if isinstance(tags, list) and SKIP_TAGS & set(map(str, tags)):
            continue
        grader = meta.get("nbgrader")
        if isinstance(grader, dict) and grader.get("grade") and not grader.get("solution"):
            continue  # the notebook's own checks: grading uses tests/grading
        source = _python_source(_source(cell))
        if source.strip():
            cells.append({"index": position, "source": source})
    return cells, notes


def load_tests(path: Path) -> list[GradingTest]:
    from .runner import load_module

    return collect_tests(load_module(path))


def load_environment(path: Path) -> dict[str, str]:
    """A grading module's ``ENVIRONMENT = {"NAME": "value"}``: variables its worker needs set
    before the learner's cells run (e.g. ``NUMBA_ENABLE_CUDASIM``, read when numba is first
    imported); empty when the module has none."""
    from .runner import load_module

    env = getattr(load_module(path), "ENVIRONMENT", {})
    return {str(k): str(v) for k, v in env.items()}


# --- grading one notebook ---------------------------------------------------------------------


def grade_notebook(
    path: Path,
    *,
    tests_dir: Path = DEFAULT_TESTS,
    hidden_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int | None = None,
) -> NotebookResult:
    """Grade one notebook; never raises for anything that is wrong with the notebook."""
    start = time.monotonic()
    dirs = [tests_dir] + ([hidden_dir] if hidden_dir else [])
    exercise = exercise_of(path, dirs)
    result = NotebookResult(path, exercise)
    if exercise is None:
        result.notes.append(
            f"no grading tests for this notebook: expected {tests_dir}/test_{path.stem}.py "
            "(keep the exercise's file name, e.g. 02_roi_pool.ipynb)"
        )
        return result

    modules = [
        (d / f"test_{exercise}.py", "hidden" if d == hidden_dir else "visible")
        for d in dirs
        if (d / f"test_{exercise}.py").is_file()
    ]
    tests: list[GradingTest] = []
    environment: dict[str, str] = {}
    number = exercise_number(exercise)
    for module, visibility in modules:
        environment.update(load_environment(module))
        for t in load_tests(module):
            result.tests.append(
                TestResult(
                    f"{number}.{len(result.tests) + 1}",
                    t.name,
                    t.title,
                    t.points,
                    visibility=visibility,
                )
            )
            tests.append(t)

    try:
        nb = read_notebook(path)
    except (NotebookError, OSError) as e:
        message = f"could not read {path.name}: {e}"
        result.notes.append(message)
        for t in result.tests:
            t.status, t.output = "error", message
        result.seconds = time.monotonic() - start
        return result

    cells, notes = grading_cells(nb)
    result.notes.extend(notes)
    jobs = jobs or min(2, os.cpu_count() or 1)
    tests_s = sum((t.timeout or timeout) for t in tests) / jobs
    budget = timeout * len(cells) + tests_s + WORKER_SLACK_S
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job = {
            "cells": cells,
            "test_modules": [str(m) for m, _ in modules],
            "timeout": timeout,
            "cell_timeout": timeout,
            "jobs": jobs,
        }
        job_path.write_text(json.dumps(job))
        worker_error = _run_worker(job_path, out_path, path.parent, budget, environment)
        if worker_error is None:
            report = json.loads(out_path.read_text())
    if worker_error is not None:
        result.notes.append(worker_error)
        for t in result.tests:
            t.status, t.output = "error", worker_error
        result.seconds = time.monotonic() - start
        return result

    for cell in report["cells"]:
        if cell["error"]:
            result.notes.append(cell["error"])
    for t, r in zip(result.tests, report["tests"], strict=True):
        assert t.name == r["name"], (t.name, r["name"])
        t.status, t.output = r["status"], r["output"]
        t.score = t.max_score if r["status"] == "passed" else 0.0
    result.seconds = time.monotonic() - start
    return result


def _run_worker(
    job_path: Path,
    out_path: Path,
    cwd: Path,
    budget: float,
    environment: dict[str, str] | None = None,
) -> str | None:
    """Run the grading worker; None when it wrote its results, else what went wrong.

    The worker and the test processes it forks form their own process group, which is
    killed as a whole when the budget runs out (no test process outlives its grading).
    """
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    env.update(environment or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "refimpl.course.runner", str(job_path), str(out_path)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=hasattr(os, "killpg"),
    )
    try:
        output, _ = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        if hasattr(os, "killpg"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.communicate()
        return f"grading stopped after {budget:g} s (the notebook's time budget)"
    if proc.returncode != 0 or not out_path.is_file():
        tail = (output or "").strip()[-1500:]
        return f"grading stopped (exit status {proc.returncode}): {tail}"
    return None


def grade(
    paths: list[Path],
    *,
    tests_dir: Path = DEFAULT_TESTS,
    hidden_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int | None = None,
) -> list[NotebookResult]:
    """Grade every notebook under ``paths``; one notebook's trouble never stops the others."""
    results: list[NotebookResult] = []
    claimed: dict[str, Path] = {}
    notebooks = [nb for p in paths for nb in find_notebooks(p)]
    dirs = [tests_dir] + ([hidden_dir] if hidden_dir else [])
    # A folder may hold two notebooks for one exercise (a copy): grade the one named exactly.
    notebooks.sort(key=lambda p: (exercise_of(p, dirs) != p.stem, str(p)))
    for nb in notebooks:
        exercise = exercise_of(nb, dirs)
        if exercise is not None and exercise in claimed:
            r = NotebookResult(nb, None)
            r.notes.append(f"not graded: {claimed[exercise].name} is graded for {exercise}")
            results.append(r)
            continue
        if exercise is not None:
            claimed[exercise] = nb
        try:
            results.append(
                grade_notebook(
                    nb, tests_dir=tests_dir, hidden_dir=hidden_dir, timeout=timeout, jobs=jobs
                )
            )
        except Exception as e:  # a bug in a test module or here: still grade the others
            r = NotebookResult(nb, exercise)
            r.notes.append(f"the grader failed on this notebook: {type(e).__name__}: {e}")
            results.append(r)
    results.sort(key=lambda r: (r.exercise or "~", str(r.path)))
    return results


# --- reporting --------------------------------------------------------------------------------


def _pts(v: float) -> str:
    return f"{v:g}"


def report(results: list[NotebookResult], *, show_hidden: bool = False) -> str:
    """The printed report: every test with its points and, on failure, the feedback."""
    lines = []
    for r in results:
        lines.append(f"== {r.exercise or '(not graded)'}  ({r.path})")
        lines.extend(f"   note: {n}" for n in r.notes)
        hidden = [t for t in r.tests if t.visibility == "hidden"]
        for t in r.tests:
            if t.visibility == "hidden" and not show_hidden:
                continue
            mark = "PASS" if t.score == t.max_score else "FAIL"
            tag = " (hidden)" if t.visibility == "hidden" else ""
            lines.append(f"   {mark} {_pts(t.score):>3}/{_pts(t.max_score):<3} {t.title}{tag}")
            if t.score < t.max_score and t.output:
                lines.extend("             " + line for line in t.output.splitlines())
        if hidden and not show_hidden:
            lines.append(f"   (+ {len(hidden)} hidden tests, reported in results.json)")
        if r.tests:
            visible = [t for t in r.tests if show_hidden or t.visibility == "visible"]
            got, out_of = sum(t.score for t in visible), sum(t.max_score for t in visible)
            lines.append(f"   {r.exercise}: {_pts(got)} / {_pts(out_of)}")
    shown = [t for r in results for t in r.tests if show_hidden or t.visibility == "visible"]
    lines.append(
        f"score: {_pts(sum(t.score for t in shown))} / {_pts(sum(t.max_score for t in shown))}"
    )
    return "\n".join(lines)


def results_json(results: list[NotebookResult], seconds: float) -> dict[str, Any]:
    """Gradescope's results.json (https://gradescope-autograders.readthedocs.io/en/latest/specs/)."""
    tests = []
    for r in results:
        for t in r.tests:
            tests.append(
                {
                    "name": f"{r.exercise}: {t.title}",
                    "number": t.number,
                    "score": float(t.score),
                    "max_score": float(t.max_score),
                    "output": t.output if t.score < t.max_score else "",
                    "visibility": t.visibility,
                }
            )
        if not r.tests:  # a notebook that could not be matched: say so where learners look
            tests.append(
                {
                    "name": f"{r.path.name}: not graded",
                    "number": "0",
                    "score": 0.0,
                    "max_score": 0.0,
                    "output": "\n".join(r.notes),
                    "visibility": "visible",
                }
            )
    return {
        "score": float(sum(r.score for r in results)),
        "execution_time": int(round(seconds)),
        "output": report(results),
        "stdout_visibility": "visible",
        "tests": tests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl.grade",
        description="Grade exercise notebooks against tests/grading (see refimpl/course/grade.py).",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="notebook or folder")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write Gradescope results.json")
    parser.add_argument("--hidden", type=Path, metavar="DIR", help="a folder of hidden tests")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds per cell and per test (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--tests",
        type=Path,
        default=DEFAULT_TESTS,
        metavar="DIR",
        help="the grading tests (default: tests/grading)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="tests run at once (default 2)")
    parser.add_argument("--show-hidden", action="store_true", help="print hidden tests too")
    args = parser.parse_args(argv)

    for p in [*args.paths, args.tests] + ([args.hidden] if args.hidden else []):
        if not p.exists():
            parser.error(f"{p} does not exist")
    start = time.monotonic()
    results = grade(
        args.paths,
        tests_dir=args.tests,
        hidden_dir=args.hidden,
        timeout=args.timeout,
        jobs=args.jobs,
    )
    if not results:
        parser.error(f"no notebooks under {', '.join(map(str, args.paths))}")
    print(report(results, show_hidden=args.show_hidden))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = results_json(results, time.monotonic() - start)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
