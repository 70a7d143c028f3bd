"""The capstone (lesson and exercise 14): the learner's own Mask R-CNN, assembled from the
parts they wrote in exercises 8-12, checked against refimpl's and trained.

1. **Assemble** (:func:`parts_from_notebooks`, :func:`assemble`): exercise 14 defines one
   function per part of :class:`~refimpl.model.parts.Parts` (``roi_align``, ``nms``, ...),
   each a thin adapter over the learner's own notebook loaded with
   :func:`refimpl.course.learner.load`. Every part that is written and keeps its contract is
   used; the others fall back to refimpl's, and :meth:`Assembly.describe` says which and why.
2. **Parity** (:func:`parity`): with identical weights, in float64, the learner's model gives
   refimpl's five losses and detections. First each part alone is compared with refimpl's on
   shared inputs (:func:`check_parts`); then the models; if the models differ, each given
   part is put alone into refimpl's model to name the first that changes the result.
3. **Gradient checks** (:func:`gradcheck_features`, :func:`gradcheck_model`): float64
   ``torch.autograd.gradcheck`` of the RoI heads' losses with respect to the FPN features,
   through the learner's RoI operator (Mask R-CNN sec. 3: the RoIAlign layer is
   differentiable in its input), and of a tiny model end to end with respect to parameters.
4. **Training** (:func:`train`): the learner's model trained by :func:`refimpl.engine.train`
   on the shapes data (``TrainConfig(parts=...)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor
from torch.autograd import gradcheck
from torch.func import functional_call

from refimpl.data.rectangles import rectangles_batch
from refimpl.model import LOSS_NAMES, PartError, Parts, maskrcnn_fpn, maskrcnn_small
from refimpl.model.losses import project_masks_on_boxes, sigmoid_mask_loss
from refimpl.model.parts import PART_NAMES, SPECS
from refimpl.ops import batched_nms as refimpl_batched_nms

from .learner import load

__all__ = [
    "CAPSTONE_NOTEBOOK",
    "TINY",
    "Assembly",
    "ParityReport",
    "PartResult",
    "assemble",
    "check_part",
    "check_parts",
    "example_batch",
    "gradcheck_features",
    "gradcheck_model",
    "parity",
    "parts_from_notebooks",
    "reference",
    "train",
    "trained_model",
]

CAPSTONE_NOTEBOOK = "14_capstone.ipynb"
D = torch.float64

# A Mask R-CNN small enough for float64 parity and gradient checks in seconds: 64 x 64 images,
# a 4-wide ResNet, a 2-channel FPN, 2x2 box RoIs and 4x4 mask RoIs (8x8 masks).
TINY: dict[str, Any] = {
    "min_size": 64,
    "max_size": 64,
    "backbone": "small",
    "backbone_width": 4,
    "fpn_channels": 2,
    "anchor_sizes": (8, 16, 32, 64, 128),
    "canonical_scale": 32,
    "representation_size": 6,
    "mask_layers": (2,),
    "mask_dim_reduced": 2,
    "box_roi_output_size": 2,
    "mask_roi_output_size": 4,
}
NUM_CLASSES = 3
# Parity runs the model with RoIAlign's half-pixel offset (detectron2's aligned=True), so that
# the model's RoI features exercise that branch too (the mask targets use aligned=False).
PARITY_OPTIONS: dict[str, Any] = {**TINY, "aligned": True, "box_batch_size_per_image": 32}

# Tolerances (float64, eps = 2.2e-16). A part that computes refimpl's formula in another order
# differs by a few eps per operation; the longest chain in one part (a bilinear sample: ~20
# products and sums, averaged over a bin) stays under 1e-14 relative. 1e-10 leaves four orders
# of magnitude for that, while the smallest real bug planted in the tests (a half-pixel shift,
# a dropped low-quality match) moves values by more than 1e-3.
PART_RTOL, PART_ATOL = 1e-10, 1e-12
# The model: part differences of ~1e-14 go through ~20 layers whose weights at initialisation
# have norms near 1 (Kaiming), and the losses are means of O(1) terms: a 1e-12 relative change
# at most, and 1e-9 leaves a thousandfold margin. A changed discrete choice (a box kept or
# not, a different match) changes a loss by far more than 1e-6.
LOSS_RTOL, LOSS_ATOL = 1e-9, 1e-12
DETECTION_RTOL, DETECTION_ATOL = 1e-9, 1e-9  # boxes are O(64) pixels: 1e-9 absolute is ~1e-11


def reference(name: str) -> Callable[..., Any]:
    """refimpl's implementation of the part ``name`` (what the learner's is compared with)."""
    if name not in SPECS:
        raise ValueError(f"no part named {name!r}; the parts are {PART_NAMES}")
    built_on = {
        "batched_nms": refimpl_batched_nms,
        "mask_targets": project_masks_on_boxes,
        "mask_loss": sigmoid_mask_loss,
    }
    return built_on.get(name) or SPECS[name].default


# --- 1. assembling the learner's parts --------------------------------------------------------


@dataclass
class Assembly:
    """The learner's parts (``parts``) and, for each part that falls back to refimpl's, why
    (``fallbacks``: not written yet, not defined, breaks its contract)."""

    parts: Parts
    fallbacks: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """The parts table, then one line per fallback."""
        lines = [self.parts.describe()]
        if self.fallbacks:
            lines.append("\nrefimpl's parts stand in for:")
            lines += [f"  {name}: {why}" for name, why in self.fallbacks.items()]
        return "\n".join(lines)


def _learner_sources(fn: Callable, namespace: Mapping[str, Any]) -> list[str]:
    """The learner's notebooks a function of exercise 14 calls into (``ex10.nms``)."""
    codes, names = [getattr(fn, "__code__", None)], set()
    while codes:  # the function's code and the code nested in it (comprehensions, lambdas)
        code = codes.pop()
        if code is not None:
            names.update(code.co_names)
            codes += [c for c in code.co_consts if hasattr(c, "co_names")]
    found = []
    for name in names:
        value = namespace.get(name)
        if isinstance(value, ModuleType) and value.__name__.startswith("learner_"):
            found.append(Path(str(value.__file__)).name)
    return sorted(set(found))


