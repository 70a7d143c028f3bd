"""What the grading tests in ``tests/grading/`` are written with.

A grading module holds ``test_*`` functions, each taking the learner's submission (``sub``,
the namespace their notebook built) and worth some points::

    from refimpl.course.checks import check_array, points

    @points(2)
    def test_forward_known_answer(sub):
        \"\"\"forward: a 4x4 map, one box, known answer\"\"\"
        check_array(sub.roi_pool_forward(x, rois, 2), expected, "roi_pool_forward(x, rois, 2)")

Points come from ``@points(n)`` or from a module-level ``POINTS = {"test_name": n}`` (default
1); the first line of the docstring is the title learners see. A test fails by raising:
``Feedback`` (an ``AssertionError``) carries a message written for the learner, anything else
is reported with the part of its traceback that lies in the learner's cells.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from refimpl.ops import geometry

SUBMISSION_MODULE = "submission"  # the __name__ the learner's cells run under


class Feedback(AssertionError):
    """A failed check, with a message meant for the learner."""


def fail(message: str) -> None:
    raise Feedback(message)


def points(n: float, timeout: float | None = None) -> Callable:
    """Give a test ``n`` points (and optionally its own time limit in seconds)."""

    def mark(fn: Callable) -> Callable:
        fn.points = float(n)
        fn.timeout = timeout
        return fn

    return mark


@dataclass(frozen=True)
class GradingTest:
    name: str  # the function's name
    title: str  # the first line of its docstring (or the name)
    points: float
    timeout: float | None
    fn: Callable


def collect_tests(module: types.ModuleType) -> list[GradingTest]:
    """The module's ``test_*`` functions in the order they are written, with their points."""
    table = getattr(module, "POINTS", {})
    tests = []
    for name, fn in vars(module).items():
        if not (name.startswith("test_") and inspect.isfunction(fn)):
            continue
        if fn.__module__ != module.__name__:
            continue  # imported from elsewhere
        doc = inspect.getdoc(fn)
        title = doc.splitlines()[0].strip() if doc else name
        pts = float(getattr(fn, "points", table.get(name, 1.0)))
        tests.append(GradingTest(name, title, pts, getattr(fn, "timeout", None), fn))
    return tests


# --- the learner's namespace ---------------------------------------------------------------


class Submission:
    """The learner's notebook as the tests see it: ``sub.roi_pool_forward`` and so on.

    A name the notebook does not define fails the test with a message saying so (and which
    cells raised, since a failing cell is the usual reason); a function imported from
    ``refimpl`` (or anywhere else) instead of written in the notebook is refused.
    """

    def __init__(self, namespace: dict[str, Any], cell_errors: list[str] | None = None):
        self._namespace = namespace
        self._cell_errors = list(cell_errors or [])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._namespace:
            message = f"your notebook does not define `{name}`"
            if self._cell_errors:
                message += f" (maybe because {self._cell_errors[0]})"
            fail(message)
        value = self._namespace[name]
        module = getattr(value, "__module__", SUBMISSION_MODULE)
        if (inspect.isfunction(value) or inspect.isbuiltin(value)) and module not in (
            SUBMISSION_MODULE,
            None,
        ):
            fail(
                f"`{name}` is `{module}.{getattr(value, '__qualname__', name)}`, imported "
                "rather than written in your notebook: the exercise is to write it"
            )
        return value

    def has(self, name: str) -> bool:
        return name in self._namespace


# --- comparisons that explain themselves ---------------------------------------------------


def _short(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.10g}"
    return repr(v.item() if isinstance(v, np.generic) else v)


def describe(**arguments: Any) -> str:
    """A compact account of a call's inputs for feedback: small arrays in full, others by shape."""
    parts = []
    for name, v in arguments.items():
        if isinstance(v, np.ndarray):
            if v.size <= 20:
                text = np.array2string(v, separator=", ", precision=6, max_line_width=200)
                parts.append(f"{name}={' '.join(text.split())}")
            else:
                parts.append(f"{name}=<{v.dtype} array of shape {list(v.shape)}>")
        else:
            parts.append(f"{name}={v!r}")
    return ", ".join(parts)


def as_array(got: Any, what: str) -> np.ndarray:
    """``got`` as an array, or a failure saying what it was instead."""
    if got is None:
        fail(f"{what} returned None: did you forget a `return`?")
    if isinstance(got, np.ndarray):
        return got
    try:
        arr = np.asarray(got)
    except Exception as e:
        fail(f"{what} returned a {type(got).__name__}, not an array ({e})")
    if arr.dtype == object:
        fail(f"{what} returned a {type(got).__name__} that is not a numeric array")
    return arr


