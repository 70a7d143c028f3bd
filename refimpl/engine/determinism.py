"""Randomness a run can replay: seeds, the RNG states a checkpoint holds, the data order.

A run draws from four places: torch's global generator (the model's RPN and RoI samplers,
the initial weights), NumPy's and Python's global generators (anything a transform or a
user's model may use), and the data order. :func:`rng_state` captures the three generators
(as tensors and plain values, so a checkpoint loads with ``weights_only=True``);
:class:`ResumableDistributedSampler` derives the order from (seed, epoch) and starts
mid-epoch; :class:`SeededDataset` runs each sample under its own seeds, derived from
(seed, epoch, index), so an augmentation depends on nothing else: not on the loader worker,
the rank, earlier samples, or where a resumed run started.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global state is what we restore
    torch.manual_seed(seed)


def rng_state(cuda: bool = True) -> dict:
    """This process's RNG states, as tensors and plain values (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
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
def preserved_rng(cuda: bool = True):
    """Run a block (an evaluation, one sample's loading) without moving any global RNG."""
    state = rng_state(cuda)
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
    """Runs each ``dataset[index]`` with torch's, NumPy's and Python's global generators seeded
    from the sample's own seed, and gives them back unchanged afterwards."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with preserved_rng(cuda=False):  # (only the CPU generators are seeded here)
            torch.default_generator.manual_seed(seed)  # (torch.manual_seed also seeds CUDA)
            np.random.seed(seed % 2**32)  # noqa: NPY002
            random.seed(seed)
            return self.dataset[index]
