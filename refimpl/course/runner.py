"""The grading worker: the learner's cells, then the tests, in a process of their own.

``python -m refimpl.course.runner JOB.json RESULT.json`` is started by
:mod:`refimpl.course.grade`, which also kills it if it runs past the notebook's budget.

1. The test modules are imported first (so a learner's cell cannot patch the oracle the tests
   already hold).
2. The cells run in order in one namespace (a module named ``submission``). A cell that
   raises is reported and the next cell runs anyway; a cell that runs past its time limit is
   interrupted (``SIGALRM``, re-sent every 0.1 s so that a bare ``except:`` cannot swallow it).
3. Every test runs in a forked copy of this process, so it sees the namespace exactly as the
   cells left it (no test can spoil another's) and can be killed at its time limit, whatever
   it is stuck in (a C loop, a deadlock, a segfault). Without ``fork`` (Windows), tests run
   here, limited by ``SIGALRM`` where it exists.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import linecache
import os
import select
import signal
import sys
import time
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .checks import SUBMISSION_MODULE, Feedback, GradingTest, Submission, collect_tests

MAX_PRINTED = 1500  # characters of the learner's own prints kept in a test's feedback


class TimeLimit(BaseException):
    """Raised in the learner's code when its time is up (a BaseException, so that the
    learner's `except Exception:` does not catch it)."""


_armed = False


def _on_alarm(signum, frame):
    if _armed:
        raise TimeLimit()


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (main thread, POSIX); no limit elsewhere."""
    global _armed
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    _armed = True
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.1)
    try:
        yield
    finally:
        _armed = False
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)


# --- the learner's cells ---------------------------------------------------------------------


def cell_filename(index: int) -> str:
    return f"<cell {index}>"


def _learner_frames(tb: types.TracebackType | None) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(tb) if f.filename.startswith("<cell ")]


def describe_exception(exc: BaseException) -> str:
    """The exception and where in the learner's cells it happened (their frames only)."""
    if isinstance(exc, TimeLimit):
        return "ran past its time limit (an infinite loop? a very slow loop?)"
    frames = _learner_frames(exc.__traceback__)
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, NotImplementedError) and frames:
        head = f"`{frames[-1].name}` is not implemented yet (it raises NotImplementedError)"
    else:
        head = f"{name}: {text}" if text else name
    lines = [head]
    for f in frames[-3:]:
        where = f"{f.filename[1:-1]}, line {f.lineno}"
        if f.name != "<module>":
            where += f", in {f.name}"
        lines.append(f"    {where}: {(f.line or '').strip()}")
    return "\n".join(lines)


class NoIPython:
    """``get_ipython()`` while grading: magics and shell commands do nothing, except that the
    body of a ``%%time``, ``%%timeit`` or ``%%capture`` cell runs (once)."""

    RUN_BODY = ("time", "timeit", "capture")

    def __init__(self, namespace: dict[str, Any]):
        self._namespace = namespace

    def run_cell_magic(self, name: str, line: str, cell: str) -> None:
        if name in self.RUN_BODY:
            exec(compile(cell, "<cell magic>", "exec"), self._namespace)

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None  # run_line_magic, system, getoutput, ...


class CellReport(dict):
    """``{"index", "status": "ok" | "error" | "timeout", "error", "seconds"}``."""


def run_cells(
    cells: list[dict[str, Any]], timeout: float | None, *, quiet: bool = True
) -> tuple[dict[str, Any], list[CellReport]]:
    """Run ``[{"index", "source"}]`` in order in a fresh ``submission`` namespace."""
    module = types.ModuleType(SUBMISSION_MODULE)
    sys.modules[SUBMISSION_MODULE] = module  # dataclasses, pickle and friends look here
    namespace = module.__dict__
    namespace["display"] = lambda *args, **kwargs: None  # IPython's builtin, a no-op here
    namespace["get_ipython"] = lambda: NoIPython(namespace)
    reports = []
    for cell in cells:
        index, source = cell["index"], cell["source"]
        filename = cell_filename(index)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        start = time.monotonic()
        report = CellReport(index=index, status="ok", error=None)
        sink = io.StringIO()
        try:
            code = compile(source, filename, "exec")
            with contextlib.ExitStack() as stack:
                if quiet:
                    stack.enter_context(contextlib.redirect_stdout(sink))
                    stack.enter_context(contextlib.redirect_stderr(sink))
                stack.enter_context(time_limit(timeout))
                exec(code, namespace)
        except TimeLimit:
            report.update(status="timeout", error=f"cell {index} ran past {timeout:g} s")
        except SyntaxError as e:
            report.update(
                status="error", error=f"cell {index}: SyntaxError: {e.msg} (line {e.lineno})"
            )
        except BaseException as e:
            report.update(status="error", error=f"cell {index} raised {describe_exception(e)}")
        report["seconds"] = round(time.monotonic() - start, 3)
        reports.append(report)
    return namespace, reports


