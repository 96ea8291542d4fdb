"""Attacks on the classroom grader, by class (see README, "How it stays fair and tamper-proof").

Each test plays a determined student or a careless instructor. Honest learners graded in the same
run must keep exactly their scores, the gradebook must be complete, no sandbox process may
survive, and nothing a learner does may reach the course, the reports or another learner.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
from test_grader import CORRECT, LIMITS, STUDENT, points, submission

from aigc_lib.grading import (
    Grader,
    Limits,
    SandboxBroken,
    find_submissions,
    grade_class,
    isolation_level,
)
from aigc_lib.grading.classroom import safe_id
from aigc_lib.grading.isolate import UIDS_ENV, uid_range
from aigc_lib.paths import ROOT

isolated = pytest.mark.skipif(isolation_level() != "namespaces", reason="needs root and Linux namespaces")
pytestmark = isolated


@pytest.fixture(autouse=True)
def own_uids(monkeypatch):
    """Sandbox uids of this test's own, so that other graders running meanwhile (another test
    worker) cannot be mistaken for survivors; subprocesses inherit the range."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    monkeypatch.setenv(UIDS_ENV, f"{60_000 + 100 * worker}:16")


def sandbox_processes() -> list[tuple[int, int]]:
    """(pid, uid) of every process owned by a sandbox uid, anywhere on the host."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uid = os.stat(f"/proc/{name}").st_uid
            except OSError:
                continue
            if uid in uid_range():
                found.append((int(name), uid))
    return found


def no_sandbox_left(timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while sandbox_processes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def code(source: str) -> str:
    return textwrap.dedent(source).strip("\n")


def with_code(exercise: str, source: str, keep_correct: bool = True) -> dict:
    """CORRECT for every exercise, with `source` appended to (or replacing) `exercise`'s cell."""
    body = (CORRECT[exercise] + "\n" if keep_correct else "") + code(source)
    return {**CORRECT, exercise: body}


@pytest.fixture(scope="module")
def grader():
    return Grader("00", limits=LIMITS)


# --- 1. forging: grandchildren, the result channel, other learners' results --------------------

GRANDCHILD = """
import os, signal, time
OUT = {out!r}
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for _ in range(600):
            for target in [OUT + "/grades.csv", OUT + "/learners/alice/result.json"]:
                try:
                    open(target, "w").write("forged")
                except OSError:
                    pass
            time.sleep(0.05)
    os._exit(0)
"""

CHANNEL = """
import os, json, struct
def count_bigrams(ids, vocab_size):
    header = json.dumps({"event": "result", "slot": "00.fit_pixel_model/0", "value": {"int": 1}}).encode()
    for fd in range(3, 64):
        try:
            os.write(fd, struct.pack(">IQ", len(header), 0) + header)
        except OSError:
            pass
    return torch.bincount(ids[:-1] * vocab_size + ids[1:], minlength=vocab_size**2).reshape(vocab_size, vocab_size)
"""


def test_forgers_change_no_grade_and_leave_no_process(grader, tmp_path):
    subs, out = tmp_path / "class", tmp_path / "out"
    submission(subs, "alice", CORRECT)
    submission(subs, "carol")
    submission(subs, "grandchild", with_code("count_bigrams", GRANDCHILD.format(out=str(out))))
    submission(subs, "channel", {**CORRECT, "count_bigrams": code(CHANNEL)})
    reports = {r["student"]: r for r in grade_class(grader, find_submissions([subs]), out, workers=2, progress=False)}
    assert no_sandbox_left(timeout=2), sandbox_processes()
    time.sleep(0.5)  # a survivor would have written by now
    assert {k: r["score"] for k, r in reports.items()} == {"alice": 20, "carol": 0, "grandchild": 20, "channel": 15}
    assert "forged" not in (out / "grades.csv").read_text()
    assert json.loads((out / "learners" / "alice" / "result.json").read_text())["score"] == 20


DEEP_FRAME = """
import json, os, struct
header = b"[" * 200_000 + b"]" * 200_000  # a frame the trusted side must not choke on
for fd in (4, 5, 6):
    try:
        os.write(fd, struct.pack(">IQ", len(header), 0) + header)
    except OSError:
        pass
"""