def check_array(
    got: Any,
    expected: np.ndarray,
    what: str,
    *,
    rtol: float = 1e-9,
    atol: float = 1e-9,
    check_dtype: bool = True,
    inputs: str = "",
    rois: np.ndarray | None = None,
) -> None:
    """``got`` has ``expected``'s shape (and dtype) and values, or a failure that says where not.

    The message names the call (``what``), the first mismatching index with both values, how
    many values differ and the largest error; ``inputs`` (see :func:`describe`) is appended,
    and with ``rois`` (for outputs indexed by RoI first) the RoI of the first mismatch.
    """
    expected = np.asarray(expected)
    got = as_array(got, what)
    suffix = f"\n  inputs: {inputs}" if inputs else ""
    if got.shape != expected.shape:
        fail(f"{what}: expected shape {expected.shape}, got {got.shape}{suffix}")
    if check_dtype and got.dtype != expected.dtype:
        fail(f"{what}: expected dtype {expected.dtype}, got {got.dtype}{suffix}")
    if got.dtype.kind not in "biuf" or expected.dtype.kind not in "biuf":
        fail(f"{what}: expected numbers, got an array of dtype {got.dtype}{suffix}")
    if got.size == 0:
        return
    g = got.astype(np.float64)
    e = expected.astype(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    if not bad.any():
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    with np.errstate(invalid="ignore"):
        err = np.nanmax(np.where(bad, np.abs(g - e), 0.0))
    if rois is not None and len(index) > 1 and index[0] < len(rois):
        roi = ", ".join(f"{v:.6g}" for v in np.asarray(rois)[index[0]].tolist())
        suffix = f"\n  RoI {index[0]}: ({roi})" + suffix
    fail(
        f"{what}: {int(bad.sum())} of {got.size} values differ (largest error {err:.3g});"
        f" the first at index {index}: expected {_short(expected[index])},"
        f" got {_short(got[index])}{suffix}"
    )


def check_equal(got: Any, expected: Any, what: str, *, inputs: str = "") -> None:
    """Exact equality of plain values (ints, tuples, ...)."""
    suffix = f"\n  inputs: {inputs}" if inputs else ""
    if got != expected:
        fail(f"{what}: expected {expected!r}, got {got!r}{suffix}")


def check_unchanged(before: np.ndarray, after: np.ndarray, name: str) -> None:
    """An input the learner's function must not modify."""
    if not np.array_equal(before, after, equal_nan=True):
        fail(f"your function modified its input `{name}`: work on a copy")


# --- inputs --------------------------------------------------------------------------------


def random_rois(
    rng: np.random.Generator,
    k: int,
    n_images: int,
    height: int,
    width: int,
    spatial_scale: float = 1.0,
    *,
    spill: float = 0.3,
    min_size: float = 0.3,
    max_size: float = 0.8,
) -> np.ndarray:
    """``k`` random RoIs ``(batch_index, x1, y1, x2, y2)`` in image coordinates (float64).

    Feature map ``height x width`` at ``spatial_scale``: boxes lie mostly on the map, some
    starting up to ``spill`` of its size before it or ending beyond it; sizes from
    ``min_size`` feature pixels to ``max_size`` of the map. Coordinates are continuous
    random floats: floor/ceil/round are (almost surely) never at a tie.
    """
    img_h, img_w = height / spatial_scale, width / spatial_scale
    rois = np.empty((k, 5))
    rois[:, 0] = rng.integers(0, n_images, k)
    for column, extent in ((1, img_w), (2, img_h)):  # x1, x2 then y1, y2
        lo = rng.uniform(-spill * extent, 0.8 * extent, k)
        span = rng.uniform(min_size / spatial_scale, max_size * extent, k)
        rois[:, column] = lo
        rois[:, column + 2] = lo + span
    return rois


def random_features(
    rng: np.random.Generator, n: int, c: int, h: int, w: int, dtype: Any = np.float64
) -> np.ndarray:
    """Distinct values (no ties, so every max has one winner), in ``dtype``."""
    values = rng.permutation(n * c * h * w).astype(np.float64)
    values = (values + rng.uniform(0.05, 0.95, values.shape)) / (n * c * h * w)
    return (values * 4 - 2).reshape(n, c, h, w).astype(dtype)


def ref_bilinear(features: np.ndarray, y: float, x: float) -> np.ndarray:
    """torchvision's bilinear interpolation of ``features [..., H, W]`` at ``(y, x)``, in
    float64: the reference the RoIWarp and RoIAlign lessons' ``bilinear`` is graded against
    (0 more than a pixel outside)."""
    F = np.float64
    height, width = features.shape[-2:]
    in_y, y0, y1, wy0, wy1 = geometry.bilinear_1d(F, F(y), height)
    in_x, x0, x1, wx0, wx1 = geometry.bilinear_1d(F, F(x), width)
    if not (in_y and in_x):
        return np.zeros(features.shape[:-2])
    f = features
    return (
        wy0 * wx0 * f[..., y0, x0]
        + wy0 * wx1 * f[..., y0, x1]
        + wy1 * wx0 * f[..., y1, x0]
        + wy1 * wx1 * f[..., y1, x1]
    )
