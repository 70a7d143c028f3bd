"""One notebook's sandbox: its cells run once, then a forked child of it per test.

:class:`Session` starts a :class:`refimpl.course.sandbox.Sandbox`, sends the cells one by one
on its first connection (each under its own CPU budget) and, per test, opens a connection
that the worker serves from a forked child (:meth:`Session.test_link`). When a cell or a
test leaves the sandbox unusable (it ran past its limit and could not be stopped, it ended
the worker), the sandbox is started afresh and the cells run again, without the cell that
broke it: nothing one test does reaches another.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import channel
from .remote import Budget, LimitExceeded, Link, ProtocolError, SandboxLost
from .sandbox import Limits, Sandbox

HELLO_CPU_S, HELLO_WALL_S = 60.0, 120.0  # starting Python and NumPy in the sandbox
REAP_WALL_S = 10.0
WORKER_FILES = ("channel.py", "runner.py", "newroot.py")


def prepare_runtime(runtime: Path) -> None:
    """``runtime/_grader``: the worker's own files (all the sandbox runs of the grader)."""
    pkg = runtime / "_grader"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""The grading worker, inside the sandbox."""\n')
    here = Path(__file__).parent
    for name in WORKER_FILES:
        shutil.copyfile(here / name, pkg / name)


def copy_submission(folder: Path, dest: Path, max_bytes: int) -> list[str]:
    """A copy of the notebook's folder (regular files only, at most ``max_bytes``)."""
    dest.mkdir(parents=True, exist_ok=True)
    skipped, total = [], 0
    for src in sorted(folder.rglob("*")):
        rel = src.relative_to(folder)
        if any(p.startswith(".") for p in rel.parts) or src.is_symlink() or not src.is_file():
            continue
        size = src.stat().st_size
        if total + size > max_bytes:
            skipped.append(str(rel))
            continue
        total += size
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    return skipped


@dataclass
class CellOutcome:
    number: int
    name: str
    status: str = "ok"  # ok | error | timeout | stopped
    error: str | None = None
    cpu_s: float = 0.0


@dataclass
class Session:
    runtime: Path
    submission: Path | None
    env: dict[str, str]
    limits: Limits
    hidden: list[str]
    backend: str | None = None
    sandbox: Sandbox | None = None
    main: Link | None = None
    skip: set[int] = field(default_factory=set)  # cells that broke the sandbox
    restarts: int = 0
    _tokens: Any = field(default_factory=itertools.count)

    # -- the sandbox
    def start(self) -> None:
        self.sandbox = Sandbox(
            self.runtime,
            submission=self.submission,
            env=self.env,
            limits=self.limits,
            hidden=self.hidden,
            backend=self.backend,
        )
        self.sandbox.start()
        budget = Budget(self.sandbox, HELLO_CPU_S, HELLO_WALL_S)
        sock = self._connect(budget)
        self.main = Link(self.sandbox, sock)
        msg, _ = self.main.wait(budget)
        if msg["op"] != "hello":
            raise ProtocolError(f"the worker did not start ({msg['op']})")

    def _connect(self, budget: Budget):
        while True:
            try:
                return self.sandbox.connect()
            except OSError:
                if not self.sandbox.alive():
                    raise SandboxLost(
                        "the sandbox did not start: " + self.sandbox.output[-1500:]
                    ) from None
                budget.check(force=True)
                import time

                time.sleep(0.05)

    def stop(self) -> None:
        if self.main is not None:
            self.main.close()
            self.main = None
        if self.sandbox is not None:
            self.sandbox.kill()

    def restart(self, cells: list[dict[str, Any]], cell_cpu_s: float, wall_s: float) -> None:
        """A fresh sandbox with the cells run again (but not those in ``skip``)."""
        self.stop()
        self.restarts += 1
        self.start()
        for cell in cells:
            if cell["number"] not in self.skip:
                self.run_cell(cell, cell_cpu_s, wall_s, rerun=True)

    # -- cells
    def run_cell(
        self, cell: dict[str, Any], cpu_s: float, wall_s: float, rerun: bool = False
    ) -> CellOutcome:
        out = CellOutcome(cell["number"], cell["name"])
        budget = Budget(self.sandbox, cpu_s * 1.2 + 2.0, wall_s)
        frame = channel.message(
            "cell",
            None,
            number=cell["number"],
            name=cell["name"],
            source=cell["source"],
            cpu_s=cpu_s,
        )
        try:
            msg, _ = self.main.request(frame, budget)
        except LimitExceeded as e:
            out.status, out.error = "stopped", limit_message(cell["name"], e)
        except (SandboxLost, ProtocolError) as e:
            out.status = "stopped"
            out.error = f"{cell['name']} ended the grading process ({e}); it is skipped"
        else:
            if msg.get("op") == "cell_done":
                out.status = str(msg.get("status", "error"))[:20]
                out.error = str(msg["error"])[:3000] if msg.get("error") else None
            else:
                out.status, out.error = "error", f"{cell['name']}: unexpected reply"
        out.cpu_s = budget.used()[0]
        if out.status == "stopped" and not rerun:
            self.skip.add(cell["number"])
        return out

    # -- tests
    def test_link(self, budget: Budget, cpu_s: float) -> tuple[Link, str]:
        token = str(next(self._tokens))
        link = Link(self.sandbox, self._connect(budget))
        msg, _ = link.request(channel.message("fork", None, token=token, cpu_s=cpu_s), budget)
        if msg["op"] != "ready":
            raise ProtocolError(f"the sandbox did not start the test ({msg['op']})")
        return link, token

    def reap(self, token: str, kill: bool = False) -> dict[str, Any] | None:
        """How the test's child ended (the worker's word), or None when the worker is gone."""
        budget = Budget(self.sandbox, REAP_WALL_S, REAP_WALL_S)
        try:
            msg, _ = self.main.request(
                channel.message("reap", None, token=token, kill=kill), budget
            )
        except (LimitExceeded, SandboxLost, ProtocolError):
            return None
        return msg if msg.get("op") == "reaped" else None


def limit_message(
    what: str, e: LimitExceeded, reference: float | None = None, hint: str = ""
) -> str:
    if e.kind == "wall":
        text = (
            f"{what} was stopped after {e.wall:.0f} s of wall-clock time, having used only "
            f"{e.cpu:.1f} s of CPU: is it waiting for something (sleep, input(), a lock)?"
        )
    else:
        text = f"{what} ran past its CPU time limit of {e.limit:.3g} s"
        if reference:
            text += f" (the reference solution needs {reference:.2g} s)"
        text += f": {hint or 'an infinite loop, or a far slower method than needed?'}"
    return text
