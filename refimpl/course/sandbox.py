"""Where the learner's code runs: a sandbox from bubblewrap, else ``unshare``, else (loudly) none.

The grader (trusted) starts one sandbox per notebook (:class:`Sandbox`) running
:mod:`refimpl.course.runner`, and talks to it over a Unix socket it listens on itself: the
sandbox inherits only the listening socket, ``/dev/null`` as stdin and one pipe for its
stdout and stderr (read by the grader, at most :attr:`Limits.output_bytes` kept).

What the sandbox sees (:func:`mount_plan`, the same for both backends):

- read-only: ``/usr``, ``/bin``, ``/lib*``, ``/sbin``, ``/etc``, the Python interpreter and
  the environment it runs in (``sys.prefix``, ``sys.base_prefix``, the entries of
  ``sys.path``), the worker (``/grader/_grader``), the exercise's givens
  (``/grader/givens``, a ``refimpl`` tree holding only them, :mod:`refimpl.course.givens`)
  and a copy of the submission's folder (``/submission``);
- hidden under empty file systems wherever they fall inside the above: the installed
  ``refimpl`` package, the repository checkout (the grading tests, ``solutions/``), the
  hidden tests, the original submission;
- writable: a private ``/tmp`` (the work folder ``/tmp/work`` is a copy of the submission)
  and ``/dev/shm``, both size-limited memory file systems;
- ``/proc`` of its own pid namespace, a minimal ``/dev``; no network (its own, empty, net
  namespace), its own IPC, UTS and pid namespaces: when its first process ends, the kernel
  ends every process in it (a ``setsid`` grandchild or a daemon included), and
  ``--die-with-parent`` ends it if the grader dies.

Limits: ``RLIMIT_AS`` (memory), ``RLIMIT_NOFILE``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC``
(counted per user: as root the grader runs each sandbox as a user of its own,
:func:`sandbox_uid`, so that a fork bomb in one cannot starve another graded at the same time;
otherwise the user namespace counts only the sandbox's own processes), ``RLIMIT_CORE`` 0;
CPU time is measured from outside (:meth:`Sandbox.cpu_seconds`: the whole process tree, in
/proc) and limited by the grader, per cell and per test.

Backends, chosen by :func:`detect` (or ``REFIMPL_SANDBOX=bwrap|unshare|none``):

``bwrap``    bubblewrap (Debian package ``bubblewrap``; ``scripts/setup.sh`` installs it).
``unshare``  util-linux's ``unshare`` for the namespaces; the worker's bootstrap then builds
             the same file system itself (:mod:`refimpl.course.newroot`) before any learner
             code runs, and drops every capability.
``none``     no isolation at all: resource limits and a process group only. The grader
             prints a warning in the report and in results.json.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SANDBOX_GID = 65534  # nogroup
SANDBOX_UID_BASE = 1 << 20  # above any real user; + the grader's pid (unique while it runs)


def sandbox_uid() -> int:
    """The uid a root grader gives its sandbox: one per grader process (``--jobs`` runs each
    notebook in a process of its own), so RLIMIT_NPROC counts one sandbox's processes only.
    No account exists for it; the sandbox's ``USER`` and ``HOME`` are set instead."""
    return SANDBOX_UID_BASE + os.getpid()


WORKDIR = "/tmp/work"
RUNTIME_IN_SANDBOX = "/grader"
SUBMISSION_IN_SANDBOX = "/submission"
NO_SANDBOX_WARNING = (
    "WARNING: no sandbox (neither bubblewrap nor unshare works here): the learner's code ran "
    "with the grader's access to files, network and processes; scores can be forged. Install "
    "bubblewrap (apt-get install bubblewrap) and allow user namespaces"
)
_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Limits:
    """Resource limits of one sandbox (CPU time is the grader's, per cell and per test)."""

    memory_bytes: int = 8 << 30  # RLIMIT_AS: address space (torch + numba reserve ~3 GB)
    open_files: int = 256
    file_bytes: int = 64 << 20  # RLIMIT_FSIZE: the largest file it may write
    processes: int = 256  # RLIMIT_NPROC: processes and threads
    tmp_bytes: int = 512 << 20  # /tmp
    shm_bytes: int = 64 << 20  # /dev/shm
    output_bytes: int = 64 << 10  # of stdout + stderr kept by the grader
    submission_bytes: int = 64 << 20  # of the submission's folder copied in

    def rlimits(self, cpu_s: float | None = None) -> dict[str, int]:
        out = {
            "as": self.memory_bytes,
            "nofile": self.open_files,
            "fsize": self.file_bytes,
            "nproc": self.processes,
            "core": 0,
        }
        if cpu_s:
            out["cpu"] = int(cpu_s) + 1
        return out