def assemble(
    namespace: Mapping[str, Any] | ModuleType,
    source: str = CAPSTONE_NOTEBOOK,
    *,
    use: tuple[str, ...] | list[str] | None = None,
    strict: bool = False,
) -> Assembly:
    """The parts defined in ``namespace`` (a module or a dict: exercise 14's functions, named
    as the parts) that are written and keep their contract; refimpl's for the others.

    Args:
        namespace: where the parts are looked up by name.
        source: the notebook they come from (for the table).
        use: only these parts (None: every part defined); the others are refimpl's, by
            choice (e.g. ``use=[n for n in PART_NAMES if n != "roi_align"]`` trains with
            refimpl's compiled RoIAlign instead of a slow NumPy one).
        strict: raise the :class:`~refimpl.model.PartError` of a part that breaks its
            contract instead of falling back (a part not written yet always falls back).
    """
    if isinstance(namespace, ModuleType):
        namespace = vars(namespace)
    if not isinstance(namespace, Mapping):
        raise TypeError(f"namespace must be a module or a mapping, got {type(namespace).__name__}")
    chosen = list(PART_NAMES) if use is None else list(use)
    unknown = [n for n in chosen if n not in SPECS]
    if unknown:
        raise ValueError(f"use names unknown parts {unknown}; the parts are {PART_NAMES}")
    given, sources, fallbacks = {}, {}, {}
    for name in PART_NAMES:
        fn = namespace.get(name)
        if name not in chosen:
            fallbacks[name] = "left out by choice (use=...)"
            continue
        if fn is None:
            fallbacks[name] = f"not defined in {source}"
            continue
        if not callable(fn):
            fallbacks[name] = f"{source} defines {name} as a {type(fn).__name__}, not a function"
            continue
        try:
            Parts(**{name: fn}).validate()
        except PartError as e:
            if isinstance(e.__cause__, NotImplementedError):
                fallbacks[name] = "not written yet (raises NotImplementedError)"
                continue
            if strict:
                raise
            fallbacks[name] = "breaks its contract: " + str(e).splitlines()[0]
            continue
        given[name] = fn
        via = _learner_sources(fn, namespace)
        sources[name] = f"{', '.join(via)} via {source}" if via else source
    return Assembly(Parts(**given, sources=sources), fallbacks)


