"""Balanced sampling of positives and negatives for a loss (Faster R-CNN sec. 3.1.3; Fast
R-CNN sec. 2.3).

Anchors and proposals are overwhelmingly background; a loss over all of them would be
dominated by easy negatives. Each image therefore contributes a mini-batch of ``B`` examples
with at most a fraction ``f`` of positives, padded with negatives::

    num_pos = min(#positives, int(B * f))
    num_neg = min(#negatives, B - num_pos)

chosen at random (RPN: B = 256, f = 0.5; RoI heads: B = 512, f = 0.25). Like torchvision, the
random choice is a ``torch.randperm`` of the positives, then one of the negatives, per image:
with the same seed, the same examples are drawn. ``deterministic=True`` takes the first ones
instead, in index order (for tests).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def sample(
    labels: list[Tensor],
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """``labels``: per image, ``>= 1`` positive, ``0`` negative, ``-1`` ignored. Returns per
    image the indices of the sampled positives and of the sampled negatives, each sorted (the
    order of the elements, not of the draw): one ``randperm`` of the positives, then one of the
    negatives, per image, as torchvision. The part ``Parts.sampler`` (exercise 11's ``sample``).
    """
    return _sample(labels, batch_size_per_image, positive_fraction, generator, False)


def _sample(labels, batch_size_per_image, positive_fraction, generator, deterministic):
    def choose(n: int, k: int, device: torch.device) -> Tensor:
        if deterministic:
            return torch.arange(k, device=device)
        return torch.randperm(n, device=device, generator=generator)[:k]

    pos_idx, neg_idx = [], []
    for labels_per_image in labels:
        positive = torch.where(labels_per_image >= 1)[0]
        negative = torch.where(labels_per_image == 0)[0]
        num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
        num_neg = min(negative.numel(), batch_size_per_image - num_pos)
        pos = positive[choose(positive.numel(), num_pos, positive.device)]
        neg = negative[choose(negative.numel(), num_neg, negative.device)]
        pos_idx.append(pos.sort().values)
        neg_idx.append(neg.sort().values)
    return pos_idx, neg_idx


SampleFn = Callable[
    [list[Tensor], int, float, "torch.Generator | None"], tuple[list[Tensor], list[Tensor]]
]


class BalancedPositiveNegativeSampler:
    """Sample positives and negatives from per-image labels.

    Args:
        batch_size_per_image: ``B``, examples per image.
        positive_fraction: ``f``, the largest fraction of positives.
        generator: the ``torch.Generator`` for the permutations (None: the global one).
        deterministic: take the first positives / negatives instead of random ones (only with
            our ``sample_fn``).
        sample_fn: the sampling itself, with :func:`sample`'s signature (the default).
    """

    def __init__(
        self,
        batch_size_per_image: int,
        positive_fraction: float,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
        sample_fn: SampleFn = sample,
    ):
        if batch_size_per_image <= 0 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(
                "need batch_size_per_image > 0 and 0 <= positive_fraction <= 1, got "
                f"{batch_size_per_image}, {positive_fraction}"
            )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.generator = generator
        self.deterministic = deterministic
        self.sample_fn = sample_fn

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``labels``: per image, ``>= 1`` positive, ``0`` negative, ``-1`` ignored.

        Returns per image the indices of the sampled positives and of the sampled negatives,
        each sorted (the order of the elements, not of the draw).
        """
        if self.sample_fn is sample:
            return _sample(
                labels,
                self.batch_size_per_image,
                self.positive_fraction,
                self.generator,
                self.deterministic,
            )
        if self.deterministic:
            raise ValueError(
                "deterministic sampling takes the first examples, which only refimpl's sampler "
                "does: with a sampler of your own, seed a generator instead "
                "(model.set_sampling(generator=torch.Generator().manual_seed(0)))"
            )
        return self.sample_fn(
            labels, self.batch_size_per_image, self.positive_fraction, self.generator
        )
