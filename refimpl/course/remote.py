"""The grader's side of the sandbox: the learner's namespace as a proxy, ``sub``.

Grading tests (``refimpl/course/grading/test_<exercise>.py``) run in the trusted grader and
get ``sub``, a :class:`RemoteSubmission`. What they can do with it:

``sub.f(*args, **kwargs)``
    calls the learner's ``f`` in the sandbox and returns its result. Arguments and results
    are data only (:mod:`refimpl.course.channel`): NumPy arrays, torch tensors (dtype and
    ``requires_grad`` kept, no graph), Python scalars, str, None, tuples/lists/dicts of
    these, ``torch.Generator`` s (their state) and dtypes; functions of the test may be passed
    too and run here when the learner's code calls them (callbacks: a finite-difference
    checker calls the test's ``f``). A name the notebook lacks, or a function imported
    from elsewhere, fails the test with a message; an exception in the learner's code
    raises :class:`RemoteError`; a result that is not data (an ``nn.Module``, a function)
    fails with a message.
``sub.f.attr(...)``
    an attribute of the learner's object, called (``sub.unravel.py_func(5, 3, 2, 4)``).
``sub.f.call_with_args(*args)``
    ``(result, args_after)``: the arguments as the call left them (did it modify them?).
``sub.has(name)``, ``sub.value(name)``
    whether the notebook defines ``name``; the value of a data variable.
``sub.differentiable("f")``
    ``f`` as a function autograd differentiates *here*: its forward and its vector-Jacobian
    product are remote calls (the sandbox recomputes ``f`` with the inputs requiring grad
    and returns ``torch.autograd.grad`` of ``sum(out * grad_output)``), so
    ``torch.autograd.gradcheck`` and ``y.backward(g)`` run in the trusted process, checking
    the learner's numbers by finite differences.
``probe(sub, *args)`` for a :func:`refimpl.course.checks.probe`
    runs a small function of the test module *inside* the sandbox, on the learner's
    namespace (what needs the learner's process: ``torch.library.opcheck``, fake tensors,
    ``torch.compile``, numba's dispatcher, the race detector). Its source travels as text;
    it returns data. What it returns is untrusted: compare numbers with values computed
    here wherever possible; a bare yes/no from a probe can be forged (docs/instructors.md).

The same API exists in-process (:class:`refimpl.course.checks.LocalSubmission`, the pytest
mode of ``tests/grading``), so a test never knows where it runs.

Everything that comes back is checked (frame sizes, forms, dtypes) before use, and every
request runs under a :class:`Budget`: CPU seconds of the sandbox's whole process tree, as
the kernel counts them in /proc, and a wall-clock backstop against code that sleeps.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import numpy as np

from . import channel
from .checks import SUBMISSION_MODULE, Feedback, Probe, fail

POLL_S = 0.1  # how often the sandbox's CPU time is read while waiting


class LimitExceeded(Exception):
    """The sandbox used up the CPU time (or the wall-clock backstop) of a cell or test."""

    def __init__(self, kind: str, limit: float, cpu: float, wall: float):
        super().__init__(kind)
        self.kind, self.limit, self.cpu, self.wall = kind, limit, cpu, wall


class SandboxLost(Exception):
    """The connection ended: the learner's code crashed or ended its process."""


class ProtocolError(Exception):
    """The sandbox sent something the grader does not accept (a frame too big, not data)."""


class RemoteError(Exception):
    """An exception in the learner's code, described by the sandbox (untrusted text)."""

    def __init__(self, error: dict[str, Any], printed: str = ""):
        self.error = error if isinstance(error, dict) else {"head": str(error)[:500]}
        self.printed = printed
        super().__init__(self.head)

    @property
    def head(self) -> str:
        return str(self.error.get("head", "an error"))[:2000]

    def describe(self) -> str:
        lines = [self.head, *("    " + str(w)[:300] for w in self.error.get("where", [])[:3])]
        if self.error.get("hint"):
            lines.append("    " + str(self.error["hint"])[:300])
        return "\n".join(lines)

    @property
    def timeout(self) -> bool:
        return self.error.get("timeout") is True


