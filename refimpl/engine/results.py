"""The committed measurements (``docs/results/*.json``) and the README's blocks made from them.

Every figure the README quotes from a measurement (the demo's AP and iterations, the speed
tables, the ablation, the capstone's training) sits between ``<!-- results: NAME -->`` and
``<!-- /results -->`` and is rendered here from the file that measured it, so prose cannot
drift from the numbers: ``python -m refimpl.engine.results --check`` (run by the test suite)
fails when a block differs from its rendering, ``--write`` rewrites the blocks (and draws
``docs/results/ablation.png``).

=================  ==========================================================================
block              made by (run on a quiet machine; see each file's ``provenance``)
=================  ==========================================================================
``demo``           ``python -m refimpl demo`` (its ``runs/demo/demo.json``)
``bench_ops``      ``python -m refimpl bench ops --json`` (an environment with torchvision)
``bench_overhead`` ``python -m refimpl bench overhead --json``
``bench_model``    ``python -m refimpl bench model --json`` (an environment with torchvision)
``ablation``       ``python -m refimpl ablate --size cpu --seeds 0 1 2`` (``ablation.json``)
``capstone``       ``scripts/capstone_long.py`` (the capstone's ``--long`` grading tier)
``capstone_speed`` ``scripts/capstone_speed.py`` (seconds per iteration with the learner's parts)
=================  ==========================================================================
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- results: (\w+) -->\n)(.*?)(<!-- /results -->)", re.S)


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no committed result {path.relative_to(ROOT)}")
    return json.loads(path.read_text())


def _measured(prov: dict) -> str:
    """'2026-12-06 on 2 cores (AMD EPYC 9B14, load average 0.1 at the start)'."""
    m = prov["machine"]
    return (
        f"{prov['date'][:10]} on {m['cores']} cores ({m['cpu']}, load average "
        f"{m['load_average_at_start'][0]:.1f} at the start)"
    )


def _pct(v: float | None) -> str:
    return "-" if v is None or v < 0 else f"{100 * v:.1f}"


def demo() -> str:
    r = load("demo")
    t = r["train"]
    rows = [
        f"Measured {_measured(r['provenance'])}: {r['seconds']['total'] / 60:.1f} minutes in all, "
        f"{r['iterations']} iterations of {t['batch_size']} images (lr {t['lr']}), on the "
        f"{r['val_images']} validation images:",
        "",
        "| | AP | AP50 | AP75 | APs | APm |",
        "|---|---|---|---|---|---|",
    ]
    for label, key, bold in (("bbox", "bbox", False), ("segm (mask)", "segm", True)):
        cells = [_pct(r[key][k]) for k in ("AP", "AP50", "AP75", "APs", "APm")]
        if bold:
            cells[:2] = [f"**{c}**" for c in cells[:2]]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2g}x" if f"{lo:.2g}" == f"{hi:.2g}" else f"{lo:.2g}-{hi:.2g}x"


def bench_ops() -> str:
    from refimpl.bench.ops import Row, format_table

    r = load("bench_ops")
    rows = [Row(**row) for row in r["rows"]]
    lines = [f"Measured {_measured(r['provenance'])}.", "", format_table(rows, r["header"]), ""]
    for backend, op in (("numba", "roi_align"), ("numba", "roi_pool"), ("numpy", "roi_align"),
                        ("numpy", "roi_pool")):  # fmt: skip
        ratios: dict[str, list[float]] = {"forward": [], "backward": []}
        for x in rows:
            if (x.backend, x.op) == (backend, op) and x.speedup is not None:
                ratios[x.direction].append(x.speedup)
        if ratios["forward"] and ratios["backward"]:
            lines.append(
                f"- {backend} {op}: {_range(ratios['forward'])} torchvision's speed forward, "
                f"{_range(ratios['backward'])} backward (box and mask workloads)"
            )
    return "\n".join(lines)


def bench_overhead() -> str:
    from refimpl.bench.ops import format_overhead

    r = load("bench_overhead")
    return f"Measured {_measured(r['provenance'])}.\n\n" + format_overhead(r["rows"], r["repeats"])


def bench_model() -> str:
    from refimpl.bench.model import format_model

    r = load("bench_model")
    return f"Measured {_measured(r['provenance'])}.\n\n" + format_model(r)


def ablation() -> str:
    from refimpl.engine.ablate import markdown_tables

    report = load("ablation")
    text = markdown_tables(report)
    provs = [run["provenance"] for v in report["results"].values()
             for run in v.get("runs", {}).values() if run.get("provenance")]  # fmt: skip
    when = ""
    if provs:
        dates = sorted(p["date"][:10] for p in provs)
        m = provs[0]["machine"]
        span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        commit = (provs[0].get("git_commit") or "unknown")[:7]
        when = f"Trained {span} on {m['cores']} cores ({m['cpu']}), commit {commit}. "
    # The file's title is the README section's heading; its sections nest one level deeper;
    # every run is listed in docs/results/ablation.md.
    body = text.split("\n", 2)[2].split("\n## Every run")[0].strip()
    body = body.replace("\n## ", "\n#### ")
    return (
        when + body + "\n\nEvery run (seed, iterations, wall time): `docs/results/ablation.md`.\n\n"
        "![Table 2c and 2b measured](docs/results/ablation.png)"
    )


def capstone() -> str:
    r = load("capstone")
    s = r["segm"]
    return (
        f"Measured {_measured(r['provenance'])}: `{r['command']}` graded "
        f"{r['score']:g} / {r['max_score']:g}; the long tier trained {r['iterations']} "
        f"iterations and evaluated in {r['train_s'] / 60:.1f} minutes (the grading in all "
        f"{r['wall_s'] / 60:.1f} minutes): mask AP {s['AP']:.3f}, "
        f"AP50 {s['AP50']:.3f} on {r['val_images']} validation images."
    )


def capstone_speed() -> str:
    r = load("capstone_speed")
    base = next(v["s_per_iteration"] for v in r["variants"] if v["name"] == "refimpl")
    lines = [
        f"Measured {_measured(r['provenance'])}: median seconds per training iteration (batch "
        f"of 8, {r['threads']} threads, iterations {r['skipped'] + 2}-{r['iters']}):",
        "",
        "| parts | s per iteration | vs refimpl's |",
        "|---|---:|---:|",
    ]
    for v in r["variants"]:
        t = v["s_per_iteration"]
        lines.append(f"| {v['what']} | {t:.2f} | {t / base:.1f}x |")
    return "\n".join(lines)


def write_figures() -> None:
    """``docs/results/ablation.png`` from ``ablation.json`` (lesson 13 draws the same)."""
    import matplotlib

    matplotlib.use("Agg")
    from refimpl.course.model_figures import ablation_bars

    fig = ablation_bars(load("ablation"))
    fig.savefig(RESULTS / "ablation.png", dpi=110, bbox_inches="tight")


RENDER: dict[str, Callable[[], str]] = {
    "demo": demo,
    "bench_ops": bench_ops,
    "bench_overhead": bench_overhead,
    "bench_model": bench_model,
    "ablation": ablation,
    "capstone": capstone,
    "capstone_speed": capstone_speed,
}


def blocks(text: str) -> dict[str, str]:
    """The README's result blocks, by name, as written."""
    return {m.group(2): m.group(3) for m in BLOCK.finditer(text)}


def rendered(text: str) -> str:
    """``text`` with every result block rendered anew from its committed file."""

    def one(m: re.Match) -> str:
        name = m.group(2)
        if name not in RENDER:
            raise ValueError(f"unknown results block {name!r}; known: {sorted(RENDER)}")
        return m.group(1) + RENDER[name]() + "\n" + m.group(4)

    return BLOCK.sub(one, text)


def stale(text: str) -> list[str]:
    """The result blocks of ``text`` that are missing or differ from their rendering."""
    written, fresh = blocks(text), blocks(rendered(text))
    return sorted(n for n in RENDER if n not in written or written[n] != fresh[n])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refimpl.engine.results", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail if a README block is stale")
    mode.add_argument("--write", action="store_true", help="rewrite the README's blocks")
    args = parser.parse_args(argv)
    text = README.read_text()
    if args.write:
        README.write_text(rendered(text))
        write_figures()
        return 0
    names = stale(text)
    for name in names:
        print(f"README block {name!r} is missing or differs from docs/results", file=sys.stderr)
    return 1 if names else 0


if __name__ == "__main__":
    sys.exit(main())
