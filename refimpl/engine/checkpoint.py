"""Checkpoints: the model registry, atomic writes, and loading a trained model.

A checkpoint (``OUT/checkpoint.pt``) holds the model, the optimizer (SGD's momentum buffers),
the scheduler, the iteration, every rank's RNG states, the configuration and the classes,
as tensors and plain values only (it loads with ``weights_only=True``: no pickled code).

It is written atomically: to ``checkpoint.pt.tmp``, flushed to the disk, then renamed over
the previous one, so a run killed while saving keeps its previous checkpoint (and the next
run removes the stale ``.tmp``). A failed write (a full disk) removes the ``.tmp`` and raises
:class:`CheckpointWriteError` saying what happened, where torch would report
"enforce fail ... unexpected pos".
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import itertools
import json
import os
import time
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
FORMAT = "refimpl-train-1"
MODEL_BUILDERS = {
    "small": "refimpl.model:maskrcnn_small",
    "resnet50": "refimpl.model:maskrcnn_resnet50_fpn",
}
MODEL_KWARG_NAMES = {"pool_mode": "roi_pool_mode"}  # config field -> MaskRCNN keyword
# A test hook: "N:SECONDS" stalls the N-th checkpoint write of the process (1-based) halfway,
# after some bytes are in the .tmp, so a test can kill the run inside the write.
STALL_ENV = "REFIMPL_TEST_STALL_CHECKPOINT"


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
    """``(model in eval mode, checkpoint dict)`` from a checkpoint written by ``train``."""
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    model = build_model(cfg["model"], ckpt["num_classes"], **model_kwargs(cfg))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def param_checksum(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal across DDP ranks iff the replicas agree."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def nonfinite_tensors(model: torch.nn.Module) -> tuple[list[str], int]:
    """``(names, count)``: the parameters and floating-point buffers holding a NaN or an
    infinity, and how many tensors were checked."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    tensors = [(n, t) for n, t in tensors if t.is_floating_point()]
    flags = torch.stack([torch.isfinite(t).all() for _, t in tensors]) if tensors else None
    if flags is None or bool(flags.all()):
        return [], len(tensors)
    return [n for (n, _), ok in zip(tensors, flags.tolist(), strict=True) if not ok], len(tensors)


# ---------------------------------------------------------------------------- writing


class CheckpointWriteError(OSError):
    """A checkpoint (or a run file) could not be written; the previous one is intact."""


class _RecordingFile:
    """The file torch.save writes through. torch turns a failed write into an unrelated
    RuntimeError ("unexpected pos"); this keeps the OSError so the caller can report it."""

    def __init__(self, f, stall_s: float = 0.0):
        self.f, self.error, self.stall_s, self.written = f, None, stall_s, 0

    def write(self, data) -> int:
        if self.stall_s and self.written:  # (the test hook: some bytes are in the file)
            self.f.flush()
            time.sleep(self.stall_s)
            self.stall_s = 0.0
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.written += n
        return n

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = e
            raise


_writes = itertools.count(1)  # this process's checkpoint writes


def _stall_seconds() -> float:
    """The test hook's stall for this write (0 unless ``STALL_ENV`` names it)."""
    n = next(_writes)
    spec = os.environ.get(STALL_ENV)
    if not spec:
        return 0.0
    nth, _, seconds = spec.partition(":")
    return float(seconds) if int(nth) == n else 0.0


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _write_error(path: Path, error: OSError) -> CheckpointWriteError:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left"
    else:
        what = f"{type(error).__name__}: {error}"
    return CheckpointWriteError(
        f"{what} writing the checkpoint to {path}; the partial file was removed, and the "
        f"previous checkpoint, if any, is unchanged"
    )


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically: ``path.tmp``, fsync, rename."""
    path = Path(path)
    tmp = tmp_path(path)
    stall = _stall_seconds()
    f = None
    try:
        with open(tmp, "wb") as raw:
            f = _RecordingFile(raw, stall)
            torch.save(obj, f)
            f.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # (KeyboardInterrupt too: no partial file left behind)
        tmp.unlink(missing_ok=True)
        error = (f.error if f is not None else None) or e
        if isinstance(error, OSError) and not isinstance(e, KeyboardInterrupt):
            raise _write_error(path, error) from error
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    tmp = tmp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=2))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(f"cannot write {path}: {e}") from e


def remove_stale_tmp(path: str | os.PathLike) -> bool:
    """Remove the ``.tmp`` a run killed while writing ``path`` left behind; True if one was."""
    tmp = tmp_path(Path(path))
    if tmp.exists():
        tmp.unlink()
        return True
    return False
