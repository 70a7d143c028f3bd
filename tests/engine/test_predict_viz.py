"""Pictures: the drawing helpers and ``python -m refimpl predict``."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from refimpl.data import CocoDetection, split_paths
from refimpl.engine import viz
from refimpl.engine.train import TrainConfig, train

from .conftest import STANDIN


def test_drawing_helpers(shapes_data, tmp_path):
    ds = CocoDetection(*split_paths(shapes_data, "train"))
    image, target = ds[0]
    fig, axes = viz.new_figure(1, 3, 2.0)
    assert viz.draw_instances(axes[0, 0], image, target, ds.class_names) == len(target["labels"])
    prediction = {"boxes": target["boxes"], "labels": target["labels"],
                  "scores": torch.linspace(0.2, 0.9, len(target["labels"])),
                  "masks": target["masks"][:, None].float()}  # fmt: skip
    shown = viz.draw_instances(axes[0, 1], image, prediction, ds.class_names, score_threshold=0.5)
    assert shown == int((prediction["scores"] >= 0.5).sum())
    viz.show_image(axes[0, 2], (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    viz.draw_anchors(axes[0, 2], torch.rand(1000, 4).sort(dim=1).values * 128, max_anchors=50)
    path = viz.save_figure(fig, tmp_path / "fig.png")
    assert Image.open(path).size == (600, 200)
    grid = viz.detection_grid([image, image], [prediction, prediction], [target, target])
    assert len(grid.axes) == 4


def test_predict_cli(shapes_data, tmp_path):
    from refimpl.__main__ import main

    run = tmp_path / "run"
    train(TrainConfig(data=str(shapes_data), out=str(run), model=STANDIN, iters=1,
                      batch_size=2, progress=False, final_eval=False, threads=1))  # fmt: skip
    images = sorted((shapes_data / "images").glob("val_*.png"))
    out = tmp_path / "pred"
    argv = ["predict", "--checkpoint", str(run / "checkpoint.pt"), "--images", str(images[0]),
            str(shapes_data / "images"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert (out / f"{images[0].stem}_pred.png").is_file()
    assert len(list(out.glob("*_pred.png"))) == 9  # the directory's 9 images (one twice)
    listing = json.loads((out / "predictions.json").read_text())
    # the stand-in's fixed detection: one square (label 1) at (8, 8, 40, 40), score 0.9
    assert listing[str(images[0])] == [
        {"box": [8.0, 8.0, 40.0, 40.0], "label": 1, "class": "square", "score": 0.9}]  # fmt: skip
