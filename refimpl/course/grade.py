"""The autograder: ``python -m refimpl.grade PATH... [--json results.json] [--hidden DIR]
[--long] [--exercise NAME] [--sandbox bwrap|unshare|none] [--timeout S] [--memory GB]
[--jobs N]``; ``python -m refimpl.grade --calibrate solutions/ [--exercise NAME]``.

``PATH`` is an exercise notebook or a folder of them (searched recursively). Each notebook is
matched to its grading module by name: ``02_roi_pool.ipynb`` (or a renamed copy that still
starts with ``02``) is graded by ``refimpl/course/grading/test_02_roi_pool.py`` (shipped
with the package), plus ``DIR/test_02_roi_pool.py`` from ``--hidden DIR`` (an instructor's
hidden tests: visibility ``"hidden"`` in results.json, left out of the printed report).

Trust: the grading tests, the references they compare with and the scoring run here, in
the grader's process. The notebook's code runs in a sandbox (:mod:`refimpl.course.sandbox`)
that cannot see the tests, the hidden tests, ``solutions/`` or refimpl's reference
implementations (only the exercise's givens, :mod:`refimpl.course.givens`); the tests call
the learner's functions through :mod:`refimpl.course.remote` (data only, both ways). The
threat model and what the sandbox guarantees: ``docs/instructors.md``.

What runs: the notebook's code cells in order, except its own check cells (nbgrader grade
cells that are not solution cells) and cells tagged ``skip-grading`` or ``skip-execution``.
IPython magics and shell escapes do nothing, except that the body of a ``%%time``,
``%%timeit`` or ``%%capture`` cell runs. Cells are named as JupyterLab shows them: the n-th
code cell, with its first line.

Limits are CPU time, not wall time, per cell and per test: ``max(floor, 10 x`` what the
reference solution needs``)``, from ``grading/calibration.json`` (the solutions' CPU seconds,
the largest cell per exercise and each test, written by ``python -m refimpl.grade --calibrate
solutions/``; ``--timeout`` sets the floor, 10 s), with a wall-clock backstop
(``max(30 s, 4 x`` the CPU limit``)``) against code that sleeps. CPU time hardly grows when
other processes share the machine, so the solutions keep full marks on a loaded one. A cell
that raises or runs past its limit is reported and the rest still runs; a test that
crashes, exits or runs past its limit scores 0 and the others still run (a fresh sandbox
if needed). Tests marked ``@points(n, long=True)`` run only with ``--long``.

The exit status is 0 whenever grading ran (whatever the score), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import Feedback, GradingTest, collect_tests

GRADING = Path(__file__).resolve().parent / "grading"
DEFAULT_TESTS = GRADING
CALIBRATION = GRADING / "calibration.json"
DEFAULT_TIMEOUT = 10.0  # the CPU-time floor of every cell and test, seconds
CPU_MULTIPLE = 10.0  # limit = max(floor, CPU_MULTIPLE x the reference solution's CPU time)
WALL_FLOOR_S, WALL_MULTIPLE = 30.0, 4.0  # the wall-clock backstop
SKIP_TAGS = {"skip-grading", "skip-execution"}
MAX_FEEDBACK = 4000  # characters of one test's feedback
HIDDEN_ERROR = "the hidden test could not run to its end on your code ({})"
PASS_ENV = ("NUMBA_", "OMP_", "MKL_", "OPENBLAS_", "ATEN_CPU_CAPABILITY")


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
    cpu_s: float = 0.0


@dataclass
class NotebookResult:
    path: Path
    exercise: str | None
    tests: list[TestResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cells: list[dict[str, Any]] = field(default_factory=list)  # cpu per cell (calibration)
    skipped_long: int = 0

    @property
    def score(self) -> float:
        return sum(t.score for t in self.tests)

    @property
    def max_score(self) -> float:
        return sum(t.max_score for t in self.tests)


# --- learner text in the report -----------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f\u2028\u2029]")


def _escape(text: str) -> str:
    """Control characters (``\\r``, ANSI escapes, ...) as ``\\xNN``: no text in the report
    can move the cursor or pass for a line of its own (newlines are indented by the report)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def learner_text(text: str, limit: int = MAX_FEEDBACK) -> str:
    """Untrusted text, safe to print: control characters escaped, every line behind a
    ``| `` (so that nothing the learner prints can pass for a score line), cut short."""
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters)"
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return "\n".join("| " + line for line in text.splitlines())


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


