"""Chapter 00 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch00`)."""

from __future__ import annotations

import torch

from aigc_lib import history
from aigc_lib.exercises.core import Case, Exercise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def text_ids(text: str, alphabet: str) -> torch.Tensor:
    return torch.tensor([alphabet.index(ch) for ch in text], dtype=torch.int64)


EXERCISES = (
    Exercise(
        key="00.count_bigrams",
        function="count_bigrams",
        nudge="Look at the consecutive pairs (ids[t], ids[t+1]): which index of counts is the first character and "
        "which the second? How many pairs does a text of n characters have? Counts are integers.",
        reference=history.count_bigrams,
        hint="counts[a, b] counts the positions t where ids[t] == a and ids[t+1] == b; return int64 of shape (V, V).",
        cases=(
            Case("'abab' over the alphabet 'ab'", lambda: {"ids": text_ids("abab", "ab"), "vocab_size": 2}),
            Case("'hello' over the alphabet 'ehlo'", lambda: {"ids": text_ids("hello", "ehlo"), "vocab_size": 4}),
            Case(
                "200 random ids, V = 5",
                lambda: {"ids": torch.randint(0, 5, (200,), generator=_gen(0)), "vocab_size": 5},
            ),
        ),
    ),
    Exercise(
        key="00.next_char_probs",
        function="next_char_probs",
        nudge="After smoothing each row must sum to 1: does your denominator include the alpha you added to every "
        "entry? Normalise over the last dimension only; the result is float32.",
        reference=history.next_char_probs,
        hint="Add alpha to every count, then divide by the sum of the *smoothed* counts (sum n + alpha * V) "
        "over the last dimension; return float32.",
        cases=(
            Case("counts [3, 1, 0], alpha = 0", lambda: {"counts": torch.tensor([3, 1, 0]), "alpha": 0.0}),
            Case("counts [3, 1, 0], alpha = 1 (Laplace)", lambda: {"counts": torch.tensor([3, 1, 0]), "alpha": 1.0}),
            Case(
                "a (4, 6) table of counts, alpha = 0.5",
                lambda: {"counts": torch.randint(0, 9, (4, 6), generator=_gen(1)), "alpha": 0.5},
            ),
        ),
    ),
    Exercise(
        key="00.apply_temperature",
        function="apply_temperature",
        nudge="The temperature rescales the logits, before any probability exists. Check the dimension your softmax "
        "normalises over, and think about what exp does to a logit of 1000.",
        reference=history.apply_temperature,
        hint="Divide the logits (not the probabilities!) by the temperature, then take a softmax over the last dimension.",
        cases=(
            Case("logits [2, 1, 0], T = 1", lambda: {"logits": torch.tensor([2.0, 1.0, 0.0]), "temperature": 1.0}),
            Case(
                "logits [2, 1, 0], T = 0.5 (sharper)",
                lambda: {"logits": torch.tensor([2.0, 1.0, 0.0]), "temperature": 0.5},
            ),
            Case(
                "a (3, 10) batch of logits, T = 2 (flatter)",
                lambda: {"logits": torch.randn(3, 10, generator=_gen(2)), "temperature": 2.0},
            ),
        ),
    ),
    Exercise(
        key="00.fit_pixel_model",
        function="fit_pixel_model",
        nudge="One estimate per pixel, counted over the N images, with alpha pseudo-counts for each of the two "
        "outcomes (on and off). Keep the grey levels as they are, and the images' dtype.",
        reference=history.fit_pixel_model,
        hint="Sum over the first (sample) dimension, add alpha, divide by N + 2 alpha; keep grey levels as they are (do not binarise).",
        cases=(
            Case(
                "two 2x2 images, alpha = 0",
                lambda: {"images": torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]]), "alpha": 0.0},
            ),
            Case(
                "two 2x2 images, alpha = 1",
                lambda: {"images": torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]]), "alpha": 1.0},
            ),
            Case(
                "20 grey-level 1x5x5 images, alpha = 1",
                lambda: {"images": torch.rand(20, 1, 5, 5, generator=_gen(3)), "alpha": 1.0},
            ),
        ),
    ),
)
