"""Seconds per training iteration of the capstone's model with the learner's parts, against
refimpl's; writes ``docs/results/capstone_speed.json`` (the README quotes it).

    .venv/bin/python scripts/capstone_speed.py [--iters 16] [--threads 2]

Each variant trains ``maskrcnn_small`` with the demo's recipe on the shapes in a process of its
own (exercise 8 registers ``mycourse::roi_align`` once per process), in-process, not through
the grader's sandbox: the solutions' notebooks stand for a learner's, copied to a folder with
exercise 8's ``KERNELS`` set as the variant says. The first iterations (compilation, warm-up)
are not counted; the figure is the median time of the others. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["04_roi_align_forward", "05_roi_align_backward", "06_numba", "08_torch_op",
             "09_anchors", "10_box_coding_nms", "11_matcher_sampler", "12_masks",
             "14_capstone"]  # fmt: skip
SKIPPED = 4  # iterations not counted: numba compiles, the allocator warms up
# (name, what it is, exercise 8's KERNELS or None for refimpl's parts, parts left to refimpl,
# exercise 10's NMS: the solution's blocked pass or the direct loop of LOOP_NMS)
VARIANTS = [
    ("refimpl", "refimpl's parts (the baseline)", None, (), "blocked"),
    ("solutions", "every part of the solutions; exercise 8 over refimpl's NumPy kernels",
     "refimpl", (), "blocked"),
    ("solutions-numpy", "every part; exercise 8 over the learner's NumPy kernels (ex. 4-5)",
     "numpy", (), "blocked"),
    ("solutions-numba", "every part; exercise 8 over the learner's Numba kernel (ex. 6)",
     "numba", (), "blocked"),
    ("solutions-loop-nms", "every part; exercise 10's NMS the direct loop (a box_iou row "
     "per kept box)", "refimpl", (), "loop"),
    ("solutions-no-nms", "every part but exercise 10's NMS (refimpl's, compiled)",
     "refimpl", ("nms", "batched_nms"), "blocked"),
]  # fmt: skip
# The NMS most learners write first (exercise 10's hint), in place of the solution's.
LOOP_NMS = """def nms(boxes, scores, iou_threshold):
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iou = box_iou(boxes[best][None], boxes[rest])[0]
        order = rest[~(iou > iou_threshold)]
    return np.array(keep, dtype=np.int64)
"""


def one(kernels: str | None, refimpl_parts: list[str], nms: str, iters: int, threads: int) -> dict:
    """Train ``iters`` iterations with one variant's parts; its per-iteration times."""
    from refimpl.course import capstone
    from refimpl.course.learner import choose_kernels
    from refimpl.data import write_shapes_dataset
    from refimpl.engine.config import PRESETS
    from refimpl.model import Parts
    from refimpl.model.parts import PART_NAMES

    with tempfile.TemporaryDirectory(prefix="capstone-speed-") as tmp:
        tmp = Path(tmp)
        if kernels is None:
            parts = Parts()
        else:
            for name in NOTEBOOKS:
                shutil.copy(ROOT / "solutions" / f"{name}.ipynb", tmp)
            choose_kernels(tmp / "08_torch_op.ipynb", kernels)
            if nms == "loop":
                ex10 = tmp / "10_box_coding_nms.ipynb"
                nb = json.loads(ex10.read_text())
                grade_id = lambda c: c["metadata"].get("nbgrader", {}).get("grade_id")  # noqa: E731
                (cell,) = [c for c in nb["cells"] if grade_id(c) == "nms"]
                cell["source"] = LOOP_NMS
                ex10.write_text(json.dumps(nb))
            use = [n for n in PART_NAMES if n not in refimpl_parts]
            parts = capstone.parts_from_notebooks(tmp, use=use, strict=True).parts
        write_shapes_dataset(tmp / "data", train=200, val=8, seed=0)
        recipe = {k: v for k, v in PRESETS["shapes-demo"].items() if k != "model"}
        recipe.update(iters=iters, time_budget_s=None, progress=False, log_every=1,
                      threads=threads, final_eval=False)  # fmt: skip
        capstone.train(parts, tmp / "data", tmp / "run", **recipe)
        logged = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").open()]
    t = [r["time_s"] for r in logged if "time_s" in r]
    return {"per_iteration_s": [round(b - a, 4) for a, b in itertools.pairwise(t)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "capstone_speed.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a variant, in its own process
    args = parser.parse_args(argv)
    if args.one:
        _, _, kernels, refimpl_parts, nms = next(v for v in VARIANTS if v[0] == args.one)
        print(json.dumps(one(kernels, list(refimpl_parts), nms, args.iters, args.threads)))
        return 0

    from refimpl.engine.provenance import provenance

    result = {"iters": args.iters, "skipped": SKIPPED, "threads": args.threads,
              "provenance": provenance(), "variants": []}  # fmt: skip
    for name, what, *_ in VARIANTS:
        command = [sys.executable, __file__, "--one", name, "--iters", str(args.iters),
                   "--threads", str(args.threads)]  # fmt: skip
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        times = json.loads(out.strip().splitlines()[-1])["per_iteration_s"][SKIPPED:]
        median = statistics.median(times)
        result["variants"].append({"name": name, "what": what, "s_per_iteration": median,
                                   "per_iteration_s": times})  # fmt: skip
        print(f"{name:18s} {median:.3f} s per iteration  ({what})", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
