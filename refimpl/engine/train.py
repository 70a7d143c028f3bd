"""Training Mask R-CNN: ``train(cfg)`` and ``python -m refimpl train`` (one process, CPU or
CUDA), or ``torchrun --nproc_per_node N -m refimpl train`` (DistributedDataParallel: gloo on
the CPU, nccl on GPUs, a DistributedSampler).

The recipe is the paper's (Mask R-CNN, Sec. 3.1, "Training"): SGD with momentum 0.9 and
weight decay 1e-4, the five losses summed with weight 1, a linear warm-up (Goyal et al.,
2017) and a step decay by 10 (or a cosine decay, which suits short CPU runs better).

What a run directory holds::

    config.json      the configuration
    metrics.jsonl    one JSON object per logged iteration (the five losses, lr) and per eval
    metrics.json     the final evaluation (bbox and segm AP) and a summary of the run
    checkpoint.pt    model, optimizer, scheduler, iteration, every rank's RNG states
    ddp/rank{r}.json (several processes) each rank's parameter checksum and images seen

A checkpoint is written atomically (:mod:`.checkpoint`), so a run killed while saving keeps
its previous checkpoint. ``--resume`` continues *exactly* where the checkpoint stopped
(:mod:`.determinism`, :mod:`.loop`): the losses are bit for bit those of an uninterrupted run
with the same thread count. SIGTERM or a first Ctrl-C stops after the current iteration with
a checkpoint. A NaN or infinite loss stops training with :class:`NonFiniteLossError` naming
the loss and the iteration, before the update; an update that makes a weight non-finite
stops it with :class:`NonFiniteParameterError`, before any checkpoint: the last checkpoint
stays good.

``--time-budget MINUTES`` trains for a fixed time instead (``--iters`` becomes a cap): the
cosine (or step) decay then follows the clock, so a slow machine does fewer iterations but
still ends with a decayed learning rate. ``--preset shapes-demo`` holds the settings of
``python -m refimpl demo``.

The pieces live in their own modules (see :mod:`refimpl.engine`); the names below are
re-exported here, where lessons and scripts import them from.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from refimpl.model import LOSS_NAMES

from .checkpoint import (
    CHECKPOINT,
    MODEL_BUILDERS,
    CheckpointWriteError,
    build_model,
    load_checkpoint,
    load_model,
    model_kwargs,
    param_checksum,
)
from .config import (
    MODEL_FIELDS,
    PRESETS,
    TrainConfig,
    add_arguments,
    apply_preset,
    config_from_args,
    parse_model_kw,
)
from .determinism import (
    ResumableDistributedSampler,
    SeededDataset,
    preserved_rng,
    rng_state,
    sample_seed,
    seed_all,
    set_rng_state,
)
from .distributed import shutdown
from .evaluate import format_metrics
from .loop import (
    NonFiniteError,
    NonFiniteLossError,
    NonFiniteParameterError,
    Trainer,
)
from .schedule import WarmupSchedule
from .threads import available_cores, set_threads

__all__ = [
    "CHECKPOINT",
    "LOSS_NAMES",
    "MODEL_BUILDERS",
    "MODEL_FIELDS",
    "PRESETS",
    "CheckpointWriteError",
    "NonFiniteError",
    "NonFiniteLossError",
    "NonFiniteParameterError",
    "ResumableDistributedSampler",
    "SeededDataset",
    "TrainConfig",
    "WarmupSchedule",
    "add_arguments",
    "apply_preset",
    "available_cores",
    "build_model",
    "config_from_args",
    "load_checkpoint",
    "load_model",
    "main",
    "model_kwargs",
    "param_checksum",
    "parse_model_kw",
    "preserved_rng",
    "rng_state",
    "sample_seed",
    "seed_all",
    "set_rng_state",
    "set_threads",
    "train",
]


def train(cfg: TrainConfig, *, clock=time.perf_counter) -> dict:
    """Train (and finally evaluate) as ``cfg`` says; returns the run's summary and metrics.

    ``clock``: seconds, monotonic (the time budget's); a parameter for tests."""
    trainer = Trainer(cfg, clock)
    try:
        return trainer.run()
    finally:
        shutdown(trainer.d)


def main(args) -> int:
    try:
        summary = train(config_from_args(args))
    except (NonFiniteError, CheckpointWriteError) as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0 and "segm" in summary:
        print(format_metrics(summary))
        print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
