"""Run the sandbox process with limits, and read back what it reported.

On Linux as root (CI, a grading server) the sandbox gets its own network namespace (no network),
mount namespace (protected paths and the shared temp dirs replaced by empty tmpfs) and PID
namespace (killing it kills every process it started), then drops to an unprivileged uid.
Elsewhere it still runs with resource limits, a minimal environment and a private working
directory; `isolation_level()` says which, and every report records it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

SANDBOX = Path(__file__).with_name("sandbox.py")
BASE_UID = 50_000  # sandbox uids: BASE_UID + worker slot; no such users exist, they own nothing


@dataclass(frozen=True)
class Limits:
    cell_seconds: float = 20.0  # per learner cell
    call_seconds: float = 10.0  # per function call on one case
    wall_seconds: float = 120.0  # the whole sandbox process
    memory_bytes: int = 2 << 30  # address space
    processes: int = 64  # per sandbox uid: a fork bomb stops here
    file_bytes: int = 64 << 20  # largest file it may write (in its private tmpfs)

    def rlimits(self) -> dict[str, int]:
        return {
            "RLIMIT_AS": self.memory_bytes,
            "RLIMIT_CPU": int(self.wall_seconds) + 1,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_FSIZE": self.file_bytes,
            "RLIMIT_NOFILE": 256,
            "RLIMIT_CORE": 0,
        }


@lru_cache(maxsize=1)
def isolation_level() -> str:
    """'namespaces' when we can unshare (root on Linux), else 'limits-only'."""
    unshare = shutil.which("unshare")
    if sys.platform != "linux" or os.geteuid() != 0 or unshare is None:
        return "limits-only"
    probe = subprocess.run([unshare, "--net", "--mount", "--pid", "--fork", "--kill-child", "true"],
                           capture_output=True, timeout=30)
    return "namespaces" if probe.returncode == 0 else "limits-only"


@dataclass
class SandboxRun:
    events: list[dict] = field(default_factory=list)
    returncode: int | None = None
    timed_out: bool = False
    stderr_tail: str = ""

    @property
    def finished(self) -> bool:
        return any(e.get("event") == "done" for e in self.events)


def _environment() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def encode_inputs(inputs: dict) -> str:
    buf = io.BytesIO()
    torch.save(inputs, buf)
    return base64.b64encode(buf.getvalue()).decode()


def decode_tensors(data: str, kind: str) -> torch.Tensor | tuple | list | None:
    """A tensor (or a tuple/list of tensors, as `kind` says) that the sandbox sent, loaded with
    `weights_only=True` (no arbitrary pickle code runs); None if it is not what `kind` says."""
    try:
        value = torch.load(io.BytesIO(base64.b64decode(data, validate=True)), weights_only=True)
    except Exception:  # noqa: BLE001 - anything malformed is simply not a tensor
        return None
    if kind == "tensor":
        return value if type(value) is torch.Tensor else None
    container = {"tuple of tensors": tuple, "list of tensors": list}.get(kind)
    if container is not None and type(value) is container and all(type(v) is torch.Tensor for v in value):
        return value
    return None


def run_sandbox(plan: dict, limits: Limits, *, hide: list[Path], slot: int = 0) -> SandboxRun:
    """Start the sandbox on `plan`, wait at most `limits.wall_seconds`, parse its event lines."""
    level = isolation_level()
    plan = {**plan, "limits": limits.rlimits(), "cell_timeout": limits.cell_seconds,
            "call_timeout": limits.call_seconds, "isolate": level == "namespaces",
            "hide": [str(p) for p in hide if p.exists()], "uid": BASE_UID + slot}
    command = [sys.executable, "-I", "-B", str(SANDBOX)]
    if level == "namespaces":
        command = ["unshare", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc", *command]
    run = SandboxRun()
    with tempfile.TemporaryDirectory(prefix="aigc-sandbox-") as workdir:
        os.chmod(workdir, 0o700)  # limits-only mode works here; with namespaces it is hidden anyway
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=workdir, env=_environment(), start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(plan).encode(), timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session; the PID namespace goes with it
            out, err = proc.communicate()
        run.returncode = proc.returncode
    run.stderr_tail = err[-2000:].decode("utf-8", "replace")
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # stray bytes a learner wrote into our pipe
        if isinstance(event, dict):
            run.events.append(event)
    return run
