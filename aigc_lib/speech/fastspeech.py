"""A FastSpeech-style text-to-mel model (Ren et al., "FastSpeech", NeurIPS 2019; FastSpeech 2, ICLR 2021).

    phonemes -> embedding + positions -> encoder (FFT blocks) -> duration predictor
             -> length regulator (each phoneme's state repeated for its frames) -> decoder (FFT blocks) -> mel

An FFT block is chapter 04's transformer block with the MLP replaced by two 1-D convolutions over time
(neighbouring frames of speech are strongly related). The durations come from the teacher's phoneme
events at training time and from the duration predictor at synthesis: nothing learns an alignment,
which is what made attention-based Tacotron slow and brittle to train. FastSpeech 2's pitch and energy
predictors are left out: the Mandarin tone is in the phoneme tokens instead (see `teacher`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib import distributed
from aigc_lib.checks import check_int, check_number, shape_of
from aigc_lib.training import History, RunOptions, adamw_warmup_cosine, epoch_indices, fit
from aigc_lib.transformer.attention import MultiHeadAttention, sinusoidal_positions

PAD = "<pad>"


class PhonemeVocab:
    """Phoneme tokens <-> ids; id 0 is padding. Built from a training corpus, so a token the model never
    heard (a word that is not a number, a third language) is refused with a clear message."""

    def __init__(self, tokens: list[str]):
        self.tokens = [PAD] + sorted(set(tokens) - {PAD})
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, phonemes: tuple[str, ...] | list[str]) -> Tensor:
        unknown = [p for p in phonemes if p not in self.index]
        if unknown:
            raise ValueError(
                f"phonemes: {sorted(set(unknown))} never occur in the training corpus; this model can say only "
                "what its phonemes cover (numbers 0-999 in English or Mandarin)"
            )
        return torch.tensor([self.index[p] for p in phonemes], dtype=torch.long)


@dataclass(frozen=True)
class FastSpeechConfig:
    vocab_size: int
    n_mels: int = 80
    d_model: int = 128
    n_heads: int = 2
    encoder_layers: int = 2
    decoder_layers: int = 2
    conv_hidden: int = 384  # the FFT block's convolutional MLP: d -> conv_hidden -> d
    kernel: int = 3
    dropout: float = 0.1


class FFTBlock(nn.Module):
    """Pre-LN feed-forward Transformer block: x += Attn(LN(x)) over the real positions; x += Conv(LN(x)),
    Conv = Conv1d(d, hidden, k) ReLU Conv1d(hidden, d, k); padded positions are zeroed before each conv."""

    def __init__(self, c: FastSpeechConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout)
        self.conv1 = nn.Conv1d(c.d_model, c.conv_hidden, c.kernel, padding=c.kernel // 2)
        self.conv2 = nn.Conv1d(c.conv_hidden, c.d_model, c.kernel, padding=c.kernel // 2)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, d), mask (B, T) bool, True for real positions."""
        x = x + self.drop(self.attn(self.ln1(x), key_padding=mask)[0])
        h = (self.ln2(x) * mask[..., None]).transpose(1, 2)
        h = self.conv2(F.relu(self.conv1(h)) * mask[:, None, :])
        return (x + self.drop(h.transpose(1, 2))) * mask[..., None]


class DurationPredictor(nn.Module):
    """Two (Conv1d, ReLU, LayerNorm, dropout) layers and a linear map: log(1 + frames) per phoneme."""

    def __init__(self, c: FastSpeechConfig):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(c.d_model, c.d_model, c.kernel, padding=c.kernel // 2) for _ in range(2)])
        self.norms = nn.ModuleList([nn.LayerNorm(c.d_model) for _ in range(2)])
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.d_model, 1)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = self.drop(norm(F.relu(conv((h * mask[..., None]).transpose(1, 2)).transpose(1, 2))))
        return self.out(h).squeeze(-1) * mask


