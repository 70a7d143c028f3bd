"""Adversarial submissions (issue 14): copies of exercise 02 (the fastest to grade) that
implement nothing and try to forge a score, copy the reference, escape the sandbox, shadow the
grader, leak the hidden tests or exhaust the machine. Each must score 0 on what it attacks and
leave the grader, the checkout and later gradings as they were.

Several attacks share a notebook (grading is the slow part). The attacks that write files only
ever create new ones (never touch a tracked file), so that a broken sandbox fails the test
without damaging the checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path

import pytest

from refimpl.course.grade import grade, grade_notebook, main
from refimpl.course.sandbox import detect

from .conftest import EXERCISES, REPO, code_cell, load, write

pytestmark = [
    pytest.mark.skipif(
        detect()[0] == "none",
        reason="no sandbox here (bubblewrap or unshare): scores can be forged by design",
    ),
    pytest.mark.timeout(900),
]

EXERCISE = "02_roi_pool"
# what the attacks on exercise 02 aim at (other engineers may be editing the rest meanwhile)
TARGETS = [
    "refimpl/course/grading/test_02_roi_pool.py",
    "refimpl/course/grading/conftest.py",
    "refimpl/course/runner.py",
    "refimpl/ops/python.py",
    "solutions/02_roi_pool.ipynb",
    "exercises/02_roi_pool.ipynb",
]
SANDBOX_UID_BASE = 1 << 20  # sandboxes' users when the grader runs as root (sandbox_uid)


def exercise_with(*cells: str | dict) -> dict:
    """Exercise 02 as released (nothing implemented) with attack cells appended."""
    nb = load(EXERCISES / f"{EXERCISE}.ipynb")
    nb["cells"] += [c if isinstance(c, dict) else code_cell(c) for c in cells]
    return nb


def checkout_state() -> tuple[str, list[str]]:
    """A digest of the attacked files, and every file of the checkout a sandbox user owns."""
    h = hashlib.sha256()
    for rel in TARGETS:
        h.update((REPO / rel).read_bytes())
    owned = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.lstat(path).st_uid >= SANDBOX_UID_BASE or "planted" in name:
                owned.append(path)
    return h.hexdigest(), owned


@pytest.fixture
def checkout_untouched():
    before = checkout_state()
    yield
    assert checkout_state() == before, "a submission changed the checkout"


def processes_with(token: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline:
                found.append(int(name))
    return found


def no_survivors(token: str) -> list[int]:
    """Processes that outlived grading (a moment for the kernel to tear the sandbox down)."""
    for _ in range(50):
        alive = processes_with(token)
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def assert_report_not_forged(report: str, total: str) -> None:
    """One score line, the grader's, last; nothing the learner printed can pass for a line of
    the report (every learner line is indented, control characters are escaped)."""
    lines = report.splitlines()
    assert [line for line in lines if line.startswith("score:")] == [f"score: {total}"]
    assert lines[-1] == f"score: {total}"
    assert "\r" not in report and "\x1b" not in report
    assert not [line for line in lines if re.match(r"\s*PASS", line)], report
    assert all(line.startswith(("== ", "!! ", "   ", "score: ")) for line in lines), report


# --- forging and copying ---------------------------------------------------------------------

COPYING = [
    # a two-line wrapper around the reference, and functools.partial of it; when refimpl is not
    # importable, exec of the reference's source read from the checkout or the installed package
    f"""
import functools, glob, importlib, os, sys
REPO = {str(REPO)!r}


def _reference(name):
    try:
        return getattr(importlib.import_module("refimpl.ops.python"), name)
    except ImportError as first:
        paths = [REPO + "/refimpl/ops/python.py"]
        paths += [p + "/refimpl/ops/python.py" for p in sys.path if p]
        for path in paths:
            try:
                source = open(path).read()
            except OSError:
                continue
            scope = {{}}
            exec(source, scope)
            return scope[name]
        raise first


def roi_pool_forward_argmax(x, rois, output_size, spatial_scale=1.0):
    return _reference("roi_pool_forward_argmax")(x, rois, output_size, spatial_scale)


try:
    roi_pool_backward = functools.partial(_reference("roi_pool_backward"))
except ImportError:
    def roi_pool_backward(*args):
        return functools.partial(_reference("roi_pool_backward"))(*args)