class Budget:
    """CPU seconds of the sandbox's process tree and wall seconds, from now on."""

    def __init__(self, sandbox, cpu_s: float, wall_s: float):
        self.sandbox = sandbox
        self.cpu_s, self.wall_s = cpu_s, wall_s
        self.cpu0 = sandbox.cpu_seconds()
        self.t0 = time.monotonic()
        self._checked = 0.0

    def used(self) -> tuple[float, float]:
        return self.sandbox.cpu_seconds() - self.cpu0, time.monotonic() - self.t0

    def check(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < POLL_S:
            return
        self._checked = now
        cpu, wall = self.used()
        if cpu > self.cpu_s:
            raise LimitExceeded("cpu", self.cpu_s, cpu, wall)
        if wall > self.wall_s:
            raise LimitExceeded("wall", self.wall_s, cpu, wall)


class Link:
    """One connection to the sandbox: a request out, its reply back, callbacks between."""

    def __init__(self, sandbox, sock: socket.socket):
        self.sandbox = sandbox
        self.sock = sock
        self.reader = channel.FrameReader()
        self.pending: list[tuple[dict[str, Any], bytes]] = []
        self.closed = False

    def _send(self, data: bytes, budget: Budget) -> None:
        view = memoryview(data)
        while view:
            out_fd = self.sandbox.output_fd()
            rlist = [out_fd] if out_fd is not None else []
            _, writable, _ = select.select(rlist, [self.sock], [], POLL_S)
            self.sandbox.drain()
            if writable:
                try:
                    sent = self.sock.send(view[: 1 << 20])
                except BlockingIOError:
                    sent = 0
                except OSError as e:
                    raise SandboxLost(str(e)) from None
                view = view[sent:]
            budget.check()

    def _next_frame(self, budget: Budget) -> tuple[dict[str, Any], bytes]:
        while not self.pending:
            out_fd = self.sandbox.output_fd()
            rlist = [self.sock] + ([out_fd] if out_fd is not None else [])
            ready, _, _ = select.select(rlist, [], [], POLL_S)
            self.sandbox.drain()
            if self.sock in ready:
                try:
                    data = self.sock.recv(1 << 20)
                except BlockingIOError:
                    data = None
                except OSError as e:
                    raise SandboxLost(str(e)) from None
                if data == b"":
                    raise SandboxLost("the connection closed")
                if data:
                    try:
                        self.pending.extend(self.reader.feed(data))
                    except channel.ChannelError as e:
                        raise ProtocolError(str(e)) from None
            budget.check()
        return self.pending.pop(0)

    def request(
        self, frame: bytes, budget: Budget, callbacks: dict[int, Any] | None = None
    ) -> tuple[dict[str, Any], bytes]:
        """Send ``frame``; the reply (running the learner's callbacks to the test meanwhile)."""
        if self.closed:
            raise SandboxLost("the connection is closed")
        self._send(frame, budget)
        return self.wait(budget, callbacks)

    def wait(self, budget: Budget, callbacks: dict[int, Any] | None = None):
        while True:
            msg, blob = self._next_frame(budget)
            if msg["op"] != "callback":
                return msg, blob
            self._send(self._run_callback(msg, blob, callbacks or {}), budget)

    @staticmethod
    def _run_callback(msg: dict[str, Any], blob: bytes, callbacks: dict[int, Any]) -> bytes:
        fn = callbacks.get(msg.get("id"))
        if fn is None:
            return channel.message("callback_error", None, error="no such function")
        try:
            value = channel.decode(msg["value"], blob)
            args, kwargs = list(value.get("args", [])), dict(value.get("kwargs", {}))
            return channel.message("callback_result", fn(*args, **kwargs))
        except Exception as e:  # the test's function failed on the learner's arguments
            return channel.message("callback_error", None, error=f"{type(e).__name__}: {e}"[:500])

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(0.5)
            self.sock.sendall(channel.message("end"))
        except OSError:
            pass
        self.sock.close()


def _decode(msg: dict[str, Any], blob: bytes) -> Any:
    try:
        return channel.decode(msg.get("value"), blob)
    except (channel.ChannelError, ValueError, TypeError, RuntimeError) as e:
        raise ProtocolError(f"a reply that is not data ({e})") from None


class RemoteSubmission:
    """The learner's namespace in the sandbox, as a grading test sees it."""

    def __init__(self, link: Link, budget: Budget, cell_errors: list[str] | None = None):
        self._link = link
        self._budget = budget
        self._cell_errors = list(cell_errors or [])
        self._lookups: dict[tuple[str, ...], dict[str, Any]] = {}
        self.printed: list[str] = []  # what the learner's code printed during this test

    # -- plumbing
    def _request(self, frame: bytes, callbacks: dict[int, Any] | None = None):
        msg, blob = self._link.request(frame, self._budget, callbacks)
        if msg.get("printed"):
            self.printed.append(str(msg["printed"]))
        if msg["op"] == "error":
            raise RemoteError(msg.get("error") or {}, "")
        if msg["op"] != "result":
            raise ProtocolError(f"an unexpected reply {msg['op']!r}")
        return _decode(msg, blob)

    def _lookup(self, path: tuple[str, ...]) -> dict[str, Any]:
        if path not in self._lookups:
            info = self._request(channel.message("lookup", None, path=list(path)))
            self._lookups[path] = info if isinstance(info, dict) else {"kind": "missing"}
        return self._lookups[path]

    def _missing(self, name: str) -> None:
        message = f"your notebook does not define `{name}`"
        if self._cell_errors:
            message += f" (maybe because {self._cell_errors[0]})"
        fail(message)

    def call(self, path: list[str], args: tuple, kwargs: dict, return_args: bool = False):
        callbacks: dict[int, Any] = {}
        try:
            frame = channel.message(
                "call",
                {"args": list(args), "kwargs": kwargs},
                callbacks=callbacks,
                path=list(path),
                return_args=return_args,
            )
        except channel.NotData as e:
            raise TypeError(f"a grading test passed {e} to the sandbox") from None
        return self._request(frame, callbacks)

    # -- the test's API
    def __getattr__(self, name: str) -> RemoteFunction:
        if name.startswith("_"):
            raise AttributeError(name)
        info = self._lookup((name,))
        kind = str(info.get("kind"))
        if kind == "missing":
            self._missing(name)
        module = str(info.get("module") or SUBMISSION_MODULE)
        if info.get("plain_function") and module not in (SUBMISSION_MODULE, "None", ""):
            fail(
                f"`{name}` is `{module}.{info.get('qualname', name)}`, imported "
                "rather than written in your notebook: the exercise is to write it"
            )
        return RemoteFunction(self, [name])

    def has(self, name: str) -> bool:
        return self._lookup((name,)).get("kind") != "missing"

    def value(self, name: str) -> Any:
        if not self.has(name):
            self._missing(name)
        return self._request(channel.message("get", None, path=[name]))

    def probe(self, probe: Probe, *args: Any) -> Any:
        frame = channel.message(
            "probe", {"args": list(args), "kwargs": {}}, name=probe.name, source=probe.source
        )
        return self._request(frame)

    def differentiable(self, name: str):
        getattr(self, name)  # fails plainly when the notebook does not define it
        from .autograd import remote_differentiable

        return remote_differentiable(self, [name])

    def vjp(self, path: list[str], args: list, grad_outputs: list) -> Any:
        frame = channel.message(
            "vjp", {"args": args, "kwargs": {}, "grad_outputs": grad_outputs}, path=path
        )
        return self._request(frame)


def _copy_back(mine: Any, theirs: Any) -> None:
    """Write ``theirs`` (untrusted) into the test's array ``mine`` if it is one of its kind."""
    if isinstance(mine, np.ndarray) and mine.flags.writeable:
        if isinstance(theirs, np.ndarray) and theirs.shape == mine.shape:
            if theirs.dtype == mine.dtype and not np.array_equal(mine, theirs, equal_nan=True):
                np.copyto(mine, theirs)


class RemoteFunction:
    """A callable of the learner's (or an attribute of one), called in the sandbox."""

    def __init__(self, sub: RemoteSubmission, path: list[str]):
        self._sub = sub
        self._path = path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # In-process semantics: what the learner's function does to an argument array in the
        # sandbox is copied back into the test's array (so tests of "leaves x as it was" see it).
        out = self._sub.call(self._path, args, kwargs, return_args=True)
        if not (isinstance(out, dict) and isinstance(out.get("args"), tuple)):
            raise ProtocolError("a reply without the arguments")
        for mine, theirs in zip(args, out["args"], strict=False):
            _copy_back(mine, theirs)
        return out.get("value")

    def __getattr__(self, attr: str) -> RemoteFunction:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return RemoteFunction(self._sub, [*self._path, attr])

    def call_with_args(self, *args: Any, **kwargs: Any) -> tuple[Any, tuple]:
        out = self._sub.call(self._path, args, kwargs, return_args=True)
        if not (isinstance(out, dict) and isinstance(out.get("args"), tuple)):
            raise ProtocolError("a reply without the arguments")
        return out.get("value"), out["args"]

    def __repr__(self) -> str:
        return f"<the learner's {'.'.join(self._path)}>"


__all__ = [
    "Budget",
    "Feedback",
    "LimitExceeded",
    "Link",
    "ProtocolError",
    "RemoteError",
    "RemoteFunction",
    "RemoteSubmission",
    "SandboxLost",
]
