"""The sandbox side of grading: a trusted supervisor and an untrusted worker, in one standalone file.

    grader ──frames──▶ supervisor (trusted: no learner code) ──one step at a time──▶ worker (learner code)

The grader starts `python -I -S sandbox.py supervisor` (inside fresh PID/mount/network namespaces
where the host allows, see `isolate.py`) and sends it one plan. The supervisor

- builds the worker's filesystem from an allow-list (namespaces only): a fresh root holding the
  interpreter, the system libraries and the installed packages minus the course's own, a private
  `/tmp`, four harmless devices; nothing else of the host exists in it;
- starts the worker as an unprivileged uid (a fresh exec: it inherits no memory of ours), and
  sends it the learner's cells, then ONE call at a time: a call's inputs reach the worker only
  when that call runs, so learner code never holds the plan, other cases, paths or the roster;
- limits every step by CPU time (load does not shrink it), by idle time (sleeping, blocking or
  a stopped process) and by a wall-clock backstop, and kills every worker-side process between
  steps when one misbehaves (`kill(-1)` from the namespace's PID 1, or from the sandbox uid);
- answers the grader with plain data: errors as strings, values as raw tensor bytes (no pickle).

This file must import only the standard library (and torch, in the worker): the course package
is not reachable from the sandbox, and the grader imports the wire format from here.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import random
import resource
import select
import shutil
import signal
import stat
import struct
import sys
import time

# ---------------------------------------------------------------------------------------------
# Wire format: a frame is (header length, blob length, JSON header, blob bytes). Values are JSON
# trees whose tensors point into the blob; decoding checks every size before allocating.
# ---------------------------------------------------------------------------------------------

_FRAME = struct.Struct(">IQ")
DTYPES = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "bool",
)
MAX_DEPTH, MAX_ITEMS, MAX_STR = 8, 256, 10_000


class WireError(ValueError):
    """A frame or value that breaks the format or its limits."""


def write_frame(fd: int, header: dict, blob: bytes = b"") -> None:
    data = json.dumps(header).encode()
    view = memoryview(_FRAME.pack(len(data), len(blob)) + data + blob)
    while view:
        view = view[os.write(fd, view) :]


def read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the channel closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, max_header: int, max_blob: int) -> tuple[dict, bytes]:
    """One frame from `fd`, refusing (before reading them) a header or blob over the limits."""
    header_len, blob_len = _FRAME.unpack(read_exact(fd, _FRAME.size))
    if header_len > max_header or blob_len > max_blob:
        raise WireError(f"frame too large ({header_len} + {blob_len} bytes)")
    header = json.loads(read_exact(fd, header_len))
    if not isinstance(header, dict):
        raise WireError("frame header is not an object")
    return header, read_exact(fd, blob_len)


def pack(value, blob: bytearray, max_bytes: int, depth: int = 0):
    """A JSON tree for `value`; tensor bytes are appended to `blob`. Unsupported types become
    {"other": type name}. Raises WireError when the value is larger than `max_bytes`."""
    import torch

    kind = type(value)
    if depth > MAX_DEPTH:
        return {"other": "value nested too deeply"}
    if value is None or kind is bool:
        return {"bool": value} if kind is bool else {"none": True}
    if kind is int:
        return {"int": value} if abs(value) < 1 << 63 else {"other": "int too large"}
    if kind is float:
        return {"float": value}
    if kind is str:
        return {"str": value} if len(value) <= MAX_STR else {"other": "str too long"}
    if kind in (tuple, list) and len(value) <= MAX_ITEMS:
        return {kind.__name__: [pack(v, blob, max_bytes, depth + 1) for v in value]}
    if kind is dict and len(value) <= MAX_ITEMS and all(type(k) is str for k in value):
        return {"dict": [[k, pack(v, blob, max_bytes, depth + 1)] for k, v in value.items()]}
    if kind is torch.Tensor and value.layout == torch.strided and str(value.dtype)[6:] in DTYPES:
        t = value.detach().resolve_conj().resolve_neg().cpu().contiguous()
        nbytes = t.numel() * t.element_size()
        if len(blob) + nbytes > max_bytes:
            raise WireError(f"the value has {len(blob) + nbytes} bytes, more than the {max_bytes} allowed")
        start = len(blob)
        blob += t.reshape(-1).view(torch.uint8).numpy().tobytes()
        tree = {"tensor": [start, len(blob)], "dtype": str(t.dtype)[6:], "shape": list(t.shape)}
        if value.requires_grad:  # a forgotten .detach() must reach the judge as it would in the notebook
            tree["grad"] = True
        return tree
    name = (
        "Tensor (sparse, quantized or another layout)"
        if isinstance(value, torch.Tensor) and kind is torch.Tensor
        else kind.__name__
    )
    return {"other": str(name)[:80]}


class Other:
    """A returned value of a type the wire does not carry: only its type's name crosses."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name}>"


