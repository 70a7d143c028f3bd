"""A training run's configuration: :class:`TrainConfig` (the Python API), the named presets,
and the ``python -m refimpl train`` options that fill it.

Both entry points check every value with the same rules (:data:`FIELD_RULES`, ranges from
:mod:`refimpl.argtypes`): the command line at parse time (argparse's own error, exit 2), the
dataclass when it is built (``ValueError``/``TypeError`` naming the field), so a bad value
fails before any data is read, never as a ZeroDivisionError at iteration 1 or as a run that
silently does something else.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from refimpl.argtypes import (
    FRACTION,
    NONNEGATIVE_FLOAT,
    NONNEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    Range,
)
from refimpl.model import Parts

SCHEDULES = ("step", "cosine", "constant")
# RoIAlign/RoIWarp samples per bin and axis; -1 and 0 mean adaptive (torchvision's convention).
SAMPLING_RATIO = Range(int, -1)


@dataclass
class TrainConfig:
    data: str
    out: str
    model: str = "small"  # "small", "resnet50" or "package.module:builder"
    iters: int | None = None  # total iterations (updates); or
    epochs: int | None = None  # total epochs (wins over iters; default: 1 epoch)
    batch_size: int = 4  # per process
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "step", "cosine" or "constant", after the warm-up
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    steps: tuple[float, ...] = (0.67, 0.89)  # step schedule: fractions of the run (or iterations)
    gamma: float = 0.1
    min_lr_factor: float = 0.0  # cosine: the final lr as a fraction of lr
    clip_grad_norm: float = 0.0  # 0: no clipping
    roi_op: str | None = None  # model options, passed only when set
    pool_mode: str | None = None
    aligned: bool | None = None
    sampling_ratio: int | None = None
    mask_loss: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0
    time_budget_s: float | None = None  # train this long (iters: a cap); the decay follows time
    eval_every: int = 0  # iterations; 0: evaluate only at the end
    eval_max_images: int | None = None  # cap for the periodic evaluations (not the final one)
    final_eval: bool = True
    checkpoint_every: int = 0  # iterations; 0: at each evaluation and at the end
    log_every: int = 20
    workers: int = 0
    threads: int | None = None  # torch threads per process; default: cores / processes
    hflip: float = 0.5
    train_split: str = "train"
    val_split: str = "val"
    resume: bool = False
    stop_at: int | None = None  # stop (with a checkpoint) at this iteration: tests resumption
    progress: bool = True
    find_unused_parameters: bool = False
    # refimpl.model.Parts: the model's replaceable parts (the capstone trains a learner's); not
    # data, so config.json and checkpoints record repr(parts) (config_record)
    parts: Parts | None = field(default=None, compare=False)

    def __post_init__(self):
        self.steps = tuple(self.steps) if isinstance(self.steps, list | tuple) else self.steps
        validate(self)


def config_record(cfg: TrainConfig) -> dict:
    """The configuration as data (config.json, checkpoints): ``parts`` as its repr."""
    # a copy, not dataclasses.replace: replace re-validates, and a record is also written of
    # a config changed after construction (a run that must still stop on a NaN lr, issue 12)
    shallow = copy.copy(cfg)
    shallow.parts = None
    record = dataclasses.asdict(shallow)
    record["parts"] = None if cfg.parts is None else repr(cfg.parts)
    return record


# field -> (range, None allowed). The command line's options use the same ranges.
FIELD_RULES: dict[str, tuple[Range, bool]] = {
    "iters": (POSITIVE_INT, True),
    "epochs": (POSITIVE_INT, True),
    "batch_size": (POSITIVE_INT, False),
    "lr": (NONNEGATIVE_FLOAT, False),
    "momentum": (FRACTION, False),
    "weight_decay": (NONNEGATIVE_FLOAT, False),
    "warmup_iters": (NONNEGATIVE_INT, False),
    "warmup_factor": (FRACTION, False),
    "gamma": (POSITIVE_FLOAT, False),
    "min_lr_factor": (FRACTION, False),
    "clip_grad_norm": (NONNEGATIVE_FLOAT, False),
    "sampling_ratio": (SAMPLING_RATIO, True),
    "seed": (SEED, False),
    "time_budget_s": (POSITIVE_FLOAT, True),
    "eval_every": (NONNEGATIVE_INT, False),
    "eval_max_images": (POSITIVE_INT, True),
    "checkpoint_every": (NONNEGATIVE_INT, False),
    "log_every": (POSITIVE_INT, False),
    "workers": (NONNEGATIVE_INT, False),
    "threads": (POSITIVE_INT, True),
    "hflip": (FRACTION, False),
    "stop_at": (POSITIVE_INT, True),
}
# Config fields that define the model: a resumed run must agree on them.
MODEL_FIELDS = ("model", "roi_op", "pool_mode", "aligned", "sampling_ratio", "mask_loss",
                "model_kwargs", "parts")  # fmt: skip


def validate(cfg: TrainConfig) -> None:
    """Every field's type and range; ``ValueError``/``TypeError`` naming the field."""
    for name, (rule, optional) in FIELD_RULES.items():
        rule.check(f"TrainConfig.{name}", getattr(cfg, name), optional)
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if not isinstance(cfg.steps, tuple):
        raise TypeError(f"TrainConfig.steps must be a tuple of numbers, got {cfg.steps!r}")
    for k, step in enumerate(cfg.steps):
        POSITIVE_FLOAT.check(f"TrainConfig.steps[{k}]", step)
    if cfg.parts is not None and not isinstance(cfg.parts, Parts):
        raise TypeError(f"TrainConfig.parts must be a refimpl.model.Parts, got {cfg.parts!r}")
    if not isinstance(cfg.model_kwargs, dict):
        raise TypeError(f"TrainConfig.model_kwargs must be a dict, got {cfg.model_kwargs!r}")
    for name in ("data", "out", "model", "device", "train_split", "val_split"):
        if not isinstance(getattr(cfg, name), str) or not getattr(cfg, name):
            raise TypeError(f"TrainConfig.{name} must be a non-empty string")


