"""Where a committed result came from: the command, the git commit, the machine, the software.

Every result file the course quotes (``docs/results/*.json``, the reference weights' card)
records this, so a number in a lesson can be traced to the run that measured it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def git_commit(repo: Path = REPO) -> str | None:
    """``HEAD``'s hash, with ``-dirty`` when tracked files differ from it (None outside git).

    A run from a copy of the tree (no ``.git``) names its commit in ``REFIMPL_SOURCE_COMMIT``."""
    if os.environ.get("REFIMPL_SOURCE_COMMIT"):
        return os.environ["REFIMPL_SOURCE_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
            check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def source_digest() -> str:
    """SHA-256 over the imported ``refimpl`` package's ``.py`` files (paths and contents): which
    code ran, exactly, even from a tree with uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(argv: list[str] | None = None) -> dict:
    """The command line, commit, date, CPU and library versions of this process."""
    import numba
    import torch

    return {
        "command": " ".join(["python", *(sys.argv if argv is None else argv)]),
        "git_commit": git_commit(),
        "source_sha256": source_digest(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numba": numba.__version__,
        },
    }