def parts_from_notebooks(
    folder: str | Path = ".",
    *,
    use: tuple[str, ...] | list[str] | None = None,
    strict: bool = False,
) -> Assembly:
    """The learner's parts from ``folder/14_capstone.ipynb`` (which loads their notebooks
    08-12 beside it), as :func:`assemble` takes them."""
    path = Path(folder) / CAPSTONE_NOTEBOOK
    if not path.is_file():
        raise FileNotFoundError(f"no {CAPSTONE_NOTEBOOK} in {str(folder)!r}")
    return assemble(load(path), CAPSTONE_NOTEBOOK, use=use, strict=strict)


# --- 2a. each part against refimpl's, on shared inputs ----------------------------------------


@dataclass
class PartResult:
    """One part compared with refimpl's: ``ok``, and if not, what differs where."""

    name: str
    ok: bool
    message: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {'same as refimpl' if self.ok else self.message}"


class _Differs(Exception):
    pass


def _boxes(g: torch.Generator, n: int, size: float = 40.0) -> Tensor:
    xy = torch.rand(n, 2, generator=g, dtype=D) * size
    return torch.cat([xy, xy + 2.5 + torch.rand(n, 2, generator=g, dtype=D) * size], dim=1)


def _cases(name: str) -> list[tuple[str, tuple]]:  # noqa: C901 (one case list per part)
    """Shared float64 inputs for part ``name``: (description, arguments)."""
    g = torch.Generator().manual_seed(2017)
    if name == "roi_align":
        x = torch.randn(2, 3, 10, 12, generator=g, dtype=D)
        k = torch.tensor([0, 1, 1, 0, 1], dtype=D)[:, None]
        rois = torch.cat([k, _boxes(g, 5, 14.0)], dim=1)
        return [
            (f"output {s}, scale {sc}, sampling {r}, aligned={a}", (x, rois, s, sc, r, a))
            for s, sc, r, a in [
                ((2, 2), 0.5, 2, False),
                ((3, 4), 0.5, 2, True),
                ((4, 4), 1.0, -1, False),
                ((2, 3), 0.25, -1, True),
                ((5, 5), 1.0, 1, True),
            ]
        ]
    if name == "fpn_level":
        side = torch.tensor([2.0, 10, 27.9, 28, 56, 111.9, 112, 224, 448, 1000], dtype=D)
        boxes = torch.stack([side * 0 + 3, side * 0 + 1, side + 3, side + 1], dim=1)
        return [(f"k 2..5, scale {s}", (boxes, 2, 5, s, 4)) for s in (224.0, 56.0, 32.0)]
    if name == "anchors":
        feats = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
        sizes = tuple((s,) for s in (8, 16, 32, 64, 128))
        return [
            ("a 64x64 image, 5 levels", ((64, 64), feats, sizes, ((0.5, 1.0, 2.0),) * 5)),
            ("a 96x64 image, 2 levels", ((96, 64), [(24, 16), (12, 8)], ((8, 16), (32,)),
                                          ((1.0,), (0.5, 2.0)))),
        ]  # fmt: skip
    if name == "box_iou":
        a, b = _boxes(g, 7), _boxes(g, 5)
        b[0] = a[0]  # identical
        b[1] = torch.tensor([200, 200, 210, 210], dtype=D)  # disjoint from all
        return [("7 x 5 boxes (one identical pair, one disjoint box)", (a, b))]
    if name == "encode_boxes":
        return [
            (f"weights {w}", (_boxes(g, 6), _boxes(g, 6), w))
            for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0))
        ]
    if name == "decode_boxes":
        deltas = torch.randn(4, 12, generator=g, dtype=D)
        deltas[0, 2], deltas[1, 7] = 30.0, 40.0  # dw, dh beyond the clamp
        return [
            (f"3 classes, weights {w}", (deltas, _boxes(g, 4), w))
            for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0))
        ]
    if name == "matcher":
        # GT 1's best (0.6, predictions 5 and 6: a tie) is between the thresholds and GT 2's
        # (0.25, prediction 3) below both: only low-quality matches keep them; prediction 4
        # ties for GT 2's best but overlaps GT 0 more.
        made = torch.tensor(
            [[0.9, 0.1, 0.2, 0.0, 0.35, 0.1, 0.0],
             [0.1, 0.5, 0.5, 0.2, 0.0, 0.6, 0.6],
             [0.0, 0.05, 0.1, 0.25, 0.25, 0.0, 0.1]], dtype=D,
        )  # fmt: skip
        rand = torch.rand(3, 9, generator=g, dtype=D) * 0.9
        rand[0, 4] = rand[1, 4] = 0.75  # a tie between GTs
        return [
            (f"{w} IoUs, thresholds ({hi}, {lo}), low-quality matches {q}", (iou, hi, lo, q))
            for w, iou in (("3 x 7 made", made), ("3 x 9 random", rand))
            for hi, lo, q in ((0.7, 0.3, True), (0.7, 0.3, False), (0.5, 0.5, False))
        ]
    if name == "sampler":
        labels = [
            (torch.rand(40, generator=g) * 4).long() - 1,
            torch.tensor([0, 0, 1, 0, -1, 2, 0, 0, 0, 0]),
        ]
        return [
            (f"batch {b}, fraction {f}, seed 0", (labels, b, f, 0))
            for b, f in ((8, 0.25), (16, 0.5), (64, 0.5))
        ]
    if name in ("nms", "batched_nms"):
        boxes = torch.cat([_boxes(g, 12, 20.0), _boxes(g, 4, 20.0) + 50])
        scores = torch.randperm(16, generator=g).to(D) / 16 + 0.01  # distinct
        idxs = torch.tensor([0, 1, 2] * 5 + [1])
        extra = (idxs,) if name == "batched_nms" else ()
        return [(f"16 boxes, IoU threshold {t}", (boxes, scores, *extra, t)) for t in (0.3, 0.7)]
    if name == "mask_targets":
        masks = torch.zeros(3, 24, 20, dtype=torch.uint8)
        masks[0, 3:15, 2:12], masks[1, 10:, 8:19], masks[2, 5:9, 5:17] = 1, 1, 1
        boxes = _boxes(g, 6, 12.0)
        matched = torch.tensor([0, 1, 2, 1, 0, 2])
        return [(f"6 RoIs, resolution {m}", (masks, boxes, matched, m)) for m in (4, 7)]
    if name == "mask_loss":
        logits = torch.randn(5, 4, 6, 6, generator=g, dtype=D)
        targets = torch.rand(5, 6, 6, generator=g, dtype=D)
        return [("5 RoIs, 4 classes", (logits, torch.tensor([1, 3, 2, 1, 3]), targets))]
    if name == "paste_masks":
        masks = torch.rand(4, 1, 6, 6, generator=g, dtype=D)
        boxes = _boxes(g, 4, 20.0)
        boxes[3] = torch.tensor([-5.5, 18.2, 12.0, 40.0], dtype=D)  # partly outside the image
        return [("4 masks, a 30x26 image", (masks, boxes, (30, 26)))]
    raise ValueError(f"no part named {name!r}; the parts are {PART_NAMES}")


