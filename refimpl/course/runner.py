"""The worker inside the sandbox: the learner's cells, then the grader's calls.

Started by :mod:`refimpl.course.sandbox` as ``python -s -B -m _grader.runner CONFIG`` (a
copy of this file and :mod:`refimpl.course.channel` in a package ``_grader``; nothing else of
refimpl is there but the exercise's givens). It needs only the standard library and NumPy.

1. **Bootstrap** (before any learner code): in the ``unshare`` fallback, build the sandbox's
   file system (:func:`enter_new_root`); lower the resource limits; set no_new_privs; give up
   root (a uid of its own, :func:`refimpl.course.sandbox.sandbox_uid`) or every capability;
   copy the submission into the private work folder.
2. **Cells**: the grader's first connection sends the cells one by one (``cell``); each runs
   in the namespace of a module named ``submission``, its output captured (and capped), its
   CPU time limited by ``ITIMER_PROF`` (a ``TimeLimit`` re-raised every 0.1 s of CPU, so that
   a bare ``except:`` does not end it; the grader's own limit, measured from outside, is the
   one that counts).
3. **Calls**: every test opens a connection of its own; the worker forks a child that serves
   it (``lookup``, ``call``, ``vjp``, ``probe``, ``get``) with ``RLIMIT_CPU`` set to the test's
   limit, so the namespace each test sees is exactly what the cells left, and a crash or a
   limit ends only that child. The grader asks the worker (``reap``) how the child ended.

Everything this process sends is untrusted by the grader; this file is only the honest
learner's side of the protocol (see :mod:`refimpl.course.remote` for the grader's).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import io
import json
import linecache
import os
import resource
import select
import shutil
import signal
import socket
import sys
import traceback
import types
from collections.abc import Iterator
from typing import Any

from . import channel

SUBMISSION_MODULE = "submission"  # the __name__ the learner's cells run under
CELL_FILE_PREFIX = "<code cell "
MAX_PRINTED = 4000  # characters of the learner's own prints kept per cell or call
MAX_MESSAGE = 2000  # characters of an exception message sent back
REFERENCE_HINT = (
    "refimpl's reference implementation is not available while grading: "
    "graded functions must be your own"
)


def _is_array(value: Any) -> bool:
    """An argument worth sending back after a call (a NumPy array or a torch tensor)."""
    kind = type(value)
    return (kind.__module__ == "numpy" and kind.__name__ == "ndarray") or (
        kind.__module__.startswith("torch") and kind.__name__ in ("Tensor", "Parameter")
    )


class TimeLimit(BaseException):
    """Raised in the learner's code when its CPU time is up (a BaseException, so that the
    learner's ``except Exception:`` does not catch it)."""


# --- output -------------------------------------------------------------------------------


class CappedText(io.TextIOBase):
    """A text sink that keeps the first ``cap`` characters and counts the rest."""

    def __init__(self, cap: int = MAX_PRINTED):
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0
        self.cap = cap

    def write(self, s: str) -> int:
        s = str(s)
        room = self.cap - self.kept
        if room > 0:
            self.parts.append(s[:room])
            self.kept += min(len(s), room)
        self.dropped += max(len(s) - max(room, 0), 0)
        return len(s)

    def writable(self) -> bool:
        return True

    def text(self) -> str:
        out = "".join(self.parts)
        if self.dropped:
            out += f"\n... ({self.dropped} more characters not kept)"
        return out


@contextlib.contextmanager
def captured() -> Iterator[CappedText]:
    sink = CappedText()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield sink


# --- CPU limits -----------------------------------------------------------------------------

_armed = False


def _on_limit(*_):
    if _armed:
        raise TimeLimit()


@contextlib.contextmanager
def cpu_limit(seconds: float | None) -> Iterator[None]:
    """Interrupt the block after ``seconds`` of this process's CPU time (main thread)."""
    global _armed
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return
    previous = signal.signal(signal.SIGPROF, _on_limit)
    _armed = True
    signal.setitimer(signal.ITIMER_PROF, seconds, 0.1)
    try:
        yield
    finally:
        _armed = False
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, previous)