def unpack(tree, blob: bytes, depth: int = 0):
    """Rebuild a value from `pack`'s tree; every size is checked against the blob first."""
    import torch

    if depth > MAX_DEPTH or not isinstance(tree, dict) or len(tree) not in (1, 3, 4):
        raise WireError("malformed value")
    if "tensor" in tree:
        (start, end), dtype, shape = tree["tensor"], tree.get("dtype"), tree.get("shape")
        if (
            dtype not in DTYPES
            or not isinstance(shape, list)
            or len(shape) > 16
            or not all(type(n) is int and 0 <= n < 1 << 40 for n in shape)
        ):
            raise WireError("malformed tensor")
        numel = 1
        for n in shape:
            numel *= n
        dt = getattr(torch, dtype)
        if (
            not (type(start) is int and type(end) is int and 0 <= start <= end <= len(blob))
            or end - start != numel * dt.itemsize
        ):
            raise WireError("tensor bytes do not match its shape")
        if numel == 0:
            t = torch.empty(shape, dtype=dt)
        else:
            t = torch.frombuffer(bytearray(blob[start:end]), dtype=torch.uint8).view(dt).reshape(shape)
        if tree.get("grad") is True and (t.is_floating_point() or t.is_complex()):
            t.requires_grad_(True)
        return t
    ((key, value),) = tree.items()
    if key == "none":
        return None
    if key in ("bool", "int", "float", "str") and type(value).__name__ == key:
        return value
    if key in ("tuple", "list") and isinstance(value, list) and len(value) <= MAX_ITEMS:
        items = [unpack(v, blob, depth + 1) for v in value]
        return tuple(items) if key == "tuple" else items
    if key == "dict" and isinstance(value, list) and len(value) <= MAX_ITEMS:
        if not all(isinstance(kv, list) and len(kv) == 2 and type(kv[0]) is str for kv in value):
            raise WireError("malformed dict")
        return {k: unpack(v, blob, depth + 1) for k, v in value}
    if key == "other":
        return Other(printable(value, 80))
    raise WireError("malformed value")


def printable(text, limit: int) -> str:
    """Learner-made text made safe to store and show: str, no lone surrogates, no control bytes."""
    text = text if isinstance(text, str) else repr(text)
    text = text[: limit * 2].encode("utf-8", "replace").decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in text)[:limit]


# ---------------------------------------------------------------------------------------------
# The worker: runs learner code, one step per request. Nothing here is trusted by anyone.
# ---------------------------------------------------------------------------------------------

REQUESTS, RESPONSES = 3, 4  # the worker's pipe ends; stdin/stdout/stderr carry nothing we read


def _describe_error(err: BaseException) -> dict:
    try:
        message = str(err)
    except BaseException:  # noqa: BLE001 - a hostile __str__
        message = "<the exception could not be printed>"
    return {"type": printable(type(err).__name__, 80), "message": printable(message, 300)}


