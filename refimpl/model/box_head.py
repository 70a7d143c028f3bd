"""The box head: RoI features -> class scores and class-specific box deltas (Fast R-CNN
sec. 2; with FPN, Lin et al. 2017 sec. 4.2: "a 2-fc MLP head" of 1024-d fc layers, each
followed by ReLU, before the final classification and regression layers). Mask R-CNN (sec. 3,
Figure 4 right) keeps this head and adds the mask branch beside it.
"""

from __future__ import annotations

from torch import Tensor, nn


class TwoMLPHead(nn.Module):
    """flatten -> ``fc6`` + ReLU -> ``fc7`` + ReLU (torchvision's names)."""

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc6(x.flatten(start_dim=1)).relu()
        return self.fc7(x).relu()


class FastRCNNPredictor(nn.Module):
    """``cls_score`` (``num_classes`` logits, 0 = background) and ``bbox_pred``
    (``4 * num_classes`` deltas: one box per class, Fast R-CNN sec. 2.2)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)
