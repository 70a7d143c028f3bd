"""Measure the capstone's training target as the autograder grades it; write
``docs/results/capstone.json`` (the README quotes it: ``python -m refimpl.engine.results``).

    .venv/bin/python scripts/capstone_long.py [--notebook solutions/14_capstone.ipynb]

Runs ``python -m refimpl.grade NOTEBOOK --long`` in a subprocess, sandbox and all, on a quiet
machine: the learner's parts (here the solutions') are remote calls into the sandbox, the
model trains in the grader. The long test writes its training summary where
``REFIMPL_CAPSTONE_REPORT`` says; this script adds the score, the wall time and provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebook", default="solutions/14_capstone.ipynb")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "capstone.json"))
    args = parser.parse_args(argv)

    from refimpl.engine.provenance import provenance

    started = provenance()  # the load average before the run
    with tempfile.TemporaryDirectory(prefix="capstone-measure-") as tmp:
        report_path, grade_path = Path(tmp) / "report.json", Path(tmp) / "grade.json"
        command = [sys.executable, "-m", "refimpl.grade", args.notebook, "--long",
                   "--json", str(grade_path)]  # fmt: skip
        env = {**os.environ, "REFIMPL_CAPSTONE_REPORT": str(report_path)}
        t0 = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, check=True)
        wall = time.perf_counter() - t0
        if not report_path.is_file():
            print("the long test did not run (see the report above)", file=sys.stderr)
            return 1
        trained = json.loads(report_path.read_text())
        graded = json.loads(grade_path.read_text())
    result = {
        "command": f"python -m refimpl.grade {args.notebook} --long",
        "score": graded["score"],
        "max_score": sum(t["max_score"] for t in graded["tests"]),
        "wall_s": round(wall, 1),
        **trained,
        "provenance": started,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