def _source(cell: dict[str, Any]) -> str | None:
    """The cell's text, or None when its ``source`` is neither text nor a list of text."""
    src = cell.get("source", "")
    if isinstance(src, str):
        return src
    if isinstance(src, list) and all(isinstance(s, str) for s in src):
        return "".join(src)
    return None


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


def cell_name(number: int, source: str) -> str:
    """``code cell 3 ("def roi_pool_backward(x, rois, ...")``, as a learner finds it."""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    if len(first) > 48:
        first = first[:45] + "..."
    return f'code cell {number} ("{first}")' if first else f"code cell {number}"


def _skipped(meta: Any) -> bool:
    meta = meta if isinstance(meta, dict) else {}
    tags = meta.get("tags")
    if isinstance(tags, list) and SKIP_TAGS & {str(t) for t in tags}:
        return True
    grader = meta.get("nbgrader")
    # the notebook's own checks: grading uses the grading tests
    return isinstance(grader, dict) and bool(grader.get("grade")) and not grader.get("solution")


def grading_cells(nb: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The cells to run, ``{"number": n-th code cell, "name", "source", "index"}``."""
    cells, notes, number = [], [], 0
    for position, cell in enumerate(nb["cells"], start=1):
        if not isinstance(cell, dict):
            notes.append(f"cell {position} of the notebook is damaged (not a JSON object); skipped")
            continue
        if cell.get("cell_type") != "code":
            continue
        number += 1
        text = _source(cell)
        if text is None:
            notes.append(f"code cell {number}'s source is not text (damaged); skipped")
            continue
        if _skipped(cell.get("metadata")):
            continue
        source = _python_source(text)
        if source.strip():
            name = cell_name(number, text)
            cells.append({"number": number, "name": name, "source": source, "index": position})
    return cells, notes


_REFERENCE_PATH = re.compile(r"(?:^|/)(?:refimpl|solutions)/")
COPY_NOTE = (
    "your notebook reaches for {what}: refimpl's reference implementation and the solutions "
    "are not available while grading (only what the exercise gives): graded functions must "
    "be your own"
)


def _in_tree(name: str, root: Path) -> bool:
    """Is ``name`` (a module, or a module's top-level name) in the givens tree at ``root``?"""
    parts = name.split(".")
    path = root.joinpath(*parts)
    if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
        return True
    parent = root.joinpath(*parts[:-1])
    source = parent.with_suffix(".py") if parent.with_suffix(".py").is_file() else None
    source = source or (parent / "__init__.py" if (parent / "__init__.py").is_file() else None)
    if source is None:
        return False
    try:
        tree = ast.parse(source.read_text())
    except (SyntaxError, ValueError, OSError):
        return False
    names = {n for stmt in tree.body for n in _top_level_names(stmt)}
    return parts[-1] in names or "__getattr__" in names  # a lazy module: any name may be


def _top_level_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, ast.Assign):
        return [t.id for t in stmt.targets if isinstance(t, ast.Name)]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in stmt.names]
    return []


def reference_routes(cells: list[dict[str, Any]], givens: Path) -> list[str]:
    """What the cells name of refimpl beyond the exercise's givens (the tree at ``givens``,
    :mod:`refimpl.course.givens`), or of ``solutions/``:
    imports, module names and paths in strings (``import_module``, ``open``, ``exec``). Read
    here, in the grader, from the notebook's text: the learner cannot silence it."""
    found: list[str] = []
    for cell in cells:
        try:
            tree = ast.parse(cell["source"])
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name != "refimpl"]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.strip()
                if re.fullmatch(r"refimpl(\.\w+)+", text):
                    names = [text]
                elif _REFERENCE_PATH.search(text):
                    found.append(repr(text[:60]))
            found += [n for n in names if n.split(".")[0] == "refimpl" and not _in_tree(n, givens)]
    return list(dict.fromkeys(found))