# Named settings (TrainConfig fields). "shapes-demo": maskrcnn_small from scratch on the
# 128x128 shapes (2000 training images), 2 CPU cores: ~0.3-0.5 s per batch of 8, so the
# 10-minute budget buys ~1300-1800 iterations (5-7 epochs); a busier machine gets fewer.
# Measured (mask AP on 200 val images): 600 iterations at lr 0.02 / 0.04 / 0.08: 0.34 /
# 0.55 / 0.30; 1200 at batch 4, lr 0.02: 0.52; 12 min (2196 iterations) at lr 0.04: 0.83.
# 64 RoIs per image (torchvision: 512) keep the box head and the mask head (at most 16
# positive RoIs per image) cheap.
PRESETS: dict[str, dict] = {
    "shapes-demo": {
        "model": "small",
        "iters": 3000,  # a cap: the time budget decides
        "time_budget_s": 600.0,
        "batch_size": 8,
        "lr": 0.04,
        "warmup_iters": 50,
        "schedule": "cosine",
        "clip_grad_norm": 10.0,
        "log_every": 10,
        "model_kwargs": {"box_batch_size_per_image": 64},
    },
}


# ------------------------------------------------------------------------ command line


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string


def parse_model_kw(items) -> dict:
    kw = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-kw expects KEY=VALUE, got {item!r}")
        kw[key.strip()] = _literal(value.strip())
    return kw


