"""GPU benchmark: ``python -m refimpl bench gpu [--repeats N] [--json PATH] [--quick]``.

RoIAlign (avg) and RoIPool, forward and backward, on CUDA tensors, against torchvision's CUDA
ops in the same process, on two workloads of a Mask R-CNN box head at FPN level P2:

* ``standard``: x float32 [2, 256, 64, 64], 512 boxes (``refimpl.bench``'s ``box``);
* ``large``: x float32 [2, 256, 200, 304] (two 800x1216 images at stride 4), 1000 boxes
  with sides uniform in [16, 400] px, output 7x7, ``sampling_ratio=2``, ``aligned=True``.

Candidates, interleaved one call of each per round so that clocks and neighbours treat them
alike, each call timed with a pair of CUDA events (the median of ``--repeats`` rounds after a
warm-up):

* ``torchvision``: ``torch.ops.torchvision`` (for RoIPool, its backward scatters through
  the argmax its forward saved, as ours does);
* ``refimpl nchw`` / ``refimpl channels_last``: the ``torch.ops.refimpl`` operators with
  ``refimpl.ops.cuda_layout(...)`` set to each layout: what a user gets, including
  the host-side validation of the RoIs (one small copy and a synchronization) and, for
  channels-last, the layout conversions on the way in and out;
* ``kernel nchw`` / ``kernel nhwc``: the numba-cuda launch functions alone, on data already
  in their layout (the backward includes zeroing ``grad_x``, which every backward needs).

Bandwidth: each cell also shows ``bytes / time`` for a lower bound on the DRAM traffic any
implementation needs (the input pixels under some RoI read once, the output written once;
backward: ``grad_output`` read, ``grad_input`` written once, the pixels under some RoI read
and written once more by the scatter), and that as a fraction of the device's peak,
``2 x memory clock x bus width`` from the device attributes (``--peak-gbs`` overrides).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .workloads import Workload

WORKLOADS = (
    Workload("standard", 2, 256, 64, 64, 4, 512, 8.0, 128.0),
    Workload("large", 2, 256, 200, 304, 4, 1000, 16.0, 400.0),
)
QUICK_WORKLOADS = (Workload("tiny", 1, 32, 16, 16, 4, 16, 4.0, 32.0),)


def covered_pixels(rois: np.ndarray, batch: int, height: int, width: int, scale: float) -> int:
    """How many feature pixels (over all images) lie under at least one RoI, counting the
    one-pixel rim that bilinear sampling near a box edge also reads."""
    covered = 0
    for b in range(batch):
        mask = np.zeros((height, width), dtype=bool)
        for _, x1, y1, x2, y2 in rois[rois[:, 0] == b]:
            r0 = max(0, math.floor(y1 * scale) - 1)
            r1 = min(height, math.ceil(y2 * scale) + 1)
            c0 = max(0, math.floor(x1 * scale) - 1)
            c1 = min(width, math.ceil(x2 * scale) + 1)
            mask[r0:r1, c0:c1] = True
        covered += int(mask.sum())
    return covered


def traffic_bytes(w: Workload, rois: np.ndarray, itemsize: int = 4) -> dict[str, int]:
    """The lower bound on DRAM traffic of a forward and of a backward (module docstring)."""
    touched = covered_pixels(rois, w.batch, w.height, w.width, w.spatial_scale)
    touched *= w.channels * itemsize
    out = w.n_boxes * w.channels * w.output_size**2 * itemsize
    full = w.batch * w.channels * w.height * w.width * itemsize
    return {"forward": touched + out, "backward": out + full + 2 * touched}


def peak_bandwidth_gbs(memory_clock_khz: float, bus_width_bits: int) -> float:
    """Peak DRAM bandwidth in GB/s: two transfers per memory clock (DDR) over the bus."""
    return 2 * memory_clock_khz * 1e3 * bus_width_bits / 8 / 1e9


def device_peak_gbs() -> float | None:
    """The current CUDA device's peak bandwidth from numba's device attributes."""
    try:
        from numba import cuda

        dev = cuda.get_current_device()
        return peak_bandwidth_gbs(dev.MEMORY_CLOCK_RATE, dev.GLOBAL_MEMORY_BUS_WIDTH)
    except Exception:  # an old driver or the simulator: no attribute
        return None


def time_cuda_events(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list]:
    """Milliseconds per call, from a CUDA event pair around each, interleaved by round."""
    import torch

    events: dict[str, list] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    return {name: [s.elapsed_time(e) for s, e in pairs] for name, pairs in events.items()}


def _calls(op: str, w: Workload, data) -> dict[str, dict]:
    """direction -> candidate -> an argument-less call, on CUDA tensors; and under
    ``"results"``, candidate -> direction -> the bare kernels' output buffers (NCHW views)."""
    import torch
    from numba import cuda as ncuda

    from refimpl.ops import cuda as cu
    from refimpl.ops import cuda_layout

    x, rois, grad = (torch.from_numpy(a).cuda() for a in data)
    n, c, h, wd = x.shape
    p, scale, sr, aligned = w.output_size, w.spatial_scale, w.sampling_ratio, w.aligned
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    g_nhwc = grad.permute(0, 2, 3, 1).contiguous()
    gx, gx_nhwc = torch.empty_like(x), torch.empty_like(x_nhwc)
    tensors = {
        "x": x,
        "rois": rois,
        "grad": grad,
        "x_nhwc": x_nhwc,
        "g_nhwc": g_nhwc,
        "out": torch.empty_like(grad),
        "out_nhwc": torch.empty_like(g_nhwc),
        "gx": gx,
        "gx_nhwc": gx_nhwc,
    }
    a = {k: ncuda.as_cuda_array(t, sync=False) for k, t in tensors.items()}
    stream = ncuda.external_stream(torch.cuda.current_stream().cuda_stream)
    tv, ours = torch.ops.torchvision, torch.ops.refimpl

    def with_layout(name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def call():
            with cuda_layout(name):
                return fn()

        return call

    nchw = {"layout": "nchw", "stream": stream}  # the launch functions' keywords
    cl = {"layout": "channels_last", "stream": stream}
    if op == "roi_align":
        params = (scale, sr, aligned, "avg")

        def k_bwd():
            gx.zero_()  # the avg backward reads only x's shape: grad_x stands in for it
            cu.roi_align.launch_backward(a["gx"], a["rois"], a["grad"], a["gx"], *params, **nchw)

        def k_bwd_cl():
            gx_nhwc.zero_()
            cu.roi_align.launch_backward(
                a["gx_nhwc"], a["rois"], a["g_nhwc"], a["gx_nhwc"], *params, **cl
            )

        forward = {
            "torchvision": lambda: tv.roi_align(x, rois, scale, p, p, sr, aligned),
            "refimpl": lambda: ours.roi_align(x, rois, scale, p, p, sr, aligned, "avg"),
            "kernel nchw": lambda: cu.roi_align.launch_forward(
                a["x"], a["rois"], a["out"], *params, **nchw
            ),
            "kernel nhwc": lambda: cu.roi_align.launch_forward(
                a["x_nhwc"], a["rois"], a["out_nhwc"], *params, **cl
            ),
        }
        backward = {
            "torchvision": lambda: tv._roi_align_backward(
                grad, rois, scale, p, p, n, c, h, wd, sr, aligned
            ),
            "refimpl": lambda: ours.roi_align_backward(
                grad, None, rois, scale, p, p, n, c, h, wd, sr, aligned, "avg"
            ),
            "kernel nchw": k_bwd,
            "kernel nhwc": k_bwd_cl,
        }
    elif op == "roi_pool":
        # Both torch operators save the forward's argmax for the backward; so do the bare
        # kernels' rows (filled once here, as a training step's forward would).
        _, argmax = tv.roi_pool(x, rois, scale, p, p)
        _, our_argmax = ours.roi_pool(x, rois, scale, p, p)
        am = torch.empty(grad.shape, dtype=torch.int64, device=grad.device)
        am_nhwc = torch.empty(g_nhwc.shape, dtype=torch.int64, device=grad.device)
        a["am"], a["am_nhwc"] = (ncuda.as_cuda_array(t, sync=False) for t in (am, am_nhwc))

        def k_fwd():
            cu.roi_pool.launch_forward_with_argmax(
                a["x"], a["rois"], a["out"], a["am"], scale, **nchw
            )

        def k_fwd_cl():
            cu.roi_pool.launch_forward_with_argmax(
                a["x_nhwc"], a["rois"], a["out_nhwc"], a["am_nhwc"], scale, **cl
            )

        def k_bwd():
            gx.zero_()
            cu.roi_pool.launch_backward_from_argmax(a["rois"], a["grad"], a["am"], a["gx"], **nchw)

        def k_bwd_cl():
            gx_nhwc.zero_()
            cu.roi_pool.launch_backward_from_argmax(
                a["rois"], a["g_nhwc"], a["am_nhwc"], a["gx_nhwc"], **cl
            )

        k_fwd()
        k_fwd_cl()
        forward = {
            "torchvision": lambda: tv.roi_pool(x, rois, scale, p, p),
            "refimpl": lambda: ours.roi_pool(x, rois, scale, p, p),
            "kernel nchw": k_fwd,
            "kernel nhwc": k_fwd_cl,
        }
        backward = {
            "torchvision": lambda: tv._roi_pool_backward(
                grad, rois, argmax, scale, p, p, n, c, h, wd
            ),
            "refimpl": lambda: ours.roi_pool_backward(
                grad, rois, our_argmax, scale, p, p, n, c, h, wd
            ),
            "kernel nchw": k_bwd,
            "kernel nhwc": k_bwd_cl,
        }
    else:
        raise ValueError(f"op must be 'roi_align' or 'roi_pool', got {op!r}")
    # Where the bare kernels leave their results, as NCHW views, for _check_outputs.
    results = {
        "kernel nchw": {"forward": tensors["out"], "backward": gx},
        "kernel nhwc": {
            "forward": tensors["out_nhwc"].permute(0, 3, 1, 2),
            "backward": gx_nhwc.permute(0, 3, 1, 2),
        },
    }
    calls = {"results": results}
    for direction, candidates in (("forward", forward), ("backward", backward)):
        op_call = candidates.pop("refimpl")
        calls[direction] = {
            "torchvision": candidates.pop("torchvision"),
            "refimpl nchw": with_layout("nchw", op_call),
            "refimpl channels_last": with_layout("channels_last", op_call),
            **candidates,
        }
    return calls


@dataclass
class GpuRow:
    workload: str
    op: str
    direction: str
    candidate: str
    median_ms: float
    runs_ms: list[float]
    speedup: float | None  # torchvision's median / this median
    gbs: float  # lower-bound traffic / median time
    peak_fraction: float | None


def _check_outputs(op: str, calls: dict, results: dict) -> None:
    """Every candidate's forward and backward agree with torchvision's before any timing."""
    import torch

    ref = {d: calls[d]["torchvision"]() for d in ("forward", "backward")}
    ref["forward"] = ref["forward"][0] if op == "roi_pool" else ref["forward"]
    for direction, candidates in calls.items():
        for name, fn in candidates.items():
            got = fn()
            if name in results:  # a bare kernel: its result is in its output buffer
                got = results[name][direction]
            got = got[0] if isinstance(got, tuple) else got
            torch.testing.assert_close(
                got, ref[direction], rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
            )


def bench_gpu(workloads, repeats: int, peak_gbs: float | None, log=print) -> list[GpuRow]:
    rows = []
    for w in workloads:
        data = w.make()
        traffic = traffic_bytes(w, data[1])
        for op in ("roi_align", "roi_pool"):
            calls = _calls(op, w, data)
            results = calls.pop("results")
            _check_outputs(op, calls, results)  # also the warm-up of compilation
            for direction, candidates in calls.items():
                for fn in candidates.values():  # warm-up: allocator, clocks
                    for _ in range(3):
                        fn()
                times = time_cuda_events(candidates, repeats)
                ref = statistics.median(times["torchvision"])
                for name, runs in times.items():
                    med = statistics.median(runs)
                    gbs = traffic[direction] / (med * 1e-3) / 1e9
                    frac = None if not peak_gbs else gbs / peak_gbs
                    speedup = None if name == "torchvision" else ref / med
                    rows.append(GpuRow(w.name, op, direction, name, med, runs, speedup, gbs, frac))
                    log(f"  {w.name:8s} {op:9s} {direction:8s} {name:22s} {med:8.3f} ms")
    return rows


def format_gpu_table(rows: list[GpuRow], header: str) -> str:
    lines = [
        header,
        "",
        "| workload | op | direction | candidate | ms | vs torchvision | GB/s | % of peak |",
        "|---|---|---|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        speed = "" if r.speedup is None else f"{r.speedup:.2f}x"
        frac = "" if r.peak_fraction is None else f"{100 * r.peak_fraction:.0f}%"
        lines.append(
            f"| {r.workload} | {r.op} | {r.direction} | {r.candidate} | {r.median_ms:.3f} | "
            f"{speed} | {r.gbs:.0f} | {frac} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refimpl bench gpu", description=__doc__)
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds (median)")
    parser.add_argument("--quick", action="store_true", help="a tiny workload")
    parser.add_argument("--peak-gbs", type=float, default=None, help="the device's peak GB/s")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import torch

    if not torch.cuda.is_available():
        print("bench gpu: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    try:
        import torchvision
    except ImportError:
        print("bench gpu: needs torchvision (the reference) importable", file=sys.stderr)
        return 2
    import numba

    import refimpl.ops  # noqa: F401  (registers torch.ops.refimpl)

    peak = args.peak_gbs or device_peak_gbs()
    device = torch.cuda.get_device_name()
    header = (
        f"{device}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"numba {numba.__version__}; float32; median of {args.repeats} interleaved runs "
        f"(CUDA events), ms; peak {peak:.0f} GB/s"
        if peak
        else f"{device}; peak bandwidth unknown"
    )
    workloads = QUICK_WORKLOADS if args.quick else WORKLOADS
    rows = bench_gpu(workloads, args.repeats, peak, log=lambda s: print(s, flush=True))
    print()
    print(format_gpu_table(rows, header))
    if args.json:
        with open(args.json, "w") as f:
            payload = {
                "device": device,
                "peak_gbs": peak,
                "header": header,
                "workloads": [asdict(w) for w in workloads],
                "rows": [asdict(r) for r in rows],
            }
            json.dump(payload, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
