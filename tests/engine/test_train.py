"""The training loop with the stand-in model: run directory, exact resumption, NaN stops,
signals, schedules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from refimpl.engine.train import (
    LOSS_NAMES,
    NonFiniteLossError,
    WarmupSchedule,
    load_checkpoint,
    parse_model_kw,
    train,
)


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


def test_time_budget_shortens_the_run(make_config):
    cfg = make_config("budget", iters=100_000, time_budget_s=1.0, log_every=1000, final_eval=False)
    summary = train(cfg)
    assert 13 <= summary["iteration"] == summary["total_iters"] < 100_000
    assert summary["wall_s"] < 10
    # the cosine schedule followed the new length: the last update used a tiny lr
    assert summary["last"]["lr"] < 0.05 * cfg.lr
