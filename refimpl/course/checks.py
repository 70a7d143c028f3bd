"""What the grading tests in ``refimpl/course/grading/`` are written with.

A grading module holds ``test_*`` functions, each taking the learner's submission ``sub``
and worth some points::

    from refimpl.course.checks import case, check_array, describe, points

    @points(2)
    def test_forward_random(sub):
        \"\"\"forward: random maps and boxes\"\"\"
        x, rois = case(seed=20, n=2, c=3, h=9, w=11, k=8, spatial_scale=0.5)
        check_array(sub.roi_pool_forward(x, rois, 2, 0.5), ref_forward(x, rois, 2, 0.5),
                    "y", inputs=describe("roi_pool_forward", x=x, rois=rois, output_size=2,
                                         spatial_scale=0.5))

``sub`` is the learner's namespace: under ``python -m refimpl.grade`` a proxy to the
sandbox (:class:`refimpl.course.remote.RemoteSubmission`: every call crosses it as data),
under pytest the namespace itself (:class:`LocalSubmission`); both have the same API
(``sub.f(...)``, ``sub.f.call_with_args(...)``, ``sub.has``, ``sub.value``,
``sub.differentiable``, probes). Points come from ``@points(n)`` (``long=True``: only with
``--long``) or a module-level ``POINTS = {"test_name": n}`` (default 1); the first line of
the docstring is the title learners see. A test fails by raising: :class:`Feedback` (an
``AssertionError``) carries a message written for the learner, anything else is reported
with the part of its traceback that lies in the learner's cells.

Feedback says how to reproduce a failure: :func:`describe` prints the inputs' recipes and the
call as the learner types it. Inputs from :func:`case`, :func:`random_features`,
:func:`random_rois` have a recipe; other random ones are made with :func:`drawn` (``x =
drawn(rng, "rng.normal(size=(2, 3))")`` is rebuilt as ``rng = checks.rng_at(...); x = ...``),
small ones print as literals, and :class:`Code` stands for an argument given as source.
``hints`` name a likely cause (see :func:`check_array`, :func:`offset_hint`,
:func:`count_hint`).

A grading module may also set ``GIVENS`` (what the sandbox may import from refimpl,
:mod:`refimpl.course.givens`), ``ENVIRONMENT`` (variables the sandbox starts with) and
``LIMIT_HINT`` (what to suggest when the learner's code runs past its CPU time).
"""

from __future__ import annotations

import inspect
import sys
import textwrap
import types
import weakref
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


def points(n: float, timeout: float | None = None, long: bool = False) -> Callable:
    """Give a test ``n`` points; ``timeout``: a CPU-time floor of its own (seconds);
    ``long``: a test of the long tier, run only with ``--long``."""

    def mark(fn: Callable) -> Callable:
        fn.points = float(n)
        fn.timeout = timeout
        fn.long = long
        return fn

    return mark


@dataclass(frozen=True)
class GradingTest:
    name: str  # the function's name
    title: str  # the first line of its docstring (or the name)
    points: float
    timeout: float | None
    fn: Callable
    long: bool = False


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
        timeout, long = getattr(fn, "timeout", None), bool(getattr(fn, "long", False))
        tests.append(GradingTest(name, title, pts, timeout, fn, long))
    return tests


# --- probes: small functions of a test that run inside the sandbox --------------------------


