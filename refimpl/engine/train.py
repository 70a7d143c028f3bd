"""The training engine: ``python -m refimpl train`` (one process, CPU or CUDA) and
``torchrun --nproc_per_node N -m refimpl train`` (DistributedDataParallel: gloo on the CPU,
nccl on GPUs, a DistributedSampler).

The recipe is the paper's (Mask R-CNN, Sec. 3.1, "Training"): SGD with momentum 0.9 and
weight decay 1e-4, the five losses summed with weight 1, a linear warm-up (Goyal et al.,
2017) and a step decay by 10 (or a cosine decay, which suits short CPU runs better).

What a run directory holds::

    config.json      the configuration
    metrics.jsonl    one JSON object per logged iteration (the five losses, lr) and per eval
    metrics.json     the final evaluation (bbox and segm AP) and a summary of the run
    checkpoint.pt    model, optimizer, scheduler, iteration, every rank's RNG states
    ddp/rank{r}.json (several processes) each rank's parameter checksum and images seen

A checkpoint is written atomically (to a temporary file, then ``os.replace``), so a run
killed while saving keeps its previous checkpoint. ``--resume`` continues *exactly* where
the checkpoint stopped: the sampler's epoch and position come from the iteration, each
sample's augmentation is seeded from (seed, epoch, index), the data loader has its own
generator, and the torch / numpy / python RNG states are restored, so the losses are the
ones an uninterrupted run gives. SIGTERM or a first Ctrl-C stops after the current
iteration with a checkpoint. A NaN or infinite loss stops training with
:class:`NonFiniteLossError` naming the loss and the iteration (1-based: the update that
would have used it), before the update, so the last checkpoint stays good.

``--time-budget MINUTES`` trains for a fixed time instead (``--iters`` becomes a cap): the
cosine (or step) decay then follows the clock, so a slow machine does fewer iterations but
still ends with a decayed learning rate. ``--preset shapes-demo`` holds the settings of
``python -m refimpl demo``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from refimpl.data import CocoDetection, collate_fn, split_paths
from refimpl.data.coco import DatasetWarning
from refimpl.data.transforms import detection_transforms

from .evaluate import evaluate, format_metrics

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
SHORT_NAMES = {"loss_objectness": "obj", "loss_rpn_box_reg": "rpn_box", "loss_classifier": "cls",
               "loss_box_reg": "box", "loss_mask": "mask"}  # fmt: skip
MODEL_BUILDERS = {
    "small": "refimpl.model.mask_rcnn:maskrcnn_small",
    "resnet50": "refimpl.model.mask_rcnn:maskrcnn_resnet50_fpn",
}
MODEL_KWARG_NAMES = {"pool_mode": "roi_pool_mode"}  # config field -> MaskRCNN keyword
CHECKPOINT = "checkpoint.pt"
# Config fields that define the model: a resumed run must agree on them.
MODEL_FIELDS = (
    "model",
    "roi_op",
    "pool_mode",
    "aligned",
    "sampling_ratio",
    "mask_loss",
    "model_kwargs",
)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the loss and the iteration."""


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


# ----------------------------------------------------------------------------- the model


def model_kwargs(cfg) -> dict:
    """The builder's keyword arguments: ``model_kwargs`` plus the RoI/mask options that are set."""
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
    kw = dict(get("model_kwargs") or {})
    for name in ("roi_op", "pool_mode", "aligned", "sampling_ratio", "mask_loss"):
        if get(name) is not None:
            kw[MODEL_KWARG_NAMES.get(name, name)] = get(name)
    return kw


def build_model(name: str, num_classes: int, **kwargs) -> torch.nn.Module:
    """``"small"`` / ``"resnet50"`` (refimpl's Mask R-CNN builders) or ``"module:callable"``."""
    spec = MODEL_BUILDERS.get(name, name)
    if ":" not in spec:
        raise ValueError(
            f"unknown model {name!r}: use {sorted(MODEL_BUILDERS)} or 'module:builder'"
        )
    module, attr = spec.split(":", 1)
    return getattr(importlib.import_module(module), attr)(num_classes, **kwargs)