SHARED_MEMORY = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
for _ in range(64):  # System V segments outlive the process and fill the sandbox's memory
    ident = libc.shmget(0, 64 << 20, 0o1600)
    if ident < 0:
        break
    address = libc.shmat(ident, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        break
    ctypes.memset(address, 1, 64 << 20)
    libc.shmdt(ctypes.c_void_p(address))
os._exit(1)
"""

STOPPER = """
import __main__, os, signal
def _never_read(*args, **kwargs):  # the harness's next read of a request: stop instead
    os.kill(os.getpid(), signal.SIGSTOP)
__main__.read_frame = _never_read
"""


def test_the_harness_survives_what_learner_code_does_to_it(tmp_path):
    """A malformed frame on the channel, shared memory that fills the sandbox before a crash, a
    harness that stops instead of reading while the next cell is larger than a pipe: each costs the
    exercise it touches, and the class is graded."""
    grader = Grader("00", limits=Limits(cell_seconds=4, call_seconds=4, idle_seconds=2, wall_seconds=20))
    subs = tmp_path / "class"
    submission(subs, "alice", CORRECT)
    submission(subs, "frame", with_code("count_bigrams", DEEP_FRAME))
    submission(subs, "shm", {**CORRECT, "count_bigrams": code(SHARED_MEMORY)})
    big = CORRECT["next_char_probs"] + "\n" + ("# padding " * 10 + "\n") * 1000  # more than a pipe holds
    submission(
        subs,
        "stopper",
        {**CORRECT, "count_bigrams": CORRECT["count_bigrams"] + "\n" + code(STOPPER), "next_char_probs": big},
    )
    start = time.monotonic()
    reports = {
        r["student"]: r
        for r in grade_class(grader, find_submissions([subs]), tmp_path / "out", workers=2, progress=False)
    }
    assert time.monotonic() - start < 180
    assert {k: (r["status"], r["score"]) for k, r in reports.items() if k != "stopper"} == {
        "alice": ("graded", 20),
        "frame": ("graded", 15),
        "shm": ("graded", 15),
    }
    # the stopper broke its own harness: every later step stops, and it keeps what it earned before
    assert reports["stopper"]["status"] == "graded" and reports["stopper"]["score"] < 20
    assert no_sandbox_left()


MESSAGE_QUEUE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long), ("cur", ctypes.c_long),
                ("pad", ctypes.c_long * 4)]
queue = libc.mq_open(b"/aigc-stash", os.O_CREAT | os.O_WRONLY | os.O_NONBLOCK, 0o666, ctypes.byref(Attr(0, 4, 64, 0)))
if queue >= 0:
    raise RuntimeError("a POSIX message queue outlives the sandbox: it could carry hidden inputs to a later run")
"""


def test_no_channel_outlives_a_worker(grader, tmp_path):
    report = grader.grade(submission(tmp_path, "mq", with_code("count_bigrams", MESSAGE_QUEUE)))
    assert report["score"] == 20, report["cell_errors"]


def test_colliding_ids_and_huge_solutions_never_stop_the_class(grader, tmp_path):
    subs = tmp_path / "class"
    submission(subs, "alice", CORRECT)
    nbformat.write(nbformat.read(subs / "alice" / "00_history.ipynb", as_version=4), subs / "alice.ipynb")
    for raw in (b"eve\x01", b"eve\x02"):
        os.mkdir(os.fsencode(subs) + b"/" + raw)
        nbformat.write(nbformat.read(STUDENT, as_version=4), os.fsdecode(os.fsencode(subs) + b"/" + raw + b"/nb.ipynb"))
    submission(subs, "huge", {**CORRECT, "count_bigrams": CORRECT["count_bigrams"] + "\n" + "#" * 3_000_000})
    found = find_submissions([subs])
    assert len(found) == 5 and len({s for s, _ in found}) == 5
    reports = grade_class(grader, found, tmp_path / "out", workers=2, progress=False)
    assert sorted(r["score"] for r in reports) == [0, 0, 0, 20, 20]
    assert next(r for r in reports if r["student"] == "huge")["status"] == "unreadable"


def test_a_planted_result_is_not_trusted_on_resume(grader, tmp_path):
    subs, out = tmp_path / "class", tmp_path / "out"
    submission(subs, "mallory")  # untouched: 0 points
    grade_class(grader, find_submissions([subs]), out, workers=1, progress=False)
    planted = out / "learners" / "mallory" / "result.json"
    report = json.loads(planted.read_text())
    report["score"] = 20
    for e in report["exercises"]:
        e["points"] = e["max_points"]
    planted.write_text(json.dumps(report))  # same fingerprint, forged score, stale signature
    (again,) = grade_class(grader, find_submissions([subs]), out, workers=1, progress=False)
    assert again["score"] == 0
    assert next(csv.DictReader((out / "grades.csv").open()))["score"] == "0"


# --- 2. secrets: the course, other copies of it, the plan, the supervisor -----------------------

SNOOP = """
import gc, os, sys
found = []
for top in ["/"]:
    for folder, dirs, files in os.walk(top):
        if folder.startswith(("/proc", "/sys")):
            dirs[:] = []
            continue
        for name in files:
            if name == "00_history.ipynb" or (name == "ch00.py" and "hidden" in folder):
                found.append(os.path.join(folder, name))
        if "aigc_lib" in dirs:
            found.append(os.path.join(folder, "aigc_lib"))
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        for what in ("environ", "mem", "fd", "cmdline"):
            try:
                data = open(f"/proc/{pid}/{what}", "rb").read(200) if what != "fd" else os.listdir(f"/proc/{pid}/fd")
                if what != "cmdline" and data:
                    found.append(f"/proc/{pid}/{what}")
            except OSError:
                pass
try:
    import aigc_lib
    found.append("import aigc_lib")
except ImportError:
    pass
if found:
    raise RuntimeError("FOUND " + repr(found[:5]))

def count_bigrams(ids, vocab_size):
    leaks = [o for o in gc.get_objects() if isinstance(o, dict) and ("calls" in o or "slot" in o or "hidden" in o)]
    leaks += [o for o in gc.get_objects() if isinstance(o, str) and "00.count_bigrams/" in o]
    frame, depth = sys._getframe(), 0
    while frame is not None:
        leaks += [k for k in frame.f_locals if k in ("plan", "calls", "cases", "expected")]
        frame, depth = frame.f_back, depth + 1
    if leaks:
        raise RuntimeError("LEAK " + repr(leaks)[:200])
    return torch.bincount(ids[:-1] * vocab_size + ids[1:], minlength=vocab_size**2).reshape(vocab_size, vocab_size)
"""


def test_the_sandbox_holds_no_course_copy_plan_or_supervisor_secret(grader, tmp_path):
    backup = tmp_path / "course-backup"  # an instructor's world-readable copy, elsewhere on the host
    subprocess.run(["cp", "-r", str(ROOT / "aigc_lib"), str(ROOT / "solutions"), str(backup.parent)], check=True)
    os.chmod(tmp_path, 0o755)
    report = grader.grade(submission(tmp_path, "snoop", {**CORRECT, "count_bigrams": code(SNOOP)}))
    assert report["score"] == 20, (report["cell_errors"], report["exercises"][0]["cases"])


def test_private_hidden_inputs_never_reach_visible_feedback(tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    (private / "ch00.py").write_text(
        "import torch\nfrom aigc_lib.exercises.core import Case\n"
        "HIDDEN = {'00.apply_temperature': (Case('private', lambda: {'logits': torch.arange(5.0) * 123.25, "
        "'temperature': 7.0}),)}\n"
    )
    grader = Grader("00", limits=LIMITS, hidden_dir=private)
    leaky = code("""
        import gc, os
        SEEN = []
        def apply_temperature(logits, temperature):
            SEEN.append(logits.tolist())
            SEEN.extend(repr(o)[:80] for o in gc.get_objects() if type(o) is torch.Tensor)
            open("/tmp/stash", "a").write(repr(logits.tolist()))
            return torch.softmax(logits / temperature, -1)
        """)
    shower = code("""
        def fit_pixel_model(images, alpha=1.0):
            stash = open("/tmp/stash").read() if os.path.exists("/tmp/stash") else ""
            raise ValueError("STASH" + repr(SEEN) + stash)
        """)
    report = grader.grade(
        submission(tmp_path, "leaky", {**CORRECT, "apply_temperature": leaky, "fit_pixel_model": shower})
    )
    from aigc_lib.grading.reports import feedback_html, feedback_markdown, gradescope_results

    shown = feedback_markdown(report) + feedback_html(report) + gradescope_results(report)
    assert "STASH" in shown and "123.25" not in shown and "246.5" not in shown


# --- 3. one submission never stops the class ------------------------------------------------------

EXOTIC = {
    "surrogate": "def count_bigrams(ids, vocab_size):\n    raise ValueError('\\ud800 <b>bold</b> | `x` \\x00\\x1b[31m https://evil.example')",
    "sparse": "def count_bigrams(ids, vocab_size):\n    return torch.eye(vocab_size, dtype=torch.int64).to_sparse()",
    "expanded": "def count_bigrams(ids, vocab_size):\n    return torch.zeros(1, dtype=torch.int64).expand(vocab_size, vocab_size)",
    "nested": "def count_bigrams(ids, vocab_size):\n    return torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])",
    "meta": "def count_bigrams(ids, vocab_size):\n    return torch.empty(vocab_size, vocab_size, device='meta')",
    "quantized": (
        "def count_bigrams(ids, vocab_size):\n"
        "    return torch.quantize_per_tensor(torch.zeros(vocab_size, vocab_size), 0.1, 0, torch.qint8)"
    ),
    "huge": "def count_bigrams(ids, vocab_size):\n    return torch.zeros(300_000_000, dtype=torch.int8)",
    "hostile str": (
        "class E(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no')\n"
        "def count_bigrams(ids, vocab_size):\n"
        "    raise E()"
    ),
    "weird name": "def count_bigrams(ids, vocab_size):\n    return type('\\x00evil\\ud800', (), {})()",
    "deep tuple": "def count_bigrams(ids, vocab_size):\n    x = ()\n    for _ in range(10_000):\n        x = (x,)\n    return x",
}


def test_exotic_values_and_paths_never_stop_the_class(grader, tmp_path):
    subs = tmp_path / "class"
    submission(subs, "alice", CORRECT)
    expected = {"alice": 20}
    for name, body in EXOTIC.items():
        submission(subs, name.replace(" ", "_"), {**CORRECT, "count_bigrams": body})
        expected[name.replace(" ", "_")] = 16 if name == "expanded" else 15  # zeros are right for one hidden case
    raw = os.fsencode(subs) + b"/\xd5\xc5\xc8\xfd"  # a folder name in GBK, not UTF-8
    os.mkdir(raw)
    nbformat.write(nbformat.read(STUDENT, as_version=4), os.fsdecode(raw + b"/00_history.ipynb"))
    deep = subs / "deep_json" / "00_history.ipynb"
    deep.parent.mkdir()
    deep.write_text('{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}")
    tree = subs / "deep_tree"
    nested = tree
    for _ in range(200):
        nested = nested / "d"
    nested.mkdir(parents=True)
    for name in ["eve smith", "eve_smith", "=HYPERLINK(1)", "..x"]:
        submission(subs, name, CORRECT)
        expected[name] = 20
    found = find_submissions([subs])
    reports = {r["student"]: r for r in grade_class(grader, found, tmp_path / "out", workers=2, progress=False)}
    assert len(reports) == len(found) == len(expected) + 3
    for name, score in expected.items():
        assert reports[name]["score"] == score and reports[name]["status"] == "graded", (name, reports[name])
    assert reports["deep_json"]["status"] == "unreadable" and reports["deep_tree"]["status"] == "missing"
    gbk = next(r for k, r in reports.items() if "?" in k or "\ufffd" in k)
    assert gbk["status"] == "graded" and gbk["score"] == 0
    folders = {p.name for p in (tmp_path / "out" / "learners").iterdir()}
    assert len(folders) == len(reports) and not any(f.startswith(".") for f in folders)
    assert safe_id("eve smith") != safe_id("eve_smith") and safe_id("..") != safe_id(".")
    rows = list(csv.DictReader((tmp_path / "out" / "grades.csv").open(encoding="utf-8")))
    assert not any(r["student_id"].startswith(("=", "+", "-", "@")) for r in rows)
    import mistune  # what a Markdown viewer makes of learner text: no HTML, no links (GitHub autolinks URLs)

    render = mistune.create_markdown(plugins=["url", "table"])
    for name in ["summary.md", "learners/surrogate/feedback.md"]:
        text = (tmp_path / "out" / name).read_text(encoding="utf-8")
        shown = render(text)
        assert "<b>" not in shown and "href" not in shown and "\x1b" not in text and "\x00" not in text, name
    assert "&lt;b&gt;bold" in shown


def test_links_fifos_and_huge_files_are_refused_unread(grader, tmp_path):
    subs = tmp_path / "class"
    subs.mkdir()
    (subs / "to_solution").mkdir()
    (subs / "to_solution" / "00_history.ipynb").symlink_to(ROOT / "solutions" / "00_history.ipynb")
    (subs / "to_zero").mkdir()
    (subs / "to_zero" / "00_history.ipynb").symlink_to("/dev/zero")
    (subs / "linked_folder").symlink_to(ROOT / "solutions")
    (subs / "fifo").mkdir()
    os.mkfifo(subs / "fifo" / "00_history.ipynb")
    (subs / "huge").mkdir()
    with open(subs / "huge" / "00_history.ipynb", "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MB that costs nothing on disk
    submission(subs, "alice", CORRECT)
    start = time.monotonic()
    reports = {
        r["student"]: r
        for r in grade_class(grader, find_submissions([subs]), tmp_path / "out", workers=2, progress=False)
    }
    assert time.monotonic() - start < 60
    assert reports["alice"]["score"] == 20
    for name in ["to_solution", "to_zero", "linked_folder", "fifo", "huge"]:
        assert reports[name]["score"] == 0 and reports[name]["status"] in ("unreadable", "missing"), reports[name]


# --- 4. hangs, limits and survivors -----------------------------------------------------------------

HANGS = {
    "setsid and no alarm": "import os, signal\nos.setsid() if os.getpid() != os.getsid(0) else None\n"
    "signal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass",
    "sleeps": "import time\ntime.sleep(1000)",
    "stops itself": "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)",
    "reads its channel": "import os\nos.read(3, 1)",
    "vfork": "import ctypes\nlibc = ctypes.CDLL(None)\nif libc.syscall(58) == 0:  # vfork: the parent waits in D state\n"
    "    libc.pause()",
}


def test_hangs_cost_seconds_not_minutes(tmp_path):
    grader = Grader("00", limits=Limits(cell_seconds=2, call_seconds=2, idle_seconds=1, wall_seconds=30))
    subs = tmp_path / "class"
    for name, body in HANGS.items():
        submission(subs, name.replace(" ", "_"), with_code("count_bigrams", body))
        slow = "def apply_temperature(logits, temperature):\n    " + body.replace("\n", "\n    ")
        submission(subs, "call_" + name.replace(" ", "_"), {**CORRECT, "apply_temperature": slow})
    start = time.monotonic()
    reports = grade_class(grader, find_submissions([subs]), tmp_path / "out", workers=2, progress=False)
    took = time.monotonic() - start
    for r in reports:  # a hanging cell is skipped (its exercise is lost); a hanging function loses its tests
        assert r["score"] == 15, (r["student"], r["notes"])
    assert took < 120, took
    assert no_sandbox_left()


def test_memory_is_bounded_for_the_whole_sandbox_and_the_grader(tmp_path):
    bomb = (
        code("""
        import os
        def hold(mb):
            x = bytearray(mb << 20)
            for i in range(0, len(x), 4096):
                x[i] = 1
            return x
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                hold(800)
                os._exit(0)
            children.append(pid)
        mine = hold(800)
        status = [os.waitpid(pid, 0)[1] for pid in children]
        if any(status):
            raise MemoryError(f"a process was killed: {status}")
        """)
        + "\n"
        + CORRECT["fit_pixel_model"]
    )
    printer = code("""
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(1024):
            sys.stdout.write(chunk)
            sys.stderr.write(chunk)
        """)
    subs = tmp_path / "class"
    submission(subs, "bomb", {**CORRECT, "fit_pixel_model": bomb})
    submission(subs, "printer", with_code("next_char_probs", printer))
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from aigc_lib.grading import Grader, find_submissions, grade_class\nfrom test_grader import LIMITS\n"
        "import dataclasses, json, pathlib\n"
        # writing 2 GiB of output is CPU work: a loaded machine needs more than the usual 4 s
        "limits = dataclasses.replace(LIMITS, cell_seconds=40, wall_seconds=120)\n"
        f"r = grade_class(Grader('00', limits=limits), find_submissions([pathlib.Path({str(subs)!r})]), "
        f"pathlib.Path({str(tmp_path / 'out')!r}), workers=2, progress=False)\n"
        "print(json.dumps({x['student']: x['score'] for x in r}))\n"
        # VmHWM, not ru_maxrss: across exec, ru_maxrss keeps the peak of the process that started
        # us (here the pytest worker, which may have grown past 1 GiB on earlier tests)
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    scores, peak_kib = done.stdout.strip().splitlines()[-2:]
    # 4 x 800 MB cannot all live in a 2 GiB sandbox: the bomb's cell is stopped, its exercise lost
    from aigc_lib.grading.isolate import cgroups_available

    assert json.loads(scores) == {"bomb": 15 if cgroups_available() else 20, "printer": 20}
    assert int(peak_kib) < 1 << 20, f"grader peak RSS {int(peak_kib) >> 10} MiB"


def test_a_killed_grader_leaves_no_sandbox_behind(tmp_path):
    subs = tmp_path / "class"
    survivor = (
        "import os, signal\nif os.fork() == 0:\n    os.setsid()\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    while True:\n        pass\nwhile True:\n    pass"
    )
    for i in range(2):
        submission(subs, f"s{i}", with_code("count_bigrams", survivor))
    script = (
        f"import sys, pathlib; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from aigc_lib.grading import Grader, Limits, find_submissions, grade_class\n"
        f"grade_class(Grader('00', limits=Limits(cell_seconds=60)), find_submissions([pathlib.Path({str(subs)!r})]), "
        f"pathlib.Path({str(tmp_path / 'out')!r}), workers=2, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while len(sandbox_processes()) < 4 and time.monotonic() < deadline:  # the canary, then both learners
        time.sleep(0.2)
    assert sandbox_processes(), "the sandbox never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert no_sandbox_left(timeout=15), sandbox_processes()
    from aigc_lib.grading.isolate import CGROUP, SandboxUid

    SandboxUid.sweep()  # the next grader removes the empty cgroups the killed one left
    assert not [
        p
        for d in (CGROUP, CGROUP / "memory", CGROUP / "pids")
        for p in d.glob("aigc-sandbox-[0-9]*")
        if int(p.name.split("-")[2]) in uid_range()
    ]


# --- 5. infrastructure failures are never scores ------------------------------------------------


def test_a_broken_sandbox_refuses_to_grade_instead_of_giving_zeros(tmp_path, monkeypatch):
    """An environment fault (here: torch not importable in the sandbox) must stop the class run
    loudly before any learner is graded, not give everyone zero."""
    from aigc_lib.grading import isolate

    monkeypatch.setattr(isolate, "worker_path", lambda: isolate.python_paths()[0])  # stdlib only
    subs = tmp_path / "class"
    submission(subs, "alice", CORRECT)
    with pytest.raises(SandboxBroken, match="could not start Python and torch"):
        grade_class(Grader("00", limits=LIMITS), find_submissions([subs]), tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out" / "grades.csv").exists() and not (tmp_path / "out" / "learners").exists()


def test_limits_only_refuses_while_the_course_is_readable_to_learner_code(tmp_path):
    subs = tmp_path / "class"
    submission(subs, "alice", CORRECT)
    grader = Grader("00", limits=LIMITS, level="limits-only")
    with pytest.raises(SandboxBroken, match="could read: .*aigc_lib"):
        grade_class(grader, find_submissions([subs]), tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out" / "grades.csv").exists()


def test_a_virtualenv_reached_through_a_symlink_still_grades(tmp_path):
    link = tmp_path / "venv-link"
    link.symlink_to(Path(sys.prefix))
    path = submission(tmp_path, "alice", CORRECT)
    script = (
        "from aigc_lib.grading import Grader, Limits\nimport sys\n"
        f"r = Grader('00', limits=Limits(cell_seconds=4, call_seconds=4)).grade({str(path)!r})\n"
        "print(r['score'], r['notes'])\n"
    )
    done = subprocess.run(
        [str(link / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "20.0", done.stdout


def test_honest_slow_solution_keeps_full_marks_under_load(tmp_path):
    """About 0.8 s of CPU per call against a 1.5 s CPU limit, with both cores kept busy by other
    processes: wall time per call doubles or more, CPU time does not, and no test is lost."""
    slow = code("""
        def apply_temperature(logits, temperature):
            import time
            start = time.process_time()
            x = 0
            while time.process_time() - start < 0.8:
                x += 1
            return torch.softmax(logits / temperature, -1)
        """)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        grader = Grader("00", limits=Limits(cell_seconds=4, call_seconds=1.5, idle_seconds=1))
        report = grader.grade(submission(tmp_path, "slow", {**CORRECT, "apply_temperature": slow}))
    finally:
        for hog in hogs:
            hog.kill()
    assert points(report)["apply_temperature"] == 5, report["notes"]


# --- 6. limits-only mode (no namespaces, as on Gradescope), for real ------------------------------

LIMITS_ONLY_SCRIPT = """
import json, os, pathlib, sys, time
from aigc_lib.grading import Grader, Limits, SandboxBroken, find_submissions, grade_class
LIMITS = Limits(cell_seconds=4, call_seconds=4, wall_seconds=40)
subs, out = pathlib.Path({subs!r}), pathlib.Path({out!r})
grader = Grader("00", limits=LIMITS, level="limits-only")
try:
    grade_class(grader, find_submissions([subs]), out, workers=2, progress=False)
    refused = ""
except SandboxBroken as err:
    refused = str(err)
for folder in [*subs.iterdir(), subs.parent / "backup"]:  # what the refusal asks the instructor to do
    os.chmod(folder, 0o700)
reports = grade_class(grader, find_submissions([subs]), out, workers=2, progress=False)
time.sleep(1.0)  # a surviving grandchild would strike now
print(json.dumps({{"refused": refused, "scores": {{r["student"]: r["score"] for r in reports}},
                  "isolation": reports[0]["isolation"], "grades": (out / "grades.csv").read_text()}}))
"""


def test_limits_only_mode_isolates_by_uid_and_leaves_nothing(tmp_path):
    """Run the grader without namespaces, in a setup the test makes with a mount namespace of its
    own: the interpreter reachable by other users and the course private to root, as an instructor
    following the grader's refusal message would have it."""
    public = Path(tempfile.mkdtemp(prefix="aigc-limits-only-"))  # reachable by other users, as /autograder is
    os.chmod(public, 0o755)
    try:
        _limits_only(tmp_path, public)
    finally:
        shutil.rmtree(public)


def _limits_only(tmp_path: Path, public: Path) -> None:
    subs, out = public / "class", public / "reports"
    shutil.copytree(ROOT / "solutions", public / "backup" / "solutions")  # an instructor's world-readable backup
    submission(subs, "alice", CORRECT)
    submission(subs, "carol")
    thief = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom aigc_lib.history import count_bigrams"
    submission(subs, "thief", {**CORRECT, "count_bigrams": thief})
    copier = f"classmate = open({str(subs / 'alice' / '00_history.ipynb')!r}).read()\n" + CORRECT["count_bigrams"]
    submission(subs, "copier", {**CORRECT, "count_bigrams": copier})
    submission(subs, "forger", with_code("count_bigrams", GRANDCHILD.format(out=str(out))))
    stash = (
        "def apply_temperature(logits, temperature):\n    open('/tmp/.stash', 'a').write('SECRET%r' % logits.tolist())\n"
        "    return torch.softmax(logits / temperature, -1)"
    )
    submission(subs, "a_stasher", {**CORRECT, "apply_temperature": stash})
    shows = (
        "import os\ndef fit_pixel_model(images, alpha=1.0):\n    raise ValueError('SHOW' + open('/tmp/.stash').read())"
    )
    submission(subs, "z_shower", {**CORRECT, "fit_pixel_model": shows})
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    top = Path("/", Path(sys.base_prefix).resolve().parts[1])
    setup = ["set -e", "mount --make-rprivate /"]
    if not os.stat(top).st_mode & 0o001:  # e.g. /root: keep only the interpreter's folder reachable
        inner = Path(sys.base_prefix).resolve().relative_to(top).parts[0]
        setup += [
            f"mkdir {private}/hold",
            f"mount --bind {top / inner} {private}/hold",
            f"mount -t tmpfs -o mode=0755 tmpfs {top}",
            f"mkdir {top / inner}",
            f"mount --move {private}/hold {top / inner}",
        ]
    from aigc_lib.grading.isolate import host_survey

    for copy in host_survey()[1]:  # other checkouts on this machine (a developer's): out of this test's view
        if ROOT not in Path(copy).resolve().parents and public not in Path(copy).resolve().parents:
            setup.append(f"mount -t tmpfs -o mode=0700 tmpfs {copy}")
    for name in ["aigc_lib", "solutions"]:
        setup += [
            f"cp -a {ROOT / name} {private}/{name}",
            f"chmod 700 {private}/{name}",
            f"mount --bind {private}/{name} {ROOT / name}",
        ]
    for name in ["tests", ".git"]:
        setup += [f"mkdir -m 700 {private}/{name}-copy", f"mount --bind {private}/{name}-copy {ROOT / name}"]
    script = LIMITS_ONLY_SCRIPT.format(subs=str(subs), out=str(out))
    setup.append(f'exec {sys.executable} -c "$1"')
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "\n".join(setup), "sh", script], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "refusing to grade" in result["refused"] and str(subs) in result["refused"]
    assert str(public / "backup" / "solutions") in result["refused"]
    assert result["isolation"] == "limits-only"
    assert result["isolation"] == "limits-only", result
    assert result["scores"] == {
        "alice": 20,
        "carol": 0,
        "thief": 15,
        "copier": 15,
        "forger": 20,
        "a_stasher": 20,
        "z_shower": 15,
    }
    assert "SECRET" not in (out / "learners" / "z_shower" / "feedback.md").read_text()  # nothing crosses runs
    assert "forged" not in result["grades"] and "forged" not in (out / "grades.csv").read_text()
    assert no_sandbox_left(timeout=2), sandbox_processes()
    assert not [p for p in Path("/tmp").glob("aigc-sandbox-*") if int(p.name.split("-")[2]) in uid_range()]


def test_a_class_of_100_with_hostile_learners_is_graded_completely(grader, tmp_path):
    """97 ordinary learners (solved, untouched, with typical mistakes) and three hostile ones
    (forger, hang, memory bomb): every ordinary learner gets exactly their score."""
    from test_grader import WRONG

    subs, out = tmp_path / "class", tmp_path / "out"
    kinds = [(CORRECT, 20), ({}, 0), ({**CORRECT, **WRONG}, 8)]
    expected = {}
    for i in range(97):
        answers, score = kinds[i % 3]
        submission(subs, f"learner{i:03d}", answers)
        expected[f"learner{i:03d}"] = score
    submission(subs, "x_forger", with_code("count_bigrams", GRANDCHILD.format(out=str(out))))
    submission(subs, "x_hang", with_code("apply_temperature", "while True:\n    pass"))
    submission(subs, "x_bomb", with_code("next_char_probs", "x = bytearray(8 << 30)", keep_correct=False))
    expected.update(x_forger=20, x_hang=15, x_bomb=15)
    reports = grade_class(grader, find_submissions([subs]), out, workers=2, progress=False)
    assert {r["student"]: r["score"] for r in reports} == expected
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert len(rows) == 100 and all(r["status"] == "graded" for r in rows)
    assert no_sandbox_left()
