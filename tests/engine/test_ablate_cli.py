"""The ablation driver (smoke size, stand-in model) and the command-line dispatcher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from refimpl import __main__ as cli
from refimpl.engine.ablate import VARIANT_SLUGS, run_ablation

from .conftest import STANDIN


def test_ablation_smoke(tmp_path):
    report = run_ablation(tmp_path, "smoke", model=STANDIN, progress=False)
    assert set(report["results"]) == set(VARIANT_SLUGS)
    # the sigmoid row is the RoIAlign (avg) run: same settings, trained once
    assert report["results"]["sigmoid"]["same_run_as"] == "roialign-avg"
    assert not (tmp_path / "runs" / "sigmoid").exists()
    runs = {p.name for p in (tmp_path / "runs").iterdir()}
    assert runs == set(VARIANT_SLUGS) - {"sigmoid"}
    # each variant's options reached the model builder
    config = json.loads((tmp_path / "runs" / "roiwarp-max" / "seed0" / "config.json").read_text())
    assert (config["roi_op"], config["pool_mode"]) == ("warp", "max")
    softmax = json.loads((tmp_path / "runs/softmax/seed0/config.json").read_text())
    assert softmax["mask_loss"] == "softmax"
    md = (tmp_path / "ablation.md").read_text()
    assert "Table 2c" in md and "Table 2b" in md and "| RoIAlign | ✓ | ✓ | ave |" in md
    assert json.loads((tmp_path / "ablation.json").read_text())["size"] == "smoke"
    # finished variants are reused
    mtime = (tmp_path / "runs/roipool/seed0/metrics.json").stat().st_mtime
    run_ablation(tmp_path, "smoke", ["roipool"], model=STANDIN, progress=False)
    assert (tmp_path / "runs/roipool/seed0/metrics.json").stat().st_mtime == mtime


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "train", "evaluate", "predict", "ablate", "demo", "bench"):
        assert command in out


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "ablate", "demo"])
def test_command_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0 and "usage: python -m refimpl " + command in capsys.readouterr().out


def test_bench_is_passed_through(monkeypatch):
    import types

    seen = {}
    fake = types.ModuleType("refimpl.bench.__main__")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "refimpl.bench.__main__", fake)
    assert cli.main(["bench", "ops", "--quick"]) == 0
    assert seen["argv"] == ["ops", "--quick"]


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "refimpl", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "train" in proc.stdout


def test_demo_pipeline(tmp_path, capsys):
    out, data = tmp_path / "demo", tmp_path / "data"
    argv = ["demo", "--out", str(out), "--data", str(data), "--train", "4", "--val", "2",
            "--iters", "2", "--batch-size", "2", "--model", STANDIN, "--threads", "1",
            "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "mask AP" in capsys.readouterr().out
    report = json.loads((out / "demo.json").read_text())
    assert report["val_images"] == 2 and set(report["segm"]) >= {"AP", "AP50", "AP75"}
    assert (out / "predictions.png").is_file() and (out / "metrics.json").is_file()
    # the data is generated once, then reused
    mtime = (data / "annotations/instances_train.json").stat().st_mtime
    assert cli.main(argv) == 0
    assert (data / "annotations/instances_train.json").stat().st_mtime == mtime


def test_train_preset(monkeypatch, tmp_path):
    import refimpl.engine.train as train_module

    seen = {}
    monkeypatch.setattr(train_module, "train", lambda cfg: seen.setdefault("cfg", cfg) and {})
    argv = ["train", "--preset", "shapes-demo", "--data", "d", "--out", str(tmp_path),
            "--lr", "0.5"]  # fmt: skip
    assert cli.main(argv) == 0
    cfg, preset = seen["cfg"], train_module.PRESETS["shapes-demo"]
    assert cfg.lr == 0.5  # explicit options win over the preset
    assert cfg.iters == preset["iters"] and cfg.batch_size == preset["batch_size"]