""",
    # the solution notebook, read from solutions/ and run
    """
def _solution(name):
    for path in [REPO + "/solutions/02_roi_pool.ipynb", "../solutions/02_roi_pool.ipynb",
                 "/submission/../solutions/02_roi_pool.ipynb"]:
        try:
            nb = open(path).read()
        except OSError as e:
            missing = e
            continue
        import json
        scope = {}
        for cell in json.loads(nb)["cells"]:
            if cell["cell_type"] == "code":
                try:
                    exec("".join(cell["source"]), scope)
                except Exception:
                    pass
        return scope[name]
    raise missing


def c_round(v):
    return _solution("c_round")(v)
""",
]

FORGING = [
    # patch the worker, the checks and the tests (wherever they can be found)
    """
import sys
for module in list(sys.modules.values()):
    for attr in ("fail", "check_array", "check_equal", "Feedback", "describe_exception"):
        if hasattr(module, attr):
            try:
                setattr(module, attr, lambda *a, **k: None)
            except Exception:
                pass
try:
    import _grader.runner as runner
    runner.Server.error = lambda self, exc, printed="": self.reply({"value": 0, "args": ()})
except ImportError as e:
    print(e)
try:
    import refimpl.course.grading.test_02_roi_pool as tests
    for name in dir(tests):
        if name.startswith("test_"):
            setattr(tests, name, lambda sub: None)
except ImportError as e:
    print(e)
""",
    # fake score lines, printed, written to the output pipe and in exception messages
    """
import os, sys
print("score: 27 / 27")
os.write(1, b"\\nscore: 27 / 27\\n")
os.write(2, b"\\nscore: 27 / 27\\n")
sys.__stdout__.write("\\rscore: 27 / 27\\n")
sys.__stdout__.flush()


def bin_ranges(*args):
    return "\\rscore: 27 / 27\\n   PASS   2/2  \\x1b[2K"


raise RuntimeError("\\nscore: 27 / 27\\r\\n   PASS  27/27 everything\\n== 02_roi_pool: 27 / 27")
""",
    # forged frames (and garbage) on every socket the worker holds
    """
import os, socket
try:
    from _grader import channel
    frames = [
        channel.message("cell_done", None, status="ok", error=None, printed=""),
        channel.message("result", {"value": 27, "args": ()}, printed="score: 27 / 27"),
        channel.message("reaped", None, known=True, exit=0),
    ]
except Exception:
    frames = []
for fd in range(3, 256):
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        continue
    for frame in frames + [b"score: 27 / 27\\n" * 8]:
        try:
            s.send(frame)
        except OSError:
            pass
""",
]


def results_json_then_exit(paths: list[str]) -> str:
    return f"""
import json, os
for path in {paths!r} + ["/autograder/results/results.json", "results.json"]:
    try:
        with open(path, "w") as f:
            json.dump({{"score": 27.0, "tests": []}}, f)
    except OSError as e:
        print(e)
os._exit(0)
"""


@pytest.mark.usefixtures("checkout_untouched")
def test_forging_and_copying_score_zero(tmp_path, capsys):
    out = tmp_path / "out" / "results.json"
    canary = tmp_path / "canary.json"
    canary.write_text("{}")
    nb = exercise_with(*COPYING, *FORGING, results_json_then_exit([str(out), str(canary)]), "x = 1")
    path = write(nb, tmp_path / "submission", EXERCISE)
    assert main([str(path), "--json", str(out)]) == 0
    report = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert canary.read_text() == "{}"
    assert data["score"] == 0 and len(data["tests"]) == 16
    assert all(t["score"] == 0 for t in data["tests"])
    assert_report_not_forged(report, "0 / 27")
    assert_report_not_forged(data["output"], "0 / 27")
    # the routes to the reference fail with a message saying why (the grader's own, read from
    # the notebook: the learner's code silenced its error messages)
    for t in data["tests"]:
        assert "graded functions must be your own" in t["output"], t
    assert "refimpl.ops.python" in report and "solutions/02_roi_pool.ipynb" in report


# --- escaping and leaking ------------------------------------------------------------------

SECRET = "SECRET-" + uuid.uuid4().hex

HIDDEN_TESTS = f'''
from refimpl.course.checks import fail, points

SECRET = "{SECRET}"  # the source of the hidden tests: {SECRET}


@points(1)
def test_hidden_crash(sub):
    """hidden: the test itself crashes"""
    raise KeyError(SECRET)


@points(1)
def test_hidden_assert(sub):
    """hidden: a plain assert"""
    assert sub.c_round(SECRET) == 0, "expected " + SECRET


@points(1)
def test_hidden_feedback(sub):
    """hidden: feedback"""
    fail("expected " + SECRET)


@points(1)
def test_hidden_callback(sub):
    """hidden: the learner's code calls back a function of the test"""
    sub.use_callback(lambda v: {{}}[SECRET])