class Probe:
    """A function ``fn(namespace, *args) -> data`` run where the learner's code runs.

    Its source travels to the sandbox as text, so it must be self-contained (imports
    inside). Call it as ``probe_fn(sub, *args)``. What it returns is untrusted: compare
    numbers with values computed in the test wherever possible.
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = fn.__name__
        lines = textwrap.dedent(inspect.getsource(fn)).splitlines(True)
        while lines and lines[0].lstrip().startswith("@"):
            lines.pop(0)  # the decorator
        self.source = "".join(lines)

    def __call__(self, sub: Any, *args: Any) -> Any:
        return sub.probe(self, *args)


def probe(fn: Callable) -> Probe:
    return Probe(fn)


# --- the learner's namespace, in this process (pytest) -------------------------------------


def imported_message(name: str, value: Any) -> str | None:
    """Why ``value`` is not the learner's own ``name`` (a function from another module)."""
    module = getattr(value, "__module__", SUBMISSION_MODULE)
    if (inspect.isfunction(value) or inspect.isbuiltin(value)) and module not in (
        SUBMISSION_MODULE,
        None,
    ):
        return (
            f"`{name}` is `{module}.{getattr(value, '__qualname__', name)}`, imported "
            "rather than written in your notebook: the exercise is to write it"
        )
    return None


class LocalFunction:
    """The in-process twin of :class:`refimpl.course.remote.RemoteFunction`."""

    def __init__(self, value: Any):
        self._value = value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._value(*args, **kwargs)

    def __getattr__(self, attr: str) -> LocalFunction:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return LocalFunction(getattr(self._value, attr))

    def call_with_args(self, *args: Any, **kwargs: Any) -> tuple[Any, tuple]:
        return self._value(*args, **kwargs), args


class LocalSubmission:
    """The learner's notebook as the tests see it, in this process: ``sub.roi_pool_forward``.

    A name the notebook does not define fails the test with a message saying so (and which
    cells raised, since a failing cell is the usual reason); a function imported from
    ``refimpl`` (or anywhere else) instead of written in the notebook is refused.
    """

    def __init__(self, namespace: dict[str, Any], cell_errors: list[str] | None = None):
        self._namespace = namespace
        self._cell_errors = list(cell_errors or [])
        self.printed: list[str] = []

    def _get(self, name: str) -> Any:
        if name not in self._namespace:
            message = f"your notebook does not define `{name}`"
            if self._cell_errors:
                message += f" (maybe because {self._cell_errors[0]})"
            fail(message)
        value = self._namespace[name]
        why = imported_message(name, value)
        if why:
            fail(why)
        return value

    def __getattr__(self, name: str) -> LocalFunction:
        if name.startswith("_"):
            raise AttributeError(name)
        return LocalFunction(self._get(name))

    def has(self, name: str) -> bool:
        return name in self._namespace

    def value(self, name: str) -> Any:
        return self._get(name)

    def probe(self, probe: Probe, *args: Any) -> Any:
        return probe.fn(self._namespace, *args)

    def differentiable(self, name: str) -> Callable:
        return self._get(name)


Submission = LocalSubmission  # the name older test code used


# --- comparisons that explain themselves ---------------------------------------------------


def _short(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.10g}"
    return repr(v.item() if isinstance(v, np.generic) else v)


# Arrays made by :func:`case` remember the one line that makes them again, keyed by their
# memory (so a torch.from_numpy view of one is recognised too).
_RECIPES: dict[tuple, tuple[weakref.ref, str, str]] = {}


def _key(v: Any) -> tuple | None:
    if isinstance(v, np.ndarray):
        return (v.__array_interface__["data"][0], v.shape, v.dtype.name)
    if type(v).__module__.startswith("torch") and hasattr(v, "data_ptr"):
        return (v.data_ptr(), tuple(v.shape), str(v.dtype).removeprefix("torch."))
    return None


NAME = "<name>"  # in a one-array recipe: the name describe() gives it


def _remember(arrays: dict[str, Any], recipe: str) -> None:
    for var, arr in arrays.items():
        _RECIPES[_key(arr)] = (weakref.ref(arr), var, recipe, isinstance(arr, np.ndarray))


def _recipe_of(v: Any) -> tuple[str, str, bool] | None:
    """``(variable, line, whether the line makes a NumPy array)`` for ``v``, or None."""
    key = _key(v)
    entry = _RECIPES.get(key) if key is not None else None
    if entry is None or entry[0]() is None:
        return None
    return entry[1], entry[2], entry[3]


