#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv from pyproject.toml.
# Needs only Python 3.11; torch is pinned to 2.13.0 so pip takes the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e ".[dev,course]"
