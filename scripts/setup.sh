#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv from pyproject.toml.
# Needs only Python 3.11. constraints.txt pins what was tested (torch 2.13.0: pip takes the CPU
# build where the machine offers it); pyproject.toml itself takes ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,course]"
# The autograder runs each notebook in a bubblewrap sandbox (docs/instructors.md); without it, it warns and grades unsandboxed.
command -v bwrap >/dev/null 2>&1 || echo "setup.sh: bubblewrap not found: the autograder needs it to sandbox submissions (sudo apt-get install bubblewrap)" >&2