def limit_child_cpu(seconds: float) -> None:
    """A forked test child: ``RLIMIT_CPU`` (its counters start at 0), SIGXCPU -> TimeLimit."""
    global _armed
    soft = max(int(seconds + 0.999), 1)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    hard = soft + 2 if hard == resource.RLIM_INFINITY else min(soft + 2, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (min(soft, hard), hard))
    _armed = True
    signal.signal(signal.SIGXCPU, _on_limit)


# --- describing the learner's exceptions ----------------------------------------------------


_CELL_NAMES: dict[str, str] = {}  # "<code cell 6>" -> 'code cell 6 ("def roi_pool...")'


def _learner_frames(tb: types.TracebackType | None) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(tb) if f.filename.startswith(CELL_FILE_PREFIX)]


def _mentions_reference(exc: BaseException) -> bool:
    """An import of refimpl (beyond the givens), or a file of the checkout, that failed."""
    if isinstance(exc, ImportError):
        name = exc.name or str(exc)
        return "refimpl" in name or "solutions" in name
    if isinstance(exc, OSError):
        where = f"{exc.filename or ''}"
        return any(w in where for w in ("refimpl", "solutions", "tests/", "grading"))
    return False


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """What the grader shows: the exception, and where in the learner's cells it happened."""
    frames = _learner_frames(exc.__traceback__)
    name = type(exc).__name__
    text = str(exc)[:MAX_MESSAGE]
    if isinstance(exc, TimeLimit):
        head = "ran past its CPU time limit"
    elif isinstance(exc, NotImplementedError) and frames:
        head = f"`{frames[-1].name}` is not implemented yet (it raises NotImplementedError)"
    else:
        head = f"{name}: {text}" if text else name
    where = []
    for f in frames[-3:]:
        spot = f"{_CELL_NAMES.get(f.filename, f.filename[1:-1])}, line {f.lineno}"
        if f.name != "<module>":
            spot += f", in {f.name}"
        where.append(f"{spot}: {(f.line or '').strip()}"[:300])
    return {
        "type": name,
        "head": head,
        "where": where,
        "timeout": isinstance(exc, TimeLimit),
        "not_implemented": isinstance(exc, NotImplementedError),
        "hint": REFERENCE_HINT if _mentions_reference(exc) else "",
    }


def format_error(err: dict[str, Any]) -> str:
    lines = [err["head"], *("    " + w for w in err.get("where", []))]
    if err.get("hint"):
        lines.append("    " + err["hint"])
    return "\n".join(lines)


# --- the learner's cells --------------------------------------------------------------------


class NoIPython:
    """``get_ipython()`` while grading: magics and shell commands do nothing, except that the
    body of a ``%%time``, ``%%timeit`` or ``%%capture`` cell runs (once)."""

    RUN_BODY = ("time", "timeit", "capture")

    def __init__(self, namespace: dict[str, Any]):
        self._namespace = namespace

    def run_cell_magic(self, name: str, _line: str, cell: str) -> None:
        if name in self.RUN_BODY:
            exec(compile(cell, "<cell magic>", "exec"), self._namespace)

    def __getattr__(self, name: str) -> Any:
        return lambda *_, **__: None  # run_line_magic, system, getoutput, ...


def new_namespace() -> dict[str, Any]:
    """A fresh ``submission`` module's namespace, registered in ``sys.modules``."""
    module = types.ModuleType(SUBMISSION_MODULE)
    sys.modules[SUBMISSION_MODULE] = module  # dataclasses, pickle and friends look here
    namespace = module.__dict__
    namespace["display"] = lambda *_, **__: None  # IPython's builtin, a no-op here
    namespace["get_ipython"] = lambda: NoIPython(namespace)
    return namespace


def cell_filename(number: int) -> str:
    return f"{CELL_FILE_PREFIX}{number}>"


