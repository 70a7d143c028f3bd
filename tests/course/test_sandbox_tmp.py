"""The sandbox's private /tmp is mounted before the binds, so that an interpreter or venv
that lives under /tmp (a CI checkout cloned there) is still visible inside: mounted after,
the empty /tmp hid it and every notebook failed with 'SandboxLost'."""

from __future__ import annotations

import shutil

import pytest

from refimpl.course import sandbox


def _dst_after(args: list[str], i: int) -> str:
    # bwrap's bind options take (src, dst); --tmpfs takes (dst)
    return args[i + 1] if args[i] == "--tmpfs" else args[i + 2]


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_bwrap_mounts_tmp_before_any_bind_under_it(tmp_path, monkeypatch):
    venv = "/tmp/some-ci-clone/.venv"
    monkeypatch.setattr(sandbox, "python_paths", lambda _hidden=(): [venv])
    box = sandbox.Sandbox(
        tmp_path, submission=None, env={}, limits=sandbox.Limits(), hidden=[], backend="bwrap"
    )
    if box.backend != "bwrap":
        pytest.skip(f"bwrap does not run here: {box.backend_note}")
    cmd, _ = box.command(3)
    binds = [i for i, a in enumerate(cmd) if a in ("--ro-bind", "--bind", "--tmpfs")]
    tmp_at = next(i for i in binds if cmd[i] == "--tmpfs" and cmd[i + 1] == "/tmp")
    under_tmp = [i for i in binds if _dst_after(cmd, i).startswith("/tmp/")]
    assert under_tmp, "the venv under /tmp is bound"
    assert all(i > tmp_at for i in under_tmp), cmd


def test_unshare_root_mounts_tmp_before_the_plan():
    import inspect

    from refimpl.course import newroot

    source = inspect.getsource(newroot.enter_new_root)
    assert source.index('"/tmp"') < source.index('for op in plan["ops"]')
