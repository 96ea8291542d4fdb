"""Watermarks: a statistical one for generated text (Kirchenbauer, Geiping, Wen, Katz, Miers & Goldstein,
"A Watermark for Large Language Models", ICML 2023) on a character-level model, and a keyed ±ε pattern
for images.

Text. At each step the previous token and a secret key seed a generator that picks a "green list": a
fraction γ of the vocabulary. Sampling adds δ to the green tokens' logits, so green tokens become more
likely wherever the model has a choice. Detection needs the key but not the model: count the green
tokens s among T scored (previous, token) pairs; without a watermark each is green with probability γ,
so

    z = (s − γT) / sqrt(T γ (1 − γ))

is about standard normal; a watermarked text has a large z (the "soft" scheme of the paper's §3). A
pair that repeats ("the the the", "abab…") is scored once: its repeats carry no new evidence, and
counting them breaks the independence the z-test assumes (Kirchenbauer et al., "On the Reliability of
Watermarks for Large Language Models", ICLR 2024).

Images. A keyed pattern p of ±1 per pixel is added at strength ε. Detection correlates p with the
image's high-pass residual r = x − (x averaged over each pixel's 3×3 neighbourhood): the content is
smooth and mostly cancels, the white pattern mostly stays (filtering the host out first, as blind
detectors of spread-spectrum marks do; that family: Cox, Kilian, Leighton & Shamoon, IEEE Trans. Image
Processing 1997). For an image made without the key, z = Σ r p / sqrt(Σ r²) is a sum of random signs,
about standard normal; the mark adds about ε · (pixels) · 8/9 / sqrt(Σ r²), larger than with the raw
image because Σ r² is smaller.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aigc_lib.checks import check_float_tensor, check_int, check_number, shape_of

# ---------------------------------------------------------------------------------------------
# Text: green lists, the bias, the z-test
# ---------------------------------------------------------------------------------------------


def green_count_of(vocab_size: int, gamma: float) -> int:
    """How many tokens each green list holds: γ · V rounded half up, at least 1 and at most V − 1."""
    check_int("vocab_size", vocab_size, low=2)
    gamma = check_number("gamma", gamma, 0.0, 1.0, inclusive=False)
    return _green_count_of(vocab_size, gamma)


def _green_count_of(vocab_size: int, gamma: float) -> int:
    return max(1, min(vocab_size - 1, math.floor(gamma * vocab_size + 0.5)))


def green_table(vocab_size: int, key: int, gamma: float = 0.5) -> Tensor:
    """(V, V) bool: row p is the green list after token p, a random subset of `green_count_of(V, γ)` tokens
    drawn from a generator seeded by (key, p) — the same key always gives the same lists."""
    return _green_table(*_table_args(vocab_size, key, gamma)).clone()


def _table_args(vocab_size: object, key: object, gamma: object) -> tuple[int, int, float]:
    check_int("vocab_size", vocab_size, low=2)
    check_int("key", key, low=0)
    return vocab_size, key, float(check_number("gamma", gamma, 0.0, 1.0, inclusive=False))


@functools.lru_cache(maxsize=16)
def _green_table(vocab_size: int, key: int, gamma: float) -> Tensor:  # shared: never hand it out to mutate
    table = torch.zeros(vocab_size, vocab_size, dtype=torch.bool)
    for p in range(vocab_size):
        g = torch.Generator().manual_seed((key * 1_000_003 + p) % (2**63 - 1))
        table[p, torch.randperm(vocab_size, generator=g)[: _green_count_of(vocab_size, gamma)]] = True
    return table


def _check_ids(name: str, ids: object, vocab_size: int) -> Tensor:
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer token ids, got {shape_of(ids)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"{name}: token ids must lie in [0, {vocab_size - 1}], got {int(ids.min())}..{int(ids.max())}")
    return ids


def green_mask(previous: Tensor, vocab_size: int, key: int, gamma: float = 0.5) -> Tensor:
    """previous token ids (any shape S) -> (*S, vocab_size) bool: the green list after each."""
    vocab_size, key, gamma = _table_args(vocab_size, key, gamma)
    previous = _check_ids("previous", previous, vocab_size)
    return _green_table(vocab_size, key, gamma).to(previous.device)[previous.long()]


def bias_logits(logits: Tensor, previous: Tensor, key: int, delta: float, gamma: float = 0.5) -> Tensor:
    """logits (*S, V) for the tokens after `previous` (*S) -> the logits with δ added to the green lists."""
    check_float_tensor("logits", logits)
    if not isinstance(previous, Tensor) or tuple(previous.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"previous: expected ids of shape {tuple(logits.shape[:-1])}, got {shape_of(previous)}")
    delta = check_number("delta", delta, 0.0)
    green = green_mask(previous.to(logits.device), logits.shape[-1], key, gamma)
    return logits + delta * green.to(logits.dtype)


class WatermarkedLM(nn.Module):
    """A next-token model with the watermark's bias built in: the same (idx, state) -> (logits, state)
    protocol as the model it wraps, each position's logits biased by the green list of its own token.
    So `generation.generate` samples watermarked text and `generation.sliding_window_nll` measures
    what the bias costs on real text."""

    def __init__(self, model: nn.Module, key: int, delta: float, gamma: float = 0.5):
        super().__init__()
        self.model = model
        self.key, self.gamma = _table_args(2, key, gamma)[1:]
        self.delta = check_number("delta", delta, 0.0)

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def context_length(self) -> int | None:
        return getattr(self.model, "context_length", None)

    def forward(self, idx: Tensor, state=None):
        logits, state = self.model(idx, state)
        return bias_logits(logits, idx, self.key, self.delta, self.gamma), state


def green_count(ids: Tensor, vocab_size: int, key: int, gamma: float = 0.5, *, unique: bool = True) -> tuple[int, int]:
    """(green, scored) for one text (T,): each token after the first against the green list of the token
    before it; unique=True scores each distinct (previous, token) pair once."""
    vocab_size, key, gamma = _table_args(vocab_size, key, gamma)
    ids = _check_ids("ids", ids, vocab_size)
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"ids: expected at least 2 token ids in one text (T,), got {shape_of(ids)}")
    pairs = torch.stack([ids[:-1], ids[1:]], 1).long().cpu()  # (T - 1, 2)
    if unique:
        pairs = torch.unique(pairs, dim=0)
    green = _green_table(vocab_size, key, gamma)[pairs[:, 0], pairs[:, 1]]
    return int(green.sum()), len(pairs)


def z_score(green: int, scored: int, gamma: float) -> float:
    """(s − γT) / sqrt(T γ (1 − γ)): how many standard deviations above chance the green count is."""
    check_int("scored", scored)
    check_int("green", green, low=0, high=scored)
    gamma = check_number("gamma", gamma, 0.0, 1.0, inclusive=False)
    return (green - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))


def detect(ids: Tensor, vocab_size: int, key: int, gamma: float = 0.5, *, unique: bool = True) -> float:
    """The text's watermark z-score (needs the key, not the model), against the lists' exact green fraction
    green_count_of(V, γ) / V (with chapter 04's V = 69 characters and γ = 0.5 that is 35/69, not 0.5)."""
    fraction = green_count_of(vocab_size, gamma) / vocab_size
    return z_score(*green_count(ids, vocab_size, key, gamma, unique=unique), fraction)


# ---------------------------------------------------------------------------------------------
# Images: a keyed ±ε pattern, found by correlation
# ---------------------------------------------------------------------------------------------


def image_pattern(shape: tuple[int, ...], key: int) -> Tensor:
    """A ±1 float pattern of `shape` (one image's shape, e.g. (1, 28, 28)), drawn from the key."""
    if not isinstance(shape, tuple) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"shape: expected a tuple of positive ints, got {shape!r}")
    g = torch.Generator().manual_seed(check_int("key", key, low=0) + 7_919)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def embed_image_watermark(images: Tensor, key: int, strength: float) -> Tensor:
    """images (N, ...) in [0, 1] -> images + ε · pattern, clamped back to [0, 1]."""
    check_float_tensor("images", images)
    if images.ndim < 2:
        raise ValueError(f"images: expected a batch (N, ...), got {shape_of(images)}")
    strength = check_number("strength", strength, 0.0, 1.0)
    pattern = image_pattern(tuple(images.shape[1:]), key).to(images)
    return (images + strength * pattern).clamp(0, 1)


def highpass(images: Tensor) -> Tensor:
    """images (N, C, H, W) minus their 3×3 local means (edges replicated): what is left when the smooth
    content is taken away."""
    check_float_tensor("images", images, ndim=4)
    return images - F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def image_z_scores(images: Tensor, key: int) -> Tensor:
    """(N,) z-scores of images (N, C, H, W): each image's high-pass residual correlated with the key's
    pattern, over the residual's norm (about N(0, 1) without the mark)."""
    check_float_tensor("images", images, ndim=4)
    pattern = image_pattern(tuple(images.shape[1:]), key).to(images.device).flatten().double()
    r = highpass(images.double()).flatten(1)
    return (r @ pattern / r.norm(dim=1).clamp_min(1e-12)).float()
