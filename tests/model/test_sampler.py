"""Balanced sampling (Faster R-CNN sec. 3.1.3): counts, ignored labels, determinism."""

from __future__ import annotations

import pytest
import torch

from refimpl.model.sampler import BalancedPositiveNegativeSampler


def labels(n_pos: int, n_neg: int, n_ignored: int = 0) -> torch.Tensor:
    lab = torch.cat([torch.ones(n_pos), torch.zeros(n_neg), -torch.ones(n_ignored)])
    return lab[torch.randperm(len(lab), generator=torch.Generator().manual_seed(n_pos))]


@pytest.mark.parametrize(
    ("n_pos", "n_neg", "want_pos", "want_neg"),
    [
        (10, 1000, 10, 246),  # few positives: padded with negatives
        (200, 1000, 128, 128),  # capped at int(256 * 0.5)
        (200, 50, 128, 50),  # few negatives: the batch is not filled
        (0, 1000, 0, 256),
        (0, 0, 0, 0),
    ],
)
def test_counts(n_pos, n_neg, want_pos, want_neg):
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    lab = labels(n_pos, n_neg, n_ignored=30)
    (pos,), (neg,) = sampler([lab])
    assert (len(pos), len(neg)) == (want_pos, want_neg)
    assert (lab[pos] == 1).all() and (lab[neg] == 0).all()  # never an ignored one
    assert len(set(pos.tolist())) == len(pos) and torch.equal(pos, pos.sort().values)


def test_fraction_rounds_down_and_class_labels_count_as_positive():
    sampler = BalancedPositiveNegativeSampler(10, 0.25)  # int(2.5) = 2 positives
    lab = torch.tensor([3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1])
    (pos,), (neg,) = sampler([lab])
    assert len(pos) == 2 and len(neg) == 8


def test_deterministic_takes_the_first_ones():
    sampler = BalancedPositiveNegativeSampler(4, 0.5, deterministic=True)
    lab = torch.tensor([0, 1, -1, 1, 0, 1, 0, 0])
    (pos,), (neg,) = sampler([lab])
    assert pos.tolist() == [1, 3] and neg.tolist() == [0, 4]


def test_random_draws_are_torchvision_s():
    # torchvision: randperm(#pos)[:num_pos], then randperm(#neg)[:num_neg], per image
    lab = labels(40, 300)
    positive, negative = torch.where(lab == 1)[0], torch.where(lab == 0)[0]
    torch.manual_seed(3)
    want_pos = positive[torch.randperm(40)[:32]].sort().values
    want_neg = negative[torch.randperm(300)[:32]].sort().values
    torch.manual_seed(3)
    (pos,), (neg,) = BalancedPositiveNegativeSampler(64, 0.5)([lab])
    assert torch.equal(pos, want_pos) and torch.equal(neg, want_neg)
    # an explicit generator gives reproducible draws independent of the global RNG
    draw = [
        BalancedPositiveNegativeSampler(64, 0.5, generator=torch.Generator().manual_seed(5))([lab])
        for _ in range(2)
    ]
    assert torch.equal(draw[0][0][0], draw[1][0][0]) and torch.equal(draw[0][1][0], draw[1][1][0])


def test_invalid_arguments():
    with pytest.raises(ValueError):
        BalancedPositiveNegativeSampler(0, 0.5)
    with pytest.raises(ValueError):
        BalancedPositiveNegativeSampler(10, 1.5)
