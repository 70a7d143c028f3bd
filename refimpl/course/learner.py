"""A learner's exercise notebook as an importable module: the capstone takes the learner's
functions from their own notebooks, no copy-paste::

    from refimpl.course.learner import load
    mine = load("exercises/10_box_coding_nms.ipynb")
    keep = mine.nms(boxes, scores, 0.5)

What runs is what the grader runs (:func:`refimpl.course.grade.grading_cells`): the code
cells in order, except the notebook's own check cells (nbgrader grade cells that are not
solution cells) and cells tagged ``skip-grading`` or ``skip-execution``; IPython magics do
nothing (the body of a ``%%time``/``%%timeit``/``%%capture`` cell runs). The cells run with
the notebook's folder as the working directory, as in Jupyter, so a notebook that loads
another by a relative name finds it beside itself.

A cell that raises is a :class:`LearnerError` naming the notebook and the cell as JupyterLab
numbers it ("code cell 3", markdown not counted) with its first line; the original exception
is its ``__cause__``. A function still ``raise NotImplementedError()`` loads fine and raises
when called (the capstone then falls back to refimpl's part, and says so).

Modules are cached by file and modification time (``reload=True`` runs the cells again).
Torch ops are registered by name, once per process: loading a second notebook that defines
``mycourse::roi_align`` (another copy of exercise 8) registers it anew and breaks the operator
objects of the notebook loaded before; load one exercise 8 per process (tests that need
another run it in a subprocess).
"""

from __future__ import annotations

import contextlib
import json
import linecache
import re
import sys
import types
from pathlib import Path
from typing import Any

from .grade import NotebookError, grading_cells, read_notebook

__all__ = ["KERNEL_CHOICES", "LearnerError", "choose_kernels", "load"]

_CACHE: dict[tuple[str, int], types.ModuleType] = {}
KERNEL_CHOICES = ("refimpl", "numpy", "numba")  # exercise 8's KERNELS


class LearnerError(RuntimeError):
    """A notebook that cannot be loaded: unreadable, or one of its cells raised (which one,
    as JupyterLab numbers code cells)."""


class _NoIPython:
    """``get_ipython()`` outside IPython: magics do nothing, but the body of a ``%%time``,
    ``%%timeit`` or ``%%capture`` cell runs (the grader's rule)."""

    RUN_BODY = ("time", "timeit", "capture")

    def __init__(self, namespace: dict[str, Any], filename: str):
        self._namespace, self._filename = namespace, filename

    def run_cell_magic(self, name: str, _line: str, cell: str) -> None:
        if name in self.RUN_BODY:
            exec(compile(cell, self._filename, "exec"), self._namespace)

    def __getattr__(self, name: str) -> Any:
        return lambda *_, **__: None  # run_line_magic, system, getoutput, ...


def module_name(path: Path) -> str:
    """``learner_10_box_coding_nms`` for ``10_box_coding_nms.ipynb``."""
    return "learner_" + re.sub(r"\W", "_", path.stem)


def load(path: str | Path, *, reload: bool = False) -> types.ModuleType:
    """The notebook at ``path`` (relative to the working directory, which is the loading
    notebook's folder while a notebook loads another) as a module named
    ``learner_<stem>``, registered in ``sys.modules``."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or a Path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"path must be a notebook (.ipynb), got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no notebook {str(path)!r} (working directory {Path.cwd()})")
    path = path.resolve()
    key = (str(path), path.stat().st_mtime_ns)
    if key in _CACHE and not reload:
        sys.modules[_CACHE[key].__name__] = _CACHE[key]  # (a same-named notebook elsewhere)
        return _CACHE[key]
    try:
        nb = read_notebook(path)
    except (NotebookError, OSError) as e:
        raise LearnerError(f"{path.name}: {e}") from None
    cells, notes = grading_cells(nb)
    if notes:
        raise LearnerError(f"{path.name}: {'; '.join(notes)}")

    name = module_name(path)
    module = types.ModuleType(name, f"The code cells of {path.name} (refimpl.course.learner).")
    module.__file__ = str(path)
    namespace = module.__dict__
    namespace["display"] = lambda *_, **__: None  # IPython's builtin, a no-op here
    previous = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses, pickle and inspect look the module up
    try:
        with contextlib.chdir(path.parent):
            for cell in cells:
                _run(namespace, path, cell)
    except BaseException:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise
    _CACHE[key] = module
    return module


def _run(namespace: dict[str, Any], path: Path, cell: dict[str, Any]) -> None:
    filename = f"<{path.name}, code cell {cell['number']}>"
    source = cell["source"]
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace["get_ipython"] = lambda: _NoIPython(namespace, filename)
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as e:
        raise LearnerError(
            f"{path.name}: {cell['name']} has a syntax error: {e.msg} (line {e.lineno})"
        ) from e
    try:
        exec(code, namespace)
    except LearnerError as e:  # a notebook loading another: keep the inner one's message
        raise LearnerError(f"{path.name}: {cell['name']} loads another notebook: {e}") from e
    except Exception as e:
        raise LearnerError(f"{path.name}: {cell['name']} raised {type(e).__name__}: {e}") from e


def choose_kernels(path: str | Path, kernels: str) -> None:
    """Set exercise 8's ``KERNELS = "..."`` (its first code cell) in the notebook at ``path``:
    the kernels under the learner's op, refimpl's NumPy ones or the learner's own from
    exercises 4-5 (``"numpy"``) or 6 (``"numba"``). The notebook is rewritten in place."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
    path = Path(path)
    nb = json.loads(path.read_text())
    cell = next((c for c in nb.get("cells", []) if c.get("cell_type") == "code"), None)
    text = "".join(cell["source"]) if cell else ""
    text, found = re.subn(r'^KERNELS = "\w+"', f"KERNELS = {json.dumps(kernels)}", text, flags=re.M)
    if found != 1:
        raise ValueError(f'{path.name}: its first code cell has no single KERNELS = "..." line')
    cell["source"] = text.splitlines(keepends=True)  # nbformat's list of lines, as saved
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
