"""Start the sandbox (see `sandbox.py`) under the strongest isolation the host allows, and read it.

Three levels, named in every report with the guarantees that held:

- ``namespaces`` (Linux, root): fresh PID/mount/network/IPC/UTS namespaces; the learner's root is
  built from an allow-list; learner code runs as a sandbox uid of its own (locked per worker, so
  two graders on one host never share one); a cgroup bounds the whole sandbox's memory and
  processes where the host has cgroups; killing the namespace's PID 1 kills everything in it.
- ``limits-only`` (root, but no namespaces, e.g. Gradescope): learner code still runs as a
  sandbox uid, and every process of that uid is killed after each run. It sees the host's
  filesystem, so the grader refuses to run unless the course's package, solutions, hidden tests,
  reports and submissions are unreadable to that uid (`exposed_paths` says which are not).
- ``none`` (not root): learner code runs as you, with your files. Refused unless asked for
  explicitly (`insecure=True`, for grading your own notebook).
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from aigc_lib.grading import sandbox as wire

SANDBOX = Path(wire.__file__).resolve()
BASE_UID, UID_RANGE = 50_000, 512  # sandbox uids: no such users exist, they own nothing
UIDS_ENV = "AIGC_SANDBOX_UIDS"  # "FIRST:COUNT" overrides the range (tests keep theirs apart with it)


def uid_range() -> range:
    first, count = os.environ.get(UIDS_ENV, f"{BASE_UID}:{UID_RANGE}").split(":")
    return range(int(first), int(first) + int(count))


LOCKS = Path("/run/aigc_lib-sandbox")  # root-only: which sandbox uid each running grader holds
COURSE_PACKAGES = ["aigc_lib"]  # left out of the sandbox's view of the installed packages
COURSE_MARKERS = ["aigc_lib", "exercises/hidden"]  # a folder holding one of these is a copy of the course
SYSTEM = [
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr/lib64",
    "/usr/lib32",
    "/usr/lib/locale",
    "/sys/devices/system/cpu",
    *(f"/etc/{name}" for name in wire.ETC),
]  # the loader and its cache
PROBE = """
import importlib, os, sys
import numpy, torch
for name in sorted(os.listdir(sys.argv[1])):  # every extension module: their libraries get mapped too
    try:
        importlib.import_module(name.split(".")[0])
    except Exception:
        pass
