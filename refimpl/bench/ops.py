"""The RoI operator benchmark: ``python -m refimpl bench ops [--repeats N] [--quick] ...``.

``ops`` times every RoI operator of every backend in :data:`refimpl.ops.BACKENDS`, forward
and backward, on two standard workloads of a Mask R-CNN head at FPN level P2 (stride 4):

* ``box``: x float32 [2, 256, 64, 64] (two 256x256 images), 512 boxes with sides uniform in
  [8, 128] px inside the image, ``spatial_scale=0.25``, output 7x7, ``sampling_ratio=2``,
  ``aligned=True`` (the box head);
* ``mask``: the same with output 14x14 (the mask head).

Each time is the median of ``--repeats`` runs after one warm-up run (which also compiles the
numba kernels). The runs of the backends (and torchvision) are interleaved, one call of
each in turn, so that a machine shared with other work loads them alike. When torchvision
imports, its CPU ops are timed in the same process and the table shows the speed-up
``torchvision time / backend time`` for roi_align (avg) and roi_pool; torchvision has no
RoIAlign-max, RoIWarp or PrRoIPool. Backwards are timed as the backward kernel alone; for
roi_pool both torchvision's and ours scatter through the argmax saved by the forward
(``roi_pool_backward_from_argmax``), as their torch operators do. Thread counts are left at
their defaults unless ``--threads`` sets both.

The ``"python"`` backend (plain loops) is far too slow for these workloads: it runs only with
``--quick``, which uses a tiny workload instead.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from refimpl.ops import BACKENDS

from .workloads import Workload

# two 256x256 images at stride 4; tiny: one 64x64 image
WORKLOADS = (
    Workload("box", 2, 256, 64, 64, 4, 512, 8.0, 128.0, output_size=7),
    Workload("mask", 2, 256, 64, 64, 4, 512, 8.0, 128.0, output_size=14),
)
QUICK_WORKLOADS = (Workload("tiny", 1, 8, 16, 16, 4, 16, 4.0, 32.0, output_size=7),)

# (name in the table, backend function stem, extra keyword arguments)
OPS = (
    ("roi_align", "roi_align", {"pool_mode": "avg"}),
    ("roi_align_max", "roi_align", {"pool_mode": "max"}),
    ("roi_pool", "roi_pool", {}),
    ("roi_warp", "roi_warp", {"pool_mode": "max"}),
    ("prroi_pool", "prroi_pool", {}),
)


def _op_args(op: str, w: Workload) -> dict:
    """The keyword arguments of ``op`` (its function stem) for workload ``w``."""
    kwargs = {"output_size": w.output_size, "spatial_scale": w.spatial_scale}
    if op in ("roi_align", "roi_warp"):
        kwargs["sampling_ratio"] = w.sampling_ratio
    if op in ("roi_align", "prroi_pool"):
        kwargs["aligned"] = w.aligned
    return kwargs


def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list]:
    """Milliseconds of ``repeats`` rounds, each round calling every candidate once in turn,
    so that all of them see the same machine (other processes come and go); the callers
    warm them up first."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _torchvision_calls(stem: str, extra: dict, w: Workload, data) -> dict | None:
    """torchvision's CPU forward and backward for ``stem``, or None where it has none."""
    try:
        import torch
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    except ImportError:
        return None
    x, rois, grad = (torch.from_numpy(a) for a in data)
    n, c, h, wd = x.shape
    p, scale = w.output_size, w.spatial_scale
    ops = torch.ops.torchvision
    if stem == "roi_align" and extra.get("pool_mode") == "avg":
        sr, aligned = w.sampling_ratio, w.aligned
        return {
            "forward": lambda: ops.roi_align(x, rois, scale, p, p, sr, aligned),
            "backward": lambda: ops._roi_align_backward(
                grad, rois, scale, p, p, n, c, h, wd, sr, aligned
            ),
        }
    if stem == "roi_pool":
        _, argmax = ops.roi_pool(x, rois, scale, p, p)
        return {
            "forward": lambda: ops.roi_pool(x, rois, scale, p, p),
            "backward": lambda: ops._roi_pool_backward(
                grad, rois, argmax, scale, p, p, n, c, h, wd
            ),
        }
    return None


def _backend_calls(module, stem: str, data, kwargs: dict) -> dict:
    """The backend's forward and backward of ``stem`` on ``data``, as argument-less calls."""
    x, rois, grad = data
    forward, backward = getattr(module, f"{stem}_forward"), getattr(module, f"{stem}_backward")
    if stem == "roi_pool":
        # Like torchvision's backward: a scatter through the argmax saved by the forward,
        # instead of the stateless interface's recomputation (which costs a second forward).
        _, argmax = module.roi_pool_forward_with_argmax(x, rois, **kwargs)
        return {
            "forward": lambda: forward(x, rois, **kwargs),
            "backward": lambda: module.roi_pool_backward_from_argmax(
                x, rois, grad, argmax, **kwargs
            ),
        }
    return {
        "forward": lambda: forward(x, rois, **kwargs),
        "backward": lambda: backward(x, rois, grad, **kwargs),
    }