# --- the tests --------------------------------------------------------------------------------


def run_test(test: GradingTest, sub: Submission) -> dict[str, Any]:
    """Run one test here and now: ``{"status": "passed" | "failed" | "error" | "timeout", ...}``."""
    printed = io.StringIO()
    start = time.monotonic()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            test.fn(sub)
        status, output = "passed", ""
    except Feedback as e:
        status, output = "failed", str(e)
    except TimeLimit:
        status, output = "timeout", "your code ran past the time limit"
    except AssertionError as e:  # a plain assert in a test module
        status, output = "failed", describe_exception(e)
    except BaseException as e:
        status, output = "error", describe_exception(e)
    text = printed.getvalue()
    if status != "passed" and text.strip():
        if len(text) > MAX_PRINTED:
            text = text[:MAX_PRINTED] + "\n... (cut)"
        output += "\n  your code printed:\n" + text.rstrip()
    return {"status": status, "output": output, "seconds": round(time.monotonic() - start, 3)}


def _child(test: GradingTest, sub: Submission, fd: int) -> None:
    """In the forked child: run the test, send the result, leave without cleanup."""
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        result = run_test(test, sub)
        data = json.dumps(result).encode()
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os._exit(0)


def run_tests_forked(
    tests: list[GradingTest], sub: Submission, timeout: float, jobs: int = 1
) -> list[dict[str, Any]]:
    """Each test in its own forked child, at most ``jobs`` at a time, each killed at its limit."""
    results: list[dict[str, Any] | None] = [None] * len(tests)
    pending = list(range(len(tests)))
    running: dict[int, dict[str, Any]] = {}  # read fd -> child
    sys.stdout.flush()
    sys.stderr.flush()
    while pending or running:
        while pending and len(running) < max(jobs, 1):
            i = pending.pop(0)
            limit = tests[i].timeout or timeout
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child)
                os.close(r)
                _child(tests[i], sub, w)
            os.close(w)
            now = time.monotonic()
            running[r] = dict(i=i, pid=pid, start=now, deadline=now + limit, limit=limit, buf=[])
        wait = max(0.0, min(c["deadline"] for c in running.values()) - time.monotonic())
        ready, _, _ = select.select(list(running), [], [], wait)
        finished = []
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if chunk:
                running[fd]["buf"].append(chunk)
            else:
                finished.append((fd, False))
        now = time.monotonic()
        for fd, child in running.items():
            if fd not in ready and now >= child["deadline"]:
                finished.append((fd, True))
        for fd, timed_out in finished:
            child = running.pop(fd)
            if timed_out:
                os.kill(child["pid"], signal.SIGKILL)
            _, status = os.waitpid(child["pid"], 0)
            os.close(fd)
            seconds = round(now - child["start"], 3)
            if timed_out:
                result = {
                    "status": "timeout",
                    "output": f"stopped after {child['limit']:g} s: an infinite loop, or far "
                    "too slow (loop over bins and samples, not over every pixel)",
                }
            else:
                try:
                    result = json.loads(b"".join(child["buf"]).decode())
                except ValueError:
                    how = (
                        f"signal {os.WTERMSIG(status)}"
                        if os.WIFSIGNALED(status)
                        else f"exit status {os.WEXITSTATUS(status)}"
                    )
                    result = {"status": "error", "output": f"the test crashed Python ({how})"}
            result["seconds"] = seconds
            results[child["i"]] = result
    return [r for r in results if r is not None]


def run_tests(
    tests: list[GradingTest], sub: Submission, timeout: float, jobs: int = 1
) -> list[dict[str, Any]]:
    if hasattr(os, "fork") and hasattr(select, "select"):
        return run_tests_forked(tests, sub, timeout, jobs)
    out = []
    for test in tests:  # pragma: no cover (Windows)
        with time_limit(test.timeout or timeout):
            out.append(run_test(test, sub))
    return out


def load_module(path: str | Path, name: str | None = None) -> types.ModuleType:
    """Import a test module from its file (tests/grading or an instructor's hidden folder)."""
    path = Path(path)
    name = name or f"_grading_{abs(hash(str(path.resolve())))}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_path, result_path = argv
    job = json.loads(Path(job_path).read_text())
    tests: list[GradingTest] = []
    for path in job["test_modules"]:
        tests.extend(collect_tests(load_module(path)))
    namespace, cells = run_cells(job["cells"], job["cell_timeout"])
    errors = [c["error"] for c in cells if c["error"]]
    sub = Submission(namespace, errors)
    results = run_tests(tests, sub, job["timeout"], job.get("jobs", 1))
    for test, result in zip(tests, results, strict=True):
        result["name"] = test.name
    Path(result_path).write_text(json.dumps({"cells": cells, "tests": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
