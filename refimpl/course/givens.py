"""What an exercise gives the learner while grading: a ``refimpl`` tree holding only that.

The sandbox cannot see the installed ``refimpl`` (nor the checkout). A grading module says
what its exercise hands the learner in ``GIVENS``, and :func:`build` writes a small
``refimpl`` package with exactly that, which the sandbox imports instead::

    GIVENS = {
        "refimpl.ops.geometry": ["align_box"],  # these functions (and what they use)
        "refimpl.course.races": "*",  # the whole module
        "refimpl.ops": "*",  # the whole package
    }

Functions are cut out of their module's source with :mod:`ast` together with the top-level
names they use (imports included, transitively), so a given never drags in a graded
neighbour; a relative import the cut needs must itself be given (else :class:`GivenError`).
Packages on the way get an empty ``__init__.py``. Everything else (``refimpl.ops.python``,
``refimpl.model``, the grading tests, ...) is simply absent: an import fails inside the
sandbox, and the worker adds why (:data:`refimpl.course.runner.REFERENCE_HINT`).
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
from pathlib import Path

GivenSpec = dict[str, "list[str] | str"]
PACKAGE_NOTE = '"""{name} while grading: only the exercise\'s givens (refimpl.course.givens)."""\n'


# ``from refimpl.ops import BACKENDS`` works while grading: a backend the exercise gives is its
# module; every other one is absent (a notebook's comparison cells may name
# ``BACKENDS["python"]``; calling anything of it fails with a message saying why).
BACKENDS_STUB = """

class _Absent:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise ImportError(
            f"BACKENDS[{self._name!r}].{attr}: refimpl's reference implementation is not "
            "available while grading: graded functions must be your own"
        )


class _Backends(dict):
    def __missing__(self, name):
        import importlib

        try:  # a backend the exercise gives (e.g. exercise 8's "numpy") is in this tree
            return importlib.import_module(f"refimpl.ops.{name}")
        except ImportError:
            return _Absent(name)


BACKENDS = _Backends()
"""


class GivenError(Exception):
    """A GIVENS entry that cannot be provided (unknown module or name, missing dependency)."""


def _source_of(module: str) -> tuple[Path, bool]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise GivenError(f"cannot find module {module}")
    origin = Path(spec.origin)
    return origin, spec.submodule_search_locations is not None


def _defined_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, ast.Assign):
        return [t.id for t in stmt.targets if isinstance(t, ast.Name)]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in stmt.names]
    return []


def _used_names(stmt: ast.stmt) -> list[str]:
    return [n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)]


def _closure(defs: dict[str, ast.stmt], names: list[str]) -> set[str]:
    """``names`` and every top-level name they use, transitively."""
    keep: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in keep or name not in defs:
            continue
        keep.add(name)
        todo.extend(_used_names(defs[name]))
    return keep


def _relative_needs(stmt: ast.ImportFrom, package: str) -> list[str]:
    base = package.rsplit(".", stmt.level - 1)[0] if stmt.level > 1 else package
    if stmt.module:
        return [f"{base}.{stmt.module}"]
    return [f"{base}.{a.name}" for a in stmt.names]


def cut(source: str, names: list[str], module: str) -> tuple[str, list[str]]:
    """The source of ``names`` and the top-level names they use; also the relative imports
    it keeps (as absolute module names), which must be given too."""
    tree = ast.parse(source)
    defs: dict[str, ast.stmt] = {}
    for stmt in tree.body:
        for name in _defined_names(stmt):
            defs[name] = stmt
    missing = [n for n in names if n not in defs]
    if missing:
        raise GivenError(f"{module} has no top-level {', '.join(missing)}")
    keep = _closure(defs, names)
    doc = ast.get_docstring(tree)
    out, needs = ([repr(doc)] if doc is not None else []), []
    for stmt in tree.body:
        future = isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"
        if not future and not any(n in keep for n in _defined_names(stmt)):
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) and not future:
            stmt.names = [a for a in stmt.names if (a.asname or a.name).split(".")[0] in keep]
            if isinstance(stmt, ast.ImportFrom) and stmt.level:
                needs += _relative_needs(stmt, module.rpartition(".")[0])
        out.append(ast.unparse(stmt))
    return "\n\n\n".join(out) + "\n", needs


def _covered(module: str, spec: GivenSpec) -> bool:
    """Is ``module`` given whole (itself, or a package above it)?"""
    parts = module.split(".")
    return any(spec.get(".".join(parts[:i])) == "*" for i in range(1, len(parts) + 1))


def _copy_package(src: Path, dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> list[str]:
        return [
            n
            for n in names
            if n == "__pycache__"
            or n == "grading"
            or not (n.endswith(".py") or (Path(folder) / n).is_dir())
        ]

    shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)


def build(dest: Path, spec: GivenSpec) -> list[str]:
    """Write the givens under ``dest`` (``dest/refimpl/...``); the modules written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for module, names in sorted(spec.items()):
        if not module.startswith("refimpl"):
            raise GivenError(f"{module}: only refimpl's modules are given")
        origin, is_package = _source_of(module)
        target = dest.joinpath(*module.split("."))
        if is_package:
            if names != "*":
                raise GivenError(f"{module} is a package: give it whole ('*') or its modules")
            _copy_package(origin.parent, target)
        elif names == "*":
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, target.with_suffix(".py"))
        else:
            text, needs = cut(origin.read_text(), list(names), module)
            for need in needs:
                if not _covered(need, spec) and need not in spec:
                    raise GivenError(f"{module}: the given {names} import {need}, not given")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.with_suffix(".py").write_text(text)
        written.append(module)
    _fill_packages(dest)
    return written


def _fill_packages(dest: Path) -> None:
    """An ``__init__.py`` (a docstring, nothing else) in every folder that lacks one."""
    root = dest / "refimpl"
    if not root.exists():
        root.mkdir()
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        init = folder / "__init__.py"
        if not init.exists():
            name = ".".join(folder.relative_to(dest).parts)
            init.write_text(PACKAGE_NOTE.format(name=name))
            if name == "refimpl.ops":  # notebooks import BACKENDS to compare with, outside grading
                with init.open("a") as f:
                    f.write(BACKENDS_STUB)