def length_regulate(h: Tensor, durations: Tensor, max_frames: int | None = None) -> tuple[Tensor, Tensor]:
    """Repeat each phoneme's state for its number of frames: h (B, P, C), durations (B, P) ints >= 0 ->
    (frames (B, T, C), mask (B, T) True for real frames), T = the longest total (or `max_frames`).
    Frame t of item b copies the phoneme whose cumulative duration first exceeds t."""
    if not isinstance(h, Tensor) or h.ndim != 3:
        raise ValueError(f"h: expected a tensor (B, P, C), got {shape_of(h)}")
    if (
        not isinstance(durations, Tensor)
        or durations.is_floating_point()
        or durations.shape != h.shape[:2]
        or (durations < 0).any()
    ):
        raise ValueError(f"durations: expected non-negative integers {tuple(h.shape[:2])}, got {shape_of(durations)}")
    ends = durations.cumsum(1)  # (B, P): the frame after each phoneme's last
    T = int(ends[:, -1].max()) if max_frames is None else check_int("max_frames", max_frames, low=0)
    frames = torch.arange(T, device=h.device).expand(len(h), T).contiguous()
    owner = torch.searchsorted(ends, frames, right=True).clamp(max=h.shape[1] - 1)  # (B, T)
    mask = frames < ends[:, -1:]
    out = torch.gather(h, 1, owner[..., None].expand(-1, -1, h.shape[2])).masked_fill(~mask[..., None], 0.0)
    return out, mask