def run_cell(namespace: dict[str, Any], cell: dict[str, Any], cpu_s: float | None) -> dict:
    """Run one cell ``{"number", "name", "source"}``: ``{"status", "error", "printed"}``."""
    filename = cell_filename(cell["number"])
    source = cell["source"]
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    name = cell.get("name") or filename[1:-1]
    _CELL_NAMES[filename] = name  # as JupyterLab shows it: the n-th code cell, its first line
    report: dict[str, Any] = {"status": "ok", "error": None}
    with captured() as sink:
        try:
            code = compile(source, filename, "exec")
            with cpu_limit(cpu_s):
                exec(code, namespace)
        except TimeLimit:
            limit = f" of {cpu_s:.3g} s" if cpu_s else ""
            report.update(status="timeout", error=f"{name} ran past its CPU time limit{limit}")
        except SyntaxError as e:
            report.update(status="error", error=f"{name}: SyntaxError: {e.msg} (line {e.lineno})")
        except BaseException as e:
            report.update(
                status="error", error=f"{name} raised {format_error(describe_exception(e))}"
            )
    report["printed"] = sink.text()
    return report


def run_cells(
    cells: list[dict[str, Any]], timeout: float | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All cells in order in a fresh namespace, here (the in-process mode of the tests)."""
    namespace = new_namespace()
    return namespace, [run_cell(namespace, c, timeout) for c in cells]


# --- the grader's calls ---------------------------------------------------------------------


class Conn:
    """One connection to the grader: frames in, frames out."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = channel.FrameReader()
        self.frames: list[tuple[dict[str, Any], bytes]] = []

    def recv(self) -> tuple[dict[str, Any], bytes]:
        while not self.frames:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError
            self.frames.extend(self.reader.feed(data))
        return self.frames.pop(0)

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)


def resolve(namespace: dict[str, Any], path: list[str]) -> Any:
    if not path or not all(isinstance(p, str) and not p.startswith("__") for p in path):
        raise KeyError(f"bad path {path!r}")
    if path[0] not in namespace:
        raise KeyError(path[0])
    value = namespace[path[0]]
    for attr in path[1:]:
        value = getattr(value, attr)
    return value


