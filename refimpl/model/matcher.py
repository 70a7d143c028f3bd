"""Matching predictions (anchors, proposals) to ground-truth boxes by IoU.

Faster R-CNN sec. 3.1.2: an anchor is positive if its IoU with some GT box is >= 0.7, or if
it has the highest IoU with a GT box (so that every GT box has at least one anchor, even
when no anchor reaches 0.7: the "low-quality" matches); negative if its IoU is < 0.3 with
every GT box; anchors in between do not contribute to the loss. Fast R-CNN sec. 2.3: a RoI is
foreground at IoU >= 0.5, background below 0.5 (Mask R-CNN uses the same, sec. 3.1).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def match(
    match_quality_matrix: Tensor,
    high_threshold: float,
    low_threshold: float,
    allow_low_quality_matches: bool = False,
) -> Tensor:
    """``match_quality_matrix [M GT, N predictions]`` (IoUs) -> ``[N]`` int64: the matched
    GT index in ``[0, M)``, or -1 (below low) / -2 (between the thresholds); the part
    ``Parts.matcher`` (exercise 11's ``match``)."""
    matched_vals, matches = match_quality_matrix.max(dim=0)
    all_matches = matches.clone() if allow_low_quality_matches else None

    matches[matched_vals < low_threshold] = BELOW_LOW_THRESHOLD
    between = (matched_vals >= low_threshold) & (matched_vals < high_threshold)
    matches[between] = BETWEEN_THRESHOLDS

    if all_matches is not None:
        # For each GT, every prediction tied at that GT's best quality is matched (to the
        # GT it overlaps most, which is that GT unless another GT overlaps it even more).
        best_per_gt = match_quality_matrix.max(dim=1).values
        _, pred_idx = (match_quality_matrix == best_per_gt[:, None]).nonzero(as_tuple=True)
        matches[pred_idx] = all_matches[pred_idx]
    return matches


MatchFn = Callable[[Tensor, float, float, bool], Tensor]


class Matcher:
    """Assign to each prediction the GT box it overlaps most, or a negative code.

    Args:
        high_threshold: quality ``>= high_threshold``: matched.
        low_threshold: quality ``< low_threshold``: :attr:`BELOW_LOW_THRESHOLD` (-1, a
            negative); in between: :attr:`BETWEEN_THRESHOLDS` (-2, ignored).
        allow_low_quality_matches: also match, for every GT, the predictions tied at that GT's
            highest quality, whatever their quality (Faster R-CNN's condition (i)).
        match_fn: the matching itself, with :func:`match`'s signature (the default).
    """

    BELOW_LOW_THRESHOLD = BELOW_LOW_THRESHOLD
    BETWEEN_THRESHOLDS = BETWEEN_THRESHOLDS

    def __init__(
        self,
        high_threshold: float,
        low_threshold: float,
        allow_low_quality_matches: bool = False,
        match_fn: MatchFn = match,
    ):
        if low_threshold > high_threshold:
            raise ValueError(
                f"low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches
        self.match_fn = match_fn

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """``match_quality_matrix [M GT, N predictions]`` (IoUs) -> ``[N]`` int64, see
        :func:`match`."""
        if match_quality_matrix.numel() == 0:
            what = "ground-truth boxes" if match_quality_matrix.shape[0] == 0 else "predictions"
            raise ValueError(f"no {what} to match in one of the images")
        return self.match_fn(
            match_quality_matrix,
            self.high_threshold,
            self.low_threshold,
            self.allow_low_quality_matches,
        )
