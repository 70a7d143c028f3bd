"""The matcher (Faster R-CNN sec. 3.1.2): thresholds, -1 / -2 codes, low-quality matches."""

from __future__ import annotations

import pytest
import torch

from refimpl.model.matcher import Matcher


def test_thresholds_and_codes():
    # 2 GT x 6 predictions
    iou = torch.tensor(
        [
            [0.9, 0.7, 0.69, 0.3, 0.29, 0.0],
            [0.1, 0.75, 0.0, 0.0, 0.0, 0.1],
        ]
    )
    m = Matcher(0.7, 0.3)(iou)
    # >= high: matched (to the best GT); [low, high): -2; < low: -1
    assert m.tolist() == [0, 1, -2, -2, -1, -1]
    assert Matcher.BELOW_LOW_THRESHOLD == -1 and Matcher.BETWEEN_THRESHOLDS == -2


def test_equal_thresholds_have_no_ignored_band():
    iou = torch.tensor([[0.5, 0.49999, 0.8]])
    assert Matcher(0.5, 0.5)(iou).tolist() == [0, -1, 0]


def test_low_quality_matches_include_ties():
    iou = torch.tensor(
        [
            [0.4, 0.4, 0.1, 0.0],  # GT 0: best 0.4, tied on predictions 0 and 1
            [0.35, 0.0, 0.2, 0.8],  # GT 1: best 0.8 (already a match)
            [0.0, 0.0, 0.25, 0.0],  # GT 2: best 0.25 < low: still gets prediction 2
        ]
    )
    assert Matcher(0.7, 0.3)(iou).tolist() == [-2, -2, -1, 1]
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 0, 2, 1]


def test_low_quality_match_goes_to_the_prediction_s_best_gt():
    # prediction 0 is GT 0's best (0.3), but GT 1 overlaps it more (0.5): matched to GT 1,
    # like torchvision (the match restores the prediction's own argmax)
    iou = torch.tensor([[0.3, 0.1], [0.5, 0.9]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [1, 1]


def test_errors():
    with pytest.raises(ValueError, match="ground-truth"):
        Matcher(0.7, 0.3)(torch.zeros(0, 5))
    with pytest.raises(ValueError, match="predictions"):
        Matcher(0.7, 0.3)(torch.zeros(2, 0))
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)
