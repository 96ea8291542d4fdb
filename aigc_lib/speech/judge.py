"""The intelligibility judge: a spoken-number classifier, log-mel -> the number's three digits.

A small listener trained for the purpose (the miniature of scoring TTS by a speech recogniser's word
error rate): convolutions over time, a bidirectional GRU, and one attention-pooling head per digit
(hundreds, tens, units, 10 classes each; 7 is (0, 0, 7)). It trains on teacher speech of voices the
text-to-speech model never hears, English and Mandarin together, so it judges the model's audio as a
stranger's speech. A number counts as understood when all three digits are right.
"""

from __future__ import annotations

from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_int, check_number, shape_of
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, epoch_indices, fit

PLACES = (100, 10, 1)


def digits_of(numbers: Tensor) -> Tensor:
    """(N,) numbers 0-999 -> (N, 3) digits: hundreds, tens, units."""
    return torch.stack([numbers // p % 10 for p in PLACES], dim=1)


class NumberJudge(nn.Module):
    def __init__(self, n_mels: int = 80, width: int = 96):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, stride=2, padding=2)  # half the frames
        self.rnn = nn.GRU(width, width, batch_first=True, bidirectional=True)
        self.queries = nn.Parameter(torch.randn(len(PLACES), 2 * width) / (2 * width) ** 0.5)
        self.heads = nn.ModuleList([nn.Linear(2 * width, 10) for _ in PLACES])

    def forward(self, log_mel: Tensor, frames: Tensor | None = None) -> Tensor:
        """log_mel (B, n_mels, T), frames (B,) real lengths (None: all real) -> logits (B, 3, 10)."""
        B, _, T_in = log_mel.shape
        frames = torch.full((B,), T_in) if frames is None else frames
        real_in = torch.arange(T_in, device=log_mel.device)[None, :] < frames.to(log_mel.device)[:, None]
        mean = (log_mel * real_in[:, None]).sum((1, 2), keepdim=True) / (real_in.sum(1) * log_mel.shape[1])[
            :, None, None
        ]
        x = (log_mel - mean) / 4.0 * real_in[:, None]  # loudness-free, roughly unit scale; padding zeroed
        h = F.gelu(self.conv1(x)) * real_in[:, None]  # padding stays zero, as at a real end
        h = F.gelu(self.conv2(h)).transpose(1, 2)  # (B, T', C)
        T = h.shape[1]
        real = torch.arange(T, device=h.device)[None, :] < ((frames.to(h.device) + 1) // 2)[:, None]
        packed = nn.utils.rnn.pack_padded_sequence(h, real.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        h = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=T)[0]
        scores = torch.einsum("btc,pc->bpt", h, self.queries).masked_fill(~real[:, None, :], float("-inf"))
        pooled = torch.einsum("bpt,btc->bpc", scores.softmax(-1), h)
        return torch.stack([head(pooled[:, i]) for i, head in enumerate(self.heads)], dim=1)


def _check_mels(mels: object, frames: object) -> None:
    if not isinstance(mels, Tensor) or mels.ndim != 3 or not mels.is_floating_point():
        raise ValueError(f"mels: expected log-mels (N, n_mels, T), got {shape_of(mels)}")
    if not isinstance(frames, Tensor) or frames.shape != (len(mels),) or frames.is_floating_point():
        raise ValueError(f"frames: expected ({len(mels)},) integer lengths, got {shape_of(frames)}")


@torch.no_grad()
def judge_numbers(judge: NumberJudge, mels: Tensor, frames: Tensor, batch_size: int = 128) -> Tensor:
    """The number heard in each of N log-mels (N, n_mels, T) padded, `frames` (N,) real lengths -> (N,)."""
    _check_mels(mels, frames)
    device = next(judge.parameters()).device
    was_training = judge.training
    judge.eval()
    try:
        out = []
        for i in range(0, len(mels), batch_size):
            T = int(frames[i : i + batch_size].max())
            logits = judge(mels[i : i + batch_size, :, :T].to(device), frames[i : i + batch_size])
            out.append((logits.argmax(-1).cpu() * torch.tensor(PLACES)).sum(-1))
        return torch.cat(out)
    finally:
        judge.train(was_training)


def train_number_judge(
    judge: NumberJudge,
    mels: Tensor,
    frames: Tensor,
    numbers: Tensor,
    steps: int,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    **run: Unpack[RunOptions],
) -> History:
    """Cross-entropy of the three digits on padded log-mels (N, n_mels, T) with lengths `frames` and labels
    `numbers` (N,); epoch-permutation batches (seeded: resume is exact). History: "loss"."""
    if not isinstance(judge, NumberJudge):
        raise ValueError(f"judge: expected a NumberJudge, got {type(judge).__name__}")
    _check_mels(mels, frames)
    if not isinstance(numbers, Tensor) or numbers.shape != (len(mels),) or numbers.min() < 0 or numbers.max() > 999:
        raise ValueError(f"numbers: expected ({len(mels)},) integers in [0, 999], got {shape_of(numbers)}")
    check_int("steps", steps), check_int("batch_size", batch_size, high=len(mels)), check_int("seed", seed, low=0)
    order = epoch_indices(len(mels), batch_size, seed)
    labels = digits_of(numbers)

    def batches(step: int) -> tuple[Tensor, Tensor, Tensor]:
        idx = order(step)
        T = int(frames[idx].max())
        return mels[idx, :, :T], frames[idx], labels[idx]

    def loss_fn(m: NumberJudge, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        logits = m(batch[0], batch[1])
        return F.cross_entropy(logits.flatten(0, 1), batch[2].flatten())

    optimizer, scheduler = adamw_warmup_cosine(
        judge, check_number("lr", lr, inclusive=False), steps, min(100, steps // 10)
    )
    run.setdefault("desc", "number judge")
    return fit(judge, optimizer, batches, loss_fn, steps, scheduler=scheduler, grad_clip=1.0, **run)
