"""A statistical watermark for generated text (Kirchenbauer, Geiping, Wen, Katz, Miers & Goldstein,
"A Watermark for Large Language Models", ICML 2023), on a character-level model.

At each step the previous token and a secret key seed a generator that picks a "green list": a fraction
γ of the vocabulary. Sampling adds δ to the green tokens' logits, so green tokens become more likely
wherever the model has a choice. Detection needs the key but not the model: count the green tokens s in
T scored positions; without a watermark each is green with probability γ, independently, so

    z = (s − γT) / sqrt(T γ (1 − γ))

is about standard normal; a watermarked text has a large z. (The "soft" scheme of the paper's §3.)
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from aigc_lib.checks import check_int, check_number, shape_of


def green_count_of(vocab_size: int, gamma: float) -> int:
    """How many tokens each green list holds: round(γ · V), at least 1 and at most V − 1."""
    return max(1, min(vocab_size - 1, round(gamma * vocab_size)))


@functools.lru_cache(maxsize=16)
def green_table(vocab_size: int, key: int, gamma: float = 0.5) -> Tensor:
    """(V, V) bool: row p is the green list after token p, a random subset of `green_count_of(V, γ)` tokens
    drawn from a generator seeded by (key, p) — the same key always gives the same lists."""
    check_int("vocab_size", vocab_size, low=2)
    check_int("key", key, low=0)
    gamma = check_number("gamma", gamma, 0.0, 1.0, inclusive=False)
    table = torch.zeros(vocab_size, vocab_size, dtype=torch.bool)
    for p in range(vocab_size):
        g = torch.Generator().manual_seed((key * 1_000_003 + p) % (2**63 - 1))
        table[p, torch.randperm(vocab_size, generator=g)[: green_count_of(vocab_size, gamma)]] = True
    return table


def green_mask(previous: Tensor, vocab_size: int, key: int, gamma: float = 0.5) -> Tensor:
    """(N,) previous token ids -> (N, vocab_size) bool: each row the green list after that token."""
    if not isinstance(previous, Tensor) or previous.ndim != 1 or previous.is_floating_point():
        raise ValueError(f"previous: expected integer token ids (N,), got {shape_of(previous)}")
    return green_table(vocab_size, key, gamma)[previous.cpu()].to(previous.device)


def bias_logits(logits: Tensor, previous: Tensor, key: int, delta: float, gamma: float = 0.5) -> Tensor:
    """logits (N, V) for the next tokens after `previous` (N,) -> the logits with δ added to the green list."""
    delta = check_number("delta", delta, 0.0)
    return logits + delta * green_mask(previous, logits.shape[-1], key, gamma).to(logits.dtype)


def green_count(ids: Tensor, vocab_size: int, key: int, gamma: float = 0.5) -> tuple[int, int]:
    """(green tokens, scored tokens) of a text: every token after the first, scored against the green list
    of the token before it."""
    if not isinstance(ids, Tensor) or ids.ndim != 1 or ids.is_floating_point() or len(ids) < 2:
        raise ValueError(f"ids: expected at least 2 integer token ids (T,), got {shape_of(ids)}")
    green = green_mask(ids[:-1], vocab_size, key, gamma)
    return int(green.gather(1, ids[1:, None]).sum()), len(ids) - 1


def z_score(green: int, scored: int, gamma: float = 0.5) -> float:
    """(s − γT) / sqrt(T γ (1 − γ)): how many standard deviations above chance the green count is."""
    check_int("scored", scored)
    check_int("green", green, low=0, high=scored)
    gamma = check_number("gamma", gamma, 0.0, 1.0, inclusive=False)
    return (green - gamma * scored) / math.sqrt(scored * gamma * (1 - gamma))


def detect(ids: Tensor, vocab_size: int, key: int, gamma: float = 0.5) -> float:
    """The text's watermark z-score (needs the key, not the model), against the lists' exact green fraction
    round(γV)/V (with V = 65 characters and γ = 0.5 that is 32/65, not 0.5)."""
    fraction = green_count_of(vocab_size, gamma) / vocab_size
    return z_score(*green_count(ids, vocab_size, key, gamma), fraction)
