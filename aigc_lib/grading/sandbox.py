"""The learner's side of grading: a throwaway process that runs untrusted code.

Started by `aigc_lib.grading.isolate` (as root inside fresh network/mount/PID namespaces where
the machine allows it). It reads a plan from stdin, hides protected paths, sets resource limits,
drops to an unprivileged uid, runs the learner's cells, calls the learner's functions on the
case inputs and reports each step as one JSON line on a private pipe. It decides nothing:
verdicts are computed by the grader, which never trusts these lines beyond their values.

Deliberately standalone (stdlib + torch): it must not import aigc_lib, which holds the references.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import io
import json
import os
import random
import resource
import signal
import sys
import zlib

RESULT_LIMIT = 64 << 20  # bytes of one serialised return value
TMP_DIRS = ("/tmp", "/var/tmp")
WRITABLE = (*TMP_DIRS, "/dev/shm")  # fresh, private, the only writable places
DEVICES = ("null", "zero", "random", "urandom")
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024,
               "nodiratime": 2048, "relatime": 1 << 21}
PR_SET_NO_NEW_PRIVS = 38
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429  # same numbers on x86_64 and arm64 (new mount API, Linux >= 5.2)
OPEN_TREE_CLONE, AT_RECURSIVE, MOVE_MOUNT_F_EMPTY_PATH, AT_FDCWD = 1, 0x8000, 4, -100

_libc = ctypes.CDLL(None, use_errno=True)


class _Timeout(Exception):
    pass


def _bytes(x: str | None) -> bytes | None:
    return x.encode() if x is not None else None


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(_bytes(source), target.encode(), _bytes(fstype), flags, _bytes(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _tmpfs(target: str, mode: str = "0755", flags: int = MS_NOSUID | MS_NODEV) -> None:
    _mount("tmpfs", target, "tmpfs", flags, f"size=256m,mode={mode}")


def _detach(path: str) -> int:
    """A detached copy of the mount tree at `path` (open_tree): it survives `path` being covered."""
    fd = _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | AT_RECURSIVE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    return fd


def _attach(fd: int, path: str, is_dir: bool) -> None:
    """Put a detached tree back at `path` (move_mount), creating the mount point first."""
    os.makedirs(path if is_dir else os.path.dirname(path), exist_ok=True)
    if not is_dir:
        open(path, "a").close()
    if _libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"move_mount {path}: {os.strerror(err)}")
    os.close(fd)


def _cover(target: str, keep: list[str], mode: str = "0755") -> None:
    """Replace `target` by an empty tmpfs, except for the paths in `keep` (below it), which stay."""
    outer = [p for p in keep if not any(p.startswith(q + "/") for q in keep)]
    saved = [(_detach(p), p, os.path.isdir(p)) for p in outer]
    _tmpfs(target, mode)
    for fd, path, is_dir in saved:
        _attach(fd, path, is_dir)


def _under(path: str, parent: str) -> bool:
    return path.startswith(parent.rstrip("/") + "/")


def _make_reachable(paths: list[str]) -> None:
    """An unprivileged uid cannot walk through a 0700 directory such as /root. Cover each such
    directory by a tmpfs holding only what the interpreter needs (hiding the rest)."""
    while True:
        blocked = None
        for path in paths:
            parts = path.strip("/").split("/")
            for i in range(len(parts)):
                parent = "/" + "/".join(parts[:i])
                if not os.stat(parent).st_mode & 0o001:
                    blocked = parent if blocked is None or len(parent) < len(blocked) else blocked
                    break
        if blocked is None:
            return
        _cover(blocked, [p for p in paths if _under(p, blocked)])  # shallowest first


def _isolate(hide: list[str], uid: int, needed: list[str]) -> None:
    """We are root in fresh mount/PID/network namespaces: build the learner's view of the system."""
    for path in TMP_DIRS:  # fresh and private, but keeping the interpreter if it lives in /tmp
        if os.path.isdir(path):
            _cover(path, [p for p in needed if _under(p, path)], "1777")
    _cover("/dev", [f"/dev/{d}" for d in DEVICES])  # no disks, no terminals: only harmless devices
    os.mkdir("/dev/shm")
    _tmpfs("/dev/shm", "1777")
    _make_reachable(needed)
    for path in hide:
        if os.path.exists(path) and path not in WRITABLE and path != "/":
            _tmpfs(path, "0555", MS_RDONLY | MS_NOSUID | MS_NODEV)
    with open("/proc/self/mountinfo") as f:
        mounts = [(line.split()[4], line.split()[5]) for line in f]
    for target, options in mounts:  # everything read-only, keeping each mount's other flags
        if target.startswith("/proc") or target in WRITABLE:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options.split(","):
            flags |= MOUNT_FLAGS.get(option, 0)
        try:
            _mount(None, target.replace("\\040", " "), None, flags)
        except OSError as err:  # a mount now covered by another (the old /dev/pts): unreachable anyway
            if err.errno not in (errno.ENOENT, errno.EINVAL):
                raise
    os.makedirs("/tmp/work", exist_ok=True)
    os.chown("/tmp/work", uid, uid)
    os.chdir("/tmp/work")
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)  # a non-zero uid: every capability is gone
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _limit(limits: dict) -> None:
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def _emit(channel, **event) -> None:
    channel.write(json.dumps(event) + "\n")
    channel.flush()