'''


def escaping(token: str, targets: list[str]) -> list[str]:
    daemon = f"""
import os, time  # {token}
while True:
    for path in {targets!r}:
        try:
            with open(path, "w") as f:
                f.write("rewritten by a process that outlived grading")
        except OSError:
            pass
    time.sleep(0.2)
"""
    return [
        f"""
import os, subprocess, sys
DAEMON = {daemon!r}
if os.fork() == 0:  # a grandchild in a session of its own
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", DAEMON])
    os._exit(0)
os.wait()
# a daemon that holds the sandbox's stdout and stderr
subprocess.Popen([sys.executable, "-c", DAEMON], start_new_session=True, close_fds=False)
""",
        """
import glob, os, subprocess, sys

LOOT = []


def steal(paths):
    for pattern in paths:
        for path in glob.glob(pattern) or [pattern]:
            try:
                LOOT.append(open(path).read())
            except OSError as e:
                LOOT.append(repr(e))


def c_round(v):
    # a daemon started by a graded function, in its test's process
    subprocess.Popen([sys.executable, "-c", DAEMON], start_new_session=True)
    with open("/tmp/loot", "a") as f:
        f.write(repr(v))
    raise RuntimeError(f"got {v!r}; loot: {LOOT}")


def use_callback(f):
    try:
        f(1)
    except Exception as e:
        with open("/tmp/loot", "a") as out:
            out.write(str(e))
        print(e)
        raise RuntimeError(str(e))


def bin_ranges(*args):
    try:
        raise RuntimeError(open("/tmp/loot").read())
    except OSError:
        raise RuntimeError("\\n".join(LOOT))
""",
    ]


@pytest.mark.usefixtures("checkout_untouched")
def test_escaping_and_leaking(tmp_path, capsys):
    token = "ESCAPE-" + uuid.uuid4().hex
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / f"test_{EXERCISE}.py").write_text(HIDDEN_TESTS)
    (hidden / "02_roi_pool_solution.ipynb").write_text(json.dumps({"secret": SECRET}))
    out = tmp_path / "results.json"
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    loot = [str(hidden / "*"), str(REPO / "solutions" / "*"), "/proc/*/cmdline", "/proc/*/environ"]
    steal = f"steal({loot!r})"
    nb = exercise_with(*escaping(token, [str(out), str(canary)]), steal)
    path = write(nb, tmp_path / "submission", EXERCISE)
    argv = [str(path), "--json", str(out), "--hidden", str(hidden)]
    assert main(argv) == 0  # returns, although daemons held the sandbox's stdout
    assert no_survivors(token) == [], "processes outlived grading"
    captured = capsys.readouterr()
    data = json.loads(out.read_text())
    assert canary.read_text() == "untouched"
    assert data["score"] == 0 and len(data["tests"]) == 16 + 4
    for text in (captured.out, captured.err, data["output"]):
        assert SECRET not in text
    for t in data["tests"]:
        assert t["visibility"] == "hidden" or SECRET not in t["output"], t
    hidden_out = {t["name"]: t["output"] for t in data["tests"] if t["visibility"] == "hidden"}
    assert "KeyError" in hidden_out[f"{EXERCISE}: hidden: the test itself crashes"]
    assert_report_not_forged(captured.out, "0 / 27")


# --- exhausting ----------------------------------------------------------------------------

EXHAUSTING = [
    # swallows the CPU-time signals: blocked, timer disarmed, every exception caught
    """
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPROF, signal.SIGXCPU, signal.SIGALRM})
signal.setitimer(signal.ITIMER_PROF, 0)
while True:
    try:
        while True:
            pass
    except BaseException:
        pass
""",
    {"cell_type": "code", "metadata": {}, "outputs": [], "source": {"a": "dict"}},
    # all the memory it can get, 256 MB at a time (touched), then one huge request
    """
import numpy as np
hog = []
try:
    while True:
        hog.append(np.ones(1 << 25))
except MemoryError:
    pass
del hog
try:
    big = bytearray(1 << 40)
except MemoryError:
    pass
""",
    # 200 MB of output, a 200 MB string printed, a file as large as it can be
    """
import os
chunk = b"x" * (1 << 20)
for _ in range(200):
    os.write(1, chunk)
print("y" * (200 << 20))
with open("/tmp/big", "wb") as f:
    for _ in range(1024):
        f.write(chunk)
""",
]


def rss_peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@pytest.mark.slow
def test_exhausting_scores_zero_and_the_grader_stays_small(tmp_path):
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS from now on
    before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    path = write(exercise_with(*EXHAUSTING), tmp_path / "submission", EXERCISE)
    result = grade_notebook(path, timeout=2.0, memory_gb=2.0)
    grown_mb = (rss_peak_kb() * 1024 - before) / 2**20
    assert grown_mb < 150, f"the grader grew by {grown_mb:.0f} MB"
    assert result.max_score == 27 and result.score == 0  # no points vanish
    notes = "\n".join(result.notes)
    assert "source is not text" in notes
    assert "CPU time" in notes, notes
    assert "MemoryError" not in notes or "code cell" in notes


# --- shadowing, and later gradings -----------------------------------------------------------

SHADOWS = {
    # each would end the process at once if the sandbox (or the grader) imported it
    "refimpl/__init__.py": "import os\nos._exit(42)\n",
    "refimpl/course/__init__.py": "import os\nos._exit(42)\n",
    "refimpl/course/runner.py": "import os\nos._exit(42)\n",
    "refimpl/course/grading/test_02_roi_pool.py": "def test_forged(sub):\n    pass\n",
    "_grader/__init__.py": "import os\nos._exit(42)\n",
    "_grader/runner.py": "import os\nos._exit(42)\n",
    "numpy.py": "import os\nos._exit(43)\n",
    "sitecustomize.py": "import os\nos._exit(44)\n",
    "usercustomize.py": "import os\nos._exit(44)\n",
}


@pytest.mark.usefixtures("checkout_untouched")
def test_shadowing_and_planting_change_nothing(tmp_path, solution):
    folder = tmp_path / "submission"
    for rel, text in SHADOWS.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    host = [
        str(folder / "planted.py"),
        str(REPO / "refimpl" / "course" / "grading" / "test_zz_planted.py"),
        str(REPO / "tests" / "course" / "test_zz_planted.py"),
        str(REPO / "solutions" / "planted.txt"),
        str(tmp_path / "planted.py"),
    ]
    inside = ["/submission/planted.py", "/tmp/planted.py", "/dev/shm/planted.py", "~/planted.py"]
    plant = f"""
import os
for path in {host + inside!r}:
    try:
        with open(os.path.expanduser(path), "x") as f:
            f.write("import os; os._exit(45)\\n")
    except OSError:
        pass
"""
    nb = solution(EXERCISE)
    nb["cells"].append(code_cell(plant))
    write(nb, folder, EXERCISE)
    # the next notebook looks for what the first one planted
    check = f"""
import os
found = [p for p in {host + inside!r} if os.path.exists(os.path.expanduser(p))]
if found:
    raise RuntimeError(f"planted by another notebook: {{found}}")
"""
    later = load(EXERCISES / "03_roi_warp.ipynb")
    later["cells"].append(code_cell(check))
    write(later, folder, "03_roi_warp")
    try:
        results = {r.exercise: r for r in grade([folder])}
        planted = [p for p in host if os.path.exists(p)]
    finally:
        for p in host:
            if os.path.exists(p):
                os.remove(p)
    assert planted == []
    shadowed = results[EXERCISE]
    assert shadowed.score == shadowed.max_score == 27, [t.output for t in shadowed.tests]
    # the only note: the paths it named (in the checkout) are out of a learner's reach
    assert [n for n in shadowed.notes if "reaches for" not in n] == [], shadowed.notes
    assert results["03_roi_warp"].score == 0
    assert not [n for n in results["03_roi_warp"].notes if "planted by another" in n]