def load_module(path: str | Path, name: str | None = None):
    """Import a grading module from its file (the package's or an instructor's folder)."""
    path = Path(path)
    name = name or f"_grading_{abs(hash(str(path.resolve())))}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_tests(path: Path) -> list[GradingTest]:
    return collect_tests(load_module(path))


# --- limits ----------------------------------------------------------------------------------


def calibration() -> dict[str, Any]:
    """``{exercise: {"cell_cpu_s": s, "tests": {name: s}}}``: the reference solution's CPU."""
    try:
        return json.loads(CALIBRATION.read_text()).get("exercises", {})
    except (OSError, ValueError):
        return {}


def cpu_limit(reference: float | None, floor: float) -> float:
    return max(floor, CPU_MULTIPLE * (reference or 0.0))


CALIBRATION_FLOOR_S = 300.0  # generous limits while measuring the solutions


def calibrate(
    solutions: Path,
    out: Path = CALIBRATION,
    tests_dir: Path = DEFAULT_TESTS,
    exercise: str | None = None,
) -> dict:
    """Grade the solutions with generous limits and write their CPU seconds to ``out``:
    per exercise the largest cell (``cell_cpu_s``) and every test (``tests``); with
    ``exercise``, only that one is measured (the others keep their numbers). Refuses to write
    when a solution loses points (its times would not be the reference's)."""
    try:
        exercises: dict[str, Any] = json.loads(out.read_text()).get("exercises", {})
    except (OSError, ValueError):
        exercises = {}
    results = grade(
        [solutions], tests_dir=tests_dir, timeout=CALIBRATION_FLOOR_S, long=True, exercise=exercise
    )
    for r in results:
        lost = [t.name for t in r.tests if t.score < t.max_score]
        if r.exercise is None or lost or not r.tests:
            raise RuntimeError(f"{r.path.name} does not score full marks ({lost or r.notes})")
        exercises[r.exercise] = {
            "cell_cpu_s": round(max((c["cpu_s"] for c in r.cells), default=0.0), 2),
            "tests": {t.name: round(t.cpu_s, 2) for t in r.tests},
        }
    data = {
        "about": "CPU seconds of the reference solutions (python -m refimpl.grade --calibrate "
        f"solutions/); limits are max(floor, {CPU_MULTIPLE:g} x these)",
        "cpus": os.cpu_count(),
        "exercises": dict(sorted(exercises.items())),
    }
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def wall_limit(cpu_s: float) -> float:
    return max(WALL_FLOOR_S, WALL_MULTIPLE * cpu_s)


def sandbox_env(extra: dict[str, str]) -> dict[str, str]:
    """The sandbox's whole environment: nothing of the grader's but thread settings."""
    from .sandbox import WORKDIR

    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": WORKDIR,
        "USER": "sandbox",  # getpass.getuser() (torch.compile's cache) without a passwd entry
        "LOGNAME": "sandbox",
        "TMPDIR": "/tmp",
        "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
        "NUMBA_CACHE_DIR": "/tmp/numba-cache",
        "NUMBA_NUM_THREADS": str(min(2, os.cpu_count() or 1)),
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith(PASS_ENV)})
    env.update(extra)
    return env


# --- one exercise's modules --------------------------------------------------------------


@dataclass
class Exercise:
    name: str
    tests: list[tuple[GradingTest, str]]  # (test, visibility)
    environment: dict[str, str]
    givens: dict[str, Any]
    limit_hint: str
    skipped_long: int = 0