def load_checkpoint(path) -> dict:
    # weights_only: checkpoints hold only tensors and plain Python values (no pickled code).
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(checkpoint, device="cpu"):
    """``(model in eval mode, checkpoint dict)`` from a checkpoint written by :func:`train`."""
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    model = build_model(cfg["model"], ckpt["num_classes"], **model_kwargs(cfg))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


# ------------------------------------------------------------------ processes and threads


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group torchrun describes in the environment (else: one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world_size, local_rank)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(threads: int | None = None, processes: int = 1) -> int:
    """Intra-op threads: all the cores for one process, an equal share for each of several
    (more threads than cores makes every process wait on the others)."""
    n = threads or max(1, available_cores() // processes)
    torch.set_num_threads(n)
    return n


# ------------------------------------------------------------------------- randomness


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state is what we restore
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's RNG states, as tensors and plain values (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng():
    """Run a block (an evaluation) without moving any RNG, so it cannot change training."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ResumableDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (a seeded shuffle per epoch, split across ranks) that yields
    ``(index, sample_seed)`` and can start mid-epoch (``set_start``), for exact resumption."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[self.start :]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededDataset(Dataset):
    """Runs each ``dataset[index]`` under its own torch seed: a sample's random augmentation
    depends on (seed, epoch, index) only, not on the worker, the rank or earlier samples."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # (torch.manual_seed also seeds CUDA)
            return self.dataset[index]


# -------------------------------------------------------------------------- schedule


class WarmupSchedule:
    """The learning-rate factor at iteration ``it``: a linear warm-up from ``warmup_factor``
    to 1 over ``warmup_iters`` (Goyal et al.; torchvision's reference), times a step decay
    (``gamma`` at each milestone: the paper's schedule), a cosine decay to ``min_factor``,
    or 1. A plain object, so LambdaLR saves it in its state dict."""

    def __init__(self, total, warmup_iters, warmup_factor, kind, milestones, gamma, min_factor):
        if kind not in ("step", "cosine", "constant"):
            raise ValueError(f"unknown schedule {kind!r}: step, cosine or constant")
        self.total, self.warmup_iters = int(total), int(min(warmup_iters, total))
        self.warmup_factor, self.kind, self.gamma = warmup_factor, kind, gamma
        # step milestones as fractions of the run (iterations, numbers >= 1, converted)
        self.fractions = sorted(float(m) if m < 1 else float(m) / self.total for m in milestones)
        self.min_factor = min_factor
        self.progress: float | None = None

    def __call__(self, it: int) -> float:
        """``progress`` (0..1 through the decay), when set, replaces ``it`` for the decay:
        the time-budget mode decays with the clock, not with the iteration count."""
        warm = 1.0
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            warm = self.warmup_factor * (1 - alpha) + alpha
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


# ---------------------------------------------------------------------------- the run


class _StopRequest:
    """SIGTERM / a first Ctrl-C: finish the iteration, checkpoint, stop (a second Ctrl-C
    interrupts at once)."""

    def __init__(self):
        self.requested, self._old = False, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nsignal {signum}: stopping after this iteration", file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _reduce(values: list[float | torch.Tensor], d: Dist) -> list[float]:
    """Mean over the processes (every rank gets it: all agree on NaN and on stopping)."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in values])
    if d.world_size > 1:
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = t.to(backend_device)
        dist.all_reduce(t)
        t = t.cpu() / d.world_size
    return t.tolist()


def _to_device(targets, device):
    keys = ("boxes", "labels", "masks")
    return [{k: t[k].to(device, non_blocking=True) for k in keys if k in t} for t in targets]


def param_checksum(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal across DDP ranks iff the replicas agree."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class Run:
    """One training run (a class only to share state between the loop's steps)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.d = init_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.device = torch.device(
            f"cuda:{self.d.local_rank}"
            if cfg.device == "cuda" and self.d.world_size > 1
            else cfg.device
        )
        set_threads(cfg.threads, self.d.world_size)

    def log(self, record: dict) -> None:
        if self.d.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def datasets(self):
        cfg = self.cfg
        with warnings.catch_warnings():
            if not self.d.main:  # one warning per run, not one per process
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

    def save_checkpoint(self, it: int) -> None:
        """Collective (every rank's RNG state goes in); rank 0 writes, atomically."""
        states = [None] * self.d.world_size
        if self.d.world_size > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if not self.d.main:
            return
        ckpt = {
            "format": "refimpl-train-1",
            "model": self.model_without_ddp.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": it,
            "total_iters": self.total,
            "elapsed_s": self.elapsed(),
            "world_size": self.d.world_size,
            "rng": states,
            "config": dataclasses.asdict(self.cfg),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "label_to_cat": {int(k): int(v) for k, v in self.label_to_cat.items()},
        }
        path = self.out / CHECKPOINT
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def elapsed(self) -> float:
        """Seconds of training so far (a resumed run's included)."""
        return time.perf_counter() - self.t_start

    def resume(self) -> int:
        """Load the checkpoint into every rank; returns its iteration (0 without one)."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            if self.d.main:
                print(f"--resume: no {path} yet, starting from scratch", file=sys.stderr)
            return 0
        ckpt = load_checkpoint(path)
        saved, now = ckpt["config"], dataclasses.asdict(self.cfg)
        changed = [k for k in MODEL_FIELDS if saved.get(k) != now.get(k)]
        if changed or ckpt["num_classes"] != self.num_classes:
            raise ValueError(
                f"{path}: cannot resume with a different model ({changed or 'classes'})"
            )
        if ckpt["total_iters"] != self.total and self.d.main:
            print(f"note: the run's length changed ({ckpt['total_iters']} -> {self.total})")
        self.model_without_ddp.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        fresh = dict(vars(self.schedule))
        fresh.pop("progress")  # (the time budget's: it continues from the saved one)
        self.scheduler.load_state_dict(ckpt["scheduler"])  # (this restores the saved schedule)
        vars(self.schedule).update(fresh)  # keep this run's length and schedule
        states = ckpt["rng"]
        if len(states) == self.d.world_size:
            set_rng_state(states[self.d.rank])
        else:  # a different number of processes cannot replay the same samples anyway
            warnings.warn(
                "resuming on a different number of processes: RNG states reseeded", stacklevel=2
            )
            seed_all(self.cfg.seed + 1 + self.d.rank + ckpt["iteration"])
        it = int(ckpt["iteration"])
        self.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        if self.d.main:  # forget what an interrupted run logged after its checkpoint
            log = self.out / "metrics.jsonl"
            if log.is_file():
                kept = [ln for ln in log.read_text().splitlines() if json.loads(ln)["iter"] <= it]
                log.write_text("".join(ln + "\n" for ln in kept))
        return it

    def evaluate(self, it: int, max_images=None) -> dict | None:
        """Rank 0 evaluates on the validation split while the others wait."""
        metrics = None
        if self.d.main and self.val_ds is not None:
            with preserved_rng():
                metrics = evaluate(
                    self.model_without_ddp,
                    self.val_ds,
                    self.device,
                    self.cfg.batch_size,
                    max_images,
                    progress=self.cfg.progress,
                )
            self.log({"iter": it, "eval": {k: metrics[k] for k in ("bbox", "segm", "images")}})
            if self.cfg.progress:
                tqdm.write(f"iteration {it}:\n{format_metrics(metrics)}")
        if self.d.world_size > 1:
            dist.barrier()
        return metrics

    def run(self) -> dict:
        cfg, d = self.cfg, self.d
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
        train_ds, self.val_ds = self.datasets()
        self.num_classes = train_ds.num_classes
        self.class_names, self.label_to_cat = train_ds.class_names, train_ds.label_to_cat

        seed_all(cfg.seed)  # the same initial weights on every rank
        model = build_model(cfg.model, self.num_classes, **model_kwargs(cfg)).to(self.device)
        self.model_without_ddp = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        sampler = ResumableDistributedSampler(train_ds, d.world_size, d.rank, cfg.seed)
        iters_per_epoch = math.ceil(sampler.num_samples / cfg.batch_size)
        self.total = cfg.epochs * iters_per_epoch if cfg.epochs else cfg.iters or iters_per_epoch
        self.schedule = WarmupSchedule(
            self.total, cfg.warmup_iters, cfg.warmup_factor, cfg.schedule, cfg.steps, cfg.gamma,
            cfg.min_lr_factor,
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)

        self.elapsed_before = 0.0
        start = self.resume() if cfg.resume else 0
        if start == 0:
            seed_all(
                cfg.seed + 1 + d.rank
            )  # the training stream: the samplers' draws differ per rank
            if d.main:
                (self.out / "metrics.jsonl").write_text("")
                _write_json_atomic(self.out / "config.json", dataclasses.asdict(cfg))
        if d.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters
            )
        model.train()
        loader = DataLoader(
            SeededDataset(train_ds),
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            collate_fn=collate_fn,
            # its own generator: creating an iterator must not draw from the global RNG
            generator=torch.Generator().manual_seed(cfg.seed),
            pin_memory=self.device.type == "cuda",
        )

        it, t_start, last, interrupted = start, time.perf_counter(), {}, False
        self.t_start = t_start - self.elapsed_before  # the budget counts a resumed run's past
        budget = cfg.time_budget_s
        seen_ids: list[int] = []
        pbar = tqdm(total=self.total, initial=start, disable=not (d.main and cfg.progress),
                    desc="train", dynamic_ncols=True)  # fmt: skip
        with _StopRequest() as stop:
            while it < self.total:
                epoch, offset = divmod(it, iters_per_epoch)
                sampler.set_epoch(epoch)
                sampler.set_start(offset * cfg.batch_size)
                t_data = time.perf_counter()
                for images, targets in loader:
                    data_s = time.perf_counter() - t_data
                    if d.world_size > 1:
                        seen_ids += [int(t["image_id"]) for t in targets]
                    images = [im.to(self.device, non_blocking=True) for im in images]
                    loss_dict = model(images, _to_device(targets, self.device))
                    names = list(loss_dict)
                    # one all-reduce per step: the losses, a stop request, the time used (all
                    # ranks then agree on NaN, on stopping and on the time-budget schedule)
                    reduced = _reduce(
                        [*loss_dict.values(), float(stop.requested), self.elapsed()], d
                    )
                    values = dict(zip(names, reduced[:-2], strict=True))
                    stopping, elapsed = reduced[-2] > 0, reduced[-1]
                    for name, v in values.items():
                        if not math.isfinite(v):
                            raise NonFiniteLossError(
                                f"{name} is {v} at iteration {it + 1} (epoch {epoch}); stopped "
                                f"before the update (the last checkpoint, if any, is good)"
                            )
                    self.optimizer.zero_grad(set_to_none=True)
                    sum(loss_dict.values()).backward()
                    if cfg.clip_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.optimizer.step()
                    it += 1
                    if budget:  # the decay follows the clock: progress = time used / budget
                        self.schedule.progress = min(1.0, elapsed / budget)
                        if elapsed >= budget:
                            self.total = it
                    self.scheduler.step()
                    last = {"iter": it, "epoch": epoch, "lr": lr, **values,
                            "loss": sum(values.values()), "data_s": round(data_s, 4),
                            "time_s": round(time.perf_counter() - t_start, 2)}  # fmt: skip
                    if it % cfg.log_every == 0 or it == self.total or it == start + 1:
                        self.log(last)
                    pbar.update(1)
                    post = {SHORT_NAMES.get(k, k): f"{v:.3f}" for k, v in values.items()}
                    post["lr"] = f"{lr:.4g}"
                    if budget:
                        post["time"] = f"{elapsed:.0f}/{budget:.0f}s"
                    pbar.set_postfix(post, refresh=False)
                    done = it >= self.total
                    interrupted = stopping or (cfg.stop_at is not None and it >= cfg.stop_at)
                    evaluated = bool(cfg.eval_every and it % cfg.eval_every == 0 and not done)
                    if evaluated:
                        self.evaluate(it, cfg.eval_max_images)
                    periodic = cfg.checkpoint_every and it % cfg.checkpoint_every == 0
                    if periodic or evaluated or done or interrupted:
                        self.save_checkpoint(it)
                    if done or interrupted:
                        break
                    t_data = time.perf_counter()
                if interrupted:
                    break
        pbar.close()
        wall = time.perf_counter() - t_start
        if budget and d.main and cfg.progress:
            print(f"time budget: {it} iterations in {self.elapsed():.0f} s", file=sys.stderr)

        if d.world_size > 1:
            ddp_dir = self.out / "ddp"
            ddp_dir.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(
                ddp_dir / f"rank{d.rank}.json",
                {"rank": d.rank, "world_size": d.world_size, "iteration": it,
                 "param_checksum": param_checksum(self.model_without_ddp), "image_ids": seen_ids},
            )  # fmt: skip
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
            summary["config"] = dataclasses.asdict(cfg)
            _write_json_atomic(self.out / "metrics.json", summary)
        return summary


def train(cfg: TrainConfig) -> dict:
    """Train (and finally evaluate) as ``cfg`` says; returns the run's summary and metrics."""
    run = Run(cfg)
    try:
        return run.run()
    finally:
        if run.d.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


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


def add_arguments(p) -> None:
    p.add_argument("--preset", choices=tuple(PRESETS), help="named defaults (see PRESETS)")
    p.add_argument("--data", required=True, help="COCO-layout dataset directory")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--model", default="small", help="small | resnet50 | module:builder")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, help="total iterations (updates)")
    length.add_argument("--epochs", type=int, help="total epochs (default 1)")
    p.add_argument("--batch-size", type=int, default=4, help="images per process and step")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=("step", "cosine", "constant"), default="cosine")
    p.add_argument("--warmup-iters", type=int, default=100)
    p.add_argument("--warmup-factor", type=float, default=0.001)
    p.add_argument("--steps", type=float, nargs="+", default=[0.67, 0.89],
                   help="step milestones: fractions of the run, or iterations")  # fmt: skip
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--clip-grad-norm", type=float, default=0.0)
    p.add_argument("--roi-op", choices=("align", "warp", "pool"))
    p.add_argument("--pool-mode", choices=("avg", "max"))
    p.add_argument("--aligned", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--sampling-ratio", type=int)
    p.add_argument("--mask-loss", choices=("sigmoid", "softmax", "agnostic"))
    p.add_argument("--model-kw", action="append", metavar="KEY=VALUE",
                   help="extra builder argument (Python literal), repeatable")  # fmt: skip
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="train at most this long (fewer iterations on a slow machine)")  # fmt: skip
    p.add_argument("--eval-every", type=int, default=0, help="iterations (0: at the end only)")
    p.add_argument("--eval-max-images", type=int)
    p.add_argument("--no-final-eval", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--threads", type=int, help="torch threads per process")
    p.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--stop-at", type=int, help="stop at this iteration, as if interrupted")
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
        time_budget_s=args.time_budget * 60 if args.time_budget else None,
        eval_every=args.eval_every, eval_max_images=args.eval_max_images,
        final_eval=not args.no_final_eval, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, workers=args.workers, threads=args.threads, hflip=args.hflip,
        train_split=args.train_split, val_split=args.val_split, resume=args.resume,
        stop_at=args.stop_at, progress=not args.no_progress,
        find_unused_parameters=args.find_unused_parameters,
    )  # fmt: skip


def main(args) -> int:
    try:
        summary = train(config_from_args(args))
    except NonFiniteLossError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0 and "segm" in summary:
        print(format_metrics(summary))
        print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
