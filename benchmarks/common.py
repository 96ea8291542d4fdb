"""Helpers shared by the benchmark scripts: the measured matmul peak, device sync, a load warning,
and nanoGPT's character-level split of tiny Shakespeare."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aigc_lib.data import CharTokenizer

# tiny Shakespeare is not shipped (it is not ours to ship): download it once to this path, or pass --text PATH
DEFAULT_TEXT = Path(__file__).resolve().parent / "data" / "tinyshakespeare.txt"
TEXT_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
VAL_FRACTION = 0.1  # nanoGPT shakespeare_char: train = first 90%, val = last 10%


@dataclass
class Data:
    source: str
    tokenizer: CharTokenizer
    train_ids: torch.Tensor
    val_ids: torch.Tensor


def char_split(text: str, source: str) -> Data:
    """`text` tokenized by characters (the vocabulary of the whole text) and split 90/10 in order."""
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    cut = int(len(ids) * (1 - VAL_FRACTION))
    return Data(source, tok, ids[:cut], ids[cut:])


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so a timer measures it (no-op elsewhere)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(
    n: int = 2048, reps: int = 10, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """Achieved GFLOP/s of an n x n matmul (2 n^3 FLOPs per call), `reps` calls after one warm-up
    call: the practical peak of this device and dtype, against which a model's share is reported."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def check_load() -> None:
    """Warn when other processes compete for the cores: timings then drift, and with more than one
    torch thread every OpenMP barrier waits for a thread that lost its core (seen here: 2 threads
    50x slower than 1 while another process kept one of the 2 cores busy)."""
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if load > 0.5:
        print(
            f"WARNING: load average {load:.1f} on {cores} cores before we start: other work competes for the "
            "CPU, so timings are noisy"
            + (
                "; multi-threaded steps can stall at every OpenMP barrier (try --threads 1)"
                if cores > 1 and torch.get_num_threads() > 1
                else ""
            )
        )
