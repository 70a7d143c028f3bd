"""Issue 12: ``python -m refimpl train`` checks its numbers when it parses them (argparse's
error naming the option, exit status 2), before any data is read: ``--log-every 0`` and
``--batch-size 0`` used to crash with ZeroDivisionError, ``--iters 0`` / ``-5`` and
``--time-budget -1`` to run something else silently with exit status 0."""

from __future__ import annotations

import pytest

from refimpl.__main__ import main

BAD = [
    ("--log-every", "0"),
    ("--batch-size", "0"),
    ("--iters", "0"),
    ("--iters", "-5"),
    ("--time-budget", "-1"),
    ("--time-budget", "0"),
    ("--lr", "nan"),
    ("--lr", "-0.1"),
    ("--epochs", "0"),
    ("--workers", "-1"),
    ("--threads", "0"),
    ("--checkpoint-every", "-2"),
    ("--sampling-ratio", "-3"),
    ("--hflip", "1.5"),
    ("--iters", "2.5"),
]


@pytest.mark.parametrize(("option", "value"), BAD, ids=lambda v: v)
def test_bad_numbers_fail_at_parse_time(tmp_path, capsys, option, value):
    # the data directory does not exist: a parse error must come before anything reads it
    argv = ["train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run"),
            option, value]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and f"got {value!r}" in err, err
    assert not (tmp_path / "run").exists()