# --- which backend ------------------------------------------------------------------------

_NAMESPACES = [
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup-try",
]


def _is_root() -> bool:
    return os.geteuid() == 0


def _bwrap_flags() -> list[str]:
    flags = ["--die-with-parent", "--new-session", *_NAMESPACES]
    if _is_root():  # no user namespace: the sandbox's uid is real, counted by RLIMIT_NPROC
        caps = ["CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"]
        flags += ["--cap-drop", "ALL", *[a for c in caps for a in ("--cap-add", c)]]
    else:
        flags += ["--unshare-user"]
    return flags


def _unshare_flags() -> list[str]:
    flags = ["--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child"]
    return flags if _is_root() else [*flags, "--user", "--map-root-user"]


def _works(cmd: list[str]) -> tuple[bool, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()[-300:]


@functools.cache
def detect(prefer: str | None = None) -> tuple[str, str]:
    """``(backend, why)``: the first of bwrap, unshare that works here, else ``none``."""
    prefer = prefer or os.environ.get("REFIMPL_SANDBOX") or None
    if prefer == "none":
        return "none", "asked for no sandbox (REFIMPL_SANDBOX=none or --sandbox none)"
    reasons = []
    if prefer in (None, "bwrap"):
        exe = shutil.which("bwrap")
        if exe:
            ok, why = _works(
                [exe, *_bwrap_flags(), "--ro-bind", "/", "/", "--proc", "/proc", "true"]
            )
            if ok:
                return "bwrap", exe
            reasons.append(f"bwrap does not run here ({why})")
        else:
            reasons.append("bwrap is not installed")
    if prefer in (None, "unshare"):
        exe = shutil.which("unshare")
        if exe:
            probe = (
                "import ctypes; "
                "assert ctypes.CDLL(None).mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0"
            )
            ok, why = _works([exe, *_unshare_flags(), sys.executable, "-c", probe])
            if ok:
                return "unshare", exe
            reasons.append(f"unshare does not work here ({why})")
        else:
            reasons.append("unshare is not installed")
    return "none", "; ".join(reasons)


# --- what the sandbox sees ----------------------------------------------------------------


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _real(p: str | Path) -> str:
    return os.path.realpath(str(p))


def python_paths(hidden: list[str] = ()) -> list[str]:
    """The interpreter and its environment (``sys.prefix``, ``sys.base_prefix``), and every
    other existing entry of ``sys.path`` that is not inside a ``hidden`` path."""
    paths = {_real(sys.prefix), _real(sys.base_prefix), _real(Path(sys.executable).parent)}
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            real = _real(entry)
            if not any(_inside(real, h) for h in hidden):
                paths.add(real)
    return sorted(paths)


SYSTEM_PATHS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"]


@dataclass
class MountPlan:
    """Read-only binds, empty file systems over what must stay hidden, symlinks."""

    ops: list[dict[str, Any]] = field(default_factory=list)

    def to_bwrap(self) -> list[str]:
        args, made, dirs = [], set(), set()
        for op in self.ops:
            args += self._parents(op["dst"], made, dirs)
            if op["kind"] == "ro":
                args += ["--ro-bind", op["src"], op["dst"]]
            elif op["kind"] == "hide":
                args += ["--size", "65536", "--perms", "0555", "--tmpfs", op["dst"]]
            elif op["kind"] == "symlink":
                args += ["--symlink", op["target"], op["dst"]]
            made.add(op["dst"])
        return args

    def _parents(self, dst: str, made: set[str], dirs: set[str]) -> list[str]:
        """``--dir`` with mode 0755 for the folders above ``dst`` that nothing provides yet
        (bubblewrap would make them 0700, which the sandbox's uid cannot enter)."""
        args = []
        parents = list(Path(dst).parents)[::-1][1:]  # without "/"
        for parent in map(str, parents):
            if parent in dirs or any(_inside(parent, m) for m in made):
                continue
            args += ["--perms", "0755", "--dir", parent]
            dirs.add(parent)
        return args


def _bind_outermost(plan: MountPlan, pairs: list[tuple[str, str]]) -> None:
    """Read-only binds of ``pairs``, outermost first, skipping what an earlier bind shows."""
    for src, dst in sorted(set(pairs), key=lambda a: len(a[1])):
        if not any(_inside(dst, o["dst"]) for o in plan.ops if o["kind"] == "ro"):
            plan.ops.append({"kind": "ro", "src": src, "dst": dst})


def _hide_inside(plan: MountPlan, hidden: list[str]) -> None:
    """An empty file system over every hidden path that a bind so far makes visible."""
    shown = [o["dst"] for o in plan.ops if o["kind"] == "ro"]
    done = {o["dst"] for o in plan.ops if o["kind"] == "hide"}
    for h in hidden:
        if h not in done and os.path.exists(h) and any(_inside(h, d) and h != d for d in shown):
            plan.ops.append({"kind": "hide", "dst": h})


def mount_plan(runtime: Path, submission: Path | None, hidden: list[str]) -> MountPlan:
    """Allowed trees (outermost first), then hidden paths inside them, then allowed paths
    inside hidden ones (the venv inside the checkout), and hidden paths inside those."""
    plan = MountPlan()
    allowed: list[tuple[str, str]] = []
    for p in SYSTEM_PATHS:
        if os.path.islink(p):
            plan.ops.append({"kind": "symlink", "target": os.readlink(p), "dst": p})
        elif os.path.isdir(p):
            allowed.append((p, p))
    hidden = sorted({_real(h) for h in hidden if h})
    allowed += [(p, p) for p in python_paths(hidden) if p not in hidden]
    covered = [a for a in allowed if any(_inside(a[0], h) for h in hidden)]
    _bind_outermost(plan, [a for a in allowed if a not in covered])
    _hide_inside(plan, hidden)
    _bind_outermost(plan, covered)
    _hide_inside(plan, hidden)
    for name in ("_grader", "givens"):
        plan.ops.append(
            {"kind": "ro", "src": str(runtime / name), "dst": f"{RUNTIME_IN_SANDBOX}/{name}"}
        )
    if submission is not None:
        plan.ops.append({"kind": "ro", "src": str(submission), "dst": SUBMISSION_IN_SANDBOX})
    return plan


def secrets_to_hide(extra: list[Path | str] = ()) -> list[str]:
    """The installed refimpl package, the checkout it came from, and ``extra``."""
    import refimpl

    package = Path(refimpl.__file__).resolve().parent
    out = [str(package), *map(str, extra)]
    repo = package.parent
    if (repo / "pyproject.toml").is_file() or (repo / ".git").exists():
        out.append(str(repo))
    return out


# --- the process tree ---------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process and its reaped children)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = text[text.rindex(")") + 2 :].split()
        ticks = sum(int(v) for v in rest[11:15])  # utime stime cutime cstime
        out[int(name)] = (int(rest[1]), ticks / _CLK)
    return out


def descendants(root: int, table: dict[int, tuple[int, float]] | None = None) -> list[int]:
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root`` and everything below it (threads included)."""
    table = _proc_table()
    return sum(table[p][1] for p in descendants(root, table))


def kill_tree(root: int) -> None:
    """SIGSTOP everything (no more forks), then SIGKILL, until nothing is left."""
    for _ in range(20):
        pids = descendants(root)
        if not pids:
            return
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        time.sleep(0.02)


@functools.cache
def become_subreaper() -> bool:
    """Orphans of the sandbox's processes become the grader's children (the ``none``
    backend's only hold on a daemon), so they stay in its process tree."""
    try:
        import ctypes

        return ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# --- one sandbox --------------------------------------------------------------------------


def _accessible_to_others(path: str) -> bool:
    """Can an unprivileged user reach ``path`` (every directory on the way searchable)?"""
    p = Path(path)
    for part in [p, *p.parents]:
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def _readable_by_all(root: Path) -> None:
    """``chmod -R a+rX`` (the grader's temporary folders are private by default)."""
    for folder, _, files in os.walk(root):
        os.chmod(folder, os.stat(folder).st_mode | 0o555)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)


class Sandbox:
    """One sandboxed worker process: start it, connect to it, watch its CPU, kill it."""

    def __init__(
        self,
        runtime: Path,
        *,
        submission: Path | None,
        env: dict[str, str],
        limits: Limits,
        hidden: list[str],
        backend: str | None = None,
    ):
        self.runtime = runtime
        self.submission = submission
        self.env = env
        self.limits = limits
        self.hidden = hidden
        self.backend, self.backend_note = detect(backend)
        self.proc: subprocess.Popen | None = None
        self.socket_path = runtime / "sock" / "grader.sock"
        self._output = bytearray()
        self.output_dropped = 0

    # -- starting
    def _config(self, listen_fd: int, inside: bool) -> dict[str, Any]:
        grader = RUNTIME_IN_SANDBOX if inside else str(self.runtime)
        uid = sandbox_uid() if _is_root() else None
        if self.backend == "none" and not all(
            _accessible_to_others(p) for p in [sys.executable, *python_paths()]
        ):
            uid = None  # nobody could not even start this Python
        return {
            "listen_fd": listen_fd,
            "uid": uid,
            "gid": SANDBOX_GID if uid is not None else None,
            "limits": self.limits.rlimits(),
            "submission": SUBMISSION_IN_SANDBOX if inside else str(self.submission or ""),
            "workdir": WORKDIR if inside else str(self.runtime / "work"),
            "sys_path": [f"{grader}/givens"],
        }

    def command(self, listen_fd: int) -> tuple[list[str], dict[str, str]]:
        python = sys.executable
        env = dict(self.env)
        if self.backend == "bwrap":
            plan = mount_plan(self.runtime, self.submission, self.hidden)
            config = self._config(listen_fd, inside=True)
            env["PYTHONPATH"] = f"{RUNTIME_IN_SANDBOX}:{RUNTIME_IN_SANDBOX}/givens"
            tmp, shm = str(self.limits.tmp_bytes), str(self.limits.shm_bytes)
            cmd = [
                self.backend_note,
                *_bwrap_flags(),
                # the private /tmp first: the binds land on top of it, so an interpreter or
                # a venv that lives under /tmp (a CI checkout there) stays visible
                "--perms", "1777", "--size", tmp, "--tmpfs", "/tmp",
                *plan.to_bwrap(),
                "--proc", "/proc",
                "--dev", "/dev",
                "--perms", "1777", "--size", shm, "--tmpfs", "/dev/shm",
                "--chdir", "/tmp",
                "--",
            ]  # fmt: skip
        elif self.backend == "unshare":
            plan = mount_plan(self.runtime, self.submission, self.hidden)
            config = self._config(listen_fd, inside=True)
            (self.runtime / "root").mkdir(exist_ok=True)
            config["mounts"] = {
                "root": str(self.runtime / "root"),
                "ops": plan.ops,
                "tmp_bytes": self.limits.tmp_bytes,
                "shm_bytes": self.limits.shm_bytes,
            }
            env["PYTHONPATH"] = str(self.runtime)
            cmd = [self.backend_note, *_unshare_flags()]
        else:
            config = self._config(listen_fd, inside=False)
            (self.runtime / "work").mkdir(exist_ok=True)
            env["PYTHONPATH"] = f"{self.runtime}:{self.runtime}/givens"
            cmd = []
        cmd += [python, "-s", "-B", "-m", "_grader.runner", json.dumps(config)]
        return cmd, env

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(16)
        if _is_root():  # the sandbox's uid must be able to read the runtime files
            _readable_by_all(self.runtime)
        if self.backend == "none":
            become_subreaper()
        try:
            cmd, env = self.command(listener.fileno())
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),),
                start_new_session=True,
                cwd=str(self.runtime),
            )
        finally:
            listener.close()  # the sandbox holds it now; if it dies, connecting fails at once
        os.set_blocking(self.proc.stdout.fileno(), False)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    # -- watching
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return tree_cpu(self.pid) if self.proc is not None else 0.0

    def output_fd(self) -> int | None:
        if self.proc is None or self.proc.stdout is None or self.proc.stdout.closed:
            return None
        return self.proc.stdout.fileno()

    def drain(self) -> None:
        """Read what the sandbox printed (never waiting); keep the first ``output_bytes``."""
        fd = self.output_fd()
        if fd is None:
            return
        for _ in range(64):
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                raise
            if not chunk:
                return
            room = self.limits.output_bytes - len(self._output)
            self._output += chunk[: max(room, 0)]
            self.output_dropped += max(len(chunk) - max(room, 0), 0)

    @property
    def output(self) -> str:
        text = self._output.decode(errors="replace")
        if self.output_dropped:
            text += f"\n... ({self.output_dropped} more bytes of output not kept)"
        return text

    # -- stopping
    def kill(self) -> None:
        if self.proc is None:
            return
        kill_tree(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.drain()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
