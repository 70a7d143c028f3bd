"""Weights this project trained itself, shipped inside the package (no download).

``maskrcnn_small_shapes``: :func:`refimpl.model.mask_rcnn.maskrcnn_small` trained from scratch
on the synthetic shapes by ``scripts/train_reference.py`` (the demo's recipe, a fixed number
of iterations). Stored as a plain state dict in float16 (half the bytes of float32; the
model runs in float32 after loading), beside a *card* (``maskrcnn_small_shapes.json``): the
builder's arguments, the class names, the SHA-256 of the weights file, the exact command,
git commit and wall time of the run that made it, and its measured COCO AP.

The loader lives here, beside the files it reads (not in ``refimpl.model``, which builds
architectures and knows nothing of any particular training run, nor in ``refimpl.engine``,
which trains): the weights, their card and the check that they belong together are one unit.

    from refimpl.weights import load_reference
    model, card = load_reference()        # eval mode, float32, the hash checked
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch

REFERENCE = "maskrcnn_small_shapes"


class WeightsHashError(ValueError):
    """A weights file's SHA-256 differs from its card's: corrupt, truncated or replaced."""


def _package_file(name: str) -> Path:
    return Path(str(resources.files(__name__).joinpath(name)))


def weights_path(name: str = REFERENCE) -> Path:
    """The ``.pt`` file of the named weights, inside the installed package."""
    return _package_file(f"{name}.pt")


def card(name: str = REFERENCE) -> dict:
    """The named weights' card: architecture, classes, hash, provenance, measured AP."""
    path = _package_file(f"{name}.json")
    if not path.is_file():
        known = sorted(p.stem for p in _package_file("").glob("*.json"))
        raise ValueError(f"unknown weights {name!r}: this package ships {known}")
    return json.loads(path.read_text())


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(
    name: str = REFERENCE, dtype: torch.dtype = torch.float32, path: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """The state dict, its hash checked against the card; floating tensors cast to ``dtype``.

    ``path`` reads another copy of the file (the same hash is required)."""
    path = Path(path) if path is not None else weights_path(name)
    expected = card(name)["sha256"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the weights file is missing (reinstall refimpl)")
    actual = sha256(path)
    if actual != expected:
        raise WeightsHashError(
            f"{path}: SHA-256 {actual} does not match the card's {expected} "
            f"(a corrupt or truncated file, a Git LFS pointer, or weights from another run)"
        )
    # weights_only: a plain dict of tensors, no pickled code
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def load_reference(name: str = REFERENCE, device: str | torch.device = "cpu"):
    """``(model in eval mode, card)``: the architecture the card names, loaded strictly."""
    from refimpl.model import mask_rcnn

    info = card(name)
    builder = getattr(mask_rcnn, info["builder"])
    model = builder(info["num_classes"], **info["model_kwargs"])
    model.load_state_dict(load_state_dict(name), strict=True)
    return model.to(device).eval(), info
