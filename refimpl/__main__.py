"""The command line: ``python -m refimpl COMMAND ...``.

==========  ==================================================================
data        ``data shapes --out DIR --train N --val M --seed S [--hard]``
train       train Mask R-CNN on a COCO-layout directory (also under torchrun)
evaluate    COCO box and mask AP of a checkpoint
predict     draw a checkpoint's detections on images
ablate      the paper's RoI-operator and mask-loss ablations (Table 2b/2c)
demo        shapes data -> train ``maskrcnn_small`` on the CPU -> AP and a figure
bench       benchmarks: ops, overhead, model, gpu (``refimpl.bench``)
grade       the course autograder (``refimpl.course.grade``)
==========  ==================================================================

Each command's module is imported only when it runs, so ``--help`` is fast and a command
whose dependencies are missing does not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("refimpl.engine.train", "train Mask R-CNN (torchrun for several processes)"),
    "evaluate": ("refimpl.engine.evaluate", "COCO bbox and segm AP of a checkpoint"),
    "predict": ("refimpl.engine.predict", "draw detections on images"),
    "ablate": ("refimpl.engine.ablate", "the RoI-operator and mask-loss ablations"),
    "demo": ("refimpl.engine.demo", "shapes -> train maskrcnn_small on the CPU -> AP and a figure"),
}
# Commands owned by other modules, which parse their own arguments: (module candidates).
PASSTHROUGH = {
    "bench": ("refimpl.bench.__main__",),
    "grade": ("refimpl.course.grade", "refimpl.grade"),
}


def _passthrough(name: str, argv: list[str]) -> int:
    for module in PASSTHROUGH[name]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):  # the module itself is missing
                continue
            raise
        if hasattr(mod, "main"):
            return mod.main(argv) or 0
    print(f"refimpl {name}: not available in this checkout", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m refimpl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data = sub.add_parser("data", help="generate a dataset")
    data_sub = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    shapes = data_sub.add_parser("shapes", help="the synthetic shapes (COCO format)")
    from .data import shapes as shapes_module

    shapes_module.add_arguments(shapes)
    shapes.set_defaults(module="refimpl.data.shapes")
    # (listed for --help only: main() hands these to their own parsers before this one runs)
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    for name in PASSTHROUGH:
        sub.add_parser(name, help=f"see python -m refimpl {name} --help", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return _passthrough(argv[0], argv[1:])
    if argv and argv[0] in COMMANDS:
        # The command's own parser (imported now, not for every --help of another command).
        module_name, help_ = COMMANDS[argv[0]]
        parser = argparse.ArgumentParser(prog=f"python -m refimpl {argv[0]}", description=help_)
        module = importlib.import_module(module_name)
        module.add_arguments(parser)
        if hasattr(module, "apply_preset"):
            module.apply_preset(parser, argv[1:])
        return module.main(parser.parse_args(argv[1:])) or 0
    args = build_parser().parse_args(argv)
    return importlib.import_module(args.module).main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