def worker_main() -> None:
    config, _ = read_frame(REQUESTS, 1 << 30, 0)
    sys.path[:] = config["path"]
    import numpy as np
    import torch

    torch.set_num_threads(1)
    sys.modules["aigc_lib"] = None  # type: ignore[assignment]  # and it is not on disk either
    namespace: dict = {"__name__": "__main__"}
    exec(compile(config["preamble"], "<preamble>", "exec"), namespace)
    harness = os.getpid()
    write_frame(RESPONSES, {"ready": True, "nonce": config["nonce"]})
    while True:
        _reap()  # learner children that ended: zombies would count against the process limit
        request, blob = read_frame(REQUESTS, 1 << 30, 1 << 30)
        if request["op"] == "cell":
            error = None
            try:
                exec(compile(request["source"], "<learner cell>", "exec"), namespace)
            except BaseException as err:  # noqa: BLE001 - SystemExit and friends are learner errors too
                error = _describe_error(err)
            if os.getpid() != harness:
                os._exit(0)  # a process the learner forked came back here: it must not answer
            write_frame(RESPONSES, {"nonce": request["nonce"], "error": error})
            continue
        inputs = unpack(request["inputs"], blob)
        del blob
        random.seed(request["seed"])
        np.random.seed(request["seed"])
        torch.manual_seed(request["seed"])
        out = bytearray()
        try:
            fn = namespace.get(request["function"])
            if not callable(fn):
                raise NameError(f"no function named {request['function']!r} is defined")
            value = fn(**inputs)
            # the inputs go back too, so the grader sees what the function changed in place
            response = {
                "value": pack(value, out, request["max_bytes"]),
                "inputs": pack(inputs, out, request["max_bytes"]),
            }
        except WireError as err:
            out = bytearray()
            response = {"error": {"type": "ResultTooLarge", "message": str(err)}}
        except BaseException as err:  # noqa: BLE001
            out = bytearray()
            response = {"error": _describe_error(err)}
        if os.getpid() != harness:
            os._exit(0)
        write_frame(RESPONSES, {"nonce": request["nonce"], **response}, bytes(out))


# ---------------------------------------------------------------------------------------------
# The supervisor: builds the sandbox, runs the worker step by step, enforces the limits.
# ---------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1,
    2,
    4,
    8,
    32,
    4096,
    16384,
    1 << 18,
)
MNT_DETACH, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG = 2, 38, 1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
DEVICES = ("null", "zero", "random", "urandom")
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    def enc(text):
        return text.encode() if text is not None else None

    _check(_libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)), f"mount {target}")


def _bind_readonly(source: str, target: str, flags: int = MS_NODEV) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND)  # not recursive: a submount could be writable
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags)


def _view(folder: str, target: str, keep, covers: list[str]) -> None:
    """At `target`, a folder holding only the entries of `folder` that `keep(name, path)`; a tmpfs
    laid over an already-bound folder is noted in `covers`, to be made read-only at the end."""
    if os.path.isdir(target):  # inside something already bound: cover it
        _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    else:
        os.makedirs(target, exist_ok=True)
    for entry in sorted(os.listdir(folder)):
        source = os.path.join(folder, entry)
        if (os.path.isdir(source) or os.path.isfile(source)) and keep(entry, source):
            _bind_readonly(source, os.path.join(target, entry))
    if os.path.ismount(target):
        covers.append(target)