def load_exercise(name: str, modules: list[tuple[Path, str]], long: bool) -> Exercise:
    ex = Exercise(name, [], {}, {}, "")
    for path, visibility in modules:
        module = load_module(path)
        ex.environment.update(
            {str(k): str(v) for k, v in getattr(module, "ENVIRONMENT", {}).items()}
        )
        ex.givens.update(getattr(module, "GIVENS", {}))
        ex.limit_hint = ex.limit_hint or str(getattr(module, "LIMIT_HINT", ""))
        for t in collect_tests(module):
            if t.long and not long:
                ex.skipped_long += 1
                continue
            ex.tests.append((t, visibility))
    return ex


# --- grading one notebook ---------------------------------------------------------------------


def grade_notebook(
    path: Path,
    *,
    tests_dir: Path = DEFAULT_TESTS,
    hidden_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    long: bool = False,
    backend: str | None = None,
    memory_gb: float | None = None,
) -> NotebookResult:
    """Grade one notebook; never raises for anything that is wrong with the notebook.
    ``memory_gb``: the sandbox's address space (default :class:`Limits`' 8 GB)."""
    start = time.monotonic()
    dirs = [tests_dir] + ([hidden_dir] if hidden_dir else [])
    exercise = exercise_of(path, dirs)
    result = NotebookResult(path, exercise)
    if exercise is None:
        result.notes.append(
            f"no grading tests for this notebook: expected test_{path.stem}.py in "
            f"{tests_dir} (keep the exercise's file name, e.g. 02_roi_pool.ipynb)"
        )
        return result
    modules = [
        (d / f"test_{exercise}.py", "hidden" if d == hidden_dir else "visible")
        for d in dirs
        if (d / f"test_{exercise}.py").is_file()
    ]
    try:
        ex = load_exercise(exercise, modules, long)
    except Exception as e:  # a broken hidden module must not show its source to learners
        result.notes.append("the grading tests of this exercise could not be loaded")
        # stderr may reach learners too (Gradescope): the error's type and line, not its text
        line = getattr(e, "lineno", None) or (e.__traceback__ and e.__traceback__.tb_lineno)
        print(
            f"grader: loading the tests of {exercise} failed: {type(e).__name__} (line "
            f"{line}); import the module yourself to see why",
            file=sys.stderr,
        )
        return result
    result.skipped_long = ex.skipped_long
    number = exercise_number(exercise)
    for i, (t, visibility) in enumerate(ex.tests, start=1):
        result.tests.append(
            TestResult(f"{number}.{i}", t.name, t.title, t.points, visibility=visibility)
        )
    try:
        _grade_into(result, path, ex, dirs, timeout, backend, memory_gb)
    except Exception as e:  # a bug here or in a test module: the notebook still has its total
        result.notes.append(f"the grader failed on this notebook: {type(e).__name__}")
        print(f"grader: {path}: {type(e).__name__}: {e}", file=sys.stderr)
        for t in result.tests:
            if t.status == "not run":
                t.status, t.output = "error", "not run: the grader failed on this notebook"
    result.seconds = time.monotonic() - start
    return result


