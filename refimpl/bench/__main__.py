"""``python -m refimpl bench {ops,overhead,model,gpu} ...``: the benchmarks' command line.

==========  ====================================================================
ops         every RoI operator of every backend, forward and backward (:mod:`.ops`)
overhead    the torch operator layer against the bare numba kernels (:mod:`.ops`)
model       a Mask R-CNN training step and inference against torchvision's (:mod:`.model`)
gpu         the CUDA kernels against torchvision's CUDA ops (:mod:`.gpu`)
==========  ====================================================================

Speed is measured here and never in a test: medians of interleaved runs, ratios against
torchvision in the same process.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from refimpl.ops import BACKENDS

from .ops import (
    QUICK_WORKLOADS,
    WORKLOADS,
    _header,
    bench_ops,
    bench_overhead,
    format_overhead,
    format_table,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl bench", description=__doc__.split(chr(10))[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ops = sub.add_parser("ops", help="time the RoI operators of every backend")
    ops.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    ops.add_argument(
        "--backends",
        default=None,
        help="comma-separated backend names (default: all but 'python'; with --quick: all)",
    )
    ops.add_argument("--quick", action="store_true", help="a tiny workload, python included")
    ops.add_argument("--threads", type=int, default=None, help="numba and torch thread count")
    ops.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    overhead = sub.add_parser("overhead", help="the torch op layer against the bare kernels")
    overhead.add_argument("--repeats", type=int, default=7, help="timed runs per cell (median)")
    overhead.add_argument("--quick", action="store_true", help="a tiny workload")
    overhead.add_argument("--json", default=None, metavar="PATH", help="also write the rows")
    sub.add_parser(
        "model", help="Mask R-CNN step and inference against torchvision's", add_help=False
    )
    sub.add_parser(
        "gpu", help="CUDA ops against torchvision's, CUDA events, bandwidth", add_help=False
    )
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "model":
        from refimpl.bench import model

        return model.main(argv[1:])
    if argv and argv[0] == "gpu":
        from refimpl.bench import gpu

        return gpu.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "overhead":
        workloads = QUICK_WORKLOADS if args.quick else WORKLOADS
        rows = bench_overhead(workloads, args.repeats, log=lambda s: print(s, flush=True))
        print()
        print(format_overhead(rows, args.repeats))
        if args.json:
            _write_json(args.json, {"repeats": args.repeats, "rows": rows})
        return 0

    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    else:
        backends = [b for b in BACKENDS if args.quick or b != "python"]
    if args.threads is not None:
        import numba

        numba.set_num_threads(args.threads)
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    workloads = QUICK_WORKLOADS if args.quick else WORKLOADS
    rows, notes = bench_ops(backends, workloads, args.repeats, log=lambda s: print(s, flush=True))
    header = _header(args.repeats)
    print()
    print(format_table(rows, header))
    for note in notes:
        print(note)
    if args.json:
        rows_json = [asdict(r) for r in rows]
        _write_json(args.json, {"header": header, "workloads": [asdict(w) for w in workloads],
                                "notes": notes, "rows": rows_json})  # fmt: skip
    return 0


def _write_json(path: str, result: dict) -> None:
    """``result`` and the provenance of this run (command, commit, CPU, versions, load)."""
    from refimpl.engine.provenance import provenance

    with open(path, "w") as f:
        json.dump({**result, "provenance": provenance()}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