def build_root(new_root: str, plan: dict) -> None:
    """A fresh root at `new_root` built from the plan's allow-list, then pivot into it. We are root
    in fresh mount and PID namespaces. It holds, read-only: `allow` (library folders and single
    files such as the interpreter), the standard library (only the modules Python names as its
    own, and extension modules), and the installed packages minus anything of the course."""
    course, markers, names = plan["course"], plan["course_markers"], set(plan["stdlib_names"])

    def not_course(entry: str, source: str) -> bool:
        if any(
            entry == c or entry.startswith((c + "-", c + ".")) or (entry.startswith("__editable__") and c in entry)
            for c in course
        ):
            return False
        return not (os.path.isdir(source) and any(os.path.exists(os.path.join(source, m)) for m in markers))

    def stdlib_module(entry: str, source: str) -> bool:
        stem = entry.split(".", 1)[0]
        return stem in names or stem.startswith("_sysconfigdata") or entry == "__pycache__"

    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=0755")
    allow = plan["allow"]
    for path in allow:
        if any(path.startswith(other.rstrip("/") + "/") for other in allow):
            continue  # already inside an allowed folder
        if os.path.islink(path) and os.path.dirname(path) == "/":  # merged /usr: /lib -> usr/lib
            os.symlink(os.readlink(path), new_root + path)
        elif os.path.exists(path):
            _bind_readonly(path, new_root + path)
    covers: list[str] = []
    for folder in plan["stdlib"]:
        if folder.endswith("lib-dynload"):
            _view(folder, new_root + folder, lambda entry, source: entry.endswith(".so"), covers)
        else:
            _view(folder, new_root + folder, stdlib_module, covers)
    for folder in plan["package_dirs"]:
        _view(folder, new_root + folder, not_course, covers)
    for target in covers:
        _mount(None, target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(new_root + "/dev", exist_ok=True)
    for device in DEVICES:
        _bind_readonly("/dev/" + device, new_root + "/dev/" + device, MS_NOEXEC)
    for path in _scratch_mounts(plan):  # mounted fresh for every worker (`_fresh_scratch`)
        os.makedirs(new_root + path, exist_ok=True)
    os.makedirs(new_root + "/proc", exist_ok=True)
    os.chdir(new_root)
    os.makedirs(".old", exist_ok=True)
    if SYS_PIVOT_ROOT is None:
        raise OSError(f"pivot_root: unknown system call number on {platform.machine()}")
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b".old"), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", MNT_DETACH), "umount old root")  # the host is gone from view
    os.rmdir("/.old")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # only this PID namespace
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def processes_of(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def _session_of(sid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def kill_uid(uid: int, timeout: float = 10.0) -> bool:
    """Kill every process of `uid` (kill(-1) as that uid reaches them all, wherever they hid);
    True once none is left."""
    deadline = time.monotonic() + timeout
    while processes_of(uid):
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        _reap()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _reap() -> None:
    """As PID 1 (or a parent), collect exited children so none stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _cpu_and_busy(pids: list[int], seen: dict[int, int]) -> bool:
    """Update `seen` (pid -> CPU ticks, never decreasing) for `pids`; True when any of their
    threads is running or runnable. (Uninterruptible sleep is not: a vfork parent waits in it.)"""
    busy = False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            seen[pid] = max(seen.get(pid, 0), sum(int(x) for x in fields[11:15]))  # utime stime cutime cstime
            if not busy:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                        if f.read().rsplit(b")", 1)[1].split()[0] == b"R":
                            busy = True
                            break
        except (OSError, IndexError, ValueError):
            pass
    return busy


class Worker:
    """One worker process (fresh exec, unprivileged), driven one step at a time."""

    running: list[Worker] = []

    def __init__(self, plan: dict, uid: int, home: str) -> None:
        Worker.running.append(self)
        self.uid, self.stderr_tail = uid, b""
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        self.err_r, err_w = os.pipe()
        limits = plan["rlimits"]
        pid = os.fork()
        if pid == 0:  # the child: drop everything, then exec a fresh interpreter
            try:
                null = os.open("/dev/null", os.O_RDWR)
                high = [os.dup(fd) for fd in (req_r, resp_w, err_w, null)]  # no dup2 below clobbers another
                for target, fd in zip(
                    (REQUESTS, RESPONSES, 1, 2, 0), (high[0], high[1], high[2], high[2], high[3]), strict=True
                ):
                    os.dup2(fd, target)
                os.closerange(RESPONSES + 1, 1 << 16)
                os.setsid()
                os.chdir(home)
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)  # every capability is gone
                _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
                _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
                for name, value in limits.items():
                    resource.setrlimit(getattr(resource, name), (value, value))
                env = {
                    "PATH": "/usr/bin:/bin",
                    "HOME": home,
                    "TMPDIR": home,
                    "LANG": "C.UTF-8",
                    "PYTHONHASHSEED": "0",
                    "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1",
                    "MPLBACKEND": "Agg",
                }
                os.execve(plan["python"], [plan["python"], "-I", "-S", "-B", "-c", plan["source"], "worker"], env)
            except BaseException as err:  # noqa: BLE001 - say why on stderr, which the supervisor keeps
                os.write(2, f"starting the worker failed: {err!r}\n".encode())
            finally:
                os._exit(127)
        self.pid = pid
        for fd in (req_r, resp_w, err_w):
            os.close(fd)
        os.set_blocking(self.err_r, False)
        os.set_blocking(self.req_w, False)
        self.err_open = True
        self.config = {"path": plan["path"], "preamble": plan["preamble"]}

    @staticmethod
    def _parse(inbox: bytearray, max_blob: int):
        """(header, blob) once `inbox` holds one whole frame, None before, "protocol" if it breaks
        the format or its limits, or carries more than one frame."""
        if len(inbox) < _FRAME.size:
            return None
        header_len, blob_len = _FRAME.unpack(inbox[: _FRAME.size])
        if header_len > MAX_EVENT_HEADER or blob_len > max_blob:
            return "protocol"
        end = _FRAME.size + header_len + blob_len
        if len(inbox) < end:
            return None
        if len(inbox) > end:
            return "protocol"
        try:
            header = json.loads(bytes(inbox[_FRAME.size : _FRAME.size + header_len]))
        except Exception:  # noqa: BLE001 - RecursionError, bad UTF-8, ...: the learner wrote it
            return "protocol"
        if not isinstance(header, dict):
            return "protocol"
        return header, bytes(inbox[_FRAME.size + header_len : end])

    def members(self) -> list[int]:
        """The worker's processes: all of the sandbox uid; without root, those of its session."""
        return processes_of(self.uid) if os.geteuid() == 0 else _session_of(self.pid)

    def _drain(self) -> None:
        """Keep only the tail of what the worker prints: output is never scored, and never grows us."""
        try:
            chunk = os.read(self.err_r, 1 << 16)
        except BlockingIOError:
            return
        self.err_open = bool(chunk)
        self.stderr_tail = (self.stderr_tail + chunk)[-4000:]

    def step(self, header: dict, blob: bytes, limits: dict, max_blob: int) -> tuple[str, dict | None, bytes]:
        """Send one request and wait for its answer under the limits. Returns (status, answer,
        blob): status is "ok", or why the worker was stopped ("cpu", "idle", "wall", "died",
        "protocol")."""
        nonce = random.getrandbits(62)
        data = json.dumps({**header, "nonce": nonce}).encode()
        pending = memoryview(_FRAME.pack(len(data), len(blob)) + data + blob) if header else memoryview(b"")
        inbox = bytearray()  # the answer, read as it comes: a half-written frame never blocks us
        start, idle, seen = time.monotonic(), 0.0, {}
        _cpu_and_busy(self.members(), seen)
        base = previous = _cgroup_cpu() if _CPU_COUNTER else sum(seen.values()) / CLK_TCK
        last = start
        while True:
            readers = [self.resp_r, 0] + [self.err_r] * self.err_open
            ready, writable, _ = select.select(readers, [self.req_w] if pending else [], [], 0.05)
            if self.err_r in ready:
                self._drain()
            if 0 in ready and not os.read(0, 1):  # the grader is gone: stop at once
                raise GraderGone()
            if writable:
                try:
                    pending = pending[os.write(self.req_w, pending) :]
                except BlockingIOError:
                    pass
                except OSError:
                    return "died", None, b""
            if self.resp_r in ready:
                chunk = os.read(self.resp_r, 1 << 20)
                if not chunk:
                    end = time.monotonic() + 1.0
                    while self.err_open and time.monotonic() < end and select.select([self.err_r], [], [], 0.1)[0]:
                        self._drain()  # keep its last words for the report
                    return "died", None, b""
                inbox += chunk
                answer = self._parse(inbox, max_blob)
                if answer == "protocol" or (answer is not None and header and answer[0].get("nonce") != nonce):
                    return "protocol", None, b""
                if answer is not None:
                    return "ok", answer[0], answer[1]
            _reap()
            now = time.monotonic()
            busy = _cpu_and_busy(self.members(), seen)
            used = _cgroup_cpu() if _CPU_COUNTER else sum(seen.values()) / CLK_TCK
            busy = busy or used - previous > 0.2 * (now - last)  # CPU went up: it is working
            idle = 0.0 if busy else idle + (now - last)
            last, previous = now, used
            if used - base > limits["cpu"]:
                return "cpu", None, b""
            if idle > limits["idle"]:
                return "idle", None, b""
            if now - start > limits["wall"]:
                return "wall", None, b""

    def stop(self) -> None:
        if self in Worker.running:
            Worker.running.remove(self)
        for fd in (self.req_w, self.resp_r, self.err_r):
            try:
                os.close(fd)
            except OSError:
                pass
        if os.geteuid() == 0:
            kill_uid(self.uid)
        else:  # no uid of its own: its session is the best reach we have
            for pid in self.members():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        _reap()


MAX_EVENT_HEADER = 1 << 20  # what the grader reads from us; the worker's frames are held to the same


def _depth(tree) -> int:
    """How deeply a parsed JSON value nests (iteratively: a deep one must not overflow our stack)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
    return deepest


def _forward(event: dict, blob: bytes = b"") -> None:
    """Pass a worker's answer on to the grader, keeping it within what the grader reads."""
    if _depth(event) > 4 * MAX_DEPTH + 8 or len(json.dumps(event)) > MAX_EVENT_HEADER:
        event = {k: v for k, v in event.items() if k in ("event", "slot", "id")}
        event["error"], blob = {"type": "ResultTooLarge", "message": "the answer was too large to pass on"}, b""
    write_frame(1, event, blob)


def remove_ipc(uid: int | None) -> None:
    """Remove System V shared memory, semaphores and queues (of `uid`, or all in our namespace):
    they outlive processes and would hold memory against the next worker."""
    for kind, call, rmid in (("shm", "shmctl", 0), ("sem", "semctl", 0), ("msg", "msgctl", 0)):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        for row in rows:
            owner, creator = {"shm": (7, 9), "sem": (4, 6), "msg": (7, 9)}[kind]
            ident = int(row[1])
            if uid is None or uid in (int(row[owner]), int(row[creator])):  # given away: still the creator's
                getattr(_libc, call)(ident, *([0] if kind == "sem" else []), rmid, None)


SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue")  # world-writable: where a uid can leave things


def remove_files_of(uid: int, folders=SHARED_TMP) -> None:
    """Delete whatever `uid` owns in the shared temp folders (links are removed, never followed):
    nothing one run leaves there reaches a later run."""
    for folder in folders:
        for top, dirs, files in os.walk(folder):
            for name in files + dirs:
                path = os.path.join(top, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if info.st_uid != uid:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(path, ignore_errors=True)
                    if name in dirs:
                        dirs.remove(name)
                else:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass


def _scratch_mounts(plan: dict) -> list[str]:
    """The writable places of the sandbox. /tmp only when nothing it needs lives there (an
    interpreter or virtualenv under /tmp is bound at its own path, read-only); the worker's
    TMPDIR and HOME are in /scratch either way."""
    needed = [*plan["allow"], *plan["stdlib"], *plan["package_dirs"]]
    private_tmp = not any(p == "/tmp" or p.startswith("/tmp/") for p in needed)
    return ["/scratch", "/dev/shm", *(["/tmp"] if private_tmp else [])]


def _fresh_scratch(plan: dict) -> str:
    """A clean, private working folder for the next worker. In our namespaces: fresh /tmp and
    /dev/shm and no IPC objects; without them: the sandbox uid's files in the shared temp
    folders and its IPC objects removed, and an empty private folder."""
    uid = plan["uid"]
    if plan["isolate"]:
        for path in _scratch_mounts(plan):
            if os.path.ismount(path):
                _check(_libc.umount2(path.encode(), MNT_DETACH), f"umount {path}")
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={plan['tmp_bytes']},mode=1777")
        os.mkdir("/scratch/work", 0o700)
        remove_ipc(None)
        home = "/scratch/work"
    else:
        home = plan["home"]
        remove_files_of(uid, plan["shared_tmp"])
        remove_files_of(uid, (home,))
        remove_ipc(uid)
    if os.geteuid() == 0:
        os.chown(home, uid, uid)
    return home


_CPU_COUNTER: list[int] = []  # an open cgroup CPU counter, when the grader gave us one


def _cgroup_cpu() -> float:
    """CPU seconds used so far by everything in the sandbox's cgroup."""
    text = os.pread(_CPU_COUNTER[0], 4096, 0).decode()
    if text.startswith("usage_usec"):  # cgroup v2 cpu.stat
        return int(text.split()[1]) / 1e6
    return int(text) / 1e9  # cgroup v1 cpuacct.usage, in nanoseconds


class GraderGone(Exception):
    """The grader closed our channel (it finished, or was killed): stop everything now."""


def supervisor_main() -> None:
    try:
        _supervise()
    except (GraderGone, OSError):
        pass  # nobody is listening any more; the finally below still cleans up
    finally:
        for w in Worker.running:
            w.stop()


def _supervise() -> None:
    plan, blob = read_frame(0, 1 << 30, 1 << 31)
    with open(__file__, encoding="utf-8") as f:
        plan["source"] = f.read()  # the worker runs this file's code via -c: no path of ours in its view
    uid, calls = plan["uid"], plan["calls"]
    if plan.get("cpu_counter"):  # opened before the host's /sys is out of view
        _CPU_COUNTER.append(os.open(plan["cpu_counter"], os.O_RDONLY))
    if plan["isolate"]:
        build_root(plan["new_root"], plan)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    skipped: set[str] = set()
    next_call, restarts = 0, 0
    while True:
        home = _fresh_scratch(plan)  # nothing a previous worker left (files, shared memory) carries over
        worker = Worker(plan, uid, home)
        status, _, _ = worker.step(worker.config, b"", {"cpu": 120.0, "idle": 60.0, "wall": 300.0}, 0)
        if status != "ok":
            why = f"({status}): " + worker.stderr_tail.decode("utf-8", "replace")[-1500:]
            worker.stop()
            if restarts == 0:  # before any learner code ran: the environment is at fault
                write_frame(1, {"event": "broken", "message": "the sandbox could not start Python and torch " + why})
                return
            write_frame(
                1,
                {
                    "event": "gave_up",
                    "message": "the sandbox could not restart after the learner's code ran " + printable(why, 300),
                },
            )
            break
        crashed = None
        for cell in plan["cells"]:
            if cell["id"] in skipped:
                continue
            status, answer, _ = worker.step({"op": "cell", "source": cell["source"]}, b"", plan["cell_limits"], 0)
            if status != "ok":
                skipped.add(cell["id"])
                crashed = status
                write_frame(1, {"event": "cell", "id": cell["id"], "stopped": status})
                break
            if next_call == 0:  # messages of cells re-run after a call are dropped: they may carry a stashed input
                _forward({"event": "cell", "id": cell["id"], "error": answer.get("error")})
        while crashed is None and next_call < len(calls):
            call = calls[next_call]
            next_call += 1
            start, end = call["blob"]
            header = {
                "op": "call",
                "function": call["function"],
                "inputs": call["inputs"],
                "seed": call["seed"],
                "max_bytes": call["max_bytes"],
            }
            status, answer, data = worker.step(header, blob[start:end], plan["call_limits"], call["max_bytes"])
            if status != "ok":
                crashed = status
                write_frame(1, {"event": "result", "slot": call["slot"], "stopped": status})
            else:
                _forward(
                    {
                        "event": "result",
                        "slot": call["slot"],
                        "value": answer.get("value"),
                        "inputs": answer.get("inputs"),
                        "error": answer.get("error"),
                    },
                    data,
                )
        worker.stop()
        if crashed is None or next_call >= len(calls):
            break
        restarts += 1
        if restarts > plan["max_restarts"]:
            write_frame(1, {"event": "gave_up", "message": f"stopped after {restarts} restarts"})
            break
    write_frame(1, {"event": "done"})


if __name__ == "__main__":
    {"supervisor": supervisor_main, "worker": worker_main}[sys.argv[1]]()