def drawn(rng: np.random.Generator, source: str) -> Any:
    """``source`` (an expression of ``rng``, ``np`` and ``torch``) evaluated, remembering it:
    feedback rebuilds an array or tensor made so as ``rng = checks.rng_at(...); <name> =
    <source>``, from the generator's present state."""
    where = _rng_source(rng)
    scope: dict[str, Any] = {"rng": rng, "np": np, "checks": sys.modules[__name__]}
    if "torch" in source:
        import torch

        scope["torch"] = torch
    value = eval(source, scope)
    if where is not None and _key(value) is not None:
        _remember({NAME: value}, f"rng = {where}; {NAME} = {source}")
    return value


def recipe(name: str, v: Any) -> str | None:
    """The line that makes ``v`` (an array from :func:`case` or :func:`drawn`) as ``name``."""
    found = _recipe_of(v)
    if found is None:
        return None
    var, line, _ = found
    return line.replace(NAME, name) if var == NAME else line


def converted(v: np.ndarray, dtype: Any) -> np.ndarray:
    """``v.astype(dtype)``, remembering how it is made when ``v``'s recipe is known."""
    out = v.astype(dtype)
    found = _recipe_of(v)
    marker = f"{NAME} = "
    if found is not None and found[0] == NAME and marker in found[1]:
        before, expr = found[1].split(marker, 1)
        kind = np.dtype(dtype).name
        _remember({NAME: out}, f"{before}{marker}({expr}).astype(np.{kind})")
    return out


def offset_hint(
    compute: Callable[[np.ndarray], Any], rois: np.ndarray, spatial_scale: float, aligned: bool
) -> tuple[str, Callable[[], Any]]:
    """The likely cause "the half-pixel offset" of RoIAlign-like ops (for :func:`check_array`'s
    ``hints``): ``compute(rois)`` on the boxes moved as the missing (or extra) offset moves
    them."""
    moved = np.asarray(rois, dtype=np.float64).copy()
    moved[:, 1:] += (0.5 if aligned else -0.5) / spatial_scale
    cause = (
        "the half-pixel offset: aligned=True samples at x * spatial_scale - 0.5 (pixel "
        "centres), aligned=False without that shift"
    )
    return cause, lambda: compute(moved.astype(np.asarray(rois).dtype))


def count_hint(
    expected: np.ndarray,
    rois: np.ndarray,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[str, Callable[[], Any]]:
    """The likely cause "the sum of a bin's samples, not their mean" of RoIAlign avg (for
    :func:`check_array`'s ``hints``), from the right answer ``expected``."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    F = np.float64

    def summed():
        counts = [
            geometry.align_box(
                F, *map(F, r[1:]), F(spatial_scale), aligned, ph, pw, sampling_ratio
            )[6]
            for r in np.asarray(rois, dtype=np.float64)
        ]
        return expected * np.asarray(counts).reshape(-1, 1, 1, 1)

    return "avg: divide the sum of a bin's samples by their count", summed


def known_roi_align_forward(sub: Any) -> None:
    """RoIAlign's forward on one bin of 2x2 samples, at (0.5 | 1.5, 0.5 | 1.5) on the ramp
    0..15 of a 4x4 map: their mean is 5. Exercises 6 and 7 write the forward again."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    rois = np.array([[0.0, 0, 0, 2, 2]])
    expected = np.full((1, 1, 1, 1), 5.0)
    check_array(
        sub.roi_align_forward(x, rois, 1, 1.0, 2),
        expected,
        "roi_align_forward(ramp, box (0, 0, 2, 2), 1)",
        inputs=describe(
            "roi_align_forward", x=x, rois=rois, output_size=1, spatial_scale=1.0, ratio=2
        ),
        hints=[count_hint(expected, rois, 1, 1.0, 2, False)],
    )


def known_roi_align_backward(sub: Any) -> None:
    """RoIAlign's backward of that bin: each sample's bilinear weights (1/2, 1/2 per axis) of
    a quarter of the gradient spread 1, 2, 1 / 2, 4, 2 / 1, 2, 1 sixteenths."""
    x = np.zeros((1, 1, 4, 4))
    rois, grad = np.array([[0.0, 0, 0, 2, 2]]), np.ones((1, 1, 1, 1))
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, :3, :3] = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    check_array(
        sub.roi_align_backward(x, rois, grad, 1, 1.0, 2),
        expected,
        "roi_align_backward(zeros, box (0, 0, 2, 2), ones, 1, 1.0, 2)",
        inputs=describe(
            "roi_align_backward",
            x=x,
            rois=rois,
            grad_output=grad,
            output_size=1,
            spatial_scale=1.0,
            ratio=2,
        ),
    )


