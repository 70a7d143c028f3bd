"""The ``unshare`` fallback's file system: what bubblewrap would build, built by hand.

Runs first thing in the sandbox's worker (:func:`refimpl.course.runner.bootstrap`), as root
of the fresh mount, pid, net, IPC and UTS namespaces ``unshare`` made (a user namespace
too when the grader is not root), before any learner code: an empty tmpfs becomes the new
root, the plan of :func:`refimpl.course.sandbox.mount_plan` is bound into it read-only
(hidden paths get an empty tmpfs), a minimal ``/dev``, a ``/proc`` of the new pid
namespace and size-limited ``/tmp`` and ``/dev/shm`` are added, then ``pivot_root`` and the
old root is detached. The bootstrap then drops root or every capability, so the learner
cannot undo any of it.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
SYS_PIVOT_ROOT = 155  # x86-64
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None):
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    _check(_libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {dst}")


def _target(root: str, path: str, is_dir: bool) -> str:
    dst = root + path
    if is_dir:
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    return dst


def bind(root: str, src: str, path: str, readonly: bool = True) -> None:
    dst = _target(root, path, os.path.isdir(src))
    mount(src, dst, None, MS_BIND | MS_REC)
    if readonly:
        mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def tmpfs(root: str, path: str, size: int, mode: str) -> None:
    dst = _target(root, path, True)
    mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode={mode}")


def enter_new_root(plan: dict[str, Any]) -> None:
    root = plan["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    # the private /tmp before the binds, which land on top of it (a venv under /tmp stays)
    tmpfs(root, "/tmp", plan["tmp_bytes"], "1777")
    for op in plan["ops"]:
        if op["kind"] == "ro":
            bind(root, op["src"], op["dst"])
        elif op["kind"] == "hide":
            tmpfs(root, op["dst"], 65536, "0555")
        elif op["kind"] == "symlink":
            os.makedirs(os.path.dirname(root + op["dst"]), exist_ok=True)
            os.symlink(op["target"], root + op["dst"])
    tmpfs(root, "/dev", 1 << 20, "0755")
    for name in DEVICES:
        bind(root, f"/dev/{name}", f"/dev/{name}", readonly=False)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"{root}/dev/{name}")
    tmpfs(root, "/dev/shm", plan["shm_bytes"], "1777")
    os.makedirs(f"{root}/proc", exist_ok=True)
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(f"{root}/.old", exist_ok=True)
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b".old"), "pivot_root")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount the old root")
    os.rmdir("/.old")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