class FastSpeech(nn.Module):
    def __init__(self, config: FastSpeechConfig):
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=0)
        self.encoder = nn.ModuleList([FFTBlock(c) for _ in range(c.encoder_layers)])
        self.durations = DurationPredictor(c)
        self.decoder = nn.ModuleList([FFTBlock(c) for _ in range(c.decoder_layers)])
        self.ln = nn.LayerNorm(c.d_model)
        self.to_mel = nn.Linear(c.d_model, c.n_mels)
        # the decoder predicts mels in units of each band's spread around its mean (`set_mel_stats`)
        self.register_buffer("mel_mean", torch.zeros(c.n_mels))
        self.register_buffer("mel_std", torch.ones(c.n_mels))

    def set_mel_stats(self, data: SpeechBatchData) -> None:
        """Each mel band's mean and standard deviation over the real frames of `data`: the output's scale."""
        real = torch.arange(data.mels.shape[1])[None, :] < data.frames[:, None]
        frames = data.mels[real]  # (frames, n_mels)
        self.mel_mean.copy_(frames.mean(0))
        self.mel_std.copy_(frames.std(0).clamp(min=1e-3))

    def _positions(self, x: Tensor) -> Tensor:
        return x + sinusoidal_positions(x.shape[1], x.shape[2]).to(x)

    def encode(self, phonemes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """phonemes (B, P) ids, 0 = padding -> (states (B, P, d), mask (B, P), predicted log(1 + frames))."""
        mask = phonemes != 0
        h = self._positions(self.embed(phonemes) * math.sqrt(self.config.d_model))
        for block in self.encoder:
            h = block(h, mask)
        return h, mask, self.durations(h, mask)

    def decode(self, h: Tensor, durations: Tensor) -> tuple[Tensor, Tensor]:
        frames, mask = length_regulate(h, durations)
        x = self._positions(frames) * mask[..., None]
        for block in self.decoder:
            x = block(x, mask)
        return (self.to_mel(self.ln(x)) * self.mel_std + self.mel_mean) * mask[..., None], mask

    def forward(self, phonemes: Tensor, durations: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced: the given durations (B, P) -> (mel (B, T, n_mels), frame mask, predicted log durations)."""
        h, _, log_dur = self.encode(phonemes)
        mel, mask = self.decode(h, durations)
        return mel, mask, log_dur

    @torch.no_grad()
    def synthesize(self, phonemes: Tensor, speed: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """Predicted durations, divided by `speed` (2 = twice as fast) and rounded ->
        (mel (B, T, n_mels), frame mask, durations (B, P))."""
        speed = check_number("speed", speed, 0.25, 4.0)
        h, mask, log_dur = self.encode(phonemes)
        durations = ((log_dur.exp() - 1).clamp(min=0) / speed).round().long() * mask
        mel, frame_mask = self.decode(h, durations)
        return mel, frame_mask, durations


@dataclass(frozen=True)
class SpeechBatchData:
    """A corpus as tensors: phonemes (N, P) ids (0 = padding), durations (N, P) frames, mels (N, T, n_mels)
    log-mel frames (zeros past each utterance's end), frames (N,) real lengths."""

    phonemes: Tensor
    durations: Tensor
    mels: Tensor
    frames: Tensor

    def __len__(self) -> int:
        return len(self.phonemes)

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Rows `idx`, cropped to their longest phoneme string and utterance."""
        P = int((self.phonemes[idx] != 0).sum(1).max())
        T = int(self.frames[idx].max())
        return self.phonemes[idx, :P], self.durations[idx, :P], self.mels[idx, :T]


def pad_corpus(phonemes: list[Tensor], durations: list[Tensor], mels: list[Tensor]) -> SpeechBatchData:
    """Lists of (P_i,) ids, (P_i,) frames and (T_i, n_mels) log-mels with sum(durations_i) == T_i -> padded tensors."""
    for i, (d, m) in enumerate(zip(durations, mels, strict=True)):
        if int(d.sum()) != len(m):
            raise ValueError(f"durations[{i}]: sum to {int(d.sum())} frames but mels[{i}] has {len(m)}")
    pad = nn.utils.rnn.pad_sequence
    return SpeechBatchData(
        pad(phonemes, batch_first=True),
        pad(durations, batch_first=True),
        pad(mels, batch_first=True),
        torch.tensor([len(m) for m in mels]),
    )


def fastspeech_loss(model: FastSpeech, batch: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
    """Mean absolute error of the log-mel over real frames + squared error of log(1 + frames) over real phonemes.
    The target may be padded past the batch's longest utterance (a rank's shard of a batch padded for all
    ranks): the model's output is as long as the longest, and only that much of the target is compared."""
    phonemes, durations, target = batch
    mel, mask, log_dur = model(phonemes, durations)
    target = target[:, : mel.shape[1]]  # frames past every utterance's end are padding: nothing to predict
    real = phonemes != 0
    mel_loss = ((mel - target).abs().mean(-1) * mask).sum() / mask.sum()
    dur_loss = (((log_dur - torch.log1p(durations.float())) ** 2) * real).sum() / real.sum()
    return {"loss": mel_loss + dur_loss, "mel": mel_loss.detach(), "duration": dur_loss.detach()}


def train_fastspeech(
    model: FastSpeech,
    data: SpeechBatchData,
    steps: int,
    *,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    **run: Unpack[RunOptions],
) -> History:
    """Epoch-permutation batches (seeded; resume is exact), AdamW with warm-up and cosine decay, gradient
    clipping at 1. History: "loss", "mel" (L1 of the log-mel), "duration"."""
    if not isinstance(model, FastSpeech):
        raise ValueError(f"model: expected a FastSpeech, got {type(model).__name__}")
    if not isinstance(data, SpeechBatchData):
        raise ValueError(f"data: expected SpeechBatchData (fastspeech.pad_corpus), got {type(data).__name__}")
    check_int("steps", steps), check_int("batch_size", batch_size, high=len(data)), check_int("seed", seed, low=0)
    order = epoch_indices(len(data), batch_size, seed)
    optimizer, scheduler = adamw_warmup_cosine(
        model, check_number("lr", lr, inclusive=False), steps, min(200, steps // 10)
    )
    run.setdefault("desc", "FastSpeech")
    distributed.warn_not_equivalent(
        "train_fastspeech",
        "the losses are means over each shard's real frames and phonemes, and DDP weighs the ranks equally, so "
        "a shard of short phrases counts for more than in one process's frame-weighted mean (close, not equal)",
    )
    return fit(model, optimizer, lambda step: data.batch(order(step)), fastspeech_loss, steps,
               scheduler=scheduler, grad_clip=1.0, **run)  # fmt: skip
