"""``python -m refimpl.grade PATH [--json results.json] [--hidden DIR] [--timeout S]``.

The autograder's entry point; everything lives in :mod:`refimpl.course.grade`.
"""

from __future__ import annotations

from refimpl.course.grade import main

if __name__ == "__main__":
    raise SystemExit(main())
