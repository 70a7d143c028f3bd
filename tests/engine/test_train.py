"""The training loop with the stand-in model: run directory, exact resumption, NaN stops,
signals, schedules, a torn log, a full disk."""

from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch

from refimpl.engine import checkpoint as checkpoint_module
from refimpl.engine.checkpoint import CheckpointWriteError, load_checkpoint
from refimpl.engine.config import parse_model_kw
from refimpl.engine.loop import NonFiniteLossError, NonFiniteParameterError
from refimpl.engine.schedule import WarmupSchedule
from refimpl.engine.train import train
from refimpl.model import LOSS_NAMES


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def test_warmup_then_step_or_cosine():
    step = WarmupSchedule(100, 10, 0.001, "step", (0.5, 0.8), 0.1, 0.0)
    assert step(0) == pytest.approx(0.001)
    assert step(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert step(10) == 1.0 and step(49) == 1.0
    assert step(50) == pytest.approx(0.1) and step(80) == pytest.approx(0.01)
    cos = WarmupSchedule(110, 10, 0.1, "cosine", (), 0.1, 0.0)
    assert cos(10) == 1.0 and cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)
    assert WarmupSchedule(100, 500, 0.5, "constant", (), 0.1, 0.0).warmup_iters == 100
    with pytest.raises(ValueError, match="schedule"):
        WarmupSchedule(10, 1, 0.1, "linear", (), 0.1, 0.0)


def test_parse_model_kw():
    assert parse_model_kw(["min_size=96", "anchor_sizes=(8, 16)", "norm=gn"]) == {
        "min_size": 96, "anchor_sizes": (8, 16), "norm": "gn"}  # fmt: skip
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_kw(["oops"])