def drawn_code(rng: np.random.Generator, name: str, source: str) -> tuple[Any, Code]:
    """:func:`drawn` for values :func:`describe` cannot recognise (a list of tensors): the
    value, and the :class:`Code` to give describe in its place."""
    where = _rng_source(rng)
    value = drawn(rng, source)
    setup = f"rng = {where}; {name} = {source}" if where is not None else None
    return value, Code(name, setup)


class Code:
    """An argument :func:`describe` prints as ``source``, after the ``setup`` lines."""

    def __init__(self, source: str, *setup: str | None):
        self.source, self.setup = source, [line for line in setup if line]

    def __repr__(self) -> str:
        return self.source


def case(
    seed: int,
    n: int = 1,
    c: int = 1,
    h: int = 6,
    w: int = 6,
    k: int = 4,
    spatial_scale: float = 1.0,
    dtype: str = "float64",
    grad: tuple[int, int] | None = None,
    **roi_kwargs: Any,
) -> tuple[np.ndarray, ...]:
    """``(x, rois)`` (and ``grad_output`` of ``[k, c, *grad]`` with ``grad=(PH, PW)``) from
    ``seed`` alone: :func:`random_features` ``[n, c, h, w]`` and ``k`` :func:`random_rois`
    at ``spatial_scale``, in ``dtype``. Feedback prints this call, so a learner can rebuild
    the inputs of a failing test with ``from refimpl.course import checks``."""
    rng = np.random.default_rng(seed)
    x = random_features(rng, n, c, h, w, np.dtype(dtype))
    rois = random_rois(rng, k, n, h, w, spatial_scale, **roi_kwargs).astype(dtype)
    shown = {"seed": seed, "n": n, "c": c, "h": h, "w": w, "k": k}
    shown.update(spatial_scale=spatial_scale, **roi_kwargs)
    if dtype != "float64":
        shown["dtype"] = dtype
    arrays = {"x": x, "rois": rois}
    if grad is not None:
        shown["grad"] = tuple(grad)
        arrays["grad_output"] = rng.normal(size=(k, c, *grad)).astype(dtype)
    args = ", ".join(f"{name}={v!r}" for name, v in shown.items())
    _remember(arrays, f"{', '.join(arrays)} = checks.case({args})")
    return tuple(arrays.values())


def literal(v: Any) -> str:
    """Python source that rebuilds a small array or tensor exactly."""
    if _key(v) is not None and not isinstance(v, np.ndarray):
        arr = v.detach().cpu().numpy()
        return f"torch.tensor({arr.tolist()!r}, dtype=torch.{arr.dtype.name})"
    if isinstance(v, np.ndarray):
        return f"np.array({v.tolist()!r}, dtype=np.{v.dtype.name})"
    return repr(v)


MAX_LITERAL = 100  # values of an array that feedback prints as a literal


