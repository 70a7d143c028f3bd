"""Two-process DistributedDataParallel training on the CPU (gloo), launched as users do:
``torchrun --nproc_per_node 2 -m refimpl train ...``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import STANDIN

REPO = Path(__file__).resolve().parents[2]


def _torchrun(args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "refimpl", "train", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--model", STANDIN, "--batch-size", "1",
            "--lr", "0.05", "--warmup-iters", "2", "--log-every", "1", "--no-progress",
            "--threads", "1", *extra]  # fmt: skip


@pytest.mark.timeout(300)
def test_two_processes_stay_in_sync(shapes_data, tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun(_args(shapes_data, out, "--iters", "5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["world_size"] == 2
    # the gradients were averaged: both replicas hold the same parameters after 5 updates
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    # the DistributedSampler split each epoch (3 images per rank, 5 steps: 1 epoch + 2)
    first_epoch = [set(r["image_ids"][:3]) for r in ranks]
    assert first_epoch[0].isdisjoint(first_epoch[1])
    assert first_epoch[0] | first_epoch[1] == set(range(1, 7))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iteration"] == 5 and "segm" in metrics


@pytest.mark.timeout(300)
def test_nan_on_one_rank_stops_both(shapes_data, tmp_path):
    """A NaN on rank 1 only: both ranks stop with the message (nobody hangs in all-reduce)."""
    out = tmp_path / "ddp-nan"
    extra = ["--iters", "6", "--model-kw", "nan_at=3", "--model-kw", "nan_rank=1"]
    proc = _torchrun(_args(shapes_data, out, *extra))
    assert proc.returncode != 0
    assert "loss_mask is nan at iteration 3" in proc.stderr