def test_run_directory(make_config):
    cfg = make_config(eval_every=4)
    train(cfg)
    run = Path(cfg.out)
    assert {p.name for p in run.iterdir()} == {
        "checkpoint.pt", "config.json", "metrics.jsonl", "metrics.json"}  # fmt: skip
    records = _records(run)
    assert [r["iter"] for r in records] == list(range(1, 9))
    for r in records:
        assert set(LOSS_NAMES) <= set(r) and math.isfinite(r["loss"])
    # lr: the warm-up from lr * 0.001 over 3 iterations, then the cosine decay
    assert records[0]["lr"] == pytest.approx(0.05 * 0.001)
    assert records[3]["lr"] == pytest.approx(0.05) and records[-1]["lr"] < 0.01
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in evals if "eval" in e] == [4, 8]
    final = json.loads((run / "metrics.json").read_text())
    assert set(final["segm"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert final["iteration"] == 8 and final["images"] == 3
    ckpt = load_checkpoint(run / "checkpoint.pt")  # weights_only: no pickled code inside
    assert ckpt["iteration"] == 8 and ckpt["class_names"][1:] == ["square", "circle", "triangle"]
    assert not list(run.glob("*.tmp"))


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_gives_identical_losses(make_config, workers):
    """8 iterations straight == 5 + (resume) 3: the batches (6 images, batch 2: the epoch
    ends at iteration 3 and 6), the flips (drawn in a loader worker too), the model's random
    draws and the optimizer."""
    full = make_config("full", workers=workers)
    train(full)
    part = make_config("part", stop_at=5, workers=workers)
    summary = train(part)
    assert summary["stopped"] and summary["iteration"] == 5
    assert not Path(part.out, "metrics.json").exists()
    resumed = make_config("part", resume=True, workers=workers)
    train(resumed)
    a = _records(Path(full.out))
    b = _records(Path(part.out))
    keys = [*LOSS_NAMES, "lr", "iter", "epoch"]
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    wa = load_checkpoint(Path(full.out, "checkpoint.pt"))["model"]
    wb = load_checkpoint(Path(part.out, "checkpoint.pt"))["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_evaluation_does_not_change_training(make_config):
    plain = make_config("plain", final_eval=False)
    evaluated = make_config("evaluated", eval_every=2, final_eval=False)
    train(plain)
    train(evaluated)
    keys = [*LOSS_NAMES, "lr"]
    a, b = _records(Path(plain.out)), _records(Path(evaluated.out))
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


def test_resume_refuses_another_model(make_config):
    train(make_config("r", stop_at=2))
    with pytest.raises(ValueError, match="different model"):
        train(make_config("r", resume=True, mask_loss="softmax"))


def test_nan_loss_stops_with_its_name_and_iteration(make_config):
    cfg = make_config("nan", model_kwargs={"nan_at": 3, "nan_loss": "loss_box_reg"})
    with pytest.raises(NonFiniteLossError, match=r"loss_box_reg is nan at iteration 3"):
        train(cfg)
    # the last good state is what the checkpoint (if any) holds: nothing after iteration 2
    assert [r["iter"] for r in _records(Path(cfg.out))] == [1, 2]


def test_nan_loss_cli_exit_code(make_config, capsys):
    from refimpl.__main__ import main

    cfg = make_config("nan-cli")
    argv = ["train", "--data", cfg.data, "--out", cfg.out, "--model", cfg.model, "--iters", "4",
            "--batch-size", "2", "--no-progress", "--threads", "1", "--model-kw", "nan_at=2",
            "--model-kw", "nan_loss='loss_objectness'"]  # fmt: skip
    assert main(argv) == 1
    assert "loss_objectness is nan at iteration 2" in capsys.readouterr().err


def test_sigterm_stops_with_a_checkpoint(make_config):
    cfg = make_config("sig", model_kwargs={"sigterm_at": 3})
    summary = train(cfg)
    assert summary["stopped"] and summary["iteration"] == 3
    assert load_checkpoint(Path(cfg.out, "checkpoint.pt"))["iteration"] == 3


class FakeClock:
    """A clock that moves ``tick`` seconds each time it is read: the run's time is a function
    of what the loop does, not of how busy the machine is."""

    def __init__(self, tick: float):
        self.t, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def test_time_budget_shortens_the_run(make_config):
    cfg = make_config("budget", iters=100_000, time_budget_s=60.0, log_every=1, final_eval=False)
    summary = train(cfg, clock=FakeClock(1.0))
    n = summary["iteration"]
    # the loop reads the clock a few times per iteration: 60 s last 60 / reads iterations
    assert 5 <= n == summary["total_iters"] <= 60
    records = _records(Path(cfg.out))
    assert [r["iter"] for r in records] == list(range(1, n + 1))
    # the cosine decay followed the clock: the lr falls monotonically after the warm-up, and
    # the last update used a tiny one
    lrs = [r["lr"] for r in records[cfg.warmup_iters :]]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05 * cfg.lr
    # the same clock gives the same run: nothing here depends on the wall clock
    again = make_config("budget2", iters=100_000, time_budget_s=60.0, final_eval=False)
    assert train(again, clock=FakeClock(1.0))["iteration"] == n


def test_nan_gradient_stops_before_a_bad_checkpoint(make_config):
    """Finite losses, a NaN gradient at iteration 4: the update makes the weights NaN; the
    run stops naming them, and the checkpoint on disk (iteration 3) is all finite."""
    cfg = make_config("nan-grad", checkpoint_every=1, model_kwargs={"nan_grad_at": 4})
    message = r"update of iteration 4 made 1 of \d+ .*non-finite \(head\.weight\)"
    with pytest.raises(NonFiniteParameterError, match=message):
        train(cfg)
    ckpt = load_checkpoint(Path(cfg.out, "checkpoint.pt"))
    assert ckpt["iteration"] == 3
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert [r["iter"] for r in _records(Path(cfg.out))] == [1, 2, 3]


def test_a_nan_learning_rate_never_reaches_a_checkpoint(make_config):
    """The issue's ``--lr nan``: rejected when parsed and by TrainConfig; with the check
    bypassed (a field changed after construction), the first update makes every weight NaN
    with finite losses, and the run stops there without writing a checkpoint."""
    with pytest.raises(ValueError, match=r"TrainConfig\.lr"):
        make_config("nan-lr", lr=float("nan"))
    cfg = make_config("nan-lr", iters=1, checkpoint_every=1)
    cfg.lr = float("nan")
    with pytest.raises(NonFiniteParameterError, match="update of iteration 1"):
        train(cfg)
    assert not Path(cfg.out, "checkpoint.pt").exists()


def test_torn_metrics_line_is_recovered_on_resume(make_config):
    """A kill while appending to metrics.jsonl leaves half a line: --resume drops it with a
    warning and continues; the log ends up as an uninterrupted run's."""
    full = make_config("full")
    train(full)
    part = make_config("torn", stop_at=5)
    train(part)
    log = Path(part.out, "metrics.jsonl")
    with open(log, "a") as f:
        f.write('{"iter": 6, "epoch": 1, "lr": 0.0')  # no newline: cut short
    with pytest.warns(RuntimeWarning, match="last line is incomplete"):
        train(make_config("torn", resume=True))
    keys = [*LOSS_NAMES, "lr", "iter"]
    a, b = _records(Path(full.out)), _records(Path(part.out))
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


class FullDisk:
    """open() for the checkpoint module whose files fail with ENOSPC after ``room`` bytes,
    as a real full disk does (in write, or in flush for what was buffered)."""

    def __init__(self, room: int):
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # closed by Limited.__exit__
        room = self

        class Limited:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                if len(data) > room.room:
                    raise OSError(errno.ENOSPC, "No space left on device")
                room.room -= len(data)
                return f.write(data)

            def __getattr__(self, name):
                return getattr(f, name)

        return Limited()


def test_full_disk_keeps_the_previous_checkpoint(make_config, monkeypatch):
    cfg = make_config("full-disk", checkpoint_every=2, iters=4, final_eval=False)
    train(make_config("full-disk", checkpoint_every=2, stop_at=2, iters=4, final_eval=False))
    path = Path(cfg.out, "checkpoint.pt")
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint_module, "open", FullDisk(room=4096), raising=False)
    with pytest.raises(CheckpointWriteError, match=r"no space left writing the checkpoint to"):
        train(make_config("full-disk", checkpoint_every=2, iters=4, final_eval=False, resume=True))
    assert path.read_bytes() == before  # the previous checkpoint, untouched
    assert not list(Path(cfg.out).glob("*.tmp"))  # and no partial file left behind


def test_full_disk_cli_message(make_config, monkeypatch, capsys):
    from refimpl.__main__ import main

    cfg = make_config("full-disk-cli")
    monkeypatch.setattr(checkpoint_module, "open", FullDisk(room=0), raising=False)
    argv = ["train", "--data", cfg.data, "--out", cfg.out, "--model", cfg.model, "--iters", "2",
            "--batch-size", "2", "--no-progress", "--threads", "1", "--no-final-eval"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no space left writing the checkpoint to" in err and "checkpoint.pt" in err
    assert not list(Path(cfg.out).glob("*.tmp"))


def test_full_disk_while_logging_is_a_clear_error(make_config, monkeypatch):
    """metrics.jsonl on a full disk: the CheckpointWriteError of the checkpoints (not a raw
    OSError), and --resume's rewrite of the log leaves no .tmp behind."""
    from refimpl.engine import runlog
    from refimpl.engine.runlog import MetricsLog

    cfg = make_config("full-disk-log", stop_at=2)
    train(cfg)
    log = MetricsLog(Path(cfg.out, "metrics.jsonl"))
    before = log.path.read_bytes()
    monkeypatch.setattr(runlog, "open", FullDisk(room=0), raising=False)
    with pytest.raises(CheckpointWriteError, match=r"no space left writing .*metrics\.jsonl"):
        log.append({"iter": 3})

    def full(path, *_data):  # the .tmp is created, then the disk is full
        open(path, "wb").close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(CheckpointWriteError, match="no space left"):
        log.truncate(1)
    assert log.path.read_bytes() == before and not list(Path(cfg.out).glob("*.tmp"))
