"""The engine with the real ``maskrcnn_small``: overfitting a handful of images (EECS 498's
"overfit a small batch" check: the losses fall and the predicted masks on the training images
match the truth), exact resumption, and two DDP processes in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refimpl.data import CocoDetection, split_paths, write_shapes_dataset
from refimpl.engine.train import TrainConfig, load_model, train

# 120 iterations, not 80: the run's rounding differs from CPU to CPU (oneDNN's and MKL's
# kernels follow the SIMD path), and a few steps later that is another trajectory, as
# another seed is. At 80 (where the cosine schedule ended) the AVX2 path left an object
# undetected (min mask IoU 0.004), and so did seed 1 (0.005; seeds 2, 3: 0.78, 0.79): the
# recipe had been tuned on one machine and one seed. At 120, min mask IoU over the 10
# objects, seed 0 (scripts/test_variants.sh's paths): AVX-512 0.922 (1 or 2 threads; one
# core 0.919), AVX2 0.929 (1 or 2 threads), SSE4.1 baseline 0.881; seeds 1-4 on AVX-512:
# 0.924 0.921 0.907 0.868; loss 3.5-4.5 -> 0.12-0.25 (ratio <= 0.058). The bar is COCO's
# strict match, IoU 0.75: 0.12 below the worst run; a missed object scores 0, as does every
# object after 5 iterations. 1.5 x the 80 iterations' time (~30 s on 2 quiet cores): slow.
ITERS = 120
MIN_MASK_IOU = 0.75


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


@pytest.mark.slow
@pytest.mark.timeout(900)  # a guard against a hang only: several minutes on a loaded machine
def test_overfit_four_images(tmp_path):
    data = tmp_path / "data"
    write_shapes_dataset(data, train=4, val=0, seed=0)
    cfg = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), model="small", iters=ITERS, batch_size=4,
        lr=0.02, warmup_iters=10, schedule="cosine", clip_grad_norm=10.0, hflip=0.0,
        final_eval=False, log_every=1, progress=False,
        model_kwargs={"box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100},
    )  # fmt: skip
    train(cfg)
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-5:]) / 5
    assert last < 0.25 * first, (first, last)

    model, _ = load_model(tmp_path / "run/checkpoint.pt")
    ds = CocoDetection(*split_paths(data, "train"))
    ious = []
    with torch.inference_mode():
        for i in range(len(ds)):
            image, target = ds[i]
            out = model([image])[0]
            keep = out["scores"] > 0.5
            pred = out["masks"][keep, 0] > 0.5
            for gt, label in zip(target["masks"], target["labels"], strict=True):
                same = out["labels"][keep] == label
                ious.append(max((mask_iou(p, gt) for p in pred[same]), default=0.0))
    assert min(ious) > MIN_MASK_IOU, ious


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = tmp_path_factory.mktemp("tiny")
    write_shapes_dataset(data, train=12, val=2, seed=0)
    return data


def _losses(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.timeout(300)
def test_resume_is_exact(tiny, tmp_path):
    """The real model draws from torch's RNG (anchor and RoI sampling) and runs the numba
    kernels: 6 iterations straight == 3 + resume 3, bit for bit."""
    base = dict(data=str(tiny), model="small", iters=6, batch_size=4, lr=0.02, warmup_iters=2,
                log_every=1, progress=False, final_eval=False)  # fmt: skip
    train(TrainConfig(out=str(tmp_path / "full"), **base))
    train(TrainConfig(out=str(tmp_path / "part"), stop_at=3, **base))
    train(TrainConfig(out=str(tmp_path / "part"), resume=True, **base))
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")


@pytest.mark.timeout(300)
def test_ddp_two_processes(tiny, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "refimpl", "train", "--data", str(tiny), "--out", str(out), "--iters", "4",
           "--batch-size", "2", "--warmup-iters", "2", "--no-progress", "--threads", "1",
           "--no-final-eval"]  # fmt: skip
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = {
        json.loads((out / "ddp" / f"rank{r}.json").read_text())["param_checksum"] for r in (0, 1)
    }
    assert len(sums) == 1