def _grade_into(
    result: NotebookResult,
    path: Path,
    ex: Exercise,
    dirs: list[Path],
    floor: float,
    backend: str | None,
    memory_gb: float | None = None,
) -> None:
    from . import givens
    from .sandbox import Limits, detect, secrets_to_hide
    from .session import Session, copy_submission, prepare_runtime

    try:
        nb = read_notebook(path)
    except (NotebookError, OSError) as e:
        message = f"could not read {path.name}: {e}"
        result.notes.append(message)
        for t in result.tests:
            t.status, t.output = "error", message
        return
    cells, notes = grading_cells(nb)
    result.notes.extend(notes)
    chosen, why = detect(backend)
    if chosen == "none":
        from .sandbox import NO_SANDBOX_WARNING

        result.warnings.append(f"{NO_SANDBOX_WARNING} ({why})")
    calib = calibration().get(ex.name, {})
    cell_cpu = cpu_limit(calib.get("cell_cpu_s"), floor)
    limits = Limits()
    if memory_gb:
        limits.memory_bytes = int(memory_gb * (1 << 30))
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        runtime = Path(tmp)
        prepare_runtime(runtime)
        givens.build(runtime / "givens", ex.givens)
        # said on the failing tests only: a solution may name refimpl in a branch it never runs
        routes = reference_routes(cells, runtime / "givens")
        skipped = copy_submission(path.parent, runtime / "submission", limits.submission_bytes)
        if skipped:
            result.notes.append(
                f"files not copied for grading (too large): {', '.join(skipped[:5])}"
            )
        hidden = secrets_to_hide([*dirs, path.parent.resolve()])
        session = Session(
            runtime, runtime / "submission", sandbox_env(ex.environment), limits, hidden, chosen
        )
        try:
            session.start()
            cell_errors = _run_cells(session, cells, cell_cpu, result)
            for (test, visibility), tr in zip(ex.tests, result.tests, strict=True):
                if session.main is None or not session.sandbox.alive():
                    session.restart(cells, cell_cpu, wall_limit(cell_cpu))
                ref = calib.get("tests", {}).get(test.name)
                limit = cpu_limit(ref, test.timeout or floor)
                _run_test(session, test, tr, cell_errors, limit, ref, ex.limit_hint, visibility)
                if tr.status == "lost":  # the worker itself is gone: a fresh one for the rest
                    tr.status = "error"
                    session.restart(cells, cell_cpu, wall_limit(cell_cpu))
        finally:
            session.stop()
    if routes:
        _add_to_failures(result, COPY_NOTE.format(what=", ".join(routes[:3])))


def _add_to_failures(result: NotebookResult, note: str) -> None:
    for t in result.tests if note else ():
        if t.score < t.max_score and t.visibility == "visible":
            t.output += f"\n  note: {note}"


def _run_cells(session, cells, cpu_s: float, result: NotebookResult) -> list[str]:
    errors = []
    for cell in cells:
        out = session.run_cell(cell, cpu_s, wall_limit(cpu_s))
        result.cells.append({"number": out.number, "status": out.status, "cpu_s": out.cpu_s})
        if out.error:
            errors.append(out.error.splitlines()[0][:300])
            result.notes.append(out.error)
        if out.status == "stopped":
            session.restart(cells[: cells.index(cell)], cpu_s, wall_limit(cpu_s))
    return errors


def _crash_message(reaped: dict[str, Any] | None, cpu: float, limit: float) -> str:
    if not reaped or not reaped.get("known"):
        return "your code ended the grading process"
    sig = reaped.get("signal")
    if sig in (signal.SIGXCPU, signal.SIGKILL) and cpu >= limit * 0.9:
        return f"your code ran past its CPU time limit of {limit:.3g} s"
    if sig:
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
        return f"the test crashed Python (signal {sig}, {name})"
    return f"your code ended the process (exit status {reaped.get('exit')})"


def _outcome(e: BaseException, limit: float, ref, hint: str, visibility: str) -> tuple[str, str]:
    """``(status, feedback)`` for what a test raised (``crashed``: the grader asks the worker)."""
    from .remote import LimitExceeded, ProtocolError, RemoteError, SandboxLost
    from .session import limit_message

    if isinstance(e, Feedback):
        return "failed", str(e) or "failed"
    if isinstance(e, RemoteError):
        if e.timeout:
            cpu = LimitExceeded("cpu", limit, limit, 0)
            return "timeout", limit_message("your code", cpu, ref, hint)
        return "error", learner_text(e.describe())
    if isinstance(e, LimitExceeded):
        return "timeout", limit_message("your code", e, ref, hint)
    if isinstance(e, SandboxLost):
        return "crashed", ""
    if isinstance(e, ProtocolError):
        return "error", f"the sandbox sent what the grader does not accept ({e}): 0 points"
    if isinstance(e, AssertionError):  # a plain assert in a test module
        return "failed", f"a check failed: {e}" if str(e) else "a check failed"
    # the test (trusted code) failed on what the learner's code gave it; a hidden test's
    # message may quote the hidden test itself
    if visibility == "hidden":
        return "error", HIDDEN_ERROR.format(type(e).__name__)
    return "error", f"{type(e).__name__}: {e}"[:MAX_FEEDBACK]


