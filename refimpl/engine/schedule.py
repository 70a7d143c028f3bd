"""The learning-rate schedule (Mask R-CNN, Sec. 3.1, "Training"; Goyal et al. 2017).

A linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` iterations (torchvision's
reference), then a step decay by ``gamma`` at each milestone (the paper's), a cosine decay
to ``min_factor`` (which suits short CPU runs better), or a constant rate.
"""

from __future__ import annotations

import math

import torch


class WarmupSchedule:
    """The learning-rate factor at iteration ``it``. A plain object, so LambdaLR saves its
    attributes in the scheduler's state dict (and a checkpoint restores them)."""

    def __init__(self, total, warmup_iters, warmup_factor, kind, milestones, gamma, min_factor):
        if kind not in ("step", "cosine", "constant"):
            raise ValueError(f"unknown schedule {kind!r}: step, cosine or constant")
        self.total, self.warmup_iters = int(total), int(min(warmup_iters, total))
        self.warmup_factor, self.kind, self.gamma = warmup_factor, kind, gamma
        # step milestones as fractions of the run (iterations, numbers >= 1, converted)
        self.fractions = sorted(float(m) if m < 1 else float(m) / self.total for m in milestones)
        self.min_factor = min_factor
        self.progress: float | None = None

    def warm(self, it: int) -> float:
        if it >= self.warmup_iters:
            return 1.0
        alpha = it / self.warmup_iters
        return self.warmup_factor * (1 - alpha) + alpha

    def __call__(self, it: int) -> float:
        """``progress`` (0..1 through the decay), when set, replaces ``it`` for the decay:
        the time-budget mode decays with the clock, not with the iteration count."""
        warm = self.warm(it)
        if self.kind == "step":
            progress = it / self.total if self.progress is None else self.progress
            return warm * self.gamma ** sum(progress >= f for f in self.fractions)
        if self.kind == "cosine":
            progress = self.progress
            if progress is None:
                span = max(1, self.total - self.warmup_iters)
                progress = min(1.0, max(0.0, (it - self.warmup_iters) / span))
            cos = 0.5 * (1 + math.cos(math.pi * progress))
            return warm * (self.min_factor + (1 - self.min_factor) * cos)
        return warm


def build_scheduler(optimizer, cfg, total: int):
    """``(schedule, LambdaLR)`` for a TrainConfig's schedule fields and a run of ``total``."""
    schedule = WarmupSchedule(
        total, cfg.warmup_iters, cfg.warmup_factor, cfg.schedule, cfg.steps, cfg.gamma,
        cfg.min_lr_factor,
    )  # fmt: skip
    return schedule, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def load_scheduler_state(scheduler, schedule: WarmupSchedule, state: dict) -> None:
    """Restore a checkpoint's scheduler, keeping this run's length and schedule settings
    (a resumed run may be longer); the time budget's ``progress`` continues from the saved."""
    fresh = dict(vars(schedule))
    fresh.pop("progress")
    scheduler.load_state_dict(state)  # (this restores the saved schedule's attributes too)
    vars(schedule).update(fresh)