print("\\n".join(sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line.split()[-1]})))
"""


class SandboxBroken(RuntimeError):
    """The sandbox itself failed (not the learner): grading must stop, not award zeros."""


@dataclass(frozen=True)
class Limits:
    cell_seconds: float = 20.0  # CPU seconds per learner cell
    call_seconds: float = 10.0  # CPU seconds per test call
    idle_seconds: float = 5.0  # a step that sleeps, blocks or stops this long is stopped
    wall_seconds: float = 120.0  # wall-clock backstop per step (load makes CPU time slower to come)
    memory_bytes: int = 2 << 30  # the whole sandbox (cgroup), and each process's address space
    processes: int = 32  # processes and threads of the sandbox uid
    file_bytes: int = 64 << 20  # largest file it may write (in its private tmpfs)
    max_restarts: int = 8

    def step(self, cpu: float) -> dict:
        return {"cpu": cpu, "idle": self.idle_seconds, "wall": self.wall_seconds}

    def rlimits(self, cpu_budget: float) -> dict[str, int]:
        return {
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_CPU": int(cpu_budget) + 1,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_FSIZE": self.file_bytes,
            "RLIMIT_NOFILE": 256,
            "RLIMIT_CORE": 0,
            "RLIMIT_MSGQUEUE": 0,
        }  # no POSIX message queues: they outlive processes, unseen


@lru_cache(maxsize=1)
def isolation_level() -> str:
    """'namespaces', 'limits-only' (root without namespaces) or 'none' (not root)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "none"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "limits-only"
    probe = subprocess.run(
        [unshare, "--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "true"],
        capture_output=True,
        timeout=30,
    )
    return "namespaces" if probe.returncode == 0 else "limits-only"


def guarantees(level: str) -> list[str]:
    """What held for a run at `level`, in words for the report."""
    common = [
        "verdicts computed by the grader from plain data (no unpickling), never by learner code",
        "each test's inputs reach learner code only while that test runs",
    ]
    if level == "none":
        return [*common, "NO ISOLATION: learner code ran as the grading user, with its files and network"]
    held = [
        *common,
        "learner code ran as an unprivileged uid of its own, killed entirely after each run",
        "per-step CPU, idle and wall limits; memory, process and file-size limits",
    ]
    held.append(
        "whole-sandbox memory and process limits (cgroup)"
        if cgroups_available()
        else "memory limited per process only (no cgroup on this host)"
    )
    if level == "namespaces":
        held += [
            "no network; a filesystem built from an allow-list (interpreter, system libraries, packages "
            "without the course), read-only, with a private /tmp"
        ]
    else:
        held += [
            "the course package, solutions, hidden tests, reports and submissions checked unreadable to the "
            "sandbox uid; other files on this host are not hidden (no namespaces); the network is reachable"
        ]
    return held


# --- sandbox uids, locked per worker ----------------------------------------------------------


def _lock_dir() -> Path:
    LOCKS.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(LOCKS)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise SandboxBroken(f"{LOCKS} must be a root-owned directory of mode 0700")
    return LOCKS


class SandboxUid:
    """A sandbox uid held by this process (flock) until `release`; stale processes, temp folders
    and cgroups that a killed grader left for this uid are cleaned up when it is taken."""

    def __init__(self) -> None:
        self.uid = os.getuid()
        self._lock = None
        if os.geteuid() != 0:
            return
        folder = _lock_dir()
        for uid in uid_range():
            fd = os.open(folder / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid, self._lock = uid, fd
            break
        else:
            raise SandboxBroken(f"all sandbox uids ({uid_range()}) are in use")
        kill_uid(self.uid)
        wire.remove_files_of(self.uid, shared_tmp(isolation_level()))
        wire.remove_ipc(self.uid)
        for stale in glob.glob(os.path.join(tempfile.gettempdir(), f"aigc-sandbox-{self.uid}-*")):
            shutil.rmtree(stale, ignore_errors=True)
        Cgroup(self.uid).remove()

    @staticmethod
    def sweep() -> None:
        """Clean up after graders that were killed: for every sandbox cgroup or temp folder whose
        uid no running grader holds, kill its processes and remove it."""
        if os.geteuid() != 0:
            return
        names = [
            p.name
            for d in (CGROUP, CGROUP / "memory", CGROUP / "pids")
            if d.is_dir()
            for p in d.glob("aigc-sandbox-[0-9]*")
        ]
        names += [p.name for p in Path(tempfile.gettempdir()).glob("aigc-sandbox-[0-9]*")]
        for uid in sorted({int(n.split("-")[2]) for n in names if n.split("-")[2].isdigit()}):
            fd = os.open(_lock_dir() / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use by a running grader
            else:
                kill_uid(uid)
                Cgroup(uid).remove()
                for stale in glob.glob(os.path.join(tempfile.gettempdir(), f"aigc-sandbox-{uid}-*")):
                    shutil.rmtree(stale, ignore_errors=True)
            finally:
                os.close(fd)

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


# --- cgroups: one per sandbox run, named by its uid ---------------------------------------------

CGROUP = Path("/sys/fs/cgroup")


@lru_cache(maxsize=1)
def cgroups_available() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        group = Cgroup(0, probe=True)
        group.create(1 << 30, 16)
        group.remove()
        return True
    except OSError:
        return False


class Cgroup:
    """cgroup v2 (memory.max, pids.max, cgroup.kill) or v1 (memory and pids controllers)."""

    def __init__(self, uid: int, probe: bool = False) -> None:
        name = f"aigc-sandbox-{'probe-' + str(os.getpid()) if probe else uid}"
        self.v2 = (CGROUP / "cgroup.controllers").exists()
        self.dirs = [CGROUP / name] if self.v2 else [CGROUP / "memory" / name, CGROUP / "pids" / name]
        if not self.v2 and (CGROUP / "cpuacct").is_dir():
            self.dirs.append(CGROUP / "cpuacct" / name)

    def cpu_counter(self) -> str | None:
        """The file that counts the CPU time of everything in the cgroup (exact, unlike sampling
        /proc, which misses short-lived processes)."""
        if self.v2:
            return str(self.dirs[0] / "cpu.stat")
        return str(self.dirs[2] / "cpuacct.usage") if len(self.dirs) > 2 else None

    def create(self, memory: int, processes: int) -> None:
        for d in self.dirs:
            d.mkdir(exist_ok=True)
        if self.v2:
            (self.dirs[0] / "memory.max").write_text(str(memory))
            swap = self.dirs[0] / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
            (self.dirs[0] / "pids.max").write_text(str(processes))
        else:
            (self.dirs[0] / "memory.limit_in_bytes").write_text(str(memory))
            (self.dirs[1] / "pids.max").write_text(str(processes))

    def prefix(self) -> list[str]:
        """A command prefix that enters the cgroup before exec'ing the rest (children inherit it)."""
        enter = " ".join(f"echo $$ > {d / 'cgroup.procs'};" for d in self.dirs)
        return ["/bin/sh", "-c", f'{enter} exec "$@"', "sh"]

    def pids(self) -> set[int]:
        found = set()
        for d in self.dirs:
            try:
                found |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return found

    def remove(self) -> None:
        """Kill everything inside, then remove the cgroup."""
        if self.v2 and (self.dirs[0] / "cgroup.kill").exists():
            (self.dirs[0] / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 10
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.01)
        for d in self.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass


# --- what the sandbox may see --------------------------------------------------------------------


@lru_cache(maxsize=1)
def python_paths() -> tuple[list[str], list[str], list[str]]:
    """(stdlib folders, package folders, other folders the interpreter needs), all real paths:
    a virtualenv reached through a symlink resolves to the same places."""
    real = lambda p: os.path.realpath(p)  # noqa: E731
    paths = sysconfig.get_paths()
    stdlib = sorted({real(paths["stdlib"]), real(paths["platstdlib"])})
    dynload = [real(p) for p in sys.path if p and p.endswith("lib-dynload") and os.path.isdir(p)]
    stdlib = sorted({*stdlib, *dynload})
    # installed-package folders only (not every sys.path entry: a test runner or PYTHONPATH may add
    # the course's own folders), plus wherever torch and numpy really live
    import numpy
    import torch

    sites = [p for p in sys.path if p and os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages")]
    sites += [str(Path(m.__file__).resolve().parents[1]) for m in (torch, numpy)]
    packages = [real(p) for p in dict.fromkeys(sites) if os.path.isdir(p)]
    # other Pythons' package folders under the system tree: the course may be installed there too
    system = [
        real(p)
        for pattern in ("/usr/lib/python3*/*-packages", "/usr/local/lib/python3*/*-packages")
        for p in glob.glob(pattern)
    ]
    packages = list(dict.fromkeys([*packages, *system]))
    return stdlib, packages, _libraries(stdlib, packages)


def _libraries(stdlib: list[str], packages: list[str]) -> list[str]:
    """What the loader needs: the folders of the system libraries that Python, torch, numpy and
    the standard extension modules map, and the interpreter and its libpython as single files
    (the rest of the interpreter's prefix, where anything may have been put, stays out)."""
    dynload = next((p for p in stdlib if p.endswith("lib-dynload")), stdlib[0])
    done = subprocess.run([sys.executable, "-I", "-c", PROBE, dynload], capture_output=True, text=True, timeout=120)
    mapped = [os.path.realpath(p) for p in done.stdout.split() if p.startswith("/")]
    python_dirs = [os.path.realpath(sys.base_prefix), *stdlib, *packages]
    files = [os.path.realpath(sys.executable)]
    folders = set()
    for path in mapped:
        if any(path.startswith(d + "/") for d in [*packages, *stdlib]):
            continue  # the package and standard-library views carry it
        if any(path.startswith(d + "/") for d in python_dirs):
            files.append(path)  # libpython
        else:
            folders.add(os.path.dirname(path))
    return [*SYSTEM, *sorted(folders), *dict.fromkeys(files)]


def worker_path() -> list[str]:
    stdlib, packages, _ = python_paths()
    return [*stdlib, *(p for p in packages if p in map(os.path.realpath, sys.path))]


def exposed_paths(paths: list[Path], uid: int) -> list[Path]:
    """Those of `paths` that `uid` (no groups of its own) could read or, for folders, enter."""
    exposed = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        chain = [*reversed(path.resolve().parents), path.resolve()]
        ok = True
        for i, part in enumerate(chain):
            info = os.stat(part)
            need = 0o001 if i < len(chain) - 1 else (0o005 if stat.S_ISDIR(info.st_mode) else 0o004)
            mine = info.st_uid == uid
            if not ((info.st_mode >> 6 & 0o7) & need if mine else (info.st_mode & 0o7) & need):
                ok = False
                break
        if ok:
            exposed.append(path)
    return exposed


def host_survey() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """For limits-only grading, where learner code sees the host: (folders any user can write,
    where a run could leave something for a later one; copies of the course any user can read).
    Walks every folder other users can enter (others cannot reach the rest), skipping /proc and
    /sys: about 1.5 s for 200,000 entries here."""
    writable, copies = [], []
    stack = ["/"]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        names = {e.name for e in entries}
        if (
            os.path.basename(folder) == "solutions"
            and any(re.fullmatch(r"\d\d_\w+\.ipynb", n) for n in names)
            or os.path.basename(folder) == "exercises"
            and "hidden" in names
        ):
            if os.stat(folder).st_mode & 0o004:
                copies.append(folder)
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False) or entry.path in ("/proc", "/sys"):
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if mode & 0o001:  # others can enter it
                if mode & 0o002:
                    writable.append(entry.path)
                stack.append(entry.path)
    return tuple(sorted(writable)), tuple(sorted(copies))


@lru_cache(maxsize=4)
def shared_tmp(level: str) -> tuple[str, ...]:
    """Where a sandbox uid could leave files on the host: none with namespaces (its /tmp is its own)."""
    if level != "limits-only":
        return ()
    return tuple(dict.fromkeys([*wire.SHARED_TMP, *host_survey()[0]]))


def writable_by_others(path: Path) -> bool:
    info = os.stat(path)
    return bool(info.st_mode & 0o002) and not info.st_mode & stat.S_ISVTX


# --- running it ----------------------------------------------------------------------------------


@dataclass
class SandboxRun:
    level: str
    broken: str = ""  # set when the sandbox itself failed: an infrastructure error, not a learner's
    stderr_tail: str = ""


def run_sandbox(
    plan: dict, blob: bytes, limits: Limits, uid: SandboxUid, on_event, *, level: str | None = None
) -> SandboxRun:
    """Run `plan` (cells, calls) in a sandbox; `on_event(event, blob)` sees each event as it comes.
    Returns only once every process of the sandbox is gone."""
    level = level or isolation_level()
    stdlib, packages, allow = python_paths()
    cpu_budget = len(plan["cells"]) * limits.cell_seconds + len(plan["calls"]) * limits.call_seconds
    full = {
        **plan,
        "uid": uid.uid,
        "isolate": level == "namespaces",
        "python": os.path.realpath(sys.executable),
        "path": worker_path(),
        "rlimits": limits.rlimits(cpu_budget * (1 + limits.max_restarts) + 120),
        "cell_limits": limits.step(limits.cell_seconds),
        "call_limits": limits.step(limits.call_seconds),
        "max_restarts": limits.max_restarts,
        "tmp_bytes": 256 << 20,
        "new_root": str(SANDBOX.parent),
        "allow": allow,
        "stdlib": stdlib,
        "package_dirs": packages,
        "course": COURSE_PACKAGES,
        "course_markers": COURSE_MARKERS,
        "stdlib_names": sorted(sys.stdlib_module_names),
    }
    command = [os.path.realpath(sys.executable), "-I", "-S", "-B", str(SANDBOX), "supervisor"]
    home = None
    if level == "namespaces":
        command = ["unshare", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", *command]
    else:
        home = tempfile.mkdtemp(prefix=f"aigc-sandbox-{uid.uid}-")
        full["home"], full["shared_tmp"] = home, shared_tmp(level)
    group = None
    if cgroups_available():
        group = Cgroup(uid.uid)
        group.create(limits.memory_bytes, limits.processes + 8)
        command = [*group.prefix(), *command]
        full["cpu_counter"] = group.cpu_counter()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    run = SandboxRun(level)
    steps = len(plan["cells"]) + len(plan["calls"]) + 1
    deadline = time.monotonic() + 300 + steps * (limits.wall_seconds + 5) * (1 + limits.max_restarts)
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/",
        start_new_session=True,
    )
    try:
        try:
            wire.write_frame(proc.stdin.fileno(), full, blob)
            _read_events(
                proc, run, on_event, deadline, max(c["max_bytes"] for c in plan["calls"]) if plan["calls"] else 0
            )
        except (OSError, EOFError, wire.WireError, ValueError, RecursionError) as err:
            run.broken = run.broken or f"the sandbox stopped unexpectedly ({type(err).__name__}: {err})"
    finally:
        _stop(proc, uid, group, level)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
    if not run.broken and proc.returncode not in (0, None):
        run.broken = f"the sandbox supervisor exited with code {proc.returncode}"
    return run


def _read_events(proc: subprocess.Popen, run: SandboxRun, on_event, deadline: float, max_blob: int) -> None:
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    os.set_blocking(err, False)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            run.broken = "the sandbox did not finish in time"
            return
        ready, _, _ = select.select([out, err], [], [], min(left, 1.0))
        if err in ready:
            try:
                chunk = os.read(err, 1 << 16)
            except BlockingIOError:
                chunk = b"."
            run.stderr_tail = (run.stderr_tail + chunk.decode("utf-8", "replace"))[-4000:]
        if out in ready:
            try:
                event, data = wire.read_frame(out, wire.MAX_EVENT_HEADER, max_blob)
            except EOFError:
                run.broken = run.broken or "the sandbox ended without finishing: " + run.stderr_tail[-1500:]
                return
            kind = event.get("event")
            if kind == "done":
                return
            if kind == "broken":
                run.broken = str(event.get("message"))
                return
            on_event(event, data)


def _stop(proc: subprocess.Popen, uid: SandboxUid, group: Cgroup | None, level: str) -> None:
    """Kill whatever is left of the sandbox and wait until no process of it exists."""
    try:
        proc.stdin.close()  # the supervisor exits on EOF
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # unshare's session; its PID 1 and namespace go with it
        proc.wait(timeout=30)
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    if group is not None:
        group.remove()
    if os.geteuid() == 0:
        kill_uid(uid.uid)
        wire.remove_files_of(uid.uid, shared_tmp(level))
        wire.remove_ipc(uid.uid)


def kill_uid(uid: int, timeout: float = 10.0) -> None:
    """Kill every process of `uid`: kill(-1) run as that uid reaches all of them, wherever they
    hid (a new session, a double fork). Run as a fresh process: forking this threaded one is unsafe."""
    deadline = time.monotonic() + timeout
    while wire.processes_of(uid):
        subprocess.run(
            ["/bin/sh", "-c", "kill -9 -1"],
            user=uid,
            group=uid,
            extra_groups=[],
            env={},
            cwd="/",
            capture_output=True,
            timeout=30,
        )
        if time.monotonic() > deadline:
            raise SandboxBroken(f"processes of sandbox uid {uid} survive SIGKILL")
        time.sleep(0.01)