def apply_preset(parser, argv) -> None:
    """``--preset NAME`` sets the parser's defaults, so options given explicitly still win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=tuple(PRESETS))
    known, _ = pre.parse_known_args(argv)
    if known.preset:
        preset = dict(PRESETS[known.preset])
        kw = preset.pop("model_kwargs", {})
        preset["model_kw"] = [f"{k}={v!r}" for k, v in kw.items()]
        budget = preset.pop("time_budget_s", None)
        preset["time_budget"] = budget / 60 if budget else None  # the option is in minutes
        parser.set_defaults(**preset)


def _rule(name: str) -> Range:
    return FIELD_RULES[name][0]


def add_arguments(p) -> None:
    p.add_argument("--preset", choices=tuple(PRESETS), help="named defaults (see PRESETS)")
    p.add_argument("--data", required=True, help="COCO-layout dataset directory")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--model", default="small", help="small | resnet50 | module:builder")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iters", type=POSITIVE_INT, help="total iterations (updates)")
    length.add_argument("--epochs", type=POSITIVE_INT, help="total epochs (default 1)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="images per process and step")
    p.add_argument("--lr", type=_rule("lr"), default=0.02)
    p.add_argument("--momentum", type=_rule("momentum"), default=0.9)
    p.add_argument("--weight-decay", type=_rule("weight_decay"), default=1e-4)
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--warmup-iters", type=_rule("warmup_iters"), default=100)
    p.add_argument("--warmup-factor", type=_rule("warmup_factor"), default=0.001)
    p.add_argument("--steps", type=POSITIVE_FLOAT, nargs="+", default=[0.67, 0.89],
                   help="step milestones: fractions of the run, or iterations")  # fmt: skip
    p.add_argument("--gamma", type=_rule("gamma"), default=0.1)
    p.add_argument("--clip-grad-norm", type=_rule("clip_grad_norm"), default=0.0)
    p.add_argument("--roi-op", choices=("align", "warp", "pool"))
    p.add_argument("--pool-mode", choices=("avg", "max"))
    p.add_argument("--aligned", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--sampling-ratio", type=SAMPLING_RATIO, help="-1 or 0: adaptive")
    p.add_argument("--mask-loss", choices=("sigmoid", "softmax", "agnostic"))
    p.add_argument("--model-kw", action="append", metavar="KEY=VALUE",
                   help="extra builder argument (Python literal), repeatable")  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--time-budget", type=POSITIVE_FLOAT, metavar="MINUTES",
                   help="train at most this long (fewer iterations on a slow machine)")  # fmt: skip
    p.add_argument("--eval-every", type=NONNEGATIVE_INT, default=0,
                   help="iterations (0: at the end only)")  # fmt: skip
    p.add_argument("--eval-max-images", type=POSITIVE_INT)
    p.add_argument("--no-final-eval", action="store_true")
    p.add_argument("--checkpoint-every", type=NONNEGATIVE_INT, default=0)
    p.add_argument("--log-every", type=POSITIVE_INT, default=20)
    p.add_argument("--workers", type=NONNEGATIVE_INT, default=0, help="data loader processes")
    p.add_argument("--threads", type=POSITIVE_INT, help="torch threads per process")
    p.add_argument("--hflip", type=FRACTION, default=0.5, help="horizontal flip probability")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--stop-at", type=POSITIVE_INT, help="stop at this iteration, as if interrupted")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--find-unused-parameters", action="store_true")


def config_from_args(args) -> TrainConfig:
    return TrainConfig(
        data=args.data, out=args.out, model=args.model, iters=args.iters, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup_iters=args.warmup_iters,
        warmup_factor=args.warmup_factor, steps=tuple(args.steps), gamma=args.gamma,
        clip_grad_norm=args.clip_grad_norm, roi_op=args.roi_op, pool_mode=args.pool_mode,
        aligned=args.aligned, sampling_ratio=args.sampling_ratio, mask_loss=args.mask_loss,
        model_kwargs=parse_model_kw(args.model_kw), device=args.device, seed=args.seed,
        time_budget_s=args.time_budget * 60 if args.time_budget is not None else None,
        eval_every=args.eval_every, eval_max_images=args.eval_max_images,
        final_eval=not args.no_final_eval, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, workers=args.workers, threads=args.threads, hflip=args.hflip,
        train_split=args.train_split, val_split=args.val_split, resume=args.resume,
        stop_at=args.stop_at, progress=not args.no_progress,
        find_unused_parameters=args.find_unused_parameters,
    )  # fmt: skip