def _run_test(session, test, tr: TestResult, cell_errors, limit, ref, hint, visibility) -> None:
    from .remote import Budget, LimitExceeded, RemoteSubmission
    from .session import limit_message

    budget = Budget(session.sandbox, limit + 2.0, wall_limit(limit))
    link = token = sub = None
    status, output, lost = "passed", "", False
    try:
        link, token = session.test_link(budget, limit)
        sub = RemoteSubmission(link, budget, cell_errors)
        test.fn(sub)
    except Exception as e:
        status, output = _outcome(e, limit, ref, hint, visibility)
    finally:
        if link is not None:
            link.close()
    tr.cpu_s = budget.used()[0]
    if token is not None:
        reaped = session.reap(token, kill=status == "timeout")
        lost = reaped is None
        if status == "crashed":
            status, output = "error", _crash_message(reaped, tr.cpu_s, limit)
            if "CPU time" in output:
                cpu = LimitExceeded("cpu", limit, tr.cpu_s, 0)
                status, output = "timeout", limit_message("your code", cpu, ref, hint)
    elif status == "crashed":
        status, output, lost = "error", "the sandbox could not start this test", True
    printed = "".join(sub.printed) if sub is not None else ""
    if status != "passed" and printed.strip():
        output += "\n  your code printed:\n" + learner_text(printed, 1500)
    tr.status = "lost" if lost and status != "passed" else status
    tr.output = output if status != "passed" else ""
    tr.score = tr.max_score if status == "passed" else 0.0


# --- many notebooks -------------------------------------------------------------------------


def _grade_one(args: tuple) -> NotebookResult:
    nb, exercise, kwargs = args
    try:
        return grade_notebook(nb, **kwargs)
    except Exception as e:  # a bug in a test module or here: still grade the others
        r = NotebookResult(nb, exercise)
        r.notes.append(f"the grader failed on this notebook: {type(e).__name__}: {e}")
        return r


def grade(
    paths: list[Path],
    *,
    tests_dir: Path = DEFAULT_TESTS,
    hidden_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    jobs: int | None = None,
    long: bool = False,
    backend: str | None = None,
    exercise: str | None = None,
    memory_gb: float | None = None,
) -> list[NotebookResult]:
    """Grade every notebook under ``paths``; one notebook's trouble never stops the others.

    ``jobs`` notebooks are graded at once (default 1), each in a grader process of its own.
    With ``exercise``, only that exercise is graded, and a submission without it scores 0.
    """
    results: list[NotebookResult] = []
    claimed: dict[str, Path] = {}
    notebooks = [nb for p in paths for nb in find_notebooks(p)]
    dirs = [tests_dir] + ([hidden_dir] if hidden_dir else [])
    # A folder may hold two notebooks for one exercise (a copy): grade the one named exactly.
    notebooks.sort(key=lambda p: (exercise_of(p, dirs) != p.stem, str(p)))
    kwargs = dict(
        tests_dir=tests_dir,
        hidden_dir=hidden_dir,
        timeout=timeout,
        long=long,
        backend=backend,
        memory_gb=memory_gb,
    )
    todo = []
    for nb in notebooks:
        ex = exercise_of(nb, dirs)
        if exercise is not None and ex != exercise:
            continue
        if ex is not None and ex in claimed:
            r = NotebookResult(nb, None)
            r.notes.append(f"not graded: {claimed[ex].name} is graded for {ex}")
            results.append(r)
            continue
        if ex is not None:
            claimed[ex] = nb
        todo.append((nb, ex, kwargs))
    if jobs and jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            results.extend(pool.map(_grade_one, todo))
    else:
        results.extend(_grade_one(t) for t in todo)
    if exercise is not None and exercise not in claimed:
        results.append(_missing_exercise(exercise, dirs, paths, long))
    results.sort(key=lambda r: (r.exercise or "~", str(r.path)))
    return results