def lookup(namespace: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """What a name is: missing, a function (and where it was defined), data, ..."""
    try:
        value = resolve(namespace, path)
    except (KeyError, AttributeError):
        return {"kind": "missing"}
    kind = "function" if callable(value) and not isinstance(value, type) else "other"
    if isinstance(value, type):
        kind = "class"
    elif isinstance(value, types.ModuleType):
        kind = "module"
    return {
        "kind": kind,
        "type": f"{type(value).__module__}.{type(value).__qualname__}",
        "module": str(getattr(value, "__module__", None) or ""),
        "qualname": str(getattr(value, "__qualname__", path[-1])),
        "plain_function": isinstance(value, (types.FunctionType, types.BuiltinFunctionType)),
    }


class Server:
    """Serves one test's connection in a forked child (or the cells on the first one)."""

    def __init__(self, conn: Conn, namespace: dict[str, Any]):
        self.conn = conn
        self.namespace = namespace

    def callback(self, key: int):
        conn = self.conn

        def grader_function(*args, **kwargs):
            try:
                frame = channel.message("callback", {"args": list(args), "kwargs": kwargs}, id=key)
            except channel.NotData as e:
                raise TypeError(
                    f"the grader's function takes arrays and numbers, not {e}"
                ) from None
            conn.send(frame)
            msg, blob = conn.recv()
            if msg["op"] == "callback_result":
                return channel.decode(msg["value"], blob, self.callback)
            raise RuntimeError(f"the grader's function failed: {msg.get('error')}")

        grader_function.__name__ = f"grader_function_{key}"
        return grader_function

    def reply(self, value: Any, printed: str = "", **fields) -> None:
        try:
            frame = channel.message("result", value, printed=printed, **fields)
        except channel.NotData as e:
            err = {
                "type": "NotData",
                "head": f"returned {e}, which the grader cannot receive: return arrays, "
                "tensors, numbers, strings or tuples/lists/dicts of them",
                "where": [],
            }
            frame = channel.message("error", None, error=err, printed=printed)
        self.conn.send(frame)

    def error(self, exc: BaseException, printed: str = "") -> None:
        self.conn.send(
            channel.message("error", None, error=describe_exception(exc), printed=printed)
        )

    def args(self, msg: dict[str, Any], blob: bytes) -> tuple[list, dict, list]:
        value = channel.decode(msg["value"], blob, self.callback)
        grads = list(value.get("grad_outputs", []))
        return list(value.get("args", [])), dict(value.get("kwargs", {})), grads

    def handle(self, msg: dict[str, Any], blob: bytes) -> bool:
        """One request; False when the grader is done with this connection."""
        op = msg["op"]
        if op == "end":
            return False
        if op == "lookup":
            self.conn.send(channel.message("result", lookup(self.namespace, msg["path"])))
        elif op == "get":
            self.get(msg)
        elif op in ("call", "vjp", "probe"):
            self.invoke(op, msg, blob)
        else:
            self.conn.send(channel.message("error", None, error={"head": f"unknown op {op}"}))
        return True

    def get(self, msg: dict[str, Any]) -> None:
        try:
            value = resolve(self.namespace, msg["path"])
        except (KeyError, AttributeError) as e:
            self.error(e)
            return
        self.reply(value)

    def invoke(self, op: str, msg: dict[str, Any], blob: bytes) -> None:
        with captured() as sink:
            try:
                args, kwargs, grads = self.args(msg, blob)
                after = None
                if op == "probe":
                    value = self.probe_function(msg)(self.namespace, *args, **kwargs)
                elif op == "vjp":
                    value = self.vjp(resolve(self.namespace, msg["path"]), args, kwargs, grads)
                else:
                    value = resolve(self.namespace, msg["path"])(*args, **kwargs)
                    if msg.get("return_args"):  # the arguments as they are now: arrays back
                        after = tuple(a if _is_array(a) else None for a in args)
            except BaseException as e:  # the learner's exception (or a time limit)
                self.error(e, sink.text())
                return
        if after is not None:
            value = {"value": value, "args": after}
        self.reply(value, sink.text())

    @staticmethod
    def probe_function(msg: dict[str, Any]):
        scope: dict[str, Any] = {"__name__": "_probe", "__builtins__": builtins}
        exec(compile(msg["source"], f"<probe {msg['name']}>", "exec"), scope)
        return scope[msg["name"]]

    @staticmethod
    def vjp(fn, args: list, kwargs: dict, grad_outputs: list):
        """Recompute ``fn(*args)`` and return the gradients of ``sum(out * grad_outputs)`` with
        respect to the tensors of ``args`` that require grad (None where unused)."""
        import torch

        inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        out = fn(*args, **kwargs)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        pairs = [
            (o, g)
            for o, g in zip(outs, grad_outputs, strict=False)
            if isinstance(o, torch.Tensor) and g is not None
        ]
        if not any(o.requires_grad for o, _ in pairs):
            raise NoGradient("the output has no grad_fn: it is not connected to the inputs")
        used = [(o, g) for o, g in pairs if o.requires_grad]
        grads = torch.autograd.grad(
            [o for o, _ in used], inputs, [g.to(o.dtype) for o, g in used], allow_unused=True
        )
        return list(grads)


class NoGradient(RuntimeError):
    """The learner's function returned a tensor that autograd cannot differentiate."""


def serve(conn: Conn, namespace: dict[str, Any]) -> None:
    server = Server(conn, namespace)
    while True:
        try:
            msg, blob = conn.recv()
        except (EOFError, OSError, channel.ChannelError):
            return
        if not server.handle(msg, blob):
            return


# --- the main process: cells on the first connection, a child per test ---------------------


def serve_cells_and_tests(listener: socket.socket) -> None:
    namespace = new_namespace()
    main_sock, _ = listener.accept()
    main = Conn(main_sock)
    main.send(channel.message("hello", None, pid=os.getpid()))
    children: dict[str, int] = {}
    while True:
        ready, _, _ = select.select([listener, main_sock], [], [])
        if listener in ready:
            sock, _ = listener.accept()
            fork_test(sock, listener, main_sock, namespace, children)
        if main_sock in ready and not handle_main(main, namespace, children):
            return


def fork_test(sock, listener, main_sock, namespace, children: dict[str, int]) -> None:
    conn = Conn(sock)
    try:
        msg, _ = conn.recv()
    except (EOFError, OSError, channel.ChannelError):
        sock.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the test's child
        code = 0
        try:
            listener.close()
            main_sock.close()
            limit_child_cpu(float(msg.get("cpu_s") or 60))
            conn.send(channel.message("ready", None, pid=os.getpid()))
            serve(conn, namespace)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    sock.close()
    children[str(msg.get("token"))] = pid


def handle_main(main: Conn, namespace: dict[str, Any], children: dict[str, int]) -> bool:
    try:
        msg, _ = main.recv()
    except (EOFError, OSError, channel.ChannelError):
        return False
    if msg["op"] == "cell":
        report = run_cell(namespace, msg, msg.get("cpu_s"))
        main.send(channel.message("cell_done", None, **report))
    elif msg["op"] == "reap":
        pid = children.pop(str(msg["token"]), None)
        if pid is not None and msg.get("kill"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        main.send(channel.message("reaped", None, **reap(pid)))
    elif msg["op"] == "shutdown":
        return False
    return True


def reap(pid: int | None) -> dict[str, Any]:
    if pid is None:
        return {"known": False}
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return {"known": False}
    if os.WIFSIGNALED(status):
        return {"known": True, "signal": os.WTERMSIG(status)}
    return {"known": True, "exit": os.WEXITSTATUS(status)}


# --- bootstrap ------------------------------------------------------------------------------

_LIMITS = {
    "as": resource.RLIMIT_AS,
    "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
}
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24


def set_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = _LIMITS[name]
        _, hard = resource.getrlimit(which)
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(which, (value, value))


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def drop_privileges(uid: int | None, gid: int | None) -> None:
    """no_new_privs, then root gives way to ``uid`` (all capabilities go with it); without
    root, the capabilities a user namespace gave are dropped."""
    libc = _libc()
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if os.getuid() == 0 and uid is not None:
        for cap in range(64):  # the bounding set, while CAP_SETPCAP still works
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    else:
        drop_capabilities(libc)


def drop_capabilities(libc) -> None:
    """capset(2) with empty sets (version 3 header: two 32-bit words per set)."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = Header(0x20080522, 0)
    data = (Data * 2)()
    libc.capset(ctypes.byref(header), data)


def copy_submission(src: str | None, work: str) -> None:
    os.makedirs(work, exist_ok=True)
    if src and os.path.isdir(src):
        shutil.copytree(src, work, dirs_exist_ok=True, symlinks=False)


def bootstrap(config: dict[str, Any]) -> socket.socket:
    if config.get("mounts"):
        from .newroot import enter_new_root

        enter_new_root(config["mounts"])
    set_limits(config.get("limits", {}))
    drop_privileges(config.get("uid"), config.get("gid"))
    copy_submission(config.get("submission"), config["workdir"])
    start = os.getcwd()
    rest = [p for p in sys.path if p not in ("", start) and p not in config.get("sys_path", [])]
    os.chdir(config["workdir"])
    os.environ["HOME"] = config["workdir"]
    sys.path[:] = [*config.get("sys_path", []), *rest, config["workdir"]]
    return socket.socket(fileno=int(config["listen_fd"]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = json.loads(argv[0])
    listener = bootstrap(config)
    serve_cells_and_tests(listener)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