def describe(fn: str | None = None, /, **arguments: Any) -> str:
    """How to rebuild a call's inputs (and, with ``fn``, make the call) in a notebook:
    arrays from :func:`case` by their recipe, small ones as literals, others by shape."""
    setup: list[str] = []
    call: list[str] = []
    for name, v in arguments.items():
        recipe = _recipe_of(v)
        tensor = _key(v) is not None and not isinstance(v, np.ndarray)
        if isinstance(v, Code):
            setup.extend(line for line in v.setup if line not in setup)
            call.append(v.source)
        elif recipe is not None:
            var, line, made_numpy = recipe
            if var == NAME:  # a recipe for one array: it takes the argument's name
                var, line = name, line.replace(NAME, name)
            if line not in setup:
                setup.append(line)
            call.append(f"torch.from_numpy({var})" if tensor and made_numpy else var)
        elif _key(v) is not None and int(np.prod(tuple(v.shape))) <= MAX_LITERAL:
            setup.append(f"{name} = {literal(v)}")
            call.append(name)
        elif _key(v) is not None:
            setup.append(
                f"# {name}: a {str(v.dtype).removeprefix('torch.')} array of shape {list(v.shape)}"
            )
            call.append(name)
        else:
            call.append(repr(v))
    if any("checks." in line for line in setup):
        setup.insert(0, "from refimpl.course import checks")
    if fn is None:
        return "inputs:\n" + "\n".join(
            "    " + line for line in setup + ([", ".join(call)] if not setup else [])
        )
    return "to reproduce:\n" + "\n".join(
        "    " + line for line in [*setup, f"{fn}({', '.join(call)})"]
    )


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
    hints: list[tuple[str, Callable[[], Any]]] = (),
) -> None:
    """``got`` has ``expected``'s shape (and dtype) and values, or a failure that says where not.

    The message names the call (``what``), the first mismatching index with both values, how
    many values differ and the largest error; ``inputs`` (see :func:`describe`) is appended,
    and with ``rois`` (for outputs indexed by RoI first) the RoI of the first mismatch.
    ``hints``: ``(likely cause, what a typical bug gives)`` pairs; when ``got`` equals one of
    those, the cause is named.
    """
    expected = np.asarray(expected)
    got = as_array(got, what)
    suffix = "\n" + textwrap.indent(inputs, "  ") if inputs else ""
    if got.shape != expected.shape:
        cause = hints and got.dtype.kind in "biuf" and likely_cause(got, hints, rtol, atol)
        cause = f"\n  likely cause: {cause}" if cause else ""
        fail(f"{what}: expected shape {expected.shape}, got {got.shape}{cause}{suffix}")
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
    cause = likely_cause(g, hints, rtol, atol)
    if cause:
        suffix = f"\n  likely cause: {cause}" + suffix
    fail(
        f"{what}: {int(bad.sum())} of {got.size} values differ (largest error {err:.3g});"
        f" the first at index {index}: expected {_short(expected[index])},"
        f" got {_short(got[index])}{suffix}"
    )


def likely_cause(
    got: np.ndarray, hints: list[tuple[str, Callable[[], Any]]], rtol: float, atol: float
) -> str | None:
    """The hints whose typical-bug output ``got`` equals (several can on small inputs)."""
    causes = []
    for cause, variant in hints:
        try:
            v = np.asarray(variant(), dtype=np.float64)
        except Exception:  # a variant that cannot be computed for these inputs
            continue
        if v.shape == got.shape and np.allclose(got, v, rtol=rtol, atol=atol, equal_nan=True):
            causes.append(cause)
    return "; or ".join(causes) or None


def check_equal(got: Any, expected: Any, what: str, *, inputs: str = "") -> None:
    """Exact equality of plain values (ints, tuples, ...)."""
    suffix = "\n" + textwrap.indent(inputs, "  ") if inputs else ""
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
    where = _rng_source(rng)
    img_h, img_w = height / spatial_scale, width / spatial_scale
    rois = np.empty((k, 5))
    rois[:, 0] = rng.integers(0, n_images, k)
    for column, extent in ((1, img_w), (2, img_h)):  # x1, x2 then y1, y2
        lo = rng.uniform(-spill * extent, 0.8 * extent, k)
        span = rng.uniform(min_size / spatial_scale, max_size * extent, k)
        rois[:, column] = lo
        rois[:, column + 2] = lo + span
    if where:
        extra = dict(spill=spill, min_size=min_size, max_size=max_size)
        extra = {k_: v for k_, v in extra.items() if v != _ROI_DEFAULTS[k_]}
        args = ", ".join([repr(a) for a in (k, n_images, height, width, spatial_scale)])
        args += "".join(f", {k_}={v!r}" for k_, v in extra.items())
        _remember({NAME: rois}, f"{NAME} = checks.random_rois({where}, {args})")
    return rois


