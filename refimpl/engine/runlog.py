"""``metrics.jsonl``: one JSON object per logged iteration (the five losses, lr) and per
evaluation, appended as the run goes.

A run killed while appending leaves a torn last line (no newline): :meth:`MetricsLog.truncate`
(on ``--resume``) keeps the whole lines up to the checkpoint's iteration, drops the rest with
a warning, and rewrites the file atomically, so the resumed run appends after clean lines.
"""

from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

from .checkpoint import CheckpointWriteError


class MetricsLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def reset(self) -> None:
        self.path.write_text("")

    def append(self, record: dict) -> None:
        # one write of one whole line: a kill can tear only this line, and only at the end
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: say so (a torn line is dropped on --resume)
            raise _write_error(self.path, e) from e

    def records(self) -> list[dict]:
        """The whole lines (a torn last line is left out, with a warning)."""
        return [record for record, _ in self._read()]

    def _read(self) -> list[tuple[dict, bytes]]:
        """``(record, line)`` for each whole line."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # after the last newline: b"" unless a write was cut short
        if torn:
            warnings.warn(
                f"{self.path}: the last line is incomplete ({len(torn)} bytes without a newline: "
                "the run was killed while writing it); it is dropped",
                RuntimeWarning,
                stacklevel=3,
            )
        records = []
        for n, line in enumerate(lines, start=1):
            try:
                records.append((json.loads(line), line))
            except ValueError as e:
                raise ValueError(f"{self.path}: line {n} is not JSON ({e}): {line[:80]!r}") from e
        return records

    def truncate(self, iteration: int) -> None:
        """Keep the records of iterations <= ``iteration`` (what a checkpoint at that iteration
        has seen): a resumed run logs the later ones again."""
        if not self.path.is_file():
            return
        kept = [line + b"\n" for record, line in self._read() if record.get("iter", 0) <= iteration]
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(b"".join(kept))  # the lines as written: the losses stay bit for bit
            os.replace(tmp, self.path)
        except OSError as e:  # a full disk: the log is unchanged, no partial .tmp is left
            tmp.unlink(missing_ok=True)
            raise _write_error(self.path, e) from e


def _write_error(path: Path, error: OSError) -> CheckpointWriteError:
    what = "no space left" if error.errno in (errno.ENOSPC, errno.EDQUOT) else str(error)
    return CheckpointWriteError(f"{what} writing {path}; the run's earlier lines are intact")