def _encode(value) -> tuple[dict, str | None]:
    import torch

    plain = type(value) is torch.Tensor
    if type(value) in (tuple, list) and 0 < len(value) <= 16:
        plain = all(type(v) is torch.Tensor for v in value)
        value = type(value)(v.detach().cpu().clone().contiguous() for v in value) if plain else value
    elif plain:
        value = value.detach().cpu().clone().contiguous()
    if plain:
        buf = io.BytesIO()
        torch.save(value, buf)
        if buf.tell() > RESULT_LIMIT:
            return {"kind": "raised", "type": "ResultTooLarge", "message": f"returned {buf.tell()} bytes"}, None
        kind = "tensor" if type(value) is torch.Tensor else f"{type(value).__name__} of tensors"
        return {"kind": kind}, base64.b64encode(buf.getvalue()).decode()
    if type(value) in (float, int, str) and len(repr(value)) < 10_000:
        return {"kind": type(value).__name__, "value": value}, None
    return {"kind": "other", "type": type(value).__name__}, None


def _on_alarm(signum, frame):
    raise _Timeout()


def _run(code: str, namespace: dict, seconds: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        exec(compile(code, "<learner cell>", "exec"), namespace)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _strip_magics(source: str) -> str:
    """IPython magics and shell escapes mean nothing here: comment them out."""
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def main() -> None:
    plan = json.loads(sys.stdin.buffer.read())
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")  # our private copy of stdout
    os.dup2(2, 1)  # learner prints go to stderr, which the grader keeps apart and never scores
    _limit(plan["limits"])
    if plan.get("isolate"):
        needed = sorted({os.path.realpath(p) for p in [sys.executable, sys.prefix, sys.base_prefix, *sys.path]
                         if p and os.path.exists(p)})
        _isolate(plan["hide"], plan["uid"], needed)

    import numpy as np
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _on_alarm)
    sys.modules["aigc_lib"] = None  # type: ignore[assignment]  # "import aigc_lib" raises ImportError

    namespace: dict = {"__name__": "__main__"}
    exec(compile(plan["preamble"], "<preamble>", "exec"), namespace)
    for cell in plan["cells"]:
        _emit(channel, event="cell_start", id=cell["id"])
        error = None
        try:
            _run(_strip_magics(cell["source"]), namespace, plan["cell_timeout"])
        except _Timeout:
            error = f"TimeLimit: the cell ran longer than {plan['cell_timeout']} s"
        except BaseException as err:  # noqa: BLE001 - SystemExit and friends are learner errors too
            error = f"{type(err).__name__}: {str(err)[:300]}"
        _emit(channel, event="cell_done", id=cell["id"], error=error)

    for call in plan["calls"]:
        _emit(channel, event="call_start", slot=call["slot"])
        inputs = torch.load(io.BytesIO(base64.b64decode(call["inputs"])), weights_only=True)
        seed = zlib.crc32(call["slot"].encode())
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        fn = namespace.get(call["function"])
        tensor = None
        try:
            if not callable(fn):
                raise NameError(f"no function named {call['function']!r} is defined")
            signal.setitimer(signal.ITIMER_REAL, plan["call_timeout"])
            try:
                value = fn(**inputs)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            meta, tensor = _encode(value)
        except _Timeout:
            meta = {"kind": "raised", "type": "TimeLimit", "message": f"took longer than {plan['call_timeout']} s"}
        except BaseException as err:  # noqa: BLE001
            meta = {"kind": "raised", "type": type(err).__name__, "message": str(err)[:300]}
        _emit(channel, event="result", slot=call["slot"], meta=meta, tensor=tensor)
    _emit(channel, event="done")
    channel.close()
    os._exit(0)  # skip interpreter teardown: learner objects may have hostile finalisers


if __name__ == "__main__":
    main()