def _args(name: str, args: tuple) -> tuple:
    """Fresh copies (a part must not see what another did to its inputs), a fresh generator."""
    if name == "sampler":
        labels, b, f, seed = args
        return ([t.clone() for t in labels], b, f, torch.Generator().manual_seed(seed))
    return tuple(a.clone() if isinstance(a, Tensor) else a for a in args)


def _first_index(bad: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


def _compare(what: str, got: Any, expected: Any, exact: bool) -> None:
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            raise _Differs(f"{what}: expected {len(expected)} items, got {type(got).__name__}")
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            _compare(f"{what}[{i}]", a, b, exact)
        return
    if not isinstance(got, Tensor):
        raise _Differs(f"{what}: expected a Tensor, got {type(got).__name__}")
    short = expected.dim() == 1 and expected.numel() <= 40 and got.dim() == 1
    if (
        (exact or not expected.is_floating_point())
        and short
        and not torch.equal(got.to(expected.dtype), expected)
    ):
        raise _Differs(f"{what}: {got.tolist()}, refimpl's {expected.tolist()}")
    if got.shape != expected.shape:
        raise _Differs(f"{what}: shape {list(got.shape)}, refimpl's {list(expected.shape)}")
    if exact or not expected.is_floating_point():
        if not torch.equal(got.to(expected.dtype), expected):
            i = _first_index(got.to(expected.dtype) != expected)
            raise _Differs(f"{what}{list(i)}: {got[i].item()}, refimpl's {expected[i].item()}")
        return
    got = got.to(expected.dtype)
    bad = (got - expected).abs() > PART_ATOL + PART_RTOL * expected.abs()
    bad |= got.isnan() != expected.isnan()
    if bad.any():
        i = _first_index(bad)
        raise _Differs(
            f"{what}{list(i)}: {got[i].item():.12g}, refimpl's {expected[i].item():.12g} "
            f"(max difference {(got - expected).abs().nan_to_num(math.inf).max().item():.3g})"
        )


def check_part(name: str, fn: Callable[..., Any]) -> PartResult:
    """``fn`` against refimpl's part ``name`` on the shared float64 inputs (:func:`_cases`):
    the values (exactly for indices, within ``PART_RTOL`` for floats) and, for ``roi_align``
    and ``mask_loss``, the gradient (a vector-Jacobian product with a random vector)."""
    ref = reference(name)
    exact = name in ("fpn_level", "anchors", "matcher", "sampler", "nms", "batched_nms")
    for description, args in _cases(name):
        try:
            expected = ref(*_args(name, args))
            mine_args = _args(name, args)
            differentiable = name in ("roi_align", "mask_loss")
            if differentiable:
                mine_args[0].requires_grad_()
            try:
                got = fn(*mine_args)
            except Exception as e:
                message = f"raised {type(e).__name__} on {description}: {e}"
                return PartResult(name, False, message)
            _compare("the output", got, expected, exact)
            if differentiable:
                _compare_gradient(name, ref, args, mine_args, got)
        except _Differs as e:
            return PartResult(name, False, f"differs from refimpl's on {description}: {e}")
    return PartResult(name, True)


def _compare_gradient(name: str, ref: Callable, args: tuple, mine_args: tuple, got: Tensor):
    g = torch.Generator().manual_seed(14)
    v = torch.randn(got.shape, generator=g, dtype=got.dtype)
    if not got.requires_grad:
        raise _Differs(f"the output does not depend on {SPECS[name].call.split('(')[1]}")
    (mine,) = torch.autograd.grad(got, mine_args[0], v, allow_unused=True)
    ref_args = _args(name, args)
    ref_args[0].requires_grad_()
    (expected,) = torch.autograd.grad(ref(*ref_args), ref_args[0], v)
    if mine is None:
        raise _Differs("no gradient for the first argument")
    _compare("the gradient", mine, expected, exact=False)


def check_parts(parts: Parts) -> list[PartResult]:
    """Every part the learner gave (``parts.mine()``, in :data:`PART_NAMES` order) against
    refimpl's."""
    return [check_part(name, getattr(parts, name)) for name in parts.mine()]


# --- 2b. the models: losses and detections ----------------------------------------------------


def example_batch(size: int = 64, num_images: int = 2, seed: int = 3):
    """float64 images with two filled rectangles each (fractional boxes, classes 1 and 2)."""
    return rectangles_batch(size, num_images, D, seed)


def _outputs(parts: Parts | None, options: Mapping[str, Any], seed: int):
    """(losses, detections) of the float64 model with ``parts``, weights from seed 0, the
    training examples sampled from a generator seeded with ``seed``."""
    torch.manual_seed(0)
    model = maskrcnn_fpn(NUM_CLASSES, **options, parts=parts).double()
    images, targets = example_batch()
    model.train().set_sampling(generator=torch.Generator().manual_seed(seed))
    losses = {k: v.detach() for k, v in model(images, targets).items()}
    with torch.no_grad():
        detections = model.eval()(images)
    return losses, detections


def _close(a: Tensor, b: Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and bool(((a - b).abs() <= atol + rtol * b.abs()).all())


def _model_differences(mine, ref) -> list[str]:
    (losses, dets), (ref_losses, ref_dets) = mine, ref
    out = []
    for name in LOSS_NAMES:
        if not _close(losses[name], ref_losses[name], LOSS_RTOL, LOSS_ATOL):
            out.append(
                f"{name}: {losses[name].item():.12g}, refimpl's {ref_losses[name].item():.12g}"
            )
    for i, (d, r) in enumerate(zip(dets, ref_dets, strict=True)):
        if d["boxes"].shape[0] != r["boxes"].shape[0]:
            out.append(
                f"image {i}: {d['boxes'].shape[0]} detections, refimpl's {r['boxes'].shape[0]}"
            )
            continue
        for key in ("labels", "boxes", "scores", "masks"):
            if not _close(d[key].to(r[key].dtype), r[key], DETECTION_RTOL, DETECTION_ATOL):
                out.append(f"image {i}: the detections' {key} differ")
    return out


@dataclass
class ParityReport:
    """The learner's model against refimpl's: ``ok``; ``first_part``, the first part that
    differs (None when none does); the per-part results; the five losses of both models;
    what differs."""

    ok: bool
    first_part: str | None
    part_results: list[PartResult]
    losses: dict[str, tuple[float, float]]
    differences: list[str]

    def __str__(self) -> str:
        lines = ["per part, against refimpl's on shared inputs (float64):"]
        lines += [f"  {r}" for r in self.part_results] or ["  (no part of yours)"]
        lines.append("the model (float64, same weights, same sampled examples):")
        lines.append(f"  {'loss':<18}{'yours':>22}{'refimpl':>22}")
        for name, (a, b) in self.losses.items():
            lines.append(f"  {name:<18}{a:>22.15g}{b:>22.15g}")
        lines += [f"  differs: {d}" for d in self.differences]
        if self.ok:
            lines.append("PARITY: your model is refimpl's (losses and detections)")
        else:
            lines.append(f"NO PARITY: the first part that differs is {self.first_part}")
        return "\n".join(lines)


def parity(
    parts: Parts, *, seed: int = 0, options: Mapping[str, Any] | None = None
) -> ParityReport:
    """The learner's model (``parts``) against refimpl's, both float64 with the same weights
    and the same sampled training examples (``seed``): the five losses and the detections.

    ``first_part`` is the first given part (in :data:`PART_NAMES` order) that differs from
    refimpl's on the shared inputs; when every part agrees there but the models differ, the
    first part that, put alone into refimpl's model, changes its losses or detections."""
    if not isinstance(parts, Parts):
        raise TypeError(f"parts must be a Parts, got {type(parts).__name__}")
    options = dict(PARITY_OPTIONS if options is None else options)
    results = check_parts(parts)
    first = next((r.name for r in results if not r.ok), None)
    ref = _outputs(None, options, seed)
    mine = _outputs(parts, options, seed)
    differences = _model_differences(mine, ref)
    if differences and first is None:
        for name in parts.mine():
            alone = Parts(**{name: getattr(parts, name)})
            if _model_differences(_outputs(alone, options, seed), ref):
                first = name
                break
        else:
            first = "(none alone: it takes several of your parts together)"
    losses = {n: (mine[0][n].item(), ref[0][n].item()) for n in LOSS_NAMES}
    ok = first is None and not differences
    return ParityReport(ok, first, results, losses, differences)


# --- 3. gradient checks -----------------------------------------------------------------------


def gradcheck_features(parts: Parts, *, seed: int = 1) -> bool:
    """float64 ``gradcheck`` (fast mode: ``v^T J u`` against finite differences along ``u``)
    of the box and mask heads' three losses with respect to the FPN features P2..P5, for fixed
    proposals and targets, through ``parts.roi_align`` (and the learner's box coding, matcher,
    sampler, mask targets and mask loss). Raises ``GradcheckError`` on a wrong gradient."""
    torch.manual_seed(0)
    model = maskrcnn_fpn(NUM_CLASSES, **{**TINY, "box_batch_size_per_image": 16}, parts=parts)
    heads = model.double().roi_heads.train()
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 2, 64 // 2**k, 64 // 2**k, generator=g, dtype=D) for k in (2, 3, 4, 5)]
    p6 = torch.randn(2, 2, 1, 1, generator=g, dtype=D)
    # fractional proposals: no RoIAlign sample on the pixel lattice (the kinks of bilinear)
    xy = torch.rand(2, 6, 2, generator=g, dtype=D) * 40 + 0.37
    wh = torch.rand(2, 6, 2, generator=g, dtype=D) * 30 + 4.13
    proposals = list(torch.cat([xy, (xy + wh).clamp(max=63.7)], dim=2))
    _, targets = example_batch(64, 2, seed=2)

    def losses(*features):
        # the same sampled RoIs at every evaluation: a fresh generator each time
        heads.fg_bg_sampler.generator = torch.Generator().manual_seed(seed)
        pyramid = {**dict(zip(("p2", "p3", "p4", "p5"), features, strict=True)), "p6": p6}
        _, out = heads(pyramid, proposals, (64, 64), [(64, 64)] * 2, targets)
        return out["loss_classifier"], out["loss_box_reg"], out["loss_mask"]

    inputs = [f.requires_grad_() for f in feats]
    return gradcheck(losses, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


GRADCHECK_PARAMETERS = (
    "backbone.body.bn1.weight",
    "backbone.fpn.inner_blocks.0.0.bias",
    "rpn.head.cls_logits.bias",
    "roi_heads.box_head.fc7.bias",
    "roi_heads.box_predictor.bbox_pred.bias",
    "roi_heads.mask_predictor.conv5_mask.bias",
)


def gradcheck_model(parts: Parts, *, seed: int = 3) -> bool:
    """float64 ``gradcheck`` (fast mode) of a tiny model's summed losses, end to end, with
    respect to parameters all along the path (backbone, FPN, RPN head, box and mask heads).

    What is not differentiable is held fixed, as in training (Faster R-CNN's approximate joint
    training detaches the proposals): the RPN's regression weights are zero (proposals do not
    depend on the parameters), NMS is off (threshold 1) and every RoI is used, so that no
    discrete choice depends on a score order."""
    torch.manual_seed(0)
    options = {
        **TINY,
        "rpn_nms_thresh": 1.0,
        "rpn_pre_nms_top_n_train": 10_000,
        "rpn_post_nms_top_n_train": 10_000,
        "box_batch_size_per_image": 10_000,
        "box_positive_fraction": 1.0,
        "rpn_batch_size_per_image": 64,
        "aspect_ratios": (1.0,),
    }
    model = maskrcnn_fpn(NUM_CLASSES, **options, parts=parts).double().train()
    with torch.no_grad():
        model.rpn.head.bbox_pred.weight.zero_()
        model.rpn.head.bbox_pred.bias.uniform_(-0.2, 0.2)
    images, targets = example_batch(64, 2, seed=seed)
    params = dict(model.named_parameters())

    def total(*values):
        model.set_sampling(generator=torch.Generator().manual_seed(seed))
        named = dict(zip(GRADCHECK_PARAMETERS, values, strict=True))
        out = functional_call(model, named, (images, targets))
        return sum(out.values())

    inputs = [params[n].detach().clone().requires_grad_() for n in GRADCHECK_PARAMETERS]
    return gradcheck(total, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


# --- 4. training --------------------------------------------------------------------------------


def train(parts: Parts, data: str | Path, out: str | Path, **config: Any) -> dict:
    """Train ``maskrcnn_small`` with ``parts`` on a COCO-layout dataset (e.g. the shapes,
    ``python -m refimpl data``) with :func:`refimpl.engine.train`; ``config``: any other
    :class:`~refimpl.engine.config.TrainConfig` field (``iters``, ``time_budget_s``, ``lr``,
    ``progress`` for the tqdm bar, ...). Returns the engine's summary (final COCO bbox and segm
    AP in ``summary["metrics"]``; the five losses per iteration in ``out/metrics.jsonl``)."""
    from refimpl.engine.train import TrainConfig
    from refimpl.engine.train import train as engine_train

    if not isinstance(parts, Parts):
        raise TypeError(f"parts must be a Parts, got {type(parts).__name__}")
    cfg = TrainConfig(data=str(data), out=str(out), model="small", parts=parts, **config)
    return engine_train(cfg)


def trained_model(parts: Parts):
    """``(model, card)``: ``maskrcnn_small`` with ``parts`` and refimpl's reference weights
    (:func:`refimpl.weights.load_reference`, trained on the shapes), in eval mode. With parity,
    its detections are the reference model's: the learner's parts run a trained detector."""
    from refimpl.weights import load_reference

    if not isinstance(parts, Parts):
        raise TypeError(f"parts must be a Parts, got {type(parts).__name__}")
    reference_model, card = load_reference()
    model = maskrcnn_small(card["num_classes"], **card["model_kwargs"], parts=parts)
    model.load_state_dict(reference_model.state_dict(), strict=True)
    return model.eval(), card