@dataclass
class Row:
    workload: str
    op: str
    backend: str
    direction: str  # "forward" | "backward"
    median_ms: float | None
    runs_ms: list[float]
    torchvision_ms: float | None = None
    speedup: float | None = None  # torchvision_ms / median_ms
    note: str = ""


def _load_backends(names: list[str]) -> tuple[dict, list[str]]:
    loaded, notes = {}, []
    for name in names:
        try:
            loaded[name] = BACKENDS[name]
        except Exception as e:  # a missing module, no GPU, no numba-cuda...
            notes.append(f"backend {name!r} skipped: {type(e).__name__}: {e}")
    return loaded, notes


def bench_ops(backends: list[str], workloads, repeats: int, log=print) -> tuple[list[Row], list]:
    """Time every op x backend x direction on every workload (and torchvision's, if any).

    A backend whose very first call fails (no GPU, say) is dropped with a note; a later
    failure is recorded in its row.
    """
    modules, notes = _load_backends(backends)
    for note in notes:
        log(note)
    rows: list[Row] = []
    tried: set[str] = set()
    for w in workloads:
        data = w.make()
        for name, stem, extra in OPS:
            kwargs = {**_op_args(stem, w), **extra}
            torchvision = _torchvision_calls(stem, extra, w, data) or {}
            for direction in ("forward", "backward"):
                calls = {}
                if direction in torchvision:
                    calls["torchvision"] = torchvision[direction]
                for backend, module in list(modules.items()):
                    call = _backend_calls(module, stem, data, kwargs)[direction]
                    try:
                        call()  # the warm-up, which also compiles numba's kernels
                    except Exception as e:
                        if backend not in tried:
                            del modules[backend]
                            notes.append(f"backend {backend!r} skipped: {type(e).__name__}: {e}")
                            log(notes[-1])
                        else:
                            rows.append(
                                Row(w.name, name, backend, direction, None, [], note=repr(e))
                            )
                        continue
                    finally:
                        tried.add(backend)
                    calls[backend] = call
                if "torchvision" in calls:
                    calls["torchvision"]()
                times = time_interleaved(calls, repeats)
                ref = statistics.median(times["torchvision"]) if "torchvision" in times else None
                for backend, runs in times.items():
                    med = statistics.median(runs)
                    speedup = None if ref is None or backend == "torchvision" else ref / med
                    rows.append(Row(w.name, name, backend, direction, med, runs, ref, speedup))
                    log(f"  {w.name:5s} {name:14s} {backend:11s} {direction:8s} {med:10.2f} ms")
    return rows, notes


def _ratio(v: float) -> str:
    return f"{v:.1f}x" if v >= 1 else f"{v:.2g}x"


def format_table(rows: list[Row], header: str) -> str:
    """A markdown table: one line per workload x op x backend, forward and backward times and
    speed-ups, and the speed-up of forward + backward (a training step's cost of the op:
    torchvision's backward needs its forward's argmax anyway)."""
    lines = [header, ""]
    lines.append(
        "| workload | op            | backend     | forward ms |  vs tv | backward ms |  vs tv "
        "| fwd+bwd vs tv |"
    )
    lines.append(
        "|----------|---------------|-------------|-----------:|-------:|------------:|"
        "-------:|--------------:|"
    )
    keys = dict.fromkeys((r.workload, r.op, r.backend) for r in rows)
    by_key = {(r.workload, r.op, r.backend, r.direction): r for r in rows}
    for key in keys:
        cells, both = [], []
        for direction in ("forward", "backward"):
            r = by_key.get((*key, direction))
            if r is None or r.median_ms is None:
                cells += ["failed" if r is not None else "-", ""]
                continue
            cells += [f"{r.median_ms:.2f}", "" if r.speedup is None else _ratio(r.speedup)]
            if r.speedup is not None:
                both.append((r.torchvision_ms, r.median_ms))
        total = ""
        if len(both) == 2:
            total = _ratio(sum(t for t, _ in both) / sum(m for _, m in both))
        workload, op, backend = key
        lines.append(
            f"| {workload:8s} | {op:13s} | {backend:11s} | {cells[0]:>10s} | {cells[1]:>6s} | "
            f"{cells[2]:>11s} | {cells[3]:>6s} | {total:>13s} |"
        )
    if not any(r.backend == "torchvision" for r in rows):
        # no ratios: keep workload, op, backend, forward ms and backward ms
        for i in range(2, len(lines)):
            cells = lines[i].split("|")[1:-1]
            lines[i] = "|" + "|".join(cells[j] for j in (0, 1, 2, 3, 5)) + "|"
    for r in rows:
        if r.median_ms is None:
            lines.append(f"failed: {r.workload} {r.op} {r.backend} {r.direction}: {r.note[:200]}")
    return "\n".join(lines)


