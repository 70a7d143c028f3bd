"""Issue 12: ``--resume`` after a run killed as a user kills it (SIGKILL: no handler runs,
no checkpoint is written on the way out), including inside a checkpoint write, gives the
losses of an uninterrupted run bit for bit (CPU, one thread: the samplers' RNG, the data
order, the schedule and the optimizer all come back from the checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refimpl.engine.checkpoint import STALL_ENV, load_checkpoint
from refimpl.engine.train import train
from refimpl.model import LOSS_NAMES

from .conftest import STANDIN

ROOT = Path(__file__).resolve().parents[2]
# every iteration of the killed runs sleeps this long (numbers unchanged), so that the kill
# lands mid-run; the resumed run must use the same model options (resume checks them)
SLOW = {"sleep_s": 0.2}
KEYS = [*LOSS_NAMES, "lr", "iter", "epoch"]


def _losses(run: Path) -> list[list]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [[r[k] for k in KEYS] for r in map(json.loads, lines) if "loss" in r]


def _start(shapes_data, out: Path, env_extra: dict) -> subprocess.Popen:
    argv = [sys.executable, "-m", "refimpl", "train", "--data", str(shapes_data), "--out",
            str(out), "--model", STANDIN, "--iters", "8", "--batch-size", "2", "--lr", "0.05",
            "--warmup-iters", "3", "--log-every", "1", "--no-progress", "--threads", "1",
            "--checkpoint-every", "2", "--no-final-eval", "--model-kw", "sleep_s=0.2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", **env_extra}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fail if it ends first. (The 300 s is a guard
    against a hung child on a loaded machine, not a speed requirement.)"""
    give_up = time.monotonic() + 300
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()}")
        if time.monotonic() > give_up:
            proc.kill()
            pytest.fail("the run never reached the point of the kill")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _iterations_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    whole = path.read_text().split("\n")[:-1]  # (a line being written is not counted)
    return sum(1 for line in whole if '"loss"' in line)


@pytest.fixture
def uninterrupted(make_config):
    full = make_config("full", checkpoint_every=2, final_eval=False)
    train(full)
    return _losses(Path(full.out))


def test_sigkill_mid_run_then_resume_is_exact(shapes_data, make_config, uninterrupted):
    out = Path(make_config("killed").out)
    proc = _start(shapes_data, out, {})
    _kill_when(
        proc, lambda: _iterations_logged(out) >= 5
    )  # the checkpoint of iteration 4 is on disk
    ckpt = load_checkpoint(out / "checkpoint.pt")["iteration"]
    assert ckpt in (4, 6)  # (6 if the kill came after the next checkpoint: still a mid-run kill)
    train(
        make_config("killed", resume=True, checkpoint_every=2, final_eval=False, model_kwargs=SLOW)
    )
    assert _losses(out) == uninterrupted


def test_sigkill_during_a_checkpoint_write_then_resume_is_exact(
    shapes_data, make_config, uninterrupted
):
    """The second checkpoint (iteration 4) stalls halfway through its ``.tmp`` (a test hook);
    the kill lands there. The first checkpoint survives, ``--resume`` removes the ``.tmp``
    and goes on from iteration 2."""
    out = Path(make_config("killed-in-write").out)
    proc = _start(shapes_data, out, {STALL_ENV: "2:600"})
    tmp, first = out / "checkpoint.pt.tmp", out / "checkpoint.pt"
    # the first checkpoint renamed into place, the second's .tmp begun (and stalled there)
    _kill_when(proc, lambda: first.is_file() and tmp.is_file() and tmp.stat().st_size > 0)
    assert load_checkpoint(out / "checkpoint.pt")["iteration"] == 2
    cfg = make_config(
        "killed-in-write", resume=True, checkpoint_every=2, final_eval=False, model_kwargs=SLOW
    )
    train(cfg)
    assert not tmp.exists()
    assert _losses(out) == uninterrupted
