"""The package's metadata and the pinned environment agree (issue: a package that installs
beside another stack, and two README commands that stay reproducible)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower().replace("_", "-")] = Version(spec.version)
    return pins


def _requirements() -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_metadata_takes_ranges_not_pins():
    """No exact pin in the package's own metadata: those live in constraints.txt."""
    for req in _requirements():
        assert all(s.operator != "==" for s in req.specifier), req
    assert _pyproject()["project"]["requires-python"] == ">=3.11"


def test_constraints_pin_every_dependency_inside_its_range():
    pins = _constraints()
    for req in _requirements():
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_the_installed_environment_is_the_pinned_one():
    """What setup.sh installed is what constraints.txt says (torch's +cpu local tag aside)."""
    from importlib.metadata import version

    pins = _constraints()
    for name in ("torch", "numpy", "numba", "pycocotools", "ruff"):
        assert Version(Version(version(name)).base_version) == pins[name], name


def test_setup_installs_from_the_constraints():
    assert "-c constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()


def test_pre_commit_config_is_valid_and_runs_ruff():
    config = ROOT / ".pre-commit-config.yaml"
    assert "ruff check" in config.read_text() and "ruff format" in config.read_text()
    done = subprocess.run(
        [sys.executable, "-m", "pre_commit", "validate-config", str(config)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
