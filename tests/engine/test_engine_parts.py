"""The engine's small parts: the resumable sampler, per-sample seeding, RNG state capture."""

from __future__ import annotations

import random

import numpy as np
import torch

from refimpl.engine.train import (
    ResumableDistributedSampler,
    SeededDataset,
    param_checksum,
    preserved_rng,
    rng_state,
    seed_all,
    set_rng_state,
)


class Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return i, float(torch.rand(()))


def test_sampler_splits_and_resumes():
    ds = list(range(10))
    ranks = [ResumableDistributedSampler(ds, 2, r, seed=3) for r in (0, 1)]
    epoch0 = [[i for i, _ in s] for s in ranks]
    assert set(epoch0[0]).isdisjoint(epoch0[1]) and set(epoch0[0]) | set(epoch0[1]) == set(ds)
    assert [i for i, _ in ranks[0]] == epoch0[0]  # deterministic
    ranks[0].set_epoch(1)
    assert [i for i, _ in ranks[0]] != epoch0[0]  # reshuffled per epoch
    ranks[0].set_epoch(0)
    ranks[0].set_start(2)
    assert [i for i, _ in ranks[0]] == epoch0[0][2:] and len(ranks[0]) == 3


def test_sample_seeds_depend_on_epoch_and_index_only():
    a = dict(ResumableDistributedSampler(list(range(10)), 1, 0, seed=3))
    b = dict(ResumableDistributedSampler(list(range(10)), 2, 1, seed=3))
    assert all(a[i] == s for i, s in b.items())  # the same sample gets the same seed anywhere


def test_seeded_dataset_is_reproducible_and_leaves_the_global_rng():
    ds = SeededDataset(Noisy())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    x, y = ds[(4, 123)], ds[(4, 123)]
    assert x == y and ds[(4, 124)] != x
    assert torch.equal(torch.get_rng_state(), before)


def _draws():
    return random.random(), np.random.rand(), float(torch.rand(()))  # noqa: NPY002


def test_rng_state_roundtrip_and_preserved_rng():
    seed_all(5)
    state = rng_state()
    with preserved_rng():  # draws inside do not move the generators
        _draws()
        torch.rand(10)
    a = _draws()
    set_rng_state(state)
    assert _draws() == a


def test_param_checksum():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert param_checksum(a) != param_checksum(b)
    b.load_state_dict(a.state_dict())
    assert param_checksum(a) == param_checksum(b)