def _header(repeats: int) -> str:
    import numba

    parts = [f"median of {repeats} interleaved runs after a warm-up, milliseconds"]
    parts.append(f"numba {numba.__version__}, {numba.get_num_threads()} threads")
    try:
        import torch
        import torchvision

        parts.append(
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"torchvision {torchvision.__version__}; 'vs tv' = torchvision time / backend time "
            "(torchvision's backward: its backward kernel alone)"
        )
    except ImportError:
        parts.append("torchvision not importable: no ratios")
    return "; ".join(parts)


def _overhead_calls(w: Workload) -> dict:
    """(op, direction, "torch op" | "kernel") -> an argument-less call, for workload ``w``."""
    import torch

    from refimpl import ops

    cpu = BACKENDS["numba"]
    x, rois, grad = w.make()
    xt, rt, gt = (torch.from_numpy(a) for a in (x, rois, grad))
    xg = xt.clone().requires_grad_(True)
    p, scale, sr, aligned = w.output_size, w.spatial_scale, w.sampling_ratio, w.aligned
    kw = {"output_size": p, "spatial_scale": scale}
    akw = {**kw, "sampling_ratio": sr, "aligned": aligned}

    def align_step():
        torch.autograd.grad(ops.roi_align(xg, rt, p, scale, sr, aligned), xg, gt)

    def pool_step():
        torch.autograd.grad(ops.roi_pool(xg, rt, p, scale), xg, gt)

    return {
        ("roi_align", "forward", "torch op"): lambda: ops.roi_align(xt, rt, p, scale, sr, aligned),
        ("roi_align", "forward", "kernel"): lambda: cpu.roi_align_forward(x, rois, **akw),
        ("roi_align", "fwd+bwd", "torch op"): align_step,
        ("roi_align", "fwd+bwd", "kernel"): lambda: (
            cpu.roi_align_forward(x, rois, **akw),
            cpu.roi_align_backward(x, rois, grad, **akw),
        ),
        ("roi_pool", "forward", "torch op"): lambda: ops.roi_pool(xt, rt, p, scale),
        ("roi_pool", "forward", "kernel"): lambda: cpu.roi_pool_forward_with_argmax(x, rois, **kw),
        ("roi_pool", "fwd+bwd", "torch op"): pool_step,
        ("roi_pool", "fwd+bwd", "kernel"): lambda: cpu.roi_pool_backward_from_argmax(
            x, rois, grad, cpu.roi_pool_forward_with_argmax(x, rois, **kw)[1], **kw
        ),
    }


def bench_overhead(workloads, repeats: int, log=print) -> list[dict]:
    """The cost of the PyTorch operator layer on the CPU: ``refimpl.ops.roi_align`` /
    ``roi_pool`` (custom op dispatch, checks, zero-copy views, autograd) against calling the
    numba kernels directly on the same NumPy arrays."""
    rows = []
    for w in workloads:
        calls = _overhead_calls(w)
        for fn in calls.values():
            fn()  # warm-up and compilation
        times = time_interleaved({str(k): fn for k, fn in calls.items()}, repeats)
        for op in ("roi_align", "roi_pool"):
            for direction in ("forward", "fwd+bwd"):
                t_op = statistics.median(times[str((op, direction, "torch op"))])
                t_kernel = statistics.median(times[str((op, direction, "kernel"))])
                rows.append(
                    {
                        "workload": w.name,
                        "op": op,
                        "direction": direction,
                        "torch_op_ms": t_op,
                        "kernel_ms": t_kernel,
                        "overhead_ms": t_op - t_kernel,
                    }
                )
                log(f"  {w.name:5s} {op:10s} {direction:8s} {t_op:9.2f} ms vs {t_kernel:9.2f} ms")
    return rows


def format_overhead(rows: list[dict], repeats: int) -> str:
    lines = [
        f"torch op vs numba kernel called directly, CPU, median of {repeats} interleaved runs, ms",
        "",
        "| workload | op        | direction | torch op | kernel | overhead |",
        "|----------|-----------|-----------|---------:|-------:|---------:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']:8s} | {r['op']:9s} | {r['direction']:9s} | "
            f"{r['torch_op_ms']:8.2f} | {r['kernel_ms']:6.2f} | {r['overhead_ms']:+8.2f} |"
        )
    return "\n".join(lines)
