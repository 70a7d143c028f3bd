"""The training loop (Mask R-CNN, Sec. 3.1, "Training": SGD, the five losses summed with
weight 1), in small steps: set up, resume, one step, bookkeeping, finish.

One step: forward (the five losses), one all-reduce (the losses, a stop request, the time
used, so every rank agrees on NaN, on stopping and on the time-budget schedule), a check that
every loss is finite (before the update), backward, optional gradient clipping, the SGD
update, and a check that every parameter and buffer is still finite (after the update: a
NaN learning rate or an overflow shows up there first), so a checkpoint is only ever written
from finite weights. The data order, the samplers' random draws, the schedule and the
optimizer all come back from a checkpoint, so ``--resume`` gives the losses of an
uninterrupted run bit for bit (iteration-count runs; under a time budget the learning rate
follows the clock, which no two runs share).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from refimpl.data import CocoDetection, collate_fn, split_paths
from refimpl.data.coco import DatasetWarning
from refimpl.data.transforms import detection_transforms

from .checkpoint import (
    CHECKPOINT,
    FORMAT,
    build_model,
    load_checkpoint,
    model_kwargs,
    nonfinite_tensors,
    param_checksum,
    remove_stale_tmp,
    save_atomic,
    write_json_atomic,
)
from .config import MODEL_FIELDS, TrainConfig, config_record
from .determinism import (
    ResumableDistributedSampler,
    SeededDataset,
    preserved_rng,
    rng_state,
    seed_all,
    set_rng_state,
)
from .distributed import Dist, all_gather, barrier, init_distributed, reduce_mean
from .evaluate import evaluate, format_metrics
from .runlog import MetricsLog
from .schedule import build_scheduler, load_scheduler_state
from .threads import set_threads

SHORT_NAMES = {"loss_objectness": "obj", "loss_rpn_box_reg": "rpn_box", "loss_classifier": "cls",
               "loss_box_reg": "box", "loss_mask": "mask"}  # fmt: skip


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or an infinity; the last checkpoint, if any, is good."""


class NonFiniteLossError(NonFiniteError):
    """A loss became NaN or infinite; the message names the loss and the iteration."""


class NonFiniteParameterError(NonFiniteError):
    """An update left a parameter or buffer NaN or infinite; the message names them."""


def check_losses(values: dict[str, float], it: int, epoch: int) -> None:
    """Before the update of iteration ``it`` (1-based)."""
    for name, v in values.items():
        if not math.isfinite(v):
            raise NonFiniteLossError(
                f"{name} is {v} at iteration {it} (epoch {epoch}); stopped before the update "
                f"(the last checkpoint, if any, is good)"
            )


def check_parameters(model: torch.nn.Module, it: int) -> None:
    """After the update of iteration ``it``: nothing non-finite may reach a checkpoint."""
    bad, checked = nonfinite_tensors(model)
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise NonFiniteParameterError(
            f"the update of iteration {it} made {len(bad)} of {checked} parameter and buffer "
            f"tensors non-finite ({shown}); stopped without a checkpoint (the last checkpoint, "
            f"if any, is good)"
        )


class StopRequest:
    """SIGTERM / a first Ctrl-C: finish the iteration, checkpoint, stop (a second Ctrl-C
    interrupts at once)."""

    def __init__(self):
        self.requested, self._old = False, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nsignal {signum}: stopping after this iteration", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def to_device(targets, device):
    keys = ("boxes", "labels", "masks")
    return [{k: t[k].to(device, non_blocking=True) for k in keys if k in t} for t in targets]


def load_datasets(cfg: TrainConfig, d: Dist):
    """``(train, val or None)``: the training split (flips, images without annotations
    dropped) and, when an evaluation is due, the validation split."""
    with warnings.catch_warnings():
        if not d.main:  # one warning per run, not one per process
            warnings.simplefilter("ignore", DatasetWarning)
        root, ann = split_paths(cfg.data, cfg.train_split)
        train_ds = CocoDetection(
            root, ann, detection_transforms(train=True, hflip=cfg.hflip), skip_empty=True
        )
        val_root, val_ann = split_paths(cfg.data, cfg.val_split)
        val_ds = None
        if val_ann.is_file() and (cfg.eval_every or cfg.final_eval):
            val_ds = CocoDetection(val_root, val_ann, detection_transforms(train=False))
    if not len(train_ds):
        raise ValueError(f"{ann}: no training image with annotations")
    return train_ds, val_ds