def random_features(
    rng: np.random.Generator, n: int, c: int, h: int, w: int, dtype: Any = np.float64
) -> np.ndarray:
    """Distinct values (no ties, so every max has one winner), in ``dtype``."""
    where = _rng_source(rng)
    values = rng.permutation(n * c * h * w).astype(np.float64)
    values = (values + rng.uniform(0.05, 0.95, values.shape)) / (n * c * h * w)
    out = (values * 4 - 2).reshape(n, c, h, w).astype(dtype)
    if where:
        kind = "" if np.dtype(dtype) == np.float64 else f", np.{np.dtype(dtype).name}"
        _remember(
            {NAME: out}, f"{NAME} = checks.random_features({where}, {n}, {c}, {h}, {w}{kind})"
        )
    return out


def random_boxes(
    rng: np.random.Generator,
    n: int,
    size: float = 100.0,
    min_wh: float = 2.0,
    max_wh: float = 40.0,
) -> np.ndarray:
    """``n`` random boxes ``(x1, y1, x2, y2)`` (float64): corners in ``[-10, size)``, sides
    from ``min_wh`` to ``max_wh``."""
    xy = rng.uniform(-10, size, (n, 2))
    wh = rng.uniform(min_wh, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def random_masks(rng: np.random.Generator, g: int, h: int, w: int) -> np.ndarray:
    """``g`` random binary masks ``[g, h, w]`` (uint8): a rectangle each, with holes."""
    masks = np.zeros((g, h, w), np.uint8)
    for i in range(g):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        y1, x1 = y0 + rng.integers(3, h // 2), x0 + rng.integers(3, w // 2)
        masks[i, y0:y1, x0:x1] = 1
        masks[i] &= rng.random((h, w)) > 0.2  # holes
    return masks


def random_image_boxes(rng: np.random.Generator, r: int, h: int, w: int) -> np.ndarray:
    """``r`` random boxes ``(x1, y1, x2, y2)`` (float64) on an ``h x w`` image, some partly
    off it."""
    xy = rng.uniform(-4, [w - 6, h - 6], (r, 2))
    wh = rng.uniform(3, [w / 2, h / 2], (r, 2))
    return np.concatenate([xy, xy + wh], 1)


_ROI_DEFAULTS = {"spill": 0.3, "min_size": 0.3, "max_size": 0.8}


def _rng_source(rng: Any) -> str | None:
    """Python source for a generator in ``rng``'s present state (feedback: the inputs of a
    test drawn from a generator already used are rebuilt exactly), or None."""
    try:
        state = rng.bit_generator.state
        if state["bit_generator"] != "PCG64":
            return None
        args = f"{state['state']['state']:#x}, {state['state']['inc']:#x}"
        if state["has_uint32"]:  # half of a 64-bit draw kept for the next 32-bit one
            args += f", {state['uinteger']:#x}"
        return f"checks.rng_at({args})"
    except (AttributeError, KeyError, TypeError):
        return None


def rng_at(state: int, inc: int, uinteger: int | None = None) -> np.random.Generator:
    """A NumPy generator (PCG64) in the given state: what feedback's recipes draw from."""
    bits = np.random.PCG64()
    bits.state = {
        "bit_generator": "PCG64",
        "state": {"state": state, "inc": inc},
        "has_uint32": int(uinteger is not None),
        "uinteger": uinteger or 0,
    }
    return np.random.Generator(bits)


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