def _missing_exercise(
    exercise: str, dirs: list[Path], paths: list[Path], long: bool
) -> NotebookResult:
    """A submission without the exercise's notebook: every test 0, out of the full total."""
    modules = [
        (d / f"test_{exercise}.py", "hidden" if i else "visible")
        for i, d in enumerate(dirs)
        if (d / f"test_{exercise}.py").is_file()
    ]
    r = NotebookResult(paths[0] if paths else Path("."), exercise)
    why = f"no notebook for {exercise} in the submission (expected {exercise}.ipynb)"
    r.notes.append(why)
    if not modules:
        return r
    ex = load_exercise(exercise, modules, long)
    number = exercise_number(exercise)
    for i, (t, visibility) in enumerate(ex.tests, start=1):
        r.tests.append(
            TestResult(f"{number}.{i}", t.name, t.title, t.points, 0.0, "error", why, visibility)
        )
    return r


# --- reporting --------------------------------------------------------------------------------


def _pts(v: float) -> str:
    return f"{v:g}"


def report(results: list[NotebookResult], *, show_hidden: bool = False) -> str:
    """The printed report: every test with its points and, on failure, the feedback."""
    lines = []
    for warning in sorted({w for r in results for w in r.warnings}):
        lines.append(f"!! {warning}")
    for r in results:
        lines.append(f"== {r.exercise or '(not graded)'}  ({r.path})")
        for n in r.notes:
            first, *rest = _escape(n).splitlines() or [""]
            lines.append(f"   note: {first}")
            lines.extend(f"         {line}" for line in rest)
        hidden = [t for t in r.tests if t.visibility == "hidden"]
        for t in r.tests:
            if t.visibility == "hidden" and not show_hidden:
                continue
            mark = "PASS" if t.score == t.max_score else "FAIL"
            tag = " (hidden)" if t.visibility == "hidden" else ""
            lines.append(f"   {mark} {_pts(t.score):>3}/{_pts(t.max_score):<3} {t.title}{tag}")
            if t.score < t.max_score and t.output:
                lines.extend("             " + line for line in _escape(t.output).splitlines())
        if hidden and not show_hidden:
            lines.append(f"   (+ {len(hidden)} hidden tests, reported in results.json)")
        if r.skipped_long:
            lines.append(f"   ({r.skipped_long} long tests not run: `--long` runs them)")
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
                    "output": _escape(t.output) if t.score < t.max_score else "",
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
                    "output": _escape("\n".join(r.notes)),
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
        description="Grade exercise notebooks in a sandbox (see refimpl/course/grade.py).",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="notebook or folder")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write Gradescope results.json")
    parser.add_argument("--hidden", type=Path, metavar="DIR", help="a folder of hidden tests")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"CPU seconds every cell and test may use at least (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--tests", type=Path, default=DEFAULT_TESTS, metavar="DIR",
                        help="the grading tests (default: the package's)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at once")
    parser.add_argument("--long", action="store_true", help="also run the long tests")
    parser.add_argument("--exercise", metavar="NAME", help="grade only this exercise")
    parser.add_argument("--sandbox", choices=("bwrap", "unshare", "none"), help="force a backend")
    parser.add_argument("--show-hidden", action="store_true", help="print hidden tests too")
    parser.add_argument(
        "--memory", type=float, metavar="GB", help="address space of each sandbox (default 8)"
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help=f"grade the solutions under PATH and write {CALIBRATION.name}",
    )
    args = parser.parse_args(argv)
    if args.calibrate:
        data = calibrate(args.paths[0], tests_dir=args.tests, exercise=args.exercise)
        print(json.dumps(data["exercises"], indent=1))
        return 0

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
        long=args.long,
        backend=args.sandbox,
        exercise=args.exercise,
        memory_gb=args.memory,
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