@dataclasses.dataclass
class Step:
    """What one iteration produced, for the log and the progress bar."""

    it: int  # 1-based: the update just made
    epoch: int
    lr: float
    losses: dict[str, float]
    stopping: bool
    elapsed: float
    data_s: float


class Trainer:
    """One training run; ``clock`` (seconds, monotonic) is a parameter so that time-budget
    runs can be tested with a fake clock."""

    def __init__(self, cfg: TrainConfig, clock=time.perf_counter):
        self.cfg, self.clock = cfg, clock
        self.d = init_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.log = MetricsLog(self.out / "metrics.jsonl")
        self.device = torch.device(
            f"cuda:{self.d.local_rank}"
            if cfg.device == "cuda" and self.d.world_size > 1
            else cfg.device
        )
        set_threads(cfg.threads, self.d.world_size)
        self.elapsed_before = 0.0
        self.t0 = 0.0

    # ------------------------------------------------------------------ set-up

    def setup(self) -> int:
        """Data, model, optimizer, sampler, schedule; returns the first iteration (0, or the
        checkpoint's with ``resume``)."""
        cfg, d = self.cfg, self.d
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
        train_ds, self.val_ds = load_datasets(cfg, d)
        self.num_classes = train_ds.num_classes
        self.class_names, self.label_to_cat = train_ds.class_names, train_ds.label_to_cat

        seed_all(cfg.seed)  # the same initial weights on every rank
        kwargs = model_kwargs(cfg) | ({"parts": cfg.parts} if cfg.parts is not None else {})
        self.model = build_model(cfg.model, self.num_classes, **kwargs).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            self.params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.sampler = ResumableDistributedSampler(train_ds, d.world_size, d.rank, cfg.seed)
        self.iters_per_epoch = math.ceil(self.sampler.num_samples / cfg.batch_size)
        self.total = (
            cfg.epochs * self.iters_per_epoch if cfg.epochs else cfg.iters or self.iters_per_epoch
        )
        self.schedule, self.scheduler = build_scheduler(self.optimizer, cfg, self.total)
        start = self.resume() if cfg.resume else 0
        if start == 0:
            seed_all(
                cfg.seed + 1 + d.rank
            )  # the training stream: the samplers' draws differ per rank
            if d.main:
                self.log.reset()
                write_json_atomic(self.out / "config.json", config_record(cfg))
        self.loader = DataLoader(
            SeededDataset(train_ds),
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.workers,
            collate_fn=collate_fn,
            # its own generator: creating an iterator must not draw from the global RNG
            generator=torch.Generator().manual_seed(cfg.seed),
            pin_memory=self.device.type == "cuda",
        )
        return start

    def wrapped_model(self) -> torch.nn.Module:
        if self.d.world_size == 1:
            return self.model.train()
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=ids, find_unused_parameters=self.cfg.find_unused_parameters
        )
        return ddp.train()

    # ------------------------------------------------------------- checkpoints

    def save_checkpoint(self, it: int) -> None:
        """Collective (every rank's RNG state goes in); rank 0 writes, atomically."""
        states = all_gather(rng_state(), self.d)
        if not self.d.main:
            return
        check_parameters(self.model, it)  # (already checked after the update: never bypassed)
        ckpt = {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": it,
            "total_iters": self.total,
            "elapsed_s": self.elapsed(),
            "world_size": self.d.world_size,
            "rng": states,
            "config": config_record(self.cfg),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "label_to_cat": {int(k): int(v) for k, v in self.label_to_cat.items()},
        }
        save_atomic(ckpt, self.out / CHECKPOINT)

    def resume(self) -> int:
        """Load the checkpoint into every rank; returns its iteration (0 without one)."""
        path = self.out / CHECKPOINT
        if remove_stale_tmp(path) and self.d.main:
            print(f"--resume: removed {path.name}.tmp (a write cut short)", file=sys.stderr)
        if not path.is_file():
            if self.d.main:
                print(f"--resume: no {path} yet, starting from scratch", file=sys.stderr)
            return 0
        ckpt = load_checkpoint(path)
        self._check_compatible(ckpt, path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        load_scheduler_state(self.scheduler, self.schedule, ckpt["scheduler"])
        self._restore_rng(ckpt)
        it = int(ckpt["iteration"])
        self.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        if self.d.main:  # forget what an interrupted run logged after its checkpoint
            self.log.truncate(it)
        return it

    def _check_compatible(self, ckpt: dict, path: Path) -> None:
        saved, now = ckpt["config"], config_record(self.cfg)
        changed = [k for k in MODEL_FIELDS if saved.get(k) != now.get(k)]
        if changed or ckpt["num_classes"] != self.num_classes:
            raise ValueError(
                f"{path}: cannot resume with a different model ({changed or 'classes'})"
            )
        if ckpt["total_iters"] != self.total and self.d.main:
            print(f"note: the run's length changed ({ckpt['total_iters']} -> {self.total})")

    def _restore_rng(self, ckpt: dict) -> None:
        states = ckpt["rng"]
        if len(states) == self.d.world_size:
            set_rng_state(states[self.d.rank])
        else:  # a different number of processes cannot replay the same samples anyway
            warnings.warn(
                "resuming on a different number of processes: RNG states reseeded", stacklevel=3
            )
            seed_all(self.cfg.seed + 1 + self.d.rank + ckpt["iteration"])

    # ----------------------------------------------------------- the iterations

    def elapsed(self) -> float:
        """Seconds of training so far (a resumed run's included)."""
        return self.clock() - self.t0

    def batches(self, start: int):
        """``(epoch, images, targets, data_s)`` from iteration ``start`` on, across epochs:
        the sampler's epoch and position come from the iteration alone."""
        it = start
        while it < self.total:
            epoch, offset = divmod(it, self.iters_per_epoch)
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(offset * self.cfg.batch_size)
            t = self.clock()
            for images, targets in self.loader:
                yield epoch, images, targets, self.clock() - t
                it += 1
                if it >= self.total:
                    return
                t = self.clock()

    def step(self, model, it: int, batch, stop: StopRequest) -> Step:
        """Iteration ``it + 1``: forward, checks, backward, update."""
        epoch, images, targets, data_s = batch
        images = [im.to(self.device, non_blocking=True) for im in images]
        loss_dict = model(images, to_device(targets, self.device))
        names = list(loss_dict)
        reduced = reduce_mean([*loss_dict.values(), float(stop.requested), self.elapsed()], self.d)
        values = dict(zip(names, reduced[:-2], strict=True))
        check_losses(values, it + 1, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        sum(loss_dict.values()).backward()
        if self.cfg.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        check_parameters(self.model, it + 1)
        return Step(it + 1, epoch, lr, values, reduced[-2] > 0, reduced[-1], data_s)

    def advance_schedule(self, s: Step) -> None:
        budget = self.cfg.time_budget_s
        if budget:  # the decay follows the clock: progress = time used / budget
            self.schedule.progress = min(1.0, s.elapsed / budget)
            if s.elapsed >= budget:
                self.total = s.it
        self.scheduler.step()

    def record(self, s: Step, start: int, t_start: float, pbar) -> dict:
        last = {"iter": s.it, "epoch": s.epoch, "lr": s.lr, **s.losses,
                "loss": sum(s.losses.values()), "data_s": round(s.data_s, 4),
                "time_s": round(self.clock() - t_start, 2)}  # fmt: skip
        if self.d.main and (s.it % self.cfg.log_every == 0 or s.it in (self.total, start + 1)):
            self.log.append(last)
        pbar.update(1)
        post = {SHORT_NAMES.get(k, k): f"{v:.3f}" for k, v in s.losses.items()}
        post["lr"] = f"{s.lr:.4g}"
        if self.cfg.time_budget_s:
            post["time"] = f"{s.elapsed:.0f}/{self.cfg.time_budget_s:.0f}s"
        pbar.set_postfix(post, refresh=False)
        return last

    def after_step(self, s: Step) -> bool:
        """Evaluate and checkpoint when due; True when the run stops here."""
        cfg = self.cfg
        done = s.it >= self.total
        interrupted = s.stopping or (cfg.stop_at is not None and s.it >= cfg.stop_at)
        evaluated = bool(cfg.eval_every and s.it % cfg.eval_every == 0 and not done)
        if evaluated:
            self.evaluate(s.it, cfg.eval_max_images)
        periodic = cfg.checkpoint_every and s.it % cfg.checkpoint_every == 0
        if periodic or evaluated or done or interrupted:
            self.save_checkpoint(s.it)
        return done or interrupted

    def evaluate(self, it: int, max_images=None) -> dict | None:
        """Rank 0 evaluates on the validation split while the others wait."""
        metrics = None
        if self.d.main and self.val_ds is not None:
            with preserved_rng():
                metrics = evaluate(
                    self.model,
                    self.val_ds,
                    self.device,
                    self.cfg.batch_size,
                    max_images,
                    progress=self.cfg.progress,
                )
            self.log.append(
                {"iter": it, "eval": {k: metrics[k] for k in ("bbox", "segm", "images")}}
            )
            if self.cfg.progress:
                tqdm.write(f"iteration {it}:\n{format_metrics(metrics)}")
        barrier(self.d)
        return metrics

    # --------------------------------------------------------------------- run

    def run(self) -> dict:
        start = self.setup()
        model = self.wrapped_model()
        it, last = start, {}
        t_start = self.clock()
        self.t0 = t_start - self.elapsed_before  # the budget counts a resumed run's past
        shown = self.d.main and self.cfg.progress
        pbar = tqdm(total=self.total, initial=start, disable=not shown, desc="train",
                    dynamic_ncols=True)  # fmt: skip
        self.seen_ids: list[int] = []
        with StopRequest() as stop:
            for batch in self.batches(start):
                if self.d.world_size > 1:
                    self.seen_ids += [int(t["image_id"]) for t in batch[2]]
                s = self.step(model, it, batch, stop)
                it = s.it
                self.advance_schedule(s)
                last = self.record(s, start, t_start, pbar)
                if self.after_step(s):
                    break
        pbar.close()
        return self.finish(it, last, self.clock() - t_start)

    def finish(self, it: int, last: dict, wall: float) -> dict:
        cfg, d = self.cfg, self.d
        if cfg.time_budget_s and d.main and cfg.progress:
            print(f"time budget: {it} iterations in {self.elapsed():.0f} s", file=sys.stderr)
        if d.world_size > 1:
            self.write_rank_report(it)
        summary = {"iteration": it, "total_iters": self.total, "wall_s": round(wall, 2),
                   "last": last, "world_size": d.world_size}  # fmt: skip
        if it < self.total:
            summary["stopped"] = True
            if d.main:
                print(f"stopped at iteration {it}; continue with --resume", file=sys.stderr)
            return summary
        metrics = self.evaluate(it) if cfg.final_eval else None
        if d.main:
            summary.update(metrics or {})
            summary.pop("summary", None)
            summary["config"] = config_record(cfg)
            write_json_atomic(self.out / "metrics.json", summary)
        return summary

    def write_rank_report(self, it: int) -> None:
        """``ddp/rank{r}.json``: this rank's parameter checksum and the images it saw."""
        ddp_dir = self.out / "ddp"
        ddp_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            ddp_dir / f"rank{self.d.rank}.json",
            {"rank": self.d.rank, "world_size": self.d.world_size, "iteration": it,
             "param_checksum": param_checksum(self.model), "image_ids": self.seen_ids},
        )  # fmt: skip
